"""Command-line smoke tests."""
import subprocess
import sys

import pytest
import torch

import metakern as mk
from metakern import cli


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "metakern" in out and "torch" in out
    for name in ("torch", "cpp", "triton", "cuda"):
        assert name in out


@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd", "reptile", "anil"])
def test_train_smoke(tmp_path, capsys, algo):
    ckpt = tmp_path / "ckpt.pt"
    rc = cli.main(["train", "--algo", algo, "--iterations", "5", "--meta-batch", "4", "--test-tasks", "20",
                   "--hidden", "8,8", "--no-progress", "--save", str(ckpt)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "meta-trained" in out and "not meta-trained" in out and "95% interval" in out
    state = torch.load(ckpt)
    from metakern.train import build_learner

    learner = build_learner(algo, mk.tasks.Sinusoid(), hidden=(8, 8))
    learner.load_state_dict(state["state_dict"])


def test_train_linear_task(capsys):
    assert cli.main(["train", "--task", "linear", "--iterations", "3", "--meta-batch", "2", "--test-tasks", "10",
                     "--no-progress", "--steps", "2"]) == 0


def test_train_rejects_bad_values(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--iterations", "0"])
    assert "--iterations" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--algo", "nope"])


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "metakern.cli", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "backends:" in out.stdout


def test_train_digits_classification(capsys):
    """The classification path end to end (scikit-learn's digits, a demo-sized data set)."""
    pytest.importorskip("sklearn", reason="scikit-learn is part of the test extra: pip install -e '.[test]'")
    rc = cli.main(["train", "--task", "digits", "--algo", "anil", "--steps", "2", "--inner-lr", "0.1",
                   "--iterations", "5", "--meta-batch", "4", "--shots", "1", "--queries", "5", "--test-tasks", "20",
                   "--hidden", "32,32", "--no-progress"])
    assert rc == 0
    assert "accuracy" in capsys.readouterr().out


def test_anil_keeps_its_hidden_layer():
    from metakern.train import build_learner

    anil = build_learner("anil", mk.tasks.Sinusoid(), hidden=(40,))
    assert [type(m) for m in anil.body.modules()].count(torch.nn.Linear) == 1
    assert anil.head.module.in_features == 40
    assert isinstance(build_learner("anil", mk.tasks.Sinusoid(), hidden=()).body, torch.nn.Identity)


@pytest.mark.parametrize("algo,lr,steps", [("maml", 0.01, 1), ("reptile", 0.02, 5), ("anil", 0.1, 1)])
def test_each_algorithm_has_its_own_defaults(algo, lr, steps):
    from metakern.train import build_learner, inner_defaults

    assert inner_defaults(algo) == (lr, steps)
    learner = build_learner(algo, mk.tasks.Sinusoid(), hidden=(8,))
    maml = learner.head if algo == "anil" else learner
    assert maml.steps == steps and float(maml.lr) == pytest.approx(lr)


def test_help_states_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag, text in (("--meta-lr", "(default: 0.001)"), ("--iterations", "(default: 2000)"),
                       ("--device", "(default: cpu)"), ("--test-steps", "(default: --steps)")):
        assert text in out, flag
    assert "(default: None)" not in out and "reptile 0.02 x 5" in out


@pytest.mark.parametrize("where", ["dir", "unwritable"])
def test_save_is_checked_before_training(tmp_path, capsys, monkeypatch, where):
    import os

    target = tmp_path
    if where == "unwritable":
        target = tmp_path / "ro" / "ckpt.pt"
        (tmp_path / "ro").mkdir()
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if str(p).startswith(str(tmp_path / "ro")) else real(p, m))
    trained = []
    from metakern import train as T

    monkeypatch.setattr(T, "meta_train", lambda *a, **k: trained.append(1))
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--iterations", "1", "--no-progress", "--save", str(target)])
    assert e.value.code == 2 and not trained
    assert "--save" in capsys.readouterr().err


def test_train_reports_the_steady_state_rate(capsys):
    assert cli.main(["train", "--iterations", "3", "--meta-batch", "2", "--test-tasks", "4", "--hidden", "4",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ms/iteration after the first iteration" in out and "(start-up)" in out
    from metakern.train import meta_train

    timings = {}
    meta_train(mk.MAML(mk.MLP(1, [4], 1)), mk.tasks.Sinusoid(), iterations=2, meta_batch=2, progress=False,
               timings=timings)
    assert set(timings) == {"first_s", "rest_s"} and timings["first_s"] > 0 and timings["rest_s"] > 0
