"""Image data for few-shot classification: image features in FewShotClassification,
Omniglot read from a folder (a small synthetic one, made here in the archives' layout),
KanjiVG characters drawn by simulated writers (small subsets), the caches, the splits
and the errors."""
import os
import sys
import warnings
from importlib import metadata

import numpy as np
import pytest
import torch

import metakern.datasets as D
from metakern.tasks import FewShotClassification, kanji, make_task, omniglot

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageDraw  # noqa: E402


def gen(seed):
    return torch.Generator().manual_seed(seed)


def has_kanji_deps():
    try:
        import svg.path  # noqa: F401

        metadata.distribution("kanjivg")
        return True
    except (ImportError, metadata.PackageNotFoundError):
        return False


needs_kanjivg = pytest.mark.skipif(not has_kanji_deps(), reason='needs pip install "metakern[data]"')


# ----------------------------------------------------------------------------- image features


def test_uint8_images_are_sampled_in_unit_range():
    g = gen(11)
    images = torch.randint(0, 256, (60, 1, 5, 7), generator=g, dtype=torch.uint8)
    labels = torch.arange(60) % 6
    task = FewShotClassification(images, labels, ways=3, shots=2, queries=4)
    assert task.input_shape == (1, 5, 7) and task.in_features == 35
    sup, qry, _ = task.sample_indices(5, gen(1))
    xs, ys, xq, yq = task.sample(5, gen(1), dtype=torch.float64)
    assert xs.shape == (5, 6, 1, 5, 7) and xq.shape == (5, 12, 1, 5, 7) and ys.shape == (5, 6)
    # float64 ground truth: value / 255
    torch.testing.assert_close(xs, images[sup].double() / 255, rtol=0, atol=0)
    torch.testing.assert_close(xq, images[qry].double() / 255, rtol=0, atol=0)
    assert xs.min() >= 0 and xs.max() <= 1


def test_uint8_same_values_for_any_dtype():
    images = torch.arange(256, dtype=torch.uint8).repeat(4)[:, None]  # every value, 4 classes of 256
    labels = torch.arange(4).repeat_interleave(256)
    task = FewShotClassification(images, labels, ways=4, shots=128, queries=128)
    a = task.sample(1, gen(0), dtype=torch.float64)
    b = task.sample(1, gen(0), dtype=torch.float32)
    for u, v in zip(a, b):
        assert torch.equal(u.to(v.dtype), v)  # k / 255 in float32 is the float64 quotient rounded once


def test_float_image_features_and_split():
    f = torch.randn(40, 3, 4, 4, dtype=torch.float64)
    labels = torch.arange(40) // 4  # 10 classes
    task = FewShotClassification(f, labels, ways=2, shots=1, queries=3)
    train, test = task.split(6)
    assert train.input_shape == (3, 4, 4) and not set(train.classes) & set(test.classes)
    sup, qry, cls = test.sample_indices(3, gen(2))
    xs, ys, xq, yq = test.sample(3, gen(2), dtype=torch.float64)
    assert torch.equal(xs, f[sup]) and torch.equal(xq, f[qry])
    assert torch.equal(labels[sup], cls.gather(1, ys)) and torch.equal(labels[qry], cls.gather(1, yq))
    assert "input_shape=(3, 4, 4)" in repr(test)


@pytest.mark.parametrize("features,exc,word", [
    (torch.zeros(10, 3, dtype=torch.int64), TypeError, "uint8"),
    (torch.zeros(10, 0), ValueError, "features"),
    (torch.zeros(10, 1, 0, 4, dtype=torch.uint8), ValueError, "empty"),
])
def test_bad_image_features(features, exc, word):
    with pytest.raises(exc, match=word):
        FewShotClassification(features, torch.arange(10) % 2, 2, 1, 1)


def test_class_members_for_many_classes():
    """The members of each class, found in one sort: every index of that class, ascending, then -1."""
    g = gen(4)
    ids = torch.randperm(1000, generator=g)[:300] - 500  # arbitrary ids, negative ones too
    labels = ids[torch.randint(0, 300, (5000,), generator=g)]
    task = FewShotClassification(torch.zeros(5000, 1), labels, ways=2, shots=1, queries=1,
                                 classes=[c for c in ids.tolist() if (labels == c).sum() >= 2])
    for k, c in enumerate(task.classes):
        expect = torch.nonzero(labels == c).flatten()
        n = len(expect)
        assert torch.equal(task._members[k, :n], expect) and (task._members[k, n:] == -1).all()


# ----------------------------------------------------------------------------- a synthetic Omniglot


def draw_character(path, char_seed, drawer, size=20):
    """A PNG as Omniglot's: mode "1", black ink on white; the character is a seeded
    polyline, each drawer moves it by up to a pixel."""
    r = np.random.default_rng([char_seed])
    pts = r.uniform(3, size - 3, (4, 2))
    jitter = np.random.default_rng([char_seed, drawer]).integers(-1, 2, 2)
    img = Image.new("1", (size, size), 1)
    ImageDraw.Draw(img).line([tuple(p) for p in (pts + jitter).tolist()], fill=0, width=2)
    img.save(path)


def make_omniglot(root, sets=(("images_background", ("Alpha", "Beta", "Gamma")), ("images_evaluation", ("Delta", "Eps"))),
                  characters=5, drawings=6, size=20):
    k = 0
    for s, alphabets in sets:
        for a in alphabets:
            for c in range(characters):
                folder = os.path.join(root, s, a, f"character{c + 1:02d}") if s else os.path.join(root, a, f"character{c + 1:02d}")
                os.makedirs(folder)
                k += 1
                for d in range(drawings):
                    draw_character(os.path.join(folder, f"{k:04d}_{d + 1:02d}.png"), k, d, size)
    return root


@pytest.fixture(scope="module")
def omni_root(tmp_path_factory):
    return str(make_omniglot(str(tmp_path_factory.mktemp("omniglot"))))  # 25 characters, 6 drawings each


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


def test_omniglot_episodes(omni_root, cache):
    task = omniglot(omni_root, ways=3, shots=2, queries=3, cache_dir=cache, progress=False)
    T = 7
    xs, ys, xq, yq = task.sample(T, gen(0))
    assert xs.shape == (T, 6, 1, 28, 28) and xq.shape == (T, 9, 1, 28, 28) and xs.dtype == torch.float32
    assert ys.shape == (T, 6) and yq.shape == (T, 9) and ys.dtype == torch.int64
    assert 0 <= ys.min() and ys.max() < 3 and 0 <= yq.min() and yq.max() < 3
    assert 0 <= xs.min() and xs.max() <= 1 and xs.max() > 0.5
    assert xs.mean() < 0.5  # ink = 1 on a background of 0: mostly background
    assert task.in_features == 784 and task.out_features == 3 and task.loss == "cross_entropy"
    sup, qry, _ = task.sample_indices(T, gen(0))
    for t in range(T):
        used = torch.cat([sup[t], qry[t]])
        assert used.unique().numel() == used.numel()  # support and query disjoint
    a, b = task.sample(T, gen(5)), task.sample(T, gen(5))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], task.sample(T, gen(6))[0])


def test_omniglot_splits_are_disjoint_and_deterministic(omni_root, cache, tmp_path):
    C = 25
    sizes = D.split_sizes(C)
    assert sizes == {"train": 16, "val": 2, "test": 7}
    pools = {s: omniglot(omni_root, ways=1, queries=1, split=s, cache_dir=cache, progress=False, rotations=False).classes
             for s in D.SPLITS}
    assert {s: len(p) for s, p in pools.items()} == sizes
    assert set(pools["train"]) | set(pools["val"]) | set(pools["test"]) == set(range(C))
    assert not (set(pools["train"]) & set(pools["val"])) and not (set(pools["train"]) & set(pools["test"]))
    assert not set(pools["val"]) & set(pools["test"])
    # the split follows the names only: the same characters in another layout split the same way
    flat = make_omniglot(str(tmp_path / "flat"), sets=(("", ("Alpha", "Beta", "Gamma", "Delta", "Eps")),))
    data, data_flat = (D.load_omniglot(r, cache_dir=cache, progress=False) for r in (omni_root, flat))
    for s in D.SPLITS:
        assert {data.names[i] for i in D.split_classes(data.names, s)} == \
               {data_flat.names[i] for i in D.split_classes(data_flat.names, s)}


def test_split_of_the_full_omniglot_is_the_papers():
    names = [f"alphabet{a:02d}/character{c:02d}" for a in range(50) for c in range(33)][:1623]
    parts = {s: D.split_classes(names, s) for s in D.SPLITS}
    assert {s: len(p) for s, p in parts.items()} == D.OMNIGLOT_SPLIT == {"train": 1100, "val": 100, "test": 423}
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(1623))
    assert D.split_classes(list(reversed(names)), "val") == sorted(1622 - i for i in parts["val"])  # order-free
    assert D.split_sizes(6703) == {"train": 4543, "val": 413, "test": 1747}


def test_full_size_omniglot_folder(tmp_path, cache):
    """1623 characters (two tiny drawings each): the paper's split, rotations on train only."""
    root = tmp_path / "full"
    k = 0
    for a in range(50):
        for c in range(33 if a < 49 else 1623 - 49 * 33):
            folder = root / ("images_background" if a < 30 else "images_evaluation") / f"A{a:02d}" / f"c{c:02d}"
            folder.mkdir(parents=True)
            k += 1
            for d in range(2):
                Image.new("1", (4, 4), 1).save(folder / f"{k:04d}_{d}.png")
    train = omniglot(root, ways=5, queries=1, image_size=4, cache_dir=cache, progress=False)
    val = omniglot(root, ways=5, queries=1, split="val", image_size=4, cache_dir=cache, progress=False)
    test = omniglot(root, ways=5, queries=1, split="test", image_size=4, cache_dir=cache, progress=False)
    assert len(train.classes) == 4 * 1100 and len(val.classes) == 100 and len(test.classes) == 423
    assert len({c % 1623 for c in train.classes}) == 1100


def test_omniglot_rotations(omni_root, cache):
    data = D.load_omniglot(omni_root, cache_dir=cache, progress=False)
    C = len(data.names)
    plain = omniglot(omni_root, ways=2, queries=1, rotations=False, cache_dir=cache, progress=False)
    rot = omniglot(omni_root, ways=2, queries=1, cache_dir=cache, progress=False)
    assert len(rot.classes) == 4 * len(plain.classes) == 64
    assert set(rot.classes) == {r * C + c for r in range(4) for c in plain.classes}
    for c in plain.classes[:3]:
        upright = rot.features[rot.labels == c]
        assert torch.equal(upright, data.images[data.labels == c].unsqueeze(1))
        for r in range(1, 4):
            assert torch.equal(rot.features[rot.labels == r * C + c], torch.rot90(upright, r, dims=(-2, -1)))
    # val and test stay upright whatever rotations says
    for s in ("val", "test"):
        a = omniglot(omni_root, ways=1, queries=1, split=s, cache_dir=cache, progress=False)
        b = omniglot(omni_root, ways=1, queries=1, split=s, rotations=False, cache_dir=cache, progress=False)
        assert a.classes == b.classes and max(a.classes) < C


def test_omniglot_decoding(tmp_path, cache):
    """At the PNG's own size the image is exact: ink (black) = 255, background = 0."""
    root = tmp_path / "exact"
    pattern = np.random.default_rng(3).random((3, 2, 9, 9)) < 0.3  # 3 characters, 2 drawings, ink where True
    for c in range(3):
        folder = root / "Alpha" / f"c{c}"
        folder.mkdir(parents=True)
        for d in range(2):
            Image.fromarray(np.where(pattern[c, d], 0, 255).astype(np.uint8)).convert("1").save(folder / f"{d}.png")
    data = D.load_omniglot(root, image_size=9, cache_dir=cache, progress=False)
    assert data.names == ("Alpha/c0", "Alpha/c1", "Alpha/c2") and data.images.dtype == torch.uint8
    assert torch.equal(data.labels, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(data.images, torch.from_numpy(pattern.reshape(6, 9, 9).astype(np.uint8) * 255))
    small = D.load_omniglot(root, image_size=5, cache_dir=cache, progress=False)
    assert small.images.shape == (6, 5, 5)
    # resizing keeps the ink: the mean intensity stays close to the fraction of ink
    frac = torch.from_numpy(pattern.reshape(6, -1).mean(1))
    assert (small.images.double().mean((1, 2)) / 255 - frac).abs().max() < 0.15


def test_omniglot_cache(omni_root, tmp_path, monkeypatch):
    cache = tmp_path / "c1"
    first = D.load_omniglot(omni_root, cache_dir=cache, progress=False)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith("omniglot-28px-25c-") and files[0].endswith(".pt")

    def no_decoding(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(D, "_decode_omniglot", no_decoding)
    second = D.load_omniglot(omni_root, cache_dir=cache, progress=False)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.names == second.names
    # the environment variable and XDG_CACHE_HOME choose the folder when cache_dir is not given
    monkeypatch.setenv("METAKERN_CACHE_DIR", str(cache))
    assert D.resolve_cache_dir() == str(cache)
    D.load_omniglot(omni_root, progress=False)  # found there: no decoding
    monkeypatch.delenv("METAKERN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.resolve_cache_dir() == str(tmp_path / "xdg" / "metakern")
    assert D.resolve_cache_dir(tmp_path / "x") == str(tmp_path / "x")


def test_omniglot_cache_follows_the_files(tmp_path):
    root = make_omniglot(str(tmp_path / "o"), sets=(("", ("Alpha",)),), characters=3, drawings=2)
    cache = tmp_path / "c"
    a = D.load_omniglot(root, cache_dir=cache, progress=False)
    png = os.path.join(root, "Alpha", "character01", sorted(os.listdir(os.path.join(root, "Alpha", "character01")))[0])
    Image.new("1", (20, 20), 0).save(png)  # all ink now
    os.utime(png, ns=(1, 1))
    b = D.load_omniglot(root, cache_dir=cache, progress=False)
    assert len(os.listdir(cache)) == 2 and b.images[0].min() == 255 and not torch.equal(a.images[0], b.images[0])
    D.load_omniglot(root, image_size=14, cache_dir=cache, progress=False)
    assert len(os.listdir(cache)) == 3  # keyed on image_size too


def test_broken_cache_file_is_made_again(omni_root, tmp_path):
    cache = tmp_path / "c"
    a = D.load_omniglot(omni_root, cache_dir=cache, progress=False)
    path = cache / os.listdir(cache)[0]
    path.write_bytes(b"not a tensor file")
    with pytest.warns(UserWarning, match="unreadable cache file"):
        b = D.load_omniglot(omni_root, cache_dir=cache, progress=False)
    assert torch.equal(a.images, b.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.load_omniglot(omni_root, cache_dir=cache, progress=False)  # rewritten: no warning now


def test_unwritable_cache_warns_and_still_loads(omni_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="could not write the cache"):
        data = D.load_omniglot(omni_root, cache_dir=blocker / "sub", progress=False)
    assert data.images.shape == (150, 28, 28)


def test_make_task_omniglot(omni_root, cache):
    task = make_task("omniglot", root=omni_root, ways=2, shots=1, queries=2, split="test", cache_dir=cache,
                     progress=False)
    assert isinstance(task, FewShotClassification) and len(task.classes) == 7
    with pytest.raises(TypeError, match="root"):
        make_task("omniglot")


# ----------------------------------------------------------------------------- bad folders and arguments


def bad_layouts(tmp_path):
    t = tmp_path
    (t / "empty").mkdir()
    (t / "zips").mkdir()
    (t / "zips" / "images_background.zip").write_bytes(b"")
    (t / "afile.png").write_bytes(b"")
    make_omniglot(str(t / "nochar"), sets=(("", ("Alpha",)),), characters=2, drawings=1)
    os.makedirs(t / "nochar" / "Alpha" / "character03")  # a character folder without drawings
    make_omniglot(str(t / "mixed"), sets=(("", ("Alpha",)),), characters=2, drawings=1)
    os.makedirs(t / "mixed" / "notes" / "x")
    make_omniglot(str(t / "dup"), sets=(("a", ("Alpha",)), ("b", ("Alpha",))), characters=2, drawings=1)
    make_omniglot(str(t / "badset"), sets=(("images_background", ("Alpha",)),), characters=2, drawings=1)
    os.makedirs(t / "badset" / "images_evaluation" / "Beta")  # an alphabet with no characters
    make_omniglot(str(t / "corrupt"), sets=(("", ("Alpha",)),), characters=3, drawings=1)
    (t / "corrupt" / "Alpha" / "character02" / "9999_99.png").write_bytes(b"not a png")
    make_omniglot(str(t / "two"), sets=(("", ("Alpha",)),), characters=2, drawings=2)
    return [
        (t / "missing", FileNotFoundError, ["missing", "<alphabet>/<character>/*.png", "brendenlake/omniglot"]),
        (t / "afile.png", ValueError, ["afile.png", "not a folder"]),
        (t / "empty", ValueError, ["empty", "no sub-folders", "images_background.zip"]),
        (t / "zips", ValueError, ["unzip"]),
        (t / "nochar", ValueError, ["character03", "no .png"]),
        (t / "mixed", ValueError, ["notes", "mixes"]),
        (t / "dup", ValueError, ["Alpha/character01", "one copy"]),
        (t / "badset", ValueError, ["Beta", "<character>/*.png"]),
        (t / "corrupt", ValueError, ["9999_99.png", "cannot read"]),
        (t / "two", ValueError, ["2 character(s)", "at least 3"]),
    ]


def test_bad_folders(tmp_path):
    for root, exc, words in bad_layouts(tmp_path):
        with pytest.raises(exc) as info:
            omniglot(root, ways=1, cache_dir=tmp_path / "cache", progress=False)
        for w in words:
            assert w in str(info.value), (root, str(info.value))


@pytest.mark.parametrize("kw,exc,word", [
    (dict(root=3), TypeError, "root"),
    (dict(image_size=0), ValueError, "image_size"),
    (dict(image_size=28.0), TypeError, "image_size"),
    (dict(split="validation"), ValueError, "split"),
    (dict(split=1), TypeError, "split"),
    (dict(rotations="yes"), TypeError, "rotations"),
    (dict(ways=0), ValueError, "ways"),
    (dict(ways=100), ValueError, "ways"),
    (dict(shots=4, queries=3), ValueError, "shots + queries"),
    (dict(queries=1.5), TypeError, "queries"),
    (dict(cache_dir=5), TypeError, "cache_dir"),
    (dict(progress=1), TypeError, "progress"),
])
def test_omniglot_bad_arguments(omni_root, cache, kw, exc, word):
    args = dict(root=omni_root, cache_dir=cache, progress=False)
    args.update(kw)
    with pytest.raises(exc) as info:
        omniglot(**args)
    assert word in str(info.value)


# ----------------------------------------------------------------------------- kanji

SOME = "一二三人口日月山川木水火土金大小上下中手"  # 20 characters


@needs_kanjivg
def test_kanji_episodes(cache):
    task = kanji(ways=3, shots=2, queries=4, characters=SOME, drawings=8, cache_dir=cache, progress=False)
    xs, ys, xq, yq = task.sample(4, gen(0))
    assert xs.shape == (4, 6, 1, 28, 28) and xq.shape == (4, 12, 1, 28, 28)
    assert ys.max() < 3 and yq.max() < 3 and xs.dtype == torch.float32
    assert 0 <= xs.min() and xs.max() <= 1 and xs.max() > 0.9 and xs.mean() < 0.4
    assert len(task.classes) == D.split_sizes(20)["train"] == 14
    img = kanji(characters=SOME, drawings=2, image_size=14, ways=1, shots=1, queries=1, cache_dir=cache,
                progress=False)
    assert img.input_shape == (1, 14, 14)


@needs_kanjivg
def test_kanji_is_deterministic_from_the_seed(tmp_path):
    kw = dict(characters="日月火水木", drawings=4, progress=False)
    a = D.render_kanji(cache_dir=tmp_path / "a", **kw)
    b = D.render_kanji(cache_dir=tmp_path / "b", **kw)  # drawn again, elsewhere
    assert torch.equal(a.images, b.images) and a.names == b.names == tuple(sorted("日月火水木"))
    c = D.render_kanji(cache_dir=tmp_path / "b", seed=1, **kw)
    assert not torch.equal(a.images, c.images)
    # a character's drawings do not depend on what else is drawn, nor on the processes
    d = D.render_kanji(characters="火山川", drawings=4, cache_dir=tmp_path / "d", workers=2, progress=False)
    i, j = a.names.index("火"), d.names.index("火")
    assert torch.equal(a.images[a.labels == i], d.images[d.labels == j])
    e = D.render_kanji(cache_dir=tmp_path / "e", workers=2, **kw)
    assert torch.equal(a.images, e.images)


@needs_kanjivg
def test_kanji_writers_differ_but_keep_the_character(cache):
    data = D.render_kanji(characters=SOME, drawings=20, cache_dir=cache, progress=False)
    x = data.images.double().flatten(1) / 255  # [400, 784]
    per_char = x.view(20, 20, -1)
    for c in range(20):
        d = torch.cdist(per_char[c], per_char[c])
        assert (d + torch.eye(20) > 0).all()  # every drawing differs from every other of its character
    # each drawing is closer to some other drawing of its own character than to those of the others
    # (blurred, so that small shifts count little) for most drawings: the noise keeps the characters
    # apart. 92% with these seeds; chance is 5%
    blur = torch.nn.functional.avg_pool2d(data.images.double()[:, None] / 255, 5, 1, 2).flatten(1)
    d = torch.cdist(blur, blur) + torch.eye(400) * 1e9
    nearest = data.labels[d.argmin(1)]
    assert (nearest == data.labels).double().mean() > 0.8


@needs_kanjivg
def test_kanji_splits(cache):
    chosen = D.kanji_characters()[::100]
    data = D.render_kanji(characters=chosen, drawings=2, image_size=8, cache_dir=cache, progress=False)
    pools = {s: kanji(characters=chosen, drawings=2, image_size=8, ways=1, shots=1, queries=1, split=s,
                      cache_dir=cache, progress=False).classes for s in D.SPLITS}
    n = len(chosen)
    assert {s: len(p) for s, p in pools.items()} == D.split_sizes(n)
    assert sorted(pools["train"] + pools["val"] + pools["test"]) == list(range(n))
    # the split depends on the characters, not on the drawing seed
    other = kanji(characters=chosen, drawings=2, image_size=8, ways=1, queries=1, seed=3, split="val",
                  cache_dir=cache, progress=False)
    assert other.classes == pools["val"]
    assert [data.names[i] for i in pools["test"]] == [data.names[i] for i in D.split_classes(data.names, "test")]


@needs_kanjivg
def test_kanji_cache_is_keyed_on_the_parameters(tmp_path, monkeypatch):
    cache = tmp_path / "c"
    kw = dict(characters="日月火", drawings=2, image_size=12, progress=False, cache_dir=cache)
    first = D.render_kanji(**kw)
    assert len(os.listdir(cache)) == 1
    for change in (dict(seed=1), dict(drawings=3), dict(image_size=10), dict(characters="日月水")):
        D.render_kanji(**{**kw, **change})
    assert len(os.listdir(cache)) == 5
    D.render_kanji(**{**kw, "workers": 2})  # the processes change nothing: same file
    assert len(os.listdir(cache)) == 5

    def no_drawing(*a, **k):
        raise AssertionError("drew again instead of reading the cache")

    monkeypatch.setattr(D, "_render_character", no_drawing)
    again = D.render_kanji(**kw)
    assert torch.equal(first.images, again.images) and first.names == again.names
    with pytest.raises(AssertionError, match="drew again"):
        D.render_kanji(**{**kw, "seed": 2})


@needs_kanjivg
def test_kanji_limit_spreads_over_the_code_points(cache):
    every = D.kanji_characters()
    assert len(every) == len(set(every)) > 6000 and list(every) == sorted(every)
    assert "一" in every and "あ" in every
    data = D.render_kanji(limit=5, drawings=1, image_size=8, cache_dir=cache, progress=False)
    assert data.names == tuple(every[(i * len(every)) // 5] for i in range(5))


@needs_kanjivg
def test_make_task_kanji(cache):
    task = make_task("kanji", characters=SOME, drawings=3, ways=2, shots=1, queries=2, split="test",
                     cache_dir=cache, progress=False)
    assert isinstance(task, FewShotClassification) and len(task.classes) == D.split_sizes(20)["test"]


def test_kanji_without_its_packages(monkeypatch, cache):
    monkeypatch.setitem(sys.modules, "svg", None)  # makes `import svg.path` raise ImportError
    monkeypatch.setitem(sys.modules, "svg.path", None)
    if has_kanjivg_package():
        with pytest.raises(ImportError, match=r'pip install "metakern\[data\]"') as info:
            kanji(characters="日月火", cache_dir=cache, progress=False)
        assert "svg.path" in str(info.value)
    monkeypatch.undo()

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ImportError, match=r'kanjivg.*pip install "metakern\[data\]"'):
        kanji(cache_dir=cache, progress=False)
    with pytest.raises(ImportError, match="kanjivg"):
        make_task("kanji", cache_dir=cache, progress=False)


def test_image_data_without_pillow(monkeypatch, omni_root, tmp_path):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r'Pillow.*pip install "metakern\[data\]"'):
        omniglot(omni_root, cache_dir=tmp_path / "fresh", progress=False)


def has_kanjivg_package():
    try:
        metadata.distribution("kanjivg")
        return True
    except metadata.PackageNotFoundError:
        return False


@needs_kanjivg
@pytest.mark.parametrize("kw,exc,word", [
    (dict(characters="日€"), ValueError, "€"),
    (dict(characters="日日月火"), ValueError, "more than once"),
    (dict(characters=["日", "月火"]), TypeError, "characters[1]"),
    (dict(characters=5), TypeError, "characters"),
    (dict(characters=""), ValueError, "characters is empty"),
    (dict(characters="日月"), ValueError, "at least 3"),
    (dict(limit=2), ValueError, "limit"),
    (dict(limit=3.0), TypeError, "limit"),
    (dict(drawings=0), ValueError, "drawings"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(image_size="28"), TypeError, "image_size"),
    (dict(workers=0), ValueError, "workers"),
    (dict(split="dev"), ValueError, "split"),
    (dict(ways=30), ValueError, "ways"),
    (dict(drawings=3, ways=2, shots=2, queries=2), ValueError, "shots + queries"),
])
def test_kanji_bad_arguments(cache, kw, exc, word):
    args = dict(characters="日月火水木山川", drawings=4, queries=2, cache_dir=cache, progress=False)
    args.update(kw)
    with pytest.raises(exc) as info:
        kanji(**args)
    assert word in str(info.value)
