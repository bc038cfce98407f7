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

// act: 0 identity, 1 relu, 2 tanh, 3 sigmoid (docs/kernels.md).
#define MK_ACT_SWITCH(ACT, CONST_NAME, ...)                                 \
  [&] {                                                                     \
    switch (ACT) {                                                          \
      case 0: {                                                             \
        constexpr static int CONST_NAME = 0;                                \
        return __VA_ARGS__();                                               \
      }                                                                     \
      case 1: {                                                             \
        constexpr static int CONST_NAME = 1;                                \
        return __VA_ARGS__();                                               \
      }                                                                     \
      case 2: {                                                             \
        constexpr static int CONST_NAME = 2;                                \
        return __VA_ARGS__();                                               \
      }                                                                     \
      case 3: {                                                             \
        constexpr static int CONST_NAME = 3;                                \
        return __VA_ARGS__();                                               \
      }                                                                     \
      default:                                                              \
        TORCH_CHECK(false, "metakern CUDA: unsupported act code ", (ACT)); \
    }                                                                       \
  }()

// loss: 0 MSE, 1 cross-entropy (docs/kernels.md).
#define MK_LOSS_SWITCH(LOSS, CONST_NAME, ...)                                 \
  [&] {                                                                       \
    switch (LOSS) {                                                           \
      case 0: {                                                               \
        constexpr static int CONST_NAME = 0;                                  \
        return __VA_ARGS__();                                                 \
      }                                                                       \
      case 1: {                                                               \
        constexpr static int CONST_NAME = 1;                                  \
        return __VA_ARGS__();                                                 \
      }                                                                       \
      default:                                                                \
        TORCH_CHECK(false, "metakern CUDA: unsupported loss code ", (LOSS)); \
    }                                                                         \
  }()
