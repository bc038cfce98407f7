"""The installed extension: what it was built with, and that the package works without it."""
import os
import shutil
import subprocess
import sys

import pytest

from metakern import backends


def test_extension_built():
    ext, err = backends._load_ext()
    assert ext is not None, err
    import torch

    assert ext.build_info()["torch_version"] == torch.__version__.split("+")[0]


def test_codes():
    """The integer codes of the op arguments, as the C++ enums define them (csrc/common/codes.h)."""
    ext, err = backends._load_ext()
    assert ext is not None, err
    assert ext.codes() == {
        "Act": {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3},
        "Loss": {"mse": 0, "cross_entropy": 1},
        "Reduction": {"mean": 0, "sum": 1, "none": 2},
    }


def _cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton

        cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        return cand if os.path.exists(cand) else None
    except ImportError:
        return None


def test_cuda_machine_code_for_sm80_and_sm90():
    """Where the build compiled the CUDA kernels, the library carries sm_80 and sm_90 code."""
    ext, err = backends._load_ext()
    assert ext is not None, err
    if not ext.build_info()["cuda_kernels"]:
        pytest.skip("extension built without CUDA kernels (no nvcc or a CPU-only torch at install time)")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump to list the embedded machine code")
    so = ext.__file__
    out = subprocess.run([tool, "--list-elf", so], capture_output=True, text=True, timeout=120).stdout
    archs = os.environ.get("METAKERN_CUDA_ARCHS", "8.0;9.0").replace(",", ";").split(";")
    for a in archs:
        assert f"sm_{a.strip().replace('.', '')}" in out, out


def test_package_works_without_extension():
    code = ("import torch, metakern as mk, metakern.functional as MF\n"
            "av = mk.backends.available()\n"
            "assert av['cpp'] and 'METAKERN_DISABLE_EXTENSION' in av['cpp'][0], av\n"
            "p = [torch.randn(4, 2), torch.randn(4), torch.randn(1, 4), torch.randn(1)]\n"
            "out = MF.adapt(p, torch.randn(3, 5, 2), torch.randn(3, 5, 1), lr=0.1, steps=2)\n"
            "assert out[0].shape == (3, 4, 2)\n"
            "try:\n"
            "    MF.adapt(p, torch.randn(3, 5, 2), torch.randn(3, 5, 1), lr=0.1, backend='cpp')\n"
            "    raise SystemExit('cpp should be unavailable')\n"
            "except RuntimeError as e:\n"
            "    assert 'cpp' in str(e)\n"
            "print('ok')\n")
    env = dict(os.environ, METAKERN_DISABLE_EXTENSION="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "metakern.cli", "info"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and "cpp     unavailable" in r.stdout, r.stdout + r.stderr
