"""Command-line smoke tests."""
import re
import subprocess
import sys

import pytest
import torch

import metakern as mk
from helpers import assert_close
from metakern import cli


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "metakern" in out and "torch" in out
    for name in ("torch", "cpp", "triton", "cuda"):
        assert name in out


@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd", "reptile", "anil", "mamlpp"])
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


@pytest.mark.parametrize("algo,lr,steps", [("maml", 0.01, 1), ("reptile", 0.02, 5), ("anil", 0.1, 1),
                                           ("mamlpp", 0.1, 5)])
def test_each_algorithm_has_its_own_defaults(algo, lr, steps):
    from metakern.train import build_learner, inner_defaults

    assert inner_defaults(algo) == (lr, steps)
    learner = build_learner(algo, mk.tasks.Sinusoid(), hidden=(8,))
    maml = learner.head if algo == "anil" else learner
    rates = maml.lrs if algo == "mamlpp" else [maml.lr]
    assert maml.steps == steps and all(torch.allclose(r, torch.full_like(r, lr)) for r in rates)


def test_help_states_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag, text in (("--meta-lr", "(default: 0.001)"), ("--iterations", "(default: 2000)"),
                       ("--device", "(default: cpu)"), ("--test-steps", "(default: --steps;"),
                       ("--meta-batch", "(default: 25; 32 for kanji/omniglot"), ("--shots", "(default: 10; 1 for"),
                       ("--hidden", "256,128,64,64 for kanji/omniglot"), ("--filters", "(default: 64)")):
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



# ----------------------------------------------------------------------------- few-shot images: kanji, omniglot
#
# Small runs: 40 characters (28 / 2 / 10 in the train / val / test splits), 2-way tasks,
# a few iterations and test tasks; one torch thread (a conv on a shared 2-core machine
# with many threads spends its time waiting).

from metakern import tasks as TK  # noqa: E402
from metakern import train as T  # noqa: E402

def _needs_kanji():
    from importlib import metadata

    pytest.importorskip("PIL", reason='needs pip install "metakern[data]"')
    pytest.importorskip("svg.path", reason='needs pip install "metakern[data]"')
    try:
        metadata.distribution("kanjivg")
    except metadata.PackageNotFoundError:
        pytest.skip('needs pip install "metakern[data]" (kanjivg)')


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def small(monkeypatch, data_cache):
    """The data cache in a temporary folder, and torch's thread count put back afterwards."""
    monkeypatch.setenv("METAKERN_CACHE_DIR", data_cache)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


KANJI = ["train", "--task", "kanji", "--characters", "40", "--ways", "2", "--meta-batch", "4", "--test-tasks", "10",
         "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def omni_root(tmp_path_factory):
    pytest.importorskip("PIL", reason='needs pip install "metakern[data]"')
    from test_fewshot_data import make_omniglot

    return make_omniglot(str(tmp_path_factory.mktemp("omniglot")))  # 25 characters (16 / 2 / 7), 6 drawings each


def omniglot_args(root):
    return ["train", "--task", "omniglot", "--data-root", root, "--ways", "2", "--queries", "3", "--meta-batch", "4",
            "--test-tasks", "10", "--threads", "1", "--no-progress"]


@pytest.mark.parametrize("model,algo", [("mlp", "maml"), ("mlp", "metasgd"), ("conv4", "anil"), ("conv4", "maml")])
def test_kanji_runs_end_to_end(tmp_path, capsys, small, model, algo):
    _needs_kanji()
    ckpt = tmp_path / "k.pt"
    size = ["--hidden", "32,16"] if model == "mlp" else ["--filters", "8"]
    assert cli.main([*KANJI, "--model", model, "--algo", algo, *size, "--iterations", "3", "--save", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f"meta-training {algo} on kanji: 2-way 1-shot (15 queries), {model} on [1x28x28]" in out
    assert "1 inner step(s) at lr 0.4" in out  # the MAML paper's 5-way Omniglot settings
    assert "meta-test after 1 inner step(s) on 10 held-out tasks:" in out
    for name in ("meta-trained", "not meta-trained"):
        assert f"{name:17s} accuracy " in out
    assert out.count("(95% interval over 10 tasks)") == 2
    # the checkpoint is the learner the flags describe
    ck = torch.load(ckpt)
    task = TK.kanji(ways=2, limit=40, progress=False)
    kw = {"hidden": (32, 16)} if model == "mlp" else {"filters": 8}
    learner = T.build_learner(algo, task, model=model, inner_lr=0.4, steps=1, **kw)
    learner.load_state_dict(ck["state_dict"])
    assert ck["config"]["model"] == model and ck["iteration"] == 3 and ck["config"]["characters"] == 40
    assert [p[0] for p in ck["curve"]["loss"]] == [1, 2, 3] and ck["curve"]["val"] == []
    assert 0 <= ck["meta_test"]["meta-trained"]["mean"] <= 1


def test_image_tasks_take_the_papers_defaults():
    def resolved(*argv):
        args = cli.build_parser().parse_args(["train", *argv])
        cli._resolve_defaults(args)
        return args

    a = resolved("--task", "kanji")
    assert (a.meta_batch, a.inner_lr, a.steps, a.test_steps, a.shots, a.queries, a.ways, a.hidden) == \
           (32, 0.4, 1, 1, 1, 15, 5, "256,128,64,64")
    assert resolved("--task", "omniglot", "--model", "conv4").filters == 64
    r = resolved("--task", "kanji", "--algo", "reptile")  # Reptile keeps its own inner loop
    assert (r.inner_lr, r.steps, r.test_steps) == (0.02, 5, 5)
    s = resolved("--task", "sine")  # the regression tasks are unchanged
    assert (s.meta_batch, s.inner_lr, s.steps, s.test_steps, s.shots, s.queries, s.hidden) == \
           (25, 0.01, 1, 1, 10, 10, "40,40")
    own = resolved("--task", "kanji", "--steps", "3", "--inner-lr", "0.1", "--meta-batch", "8", "--test-steps", "10")
    assert (own.steps, own.test_steps, own.inner_lr, own.meta_batch) == (3, 10, 0.1, 8)
    assert resolved("--task", "kanji", "--steps", "5").test_steps == 5


def test_val_every_and_plot(tmp_path, capsys, small):
    """Validation every 2 iterations on the val split, kept in the checkpoint and drawn in the PNG;
    its accuracy is the meta-test of the saved learner on the same validation tasks."""
    _needs_kanji()
    pytest.importorskip("matplotlib")
    ckpt, png = tmp_path / "v.pt", tmp_path / "plots" / "curve.png"
    assert cli.main([*KANJI, "--hidden", "16", "--iterations", "4", "--val-every", "2", "--val-tasks", "12",
                     "--test-steps", "3", "--plot", str(png), "--save", str(ckpt)]) == 0
    out = capsys.readouterr().out
    for n in (2, 4):
        assert f"iteration {n}: validation accuracy " in out and "over 12 tasks); training query loss" in out
    assert "iteration 1: validation" not in out and f"wrote the learning curve to {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    ck = torch.load(ckpt)
    assert [p[0] for p in ck["curve"]["loss"]] == [1, 2, 3, 4] and [v[0] for v in ck["curve"]["val"]] == [2, 4]
    learner = T.build_learner("maml", TK.kanji(ways=2, limit=40, progress=False), hidden=(16,), inner_lr=0.4)
    learner.load_state_dict(ck["state_dict"])
    val = TK.kanji(ways=2, limit=40, split="val", progress=False)
    ref = T.meta_test(learner, val, tasks=12, steps=3, generator=torch.Generator().manual_seed(0 + 2_000_003))
    _, acc, ci = ck["curve"]["val"][-1]
    assert acc == ref.mean and ci == pytest.approx(ref.ci95, rel=1e-12)
    assert all(0.0 <= v[1] <= 1.0 for v in ck["curve"]["val"])


def test_plot_path_is_checked_before_training(tmp_path, capsys, monkeypatch):
    trained = []
    monkeypatch.setattr(T, "meta_train", lambda *a, **k: trained.append(1))
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--iterations", "1", "--no-progress", "--plot", str(tmp_path)])
    assert e.value.code == 2 and not trained
    assert f"--plot {tmp_path}: is a directory; give a file name, e.g. curve.png" in capsys.readouterr().err


def test_plot_of_a_regression_task(tmp_path, capsys):
    """--plot without validation: the training loss alone (sine: MSE)."""
    pytest.importorskip("matplotlib")
    png = tmp_path / "sine.png"
    assert cli.main(["train", "--iterations", "3", "--meta-batch", "2", "--test-tasks", "4", "--hidden", "4",
                     "--no-progress", "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def _resume_matches(tmp_path, argv):
    """4 iterations in one run against 2, then --resume for 2 more: the same bits, the same curve."""
    whole, part = tmp_path / "whole.pt", tmp_path / "part.pt"
    run = [*argv, "--val-every", "1", "--val-tasks", "4", "--test-tasks", "4"]
    assert cli.main([*run, "--iterations", "4", "--save", str(whole)]) == 0
    assert cli.main([*run, "--iterations", "2", "--save", str(part)]) == 0
    assert cli.main([*run, "--iterations", "4", "--resume", str(part), "--save", str(part),
                     "--plot", str(tmp_path / "resumed.png")]) == 0
    a, b = torch.load(whole), torch.load(part)
    assert b["iteration"] == 4
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert torch.equal(a["generator"], b["generator"])
    assert a["curve"] == b["curve"] and [v[0] for v in b["curve"]["val"]] == [1, 2, 3, 4]
    assert a["meta_test"] == b["meta_test"]
    assert (tmp_path / "resumed.png").stat().st_size > 0


def test_kanji_resume_continues_the_same_batches(tmp_path, capsys, small):
    _needs_kanji()
    _resume_matches(tmp_path, [*KANJI, "--hidden", "16"])
    assert "resumed from" in capsys.readouterr().out


def test_omniglot_runs_and_resumes(tmp_path, capsys, small, omni_root):
    assert cli.main([*omniglot_args(omni_root), "--model", "conv4", "--algo", "anil", "--filters", "4",
                     "--iterations", "2"]) == 0
    out = capsys.readouterr().out
    assert "meta-training anil on omniglot: 2-way 1-shot (3 queries), conv4 on [1x28x28]" in out
    assert "meta-test after 1 inner step(s) on 10 held-out tasks:" in out and "not meta-trained  accuracy" in out
    _resume_matches(tmp_path, [*omniglot_args(omni_root), "--hidden", "8"])


def test_omniglot_needs_data_root(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--task", "omniglot", "--iterations", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--task omniglot needs --data-root DIR" in err and "github.com/brendenlake/omniglot" in err


@pytest.mark.parametrize("layout", ["missing", "empty", "no_png"])
def test_omniglot_bad_folder(tmp_path, capsys, small, layout):
    pytest.importorskip("PIL", reason='needs pip install "metakern[data]"')
    root = tmp_path / "omni"
    if layout != "missing":
        root.mkdir()
    if layout == "no_png":
        (root / "Alphabet" / "character01").mkdir(parents=True)
    assert cli.main(["train", "--task", "omniglot", "--data-root", str(root), "--iterations", "1",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metakern train: error: ") and "Traceback" not in err
    why = {"missing": "does not exist", "empty": "has no sub-folders", "no_png": "holds no <character>/*.png folders"}[layout]
    assert str(root) in err and why in err and "<root>/<alphabet>/<character>/*.png" in err


@pytest.mark.parametrize("argv,text", [
    (["--model", "conv4"], "--model conv4 needs images: --task kanji or omniglot; --task sine has feature vectors"),
    (["--task", "digits", "--model", "conv4"], "--model conv4 needs images"),
    (["--task", "kanji", "--model", "conv4", "--hidden", "8"], "--model conv4 takes --filters N instead"),
    (["--task", "kanji", "--filters", "8"], "--model mlp takes --hidden instead"),
    (["--task", "kanji", "--data-root", "x"], "--data-root is the Omniglot folder, for --task omniglot only"),
    (["--characters", "10"], "--characters is for --task kanji only"),
    (["--task", "digits", "--drawings", "5"], "--drawings is for --task kanji only"),
    (["--task", "kanji", "--characters", "2"], "--characters must be >= 3"),
    (["--val-every", "5"], "--val-every needs a validation split of classes"),
    (["--task", "kanji", "--val-every", "-1"], "--val-every must be >= 0"),
    (["--task", "kanji", "--val-tasks", "0"], "--val-tasks must be >= 1"),
    (["--task", "kanji", "--model", "conv4", "--filters", "0"], "--filters must be >= 1"),
])
def test_few_shot_bad_arguments(capsys, argv, text):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--iterations", "1", *argv])
    assert e.value.code == 2 and text in capsys.readouterr().err


def test_kanji_split_too_small_for_ways(capsys, small):
    _needs_kanji()
    assert cli.main([*KANJI[:5], "--ways", "5", "--val-every", "1", "--iterations", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--task kanji, val split (--characters 40): ways=5 exceeds the 2 classes available" in err


def test_resume_checks_the_model(tmp_path, capsys, small):
    _needs_kanji()
    ckpt = tmp_path / "m.pt"
    assert cli.main([*KANJI, "--hidden", "8", "--iterations", "1", "--save", str(ckpt)]) == 0
    assert cli.main([*KANJI, "--model", "conv4", "--filters", "4", "--iterations", "2", "--resume", str(ckpt)]) == 2
    assert "trained with --model mlp, this run has --model conv4" in capsys.readouterr().err


def test_kanji_validation_under_torchrun(tmp_path, small):
    """Two processes: rank 0 alone prints the validation lines and writes the PNG; the
    curve and the parameters are those of one process (float32: up to rounding)."""
    _needs_kanji()
    pytest.importorskip("matplotlib")
    from test_distributed import finish, free_port, torchrun

    two, one, png = tmp_path / "two.pt", tmp_path / "one.pt", tmp_path / "two.png"
    run = [*KANJI[:-3], "--hidden", "16", "--iterations", "4", "--val-every", "2", "--val-tasks", "10",
           "--no-progress", "--dist-timeout", "60"]
    proc = torchrun([*run, "--save", str(two), "--plot", str(png)], free_port())
    assert cli.main([*run, "--threads", "1", "--save", str(one)]) == 0
    out = finish(proc)
    assert out.count("iteration 2: validation accuracy") == 1 and out.count("iteration 4: validation") == 1
    assert out.count("wrote the learning curve") == 1 and png.read_bytes()[:4] == b"\x89PNG"
    a, b = torch.load(two), torch.load(one)
    for k, v in b["state_dict"].items():
        assert_close(a["state_dict"][k], v, 1e-5, k)  # fp32 rounding of the gradient sums over a few Adam steps
    assert [p[0] for p in a["curve"]["loss"]] == [1, 2, 3, 4]
    assert [p[1] for p in a["curve"]["loss"]] == pytest.approx([p[1] for p in b["curve"]["loss"]], rel=1e-5)
    for (i, acc, _), (j, ref, _) in zip(a["curve"]["val"], b["curve"]["val"]):
        assert i == j and abs(acc - ref) <= 1 / 30  # a rounding may flip one of a task's 30 query predictions


def test_meta_train_callback_gets_the_window_means():
    """callback(n, loss) after every callback_every-th iteration and the last one, with the mean
    of the meta-losses since the previous call (the same steps taken by hand: float64, exact)."""
    def learner():
        torch.manual_seed(3)
        return mk.MAML(mk.MLP(1, [5], 1), lr=0.02).double()

    task, got = mk.tasks.Sinusoid(shots=4, queries=4), []
    timings = {}
    T.meta_train(learner(), task, iterations=5, meta_batch=3, generator=torch.Generator().manual_seed(9),
                 progress=False, dtype=torch.float64, callback_every=2, timings=timings,
                 callback=lambda n, loss: got.append((n, loss)))
    hand, g, losses = learner(), torch.Generator().manual_seed(9), []
    opt = T.make_optimizer(hand)
    for _ in range(5):
        losses.append(T.meta_step(hand, opt, task.sample(3, g, dtype=torch.float64)))
    assert got == [(2, (losses[0] + losses[1]) / 2), (4, (losses[2] + losses[3]) / 2), (5, losses[4])]
    assert set(timings) == {"first_s", "rest_s", "callback_s"} and timings["callback_s"] >= 0
    with pytest.raises(ValueError, match="callback_every"):
        T.meta_train(learner(), task, iterations=1, progress=False, callback_every=-1, callback=print)


def test_readme_train_commands_parse():
    """Every `metakern train` line of the README's bash blocks is a valid command line."""
    import os
    import re
    import shlex

    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")) as f:
        text = "\n".join(re.findall(r"```bash\n(.*?)```", f.read(), re.S)).replace("\\\n", " ")
    lines = [ln.split("#")[0] for ln in text.splitlines() if ln.strip().startswith("metakern train")]
    assert len(lines) >= 8 and sum("--task kanji" in ln for ln in lines) >= 3 and any("omniglot" in ln for ln in lines)
    parser = cli.build_parser()
    for ln in lines:
        args = parser.parse_args(shlex.split(ln)[1:])
        cli._check_options(args, parser)
        cli._resolve_defaults(args)


def test_mamlpp_schedule_from_the_command_line(tmp_path, capsys):
    """--epoch-length, --msl-epochs and --first-order-epochs reach the learner: the
    checkpoint's learner ends at the epoch of the last iteration, and a resumed run
    must keep the schedule."""
    ckpt = tmp_path / "pp.pt"
    base = ["train", "--algo", "mamlpp", "--steps", "2", "--meta-batch", "3", "--test-tasks", "6", "--hidden", "6",
            "--no-progress", "--epoch-length", "2", "--msl-epochs", "2", "--first-order-epochs", "1"]
    assert cli.main([*base, "--iterations", "5", "--save", str(ckpt)]) == 0
    ck = torch.load(ckpt)
    assert ck["config"]["epoch_length"] == 2 and ck["config"]["msl_epochs"] == 2
    assert [tuple(v.shape) for k, v in ck["state_dict"].items() if k.startswith("lrs.")] == [(2,)] * 4
    assert cli.main([*base, "--iterations", "6", "--resume", str(ckpt)]) == 0
    capsys.readouterr()
    assert cli.main([*base[:-6], "--epoch-length", "3", "--msl-epochs", "2", "--first-order-epochs", "1",
                     "--iterations", "7", "--resume", str(ckpt)]) == 2
    assert "trained with --epoch-length 2, this run has --epoch-length 3" in capsys.readouterr().err


@pytest.mark.parametrize("argv,match", [
    (["--algo", "maml", "--msl-epochs", "3"], "--msl-epochs sets MAML\+\+'s schedule: it needs --algo mamlpp"),
    (["--algo", "mamlpp", "--first-order-epochs", "-1"], "--first-order-epochs must be >= 0"),
    (["--algo", "mamlpp", "--epoch-length", "0"], "--epoch-length must be >= 1"),
    (["--algo", "mamlpp", "--steps", "3", "--test-steps", "5"], "--test-steps 5 would need rates"),
])
def test_mamlpp_bad_flags(capsys, argv, match):
    with pytest.raises(SystemExit):
        cli.main(["train", "--iterations", "1", *argv])
    assert re.search(match, capsys.readouterr().err)


def test_meta_train_sets_the_epoch():
    """meta_train gives a learner with set_epoch the epoch of each iteration."""
    seen = []
    pp = mk.MAMLPlusPlus(mk.MLP(1, [4], 1), steps=2, msl_epochs=2, first_order_epochs=1)
    real = pp.set_epoch
    pp.set_epoch = lambda e: (seen.append(e), real(e))
    T.meta_train(pp, mk.tasks.Sinusoid(), iterations=7, meta_batch=2, progress=False, epoch_length=3,
                 generator=torch.Generator().manual_seed(0))
    assert seen == [0, 0, 0, 1, 1, 1, 2]
    assert pp.epoch == 2 and pp.step_weights() is None and not pp.first_order
    seen.clear()
    T.meta_train(pp, mk.tasks.Sinusoid(), iterations=9, meta_batch=2, progress=False, epoch_length=3, start=7,
                 generator=torch.Generator().manual_seed(0))
    assert seen == [2, 2]
