// Runtime flags -> compile-time template parameters (the flash-attention idiom,
// csrc/flash_attn/src/static_switch.h). Each macro expands to an immediately
// invoked lambda in which CONST_NAME is a constexpr, so the body can use it as a
// template argument:
//
//   MK_ACT_SWITCH(act, kAct, [&] {
//     MK_LOSS_SWITCH(loss, kLoss, [&] { launch<scalar_t, kAct, kLoss>(...); });
//   });
//
// The codes are validated by the op wrappers before they get here; an unknown
// code still raises instead of silently picking a kernel.
#pragma once

#include <c10/util/Exception.h>

#include "common/codes.h"

#define MK_BOOL_SWITCH(COND, CONST_NAME, ...)   \
  [&] {                                         \
    if (COND) {                                 \
      constexpr static bool CONST_NAME = true;  \
      return __VA_ARGS__();                     \
    } else {                                    \
      constexpr static bool CONST_NAME = false; \
      return __VA_ARGS__();                     \
    }                                           \
  }()

// act: common/codes.h (docs/kernels.md).
#define MK_ACT_SWITCH(ACT, CONST_NAME, ...)                                 \
  [&] {                                                                     \
    switch (ACT) {                                                          \
      case ::metakern::kIdentity: {                                         \
        constexpr static int CONST_NAME = ::metakern::kIdentity;            \
        return __VA_ARGS__();                                               \
      }                                                                     \
      case ::metakern::kRelu: {                                             \
        constexpr static int CONST_NAME = ::metakern::kRelu;                \
        return __VA_ARGS__();                                               \
      }                                                                     \
      case ::metakern::kTanh: {                                             \
        constexpr static int CONST_NAME = ::metakern::kTanh;                \
        return __VA_ARGS__();                                               \
      }                                                                     \
      case ::metakern::kSigmoid: {                                          \
        constexpr static int CONST_NAME = ::metakern::kSigmoid;             \
        return __VA_ARGS__();                                               \
      }                                                                     \
      default:                                                              \
        TORCH_CHECK(false, "metakern CUDA: unsupported act code ", (ACT)); \
    }                                                                       \
  }()

// loss: common/codes.h (docs/kernels.md).
#define MK_LOSS_SWITCH(LOSS, CONST_NAME, ...)                                 \
  [&] {                                                                       \
    switch (LOSS) {                                                           \
      case ::metakern::kMSE: {                                                \
        constexpr static int CONST_NAME = ::metakern::kMSE;                   \
        return __VA_ARGS__();                                                 \
      }                                                                       \
      case ::metakern::kCrossEntropy: {                                       \
        constexpr static int CONST_NAME = ::metakern::kCrossEntropy;          \
        return __VA_ARGS__();                                                 \
      }                                                                       \
      default:                                                                \
        TORCH_CHECK(false, "metakern CUDA: unsupported loss code ", (LOSS)); \
    }                                                                         \
  }()
