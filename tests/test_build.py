"""The installed extension: what it was built with, and that the package works without it."""
import os
import random
import shutil
import subprocess
import sys

import pytest

from metakern import backends


def test_extension_built():
    ext, err = backends.load_extension()
    assert ext is not None, err
    import torch

    assert ext.build_info()["torch_version"] == torch.__version__.split("+")[0]


def test_codes_match_the_contract():
    """The integer codes of the op arguments: the C++ enums (csrc/common/codes.h) are the
    Python ones (metakern/_contract.py), name for name and value for value."""
    from metakern import _contract

    ext, err = backends.load_extension()
    assert ext is not None, err
    python = {e.__name__: {m.name.lower(): int(m) for m in e}
              for e in (_contract.Act, _contract.Loss, _contract.Reduction)}
    assert ext.codes() == python
    assert python["Act"] == {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3}  # what docs/kernels.md states


def _smem_formula(dims, elem_size):
    """The CUDA kernels' shared memory per block with one point per chunk, written out:
    (4P + 2S - ld_0 + 4 Wd) * elem_size, ld_l = d_l | 1, S = sum_l ld_l, Wd = max_{l>=1} ld_l
    (the second-order adapt_bwd plan of csrc/cuda/adapt_plan.h, the largest)."""
    ld = [d | 1 for d in dims]
    P = sum(dims[l] * (dims[l - 1] + 1) for l in range(1, len(dims)))
    return (4 * P + 2 * sum(ld) - ld[0] + 4 * max(ld[1:])) * elem_size


def test_cuda_smem_bytes_and_max_layers():
    """_C.cuda_smem_bytes (adapt_plan.h's own plan) against the formula, in every build."""
    ext, err = backends.load_extension()
    assert ext is not None, err
    assert ext.cuda_max_layers() == 16
    rng = random.Random(20261203)
    cases = [[1, 40, 40, 1], [1, 40, 40, 3], [1, 1], [2, 2], [4, 2], [3, 17, 5], [6, 64, 64, 4], [784, 256, 10]]
    cases += [[1] * 17, [8] * 17]  # the most layers the kernels take
    for _ in range(40):
        cases.append([rng.randint(1, 300) for _ in range(rng.randint(2, 17))])
    for dims in cases:
        for elem_size in (4, 8):
            assert ext.cuda_smem_bytes(dims, elem_size) == _smem_formula(dims, elem_size), (dims, elem_size)
    with pytest.raises(RuntimeError, match="layers"):
        ext.cuda_smem_bytes([2] * 18, 4)
    with pytest.raises(ValueError, match="elem_size"):
        ext.cuda_smem_bytes([1, 40, 1], 2)


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
    ext, err = backends.load_extension()
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


def test_cuda_backend_limits_use_the_kernels_plan(monkeypatch):
    """The cuda backend's per-call limits (asked on any machine: a fake device
    property here) come from the extension's own plan: the layer limit and the shared
    memory per block of csrc/cuda/adapt_plan.h."""
    import types

    import torch

    ext, err = backends.load_extension()
    assert ext is not None, err
    limit = 100 * 1024
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(shared_memory_per_block_optin=limit))
    cuda = backends.get("cuda")

    def reasons(dims, dtype=torch.float32):
        return cuda.limits(backends.Call(torch.device("cuda"), dtype, tuple(dims), 4, 10, 1))

    assert reasons((1, 40, 40, 1)) == []
    too_deep = (2,) * (ext.cuda_max_layers() + 2)
    assert "at most 16" in " ".join(reasons(too_deep))
    wide = (40, 40, 40)  # 3280 parameters: 54 KB of float32, 108 KB of float64
    assert ext.cuda_smem_bytes(list(wide), 4) <= limit < ext.cuda_smem_bytes(list(wide), 8)
    assert reasons(wide) == [] and "bytes of shared memory" in " ".join(reasons(wide, torch.float64))
    assert "too large" in " ".join(reasons((2 ** 13, 2 ** 13, 1)))
