"""bench/fewshot_protocol.py: its plain-PyTorch references compute what the metakern
learners compute, and its quick mode runs end to end and writes its CSV."""
import csv
import importlib.util
import os

import pytest
import torch

import metakern as mk
from metakern.backends import available
from metakern import train as T

from helpers import assert_close, seeded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
    spec = importlib.util.spec_from_file_location("fewshot_protocol", os.path.join(ROOT, "bench", "fewshot_protocol.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


P = _load()


@pytest.mark.parametrize("row", list(P.ROWS))
def test_plain_reference_matches_metakern(request, row):
    # float64, so the two differ by rounding only: a relative 1e-9 leaves room for the
    # different order of the sums (batch norm, convolutions) and nothing else.
    g = seeded(request)
    algo, model = P.ROWS[row]
    ways, shots, queries, tasks, steps = 3, 2, 3, 3, 2
    # a float32 value: the learners store their rate in the model's dtype before .double()
    lr = (0.1 + 0.3 * torch.rand((), generator=g)).item()
    images = torch.rand(8 * 6, 1, 28, 28, generator=g)
    labels = torch.arange(8).repeat_interleave(6)
    task = mk.tasks.FewShotClassification(images, labels, ways, shots, queries)
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (), generator=g)))
    extra = dict(hidden=(16, 8)) if model == "mlp" else dict(filters=4)
    learner = T.build_learner(algo, task, model=model, inner_lr=lr, steps=steps, backend="auto", **extra).double()
    plain = P.PlainLearner(algo, model, learner, lr, steps).double()
    xs, ys, xq, yq = task.sample(tasks, g, dtype=torch.float64)

    loss = learner.meta_loss(xs, ys, xq, yq)
    loss.backward()
    ref = plain.meta_step(xs, ys, xq, yq)
    assert abs(loss.item() - ref) <= 1e-9 * abs(ref)
    pairs = [(f"param {i}", a, b) for i, (b, a) in enumerate(P._pairs(learner, plain))]
    assert all(a.grad is not None and b.grad is not None for _, a, b in pairs)
    # relative to the largest meta-gradient entry: the convolution biases' gradients are
    # zero up to rounding (batch norm cancels them)
    top = max(b.grad.abs().max().item() for _, _, b in pairs)
    for name, a, b in pairs:
        assert_close(a.grad, b.grad, 1e-9, name=f"{row} meta-gradient of {name}", floor=top)

    with torch.no_grad():  # as meta_test calls them, with more steps than in training
        mine = learner.adapt(xs, ys, steps=steps + 1)(xq)
        theirs = plain.adapt(xs, ys, steps=steps + 1)(xq)
    assert_close(mine, theirs, 1e-9, name=f"{row} adapted logits")


def test_row_iterations_parsing():
    assert P.parse_row_iterations("maml-conv4=50, anil-conv4@20w1s=20") == {
        ("maml-conv4", None): 50, ("anil-conv4", "20w1s"): 20}
    assert P.parse_row_iterations("") == {}
    for bad in ("maml=5", "maml-mlp@7w=5", "maml-mlp", "maml-mlp=x"):
        with pytest.raises(ValueError, match="--row-iterations"):
            P.parse_row_iterations(bad)
    with pytest.raises(ValueError, match="--rows"):
        P.main(["--rows", "maml-mlp,reptile-mlp"])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache folder for the drawn characters of the quick runs (drawn once)."""
    return str(tmp_path_factory.mktemp("kanji-cache"))


def test_lockstep_prints_the_differences(cache, capsys):
    P.main(["--quick", "--no-progress", "--cache-dir", cache, "--settings", "5w1s", "--rows", "fomaml-mlp",
            "--lockstep", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert [ln for ln in lines if "lockstep" in ln] == ["5w1s fomaml-mlp: lockstep, reference synchronised",
                                                       "5w1s fomaml-mlp: lockstep, reference free"]
    diffs = [float(ln.split("gradient rel. diff")[1].split()[0]) for ln in lines if "gradient rel. diff" in ln]
    assert len(diffs) == 4 and diffs[0] < 1e-4  # float32 rounding at the same parameters


def test_quick_run_writes_csv(cache, tmp_path):
    out = tmp_path / "quick.csv"
    # one setting keeps it near half a minute on 2 cores; the others differ by numbers only
    # cpp as in the real run: "auto" would take Triton, which conftest puts in its (slow) interpreter
    backend = "torch" if available()["cpp"] else "cpp"
    P.main(["--quick", "--no-progress", "--cache-dir", cache, "--settings", "5w1s", "--backend", backend,
            "--out", str(out)])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    # every row: the untrained baseline, metakern and the plain reference, each
    # meta-tested after the training steps and after the paper's test steps
    want = {(s, *P.ROWS[r], i, str(k)) for s, (*_, train_k, test_k) in [("5w1s", P.SETTINGS["5w1s"])] for r in P.ROWS
            for i in ("untrained", *P.IMPLS) for k in (train_k, test_k)}
    assert len(rows) == len(want)
    assert {(r["setting"], r["algo"], r["model"], r["impl"], r["test_steps"]) for r in rows} == want
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and r["test_tasks"] == "5"
        assert r["iterations"] == ("0" if r["impl"] == "untrained" else "2")
    lines = P.table(str(out)).splitlines()
    assert len(lines) == 2 + len(want) // 3 and "| 5w1s | MAML-Conv4 (4 filters) | 2 | 10 |" in lines[-1]


# ----------------------------------------------------------------------------- --task wordnet


@pytest.fixture
def wn_root(tmp_path):
    """A small synthetic WordNet database in the real format (tests/test_wordnet.py's writer)."""
    pytest.importorskip("sklearn")
    from test_wordnet import write_wordnet

    root = tmp_path / "dict"
    write_wordnet(str(root))
    return str(root)


@pytest.mark.parametrize("row", list(P.WORDNET_ROWS))
def test_wordnet_plain_reference_matches_metakern(request, wn_root, tmp_path, row):
    # float64 on TF-IDF features of the synthetic glosses: the two differ by rounding only
    g = seeded(request)
    algo, model = P.WORDNET_ROWS[row]
    steps = 2
    lr = (0.1 + 0.3 * torch.rand((), generator=g)).item()
    task = mk.tasks.wordnet(wn_root, features="tfidf", ways=3, shots=2, queries=3, cache_dir=str(tmp_path / "c"),
                            progress=False)
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (), generator=g)))
    learner = T.build_learner(algo, task, hidden=(16,), inner_lr=lr, steps=steps, backend="auto").double()
    plain = P.PlainLearner(algo, model, learner, lr, steps).double()
    xs, ys, xq, yq = task.sample(3, g, dtype=torch.float64)
    loss = learner.meta_loss(xs, ys, xq, yq)
    loss.backward()
    ref = plain.meta_step(xs, ys, xq, yq)
    assert abs(loss.item() - ref) <= 1e-9 * abs(ref)
    pairs = [(f"param {i}", a, b) for i, (b, a) in enumerate(P._pairs(learner, plain))]
    top = max(b.grad.abs().max().item() for _, _, b in pairs)
    for name, a, b in pairs:
        assert_close(a.grad, b.grad, 1e-9, name=f"{row} meta-gradient of {name}", floor=top)
    with torch.no_grad():
        assert_close(learner.adapt(xs, ys, steps=steps + 1)(xq), plain.adapt(xs, ys, steps=steps + 1)(xq), 1e-9,
                     name=f"{row} adapted logits")


def test_wordnet_quick_run_writes_csv(wn_root, tmp_path, monkeypatch):
    # the synthetic database's test split has 2 classes, so a 2-way setting
    monkeypatch.setattr(P, "WORDNET_SETTINGS", {"2w1s": (2, 1, 4, 0.4, 1, 3)})
    out = tmp_path / "wn.csv"
    P.main(["--task", "wordnet", "--data-root", wn_root, "--features", "tfidf", "--cache-dir", str(tmp_path / "c"),
            "--iterations", "3", "--test-tasks", "10", "--queries", "3", "--no-progress", "--out", str(out)])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    ncm = [r for r in rows if r["impl"] == "prototype"]
    assert len(ncm) == 1 and ncm[0]["test_tasks"] == "10" and ncm[0]["features"] == "tfidf"
    got = {(r["algo"], r["impl"], r["test_steps"]): r for r in rows if r["impl"] != "prototype"}
    assert set(got) == {(*P.WORDNET_ROWS[r][:1], i, k) for r in P.WORDNET_ROWS
                        for i in ("untrained", *P.IMPLS) for k in ("1", "3")}
    # the same initialisation and batches: after 3 float32 iterations the two agree on every test task
    for (algo, impl, k), r in got.items():
        if impl == "metakern":
            assert r["accuracy"] == got[(algo, "plain", k)]["accuracy"], (algo, k)
    lines = P.table(str(out)).splitlines()
    assert len(lines) == 2 + len(P.WORDNET_ROWS) * 2 and "nearest class mean" in lines[0]
    assert lines[2].startswith("| lexname, tfidf | 2w1s | MAML-MLP | 3 | 1 |")
    with pytest.raises(ValueError, match="--task wordnet"):
        P.main(["--labels", "domain"])
