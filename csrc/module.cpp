// The Python module metakern._C: importing it loads the shared library, which
// registers the ops (torch.ops.metakern.*). Its only Python function is
// build_info(), a description of how the extension was compiled.
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/version.h>

#include <string>

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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "metakern compiled kernels (ops registered as torch.ops.metakern.*)";
  m.def("build_info", &build_info,
        "How metakern._C was built: compiler, OpenMP and threads, SIMD flags, whether CUDA kernels are in.");
}
