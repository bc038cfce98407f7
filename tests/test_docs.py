"""The examples in the docs run: docstring examples of the public modules, and the
README's training example."""
import doctest
import os
import re

import pytest

import metakern.distributed
import metakern.functional
import metakern.learners
import metakern.nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module", [metakern.distributed, metakern.functional, metakern.learners, metakern.nn])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_readme_training_example():
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    code = blocks[0]
    assert "maml.meta_loss" in code and "maml.adapt" in code
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    # what it prints: the fused objective and the adapted models' loss agree
    import torch
    import torch.nn.functional as F
    m, xs, ys, xq, yq = (scope[k] for k in ("maml", "xs", "ys", "xq", "yq"))
    torch.testing.assert_close(F.mse_loss(m.adapt(xs, ys)(xq), yq), m.meta_loss(xs, ys, xq, yq), rtol=1e-5,
                               atol=1e-6)


def test_readme_distributed_example(monkeypatch):
    """The README's loop over metakern.distributed, in one process (tests/test_distributed.py
    runs the same calls on two)."""
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = [b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S) if "distributed.init()" in b]
    assert len(blocks) == 1
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert not scope["world"].distributed and scope["it"] == 99
