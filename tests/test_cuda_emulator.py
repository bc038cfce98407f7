"""The CUDA kernels' source, run on the CPU.

``csrc/cuda/emu/check_emu.py`` compiles ``csrc/cuda/adapt_kernels.cuh`` as host C++
(one std::thread per CUDA thread, ``__syncthreads()`` as a barrier, threads
serialised between barriers in several orders) and compares all four ops with the
torch backend: values, every output written, no shared-memory overrun, and identical
bits for every thread order (a race between barriers changes them). It is no
substitute for a GPU run, but every CI run checks the CUDA arithmetic and indexing.
Per-step rates (``lr`` ``[K, P]``, ``g_lr`` ``[T, K, P]``) are checked against float64
autograd through the unrolled loop (``tests/reference.py``), for K = 1, 2, 3, both
orders and both losses.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cuda_kernels_on_cpu_emulator():
    script = os.path.join(ROOT, "csrc", "cuda", "emu", "check_emu.py")
    r = subprocess.run([sys.executable, script, "--quick"], capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "configurations passed" in r.stdout, r.stdout[-4000:]
