// The Python module metakern._C: importing it loads the shared library, which
// registers the ops (torch.ops.metakern.*). Its Python functions: build_info(), a
// description of how the extension was compiled, codes(), the integer codes of the
// op arguments (common/codes.h), cuda_smem_bytes() and cuda_max_layers(), the CUDA
// kernels' limits (cuda/adapt_plan.h; host code, in every build), maml_loss()
// (autograd/maml_loss.h) and maml_fwd_composed() (cuda/maml_composed.h).
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/version.h>

#include "autograd/maml_loss.h"
#include "common/codes.h"
#include "cuda/adapt_plan.h"
#include "cuda/maml_composed.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict d;
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  d["compiler"] = std::string("msvc ") + std::to_string(_MSC_VER);
#else
  d["compiler"] = std::string("unknown");
#endif
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_version"] = static_cast<int>(_OPENMP);
  d["omp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["openmp_version"] = 0;
  d["omp_max_threads"] = 1;
#endif
  d["num_threads"] = at::get_num_threads();  // what at::parallel_for uses
#ifdef METAKERN_WITH_CUDA
  d["cuda_kernels"] = true;
#else
  d["cuda_kernels"] = false;
#endif
  pybind11::list simd;
#ifdef __SSE4_2__
  simd.append("sse4.2");
#endif
#ifdef __AVX__
  simd.append("avx");
#endif
#ifdef __AVX2__
  simd.append("avx2");
#endif
#ifdef __FMA__
  simd.append("fma");
#endif
#ifdef __AVX512F__
  simd.append("avx512f");
#endif
#ifdef __ARM_NEON
  simd.append("neon");
#endif
  d["simd"] = simd;
#ifdef NDEBUG
  d["debug"] = false;
#else
  d["debug"] = true;
#endif
#ifdef TORCH_VERSION
  d["torch_version"] = std::string(TORCH_VERSION);  // the torch it was compiled against
#endif
  return d;
}

template <size_t N>
pybind11::dict code_dict(const metakern::CodeName (&names)[N]) {
  pybind11::dict d;
  for (const metakern::CodeName& c : names) d[c.name] = c.code;
  return d;
}

// {"Act": {"identity": 0, ...}, "Loss": {...}, "Reduction": {...}} from the enums of common/codes.h.
pybind11::dict codes() {
  pybind11::dict d;
  d["Act"] = code_dict(metakern::kActNames);
  d["Loss"] = code_dict(metakern::kLossNames);
  d["Reduction"] = code_dict(metakern::kReductionNames);
  return d;
}

// Shared memory per block the CUDA kernels need for this model, one point per chunk.
int64_t cuda_smem_bytes(const std::vector<int64_t>& dims, int64_t elem_size) {
  TORCH_CHECK_VALUE(elem_size == 4 || elem_size == 8,
                    "metakern._C.cuda_smem_bytes: elem_size must be 4 (float32) or 8 (float64), got ", elem_size);
  const auto s = metakern::cuda_kernels::make_shape("metakern._C.cuda_smem_bytes", dims);
  return metakern::cuda_kernels::smem_bytes_one_point(s, elem_size);
}

int64_t cuda_max_layers() { return metakern::cuda_kernels::kMaxLayers; }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "metakern compiled kernels (ops registered as torch.ops.metakern.*)";
  m.def("build_info", &build_info,
        "How metakern._C was built: compiler, OpenMP and threads, SIMD flags, whether CUDA kernels are in.");
  m.def("codes", &codes,
        "The integer codes of the op arguments, from the enums of csrc/common/codes.h: {'Act': {name: code}, "
        "'Loss': {...}, 'Reduction': {...}} (act and loss of every op, reduction of maml_loss).");
  m.def("cuda_smem_bytes", &cuda_smem_bytes,
        "Shared memory per block, in bytes, that the CUDA kernels need for an MLP of widths dims with elements of "
        "elem_size bytes (4 or 8), one point per chunk: the largest of their plans (csrc/cuda/adapt_plan.h). A "
        "device whose opt-in limit per block is below it cannot run them. Raises RuntimeError for dims the "
        "kernels do not take (more than cuda_max_layers() layers, or too large).",
        pybind11::arg("dims"), pybind11::arg("elem_size"));
  m.def("cuda_max_layers", &cuda_max_layers, "The most layers (len(dims) - 1) the CUDA kernels support.");
  m.def("maml_loss", &metakern::maml_loss,
        "The MAML objective over metakern::maml_fwd as one C++ autograd node: (params, lr, xs, ys, xq, yq, "
        "dims, per_task, steps, loss, act, first_order, reduction, step_weights=None) -> loss; lr [P] or [K, P] "
        "(a row per inner step); reduction 0 mean, 1 sum, 2 none; step_weights [K] (a constant): the multi-step "
        "loss sum_k step_weights[k-1] * L_query(theta_k).",
        pybind11::arg("params"), pybind11::arg("lr"), pybind11::arg("xs"), pybind11::arg("ys"), pybind11::arg("xq"),
        pybind11::arg("yq"), pybind11::arg("dims"), pybind11::arg("per_task"), pybind11::arg("steps"),
        pybind11::arg("loss"), pybind11::arg("act"), pybind11::arg("first_order"), pybind11::arg("reduction"),
        pybind11::arg("step_weights") = pybind11::none());
  m.def("maml_fwd_composed", &metakern::maml_fwd_composed,
        "metakern::maml_fwd composed from adapt_fwd, mlp_fwd, mlp_bwd and adapt_bwd on the tensors' device (the "
        "CUDA implementation of maml_fwd; exposed for tests). Arguments and results as maml_fwd.",
        pybind11::arg("theta"), pybind11::arg("lr"), pybind11::arg("xs"), pybind11::arg("ys"), pybind11::arg("xq"),
        pybind11::arg("yq"), pybind11::arg("dims"), pybind11::arg("steps"), pybind11::arg("loss"),
        pybind11::arg("act"), pybind11::arg("first_order"), pybind11::arg("need_grad"),
        pybind11::arg("need_lr") = true, pybind11::arg("step_weights") = pybind11::none(),
        pybind11::arg("sum_tasks") = false);
}
