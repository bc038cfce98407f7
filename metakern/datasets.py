"""Handwritten-character images for few-shot classification: Omniglot read from a
folder, and KanjiVG characters drawn here by simulated writers.

Both loaders return an :class:`ImageClasses`: ``uint8`` images ``[M, S, S]`` with
ink 255 on a background of 0 (divide by 255 for ink = 1 in ``[0, 1]``), an int64
class index per image, and the class names. Both cache their result as one tensor
file (:func:`resolve_cache_dir` says where), so a second load reads that file instead of
decoding or drawing again. :func:`split_classes` gives the disjoint train / val /
test class splits; ``metakern.tasks.omniglot`` and ``metakern.tasks.kanji`` turn
all this into episode samplers.

Needs Pillow (both) and, for the kanji, ``svg.path`` and the ``kanjivg`` package:
``pip install "metakern[data]"``. They are imported when first used.

KanjiVG (https://kanjivg.tagaini.net) is copyright (C) Ulrich Apel and released
under the Creative Commons Attribution-Share Alike 3.0 licence; the images that
:func:`render_kanji` draws are derived from it and fall under the same licence.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ._validate import check_bool, check_int

__all__ = ["ImageClasses", "SPLITS", "OMNIGLOT_SPLIT", "resolve_cache_dir", "split_sizes", "split_classes",
           "load_omniglot", "kanji_characters", "render_kanji"]

CACHE_ENV = "METAKERN_CACHE_DIR"
SPLITS = ("train", "val", "test")
# The MAML paper's split of Omniglot's 1623 characters: 1200 for meta-training, of
# which its reference code holds 100 out for validation, and 423 for meta-testing.
OMNIGLOT_SPLIT = {"train": 1100, "val": 100, "test": 423}
_OMNIGLOT_TOTAL = sum(OMNIGLOT_SPLIT.values())
# Bump when the decoding or the drawing changes what a cache file would hold.
_OMNIGLOT_FORMAT = 1
_KANJI_FORMAT = 1

_DATA_EXTRA = 'pip install "metakern[data]"'
_OMNIGLOT_LAYOUT = ("expected <root>/<alphabet>/<character>/*.png as the Omniglot archives unpack "
                    "(e.g. images_background/Alphabet_of_the_Magi/character01/0709_01.png), or a folder "
                    "holding several such folders (images_background/, images_evaluation/); get the archives "
                    "images_background.zip and images_evaluation.zip from github.com/brendenlake/omniglot "
                    "(folder python/) and unzip them")


@dataclass(frozen=True)
class ImageClasses:
    """Images of labelled classes: ``images`` uint8 ``[M, S, S]`` (ink 255),
    ``labels`` int64 ``[M]`` (indices into ``names``), ``names`` one str per class."""

    images: torch.Tensor
    labels: torch.Tensor
    names: Tuple[str, ...]

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


# ----------------------------------------------------------------------------- splits


def split_sizes(n_classes: int, proportions=None) -> dict:
    """How many of ``n_classes`` go to each split: ``proportions`` ``(train, val, test)``
    weights, by default those of the MAML paper's Omniglot split (1100 / 100 / 423 of
    1623, so exactly that split for 1623 classes). Each split gets at least one class."""
    n = check_int("n_classes", n_classes, 3)
    if proportions is None:
        proportions = tuple(OMNIGLOT_SPLIT[s] for s in SPLITS)
    if (not isinstance(proportions, (tuple, list)) or len(proportions) != 3
            or not all(isinstance(p, (int, float)) and not isinstance(p, bool) and p > 0 for p in proportions)):
        raise ValueError(f"proportions must be three positive numbers (train, val, test), got {proportions!r}")
    total = sum(proportions)
    val = min(max(1, round(n * proportions[1] / total)), n - 2)
    test = min(max(1, round(n * proportions[2] / total)), n - 1 - val)
    train = n - val - test
    return {"train": train, "val": val, "test": test}


def _check_split(split) -> str:
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, one of {SPLITS}, got {type(split).__name__}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def split_classes(names: Sequence[str], split: str, proportions=None) -> list:
    """The indices (ascending) of the classes of ``names`` that belong to ``split``.

    The classes are ordered by the SHA-256 of their names, and the first
    ``split_sizes(len(names), proportions)["train"]`` go to ``"train"``, the next ones to ``"val"``,
    the rest to ``"test"``. The splits are disjoint and cover every class; they
    depend only on the names, not on their order, a seed or a library version.
    """
    split = _check_split(split)
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError("names has repeated class names; each class needs its own name")
    sizes = split_sizes(len(names), proportions)
    order = sorted(range(len(names)), key=lambda i: hashlib.sha256(names[i].encode("utf-8")).hexdigest())
    start = {"train": 0, "val": sizes["train"], "test": sizes["train"] + sizes["val"]}[split]
    return sorted(order[start:start + sizes[split]])


# ----------------------------------------------------------------------------- cache


def resolve_cache_dir(cache_dir=None) -> str:
    """The folder for cached data sets: ``cache_dir`` when given, else the environment
    variable ``METAKERN_CACHE_DIR``, else ``$XDG_CACHE_HOME/metakern``, else
    ``~/.cache/metakern``. It is created when a file is first written there."""
    if cache_dir is not None:
        if not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(f"cache_dir must be a path (str or os.PathLike) or None, got {type(cache_dir).__name__}")
        return os.path.abspath(os.fspath(cache_dir))
    env = os.environ.get(CACHE_ENV)
    if env:
        return os.path.abspath(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = xdg if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "metakern")


def _digest(key) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def _read_blob(path: str, digest: str) -> Optional[dict]:
    """The dict a cache file at ``path`` holds, or ``None`` when there is none, it is
    unreadable or it was written for another ``digest`` (the caller makes it again)."""
    if not os.path.isfile(path):
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("digest") != digest:
            raise ValueError("it was written for other parameters")
        return blob
    except Exception as e:  # a truncated or foreign file: make it again
        warnings.warn(f"ignoring the unreadable cache file {path} ({e}); making it again", stacklevel=4)
        return None


def _read_cache(path: str, digest: str) -> Optional[ImageClasses]:
    blob = _read_blob(path, digest)
    try:
        return None if blob is None else ImageClasses(blob["images"], blob["labels"], tuple(blob["names"]))
    except KeyError as e:
        warnings.warn(f"ignoring the cache file {path} (it has no {e}); making it again", stacklevel=3)
        return None


def _write_blob(path: str, digest: str, key, entries: dict) -> None:
    """Write ``entries`` (tensors, lists, str) with ``digest`` and ``key`` to ``path``,
    atomically; a folder that cannot be written only warns."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save({"digest": digest, "key": key, **entries}, tmp)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
    except OSError as e:
        warnings.warn(f"could not write the cache file {path} ({e}); the data set is made again next time. "
                      f"Pass cache_dir= or set {CACHE_ENV} to a writable folder", stacklevel=4)
        try:
            os.remove(tmp)
        except OSError:
            pass


def _write_cache(path: str, digest: str, data: ImageClasses, key) -> None:
    _write_blob(path, digest, key, {"images": data.images, "labels": data.labels, "names": list(data.names)})


def _progress(total, desc, unit, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)


def _pillow():
    try:
        from PIL import Image, ImageDraw
    except ImportError as e:
        raise ImportError(f"metakern's image data sets need Pillow, which is not installed: {_DATA_EXTRA} "
                          "(or pip install pillow)") from e
    return Image, ImageDraw


# ----------------------------------------------------------------------------- Omniglot


def _visible_dirs(path):
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _pngs(path):
    return sorted(e.name for e in os.scandir(path) if e.is_file() and e.name.lower().endswith(".png"))


def _is_alphabet(path) -> bool:
    """An alphabet folder: its sub-folders (characters) hold PNG files."""
    return any(_pngs(os.path.join(path, c)) for c in _visible_dirs(path))


def _omniglot_characters(root: str):
    """``[(name "alphabet/character", [png paths relative to root])]`` in sorted order,
    with the layout checked."""
    if not os.path.exists(root):
        raise FileNotFoundError(f"Omniglot root {root} does not exist; {_OMNIGLOT_LAYOUT}")
    if not os.path.isdir(root):
        raise ValueError(f"Omniglot root {root} is a file, not a folder; {_OMNIGLOT_LAYOUT}")
    subdirs = _visible_dirs(root)
    if not subdirs:
        zips = sorted(f for f in os.listdir(root) if f.lower().endswith(".zip"))
        hint = f" (it has {', '.join(zips)}: unzip them there)" if zips else ""
        raise ValueError(f"Omniglot root {root} has no sub-folders{hint}; {_OMNIGLOT_LAYOUT}")
    alphabets = [d for d in subdirs if _is_alphabet(os.path.join(root, d))]
    if alphabets:  # root is one set: <root>/<alphabet>/<character>/*.png
        if len(alphabets) != len(subdirs):
            odd = sorted(set(subdirs) - set(alphabets))[:5]
            raise ValueError(f"Omniglot root {root} mixes alphabet folders ({alphabets[0]}, ...) with folders "
                             f"that hold no <character>/*.png: {odd}; remove those, {_OMNIGLOT_LAYOUT}")
        sets = [""]
    else:  # root holds sets: <root>/<set>/<alphabet>/<character>/*.png
        for d in subdirs:
            inner = _visible_dirs(os.path.join(root, d))
            bad = [a for a in inner if not _is_alphabet(os.path.join(root, d, a))]
            if not inner or bad:
                where = os.path.join(root, d, bad[0]) if bad else os.path.join(root, d)
                raise ValueError(f"Omniglot folder {where} holds no <character>/*.png folders; {_OMNIGLOT_LAYOUT}")
        sets = subdirs
    out, seen = [], {}
    for s in sets:
        for a in _visible_dirs(os.path.join(root, s)):
            for c in _visible_dirs(os.path.join(root, s, a)):
                rel = os.path.join(s, a, c) if s else os.path.join(a, c)
                files = _pngs(os.path.join(root, rel))
                if not files:
                    raise ValueError(f"Omniglot character folder {os.path.join(root, rel)} has no .png file; "
                                     f"every <alphabet>/<character>/ folder needs its drawings, {_OMNIGLOT_LAYOUT}")
                name = f"{a}/{c}"
                if name in seen:
                    raise ValueError(f"Omniglot character {name} is in {os.path.join(root, seen[name])} and in "
                                     f"{os.path.join(root, rel)}; keep one copy of each alphabet (e.g. leave out "
                                     "images_background_small1/ beside images_background/)")
                seen[name] = rel
                out.append((name, [os.path.join(rel, f) for f in files]))
    return out


def _decode_omniglot(path: str, size: int) -> np.ndarray:
    """One Omniglot PNG as uint8 ``[size, size]``, ink 255: grayscale, inverted (the
    archives draw black ink on white), resized with Pillow's Lanczos filter."""
    Image, _ = _pillow()
    try:
        with Image.open(path) as im:
            im = im.convert("L")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.LANCZOS)
            a = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the Omniglot image {path}: {e}; every <character>/*.png must be an image "
                         "file (replace or delete it)") from None
    return 255 - a


def load_omniglot(root, image_size: int = 28, cache_dir=None, progress: bool = True) -> ImageClasses:
    """Every Omniglot character under ``root``, one class per character.

    ``root`` is laid out as the official archives unpack, ``<root>/<alphabet>/<character>/*.png``
    (e.g. ``images_background/``), or is a folder holding several such folders
    (``images_background/``, ``images_evaluation/``), which are merged. Files other than
    ``*.png`` and hidden folders are ignored. Class names are ``"alphabet/character"``,
    sorted; the images are grayscale, inverted so that ink is 255, and resized to
    ``image_size`` with Lanczos. The decoded set is cached in :func:`resolve_cache_dir` under a
    name keyed on ``image_size`` and on the relative path, size and modification time of
    every PNG, so that changing a file decodes again.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path (str or os.PathLike) to the Omniglot folder, got {type(root).__name__}")
    size = check_int("image_size", image_size, 1)
    check_bool("progress", progress)
    root = os.path.abspath(os.fspath(root))
    folder = resolve_cache_dir(cache_dir)
    chars = _omniglot_characters(root)
    listing = []
    for name, files in chars:
        for f in files:
            st = os.stat(os.path.join(root, f))
            listing.append([f, st.st_size, st.st_mtime_ns])
    key = {"format": _OMNIGLOT_FORMAT, "image_size": size, "files": listing}
    digest = _digest(key)
    path = os.path.join(folder, f"omniglot-{size}px-{len(chars)}c-{digest[:16]}.pt")
    cached = _read_cache(path, digest)
    if cached is not None:
        return cached
    _pillow()  # the install hint before any work
    images = np.empty((len(listing), size, size), dtype=np.uint8)
    labels = np.empty(len(listing), dtype=np.int64)
    i = 0
    with _progress(len(listing), "decoding Omniglot", "image", progress) as bar:
        for c, (_, files) in enumerate(chars):
            for f in files:
                images[i] = _decode_omniglot(os.path.join(root, f), size)
                labels[i] = c
                i += 1
                bar.update(1)
    data = ImageClasses(torch.from_numpy(images), torch.from_numpy(labels), tuple(n for n, _ in chars))
    _write_cache(path, digest, data, {"format": _OMNIGLOT_FORMAT, "image_size": size, "root": root})
    return data


# ----------------------------------------------------------------------------- KanjiVG


def _kanjivg():
    """``(version, {character: svg path})`` of the installed ``kanjivg`` package: its
    main files ``kanji/XXXXX.svg`` (hex code point), without the variants ``XXXXX-name.svg``."""
    from importlib import metadata

    try:
        dist = metadata.distribution("kanjivg")
    except metadata.PackageNotFoundError as e:
        raise ImportError(f"metakern.tasks.kanji needs the kanjivg package (the KanjiVG stroke data), which is not "
                          f"installed: {_DATA_EXTRA} (or pip install kanjivg svg.path pillow)") from e
    folder = os.path.abspath(str(dist.locate_file("kanji")))
    found = {}
    for f in dist.files or ():
        if len(f.parts) == 2 and f.parts[0] == "kanji" and f.suffix == ".svg" and "-" not in f.stem:
            try:
                found[chr(int(f.stem, 16))] = os.path.join(folder, f.name)
            except ValueError:
                continue
    if not found:
        raise ImportError(f"the installed kanjivg package {dist.version} has no kanji/XXXXX.svg files; "
                          f"reinstall it: pip install --force-reinstall kanjivg")
    return dist.version, dict(sorted(found.items()))


def kanji_characters() -> Tuple[str, ...]:
    """Every character that KanjiVG's main files draw, by code point (6,703 in kanjivg
    20260714: 6,431 CJK ideographs, 184 kana, 15 CJK radicals, 62 Latin letters and
    digits, 11 punctuation marks); the variant files (``XXXXX-Kaisho.svg``, ...) are left out."""
    return tuple(_kanjivg()[1])


def _svg_path():
    try:
        import svg.path as svg_path
    except ImportError as e:
        raise ImportError(f"metakern.tasks.kanji needs svg.path to read the KanjiVG strokes, which is not "
                          f"installed: {_DATA_EXTRA} (or pip install svg.path)") from e
    return svg_path


_SVG_PATH_TAG = "{http://www.w3.org/2000/svg}path"


def _strokes(path: str):
    """The strokes of one KanjiVG file as polylines in its 109x109 frame, centred:
    ``(points [P, 2] float64, stroke index [P], position along the stroke [P] in [0, 1],
    end of each stroke in points)``. Cubic curves are sampled about every 2 units."""
    import xml.etree.ElementTree as ET

    sp = _svg_path()
    strokes = []
    for el in ET.parse(path).getroot().iter(_SVG_PATH_TAG):
        pieces = []
        for seg in sp.parse_path(el.get("d", "")):
            if isinstance(seg, sp.Move):
                continue
            if isinstance(seg, sp.CubicBezier):
                c = np.array([seg.start, seg.control1, seg.control2, seg.end])
                n = max(2, math.ceil(float(np.abs(np.diff(c)).sum()) / 2.0))
                t = np.linspace(0.0, 1.0, n + 1)[:, None]
                z = np.hstack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3]) @ c
            else:  # lines, quadratic curves and arcs: rare in KanjiVG
                z = np.array([seg.point(float(t)) for t in np.linspace(0.0, 1.0, 9)])
            pieces.append(z if not pieces else z[1:])
        if pieces:
            z = np.concatenate(pieces)
            strokes.append(np.stack([z.real, z.imag], 1))
    if not strokes:
        raise ValueError(f"the KanjiVG file {path} has no stroke paths")
    points = np.concatenate(strokes) - 54.5
    stroke = np.concatenate([np.full(len(s), i) for i, s in enumerate(strokes)])
    along = np.concatenate([np.linspace(0.0, 1.0, len(s)) for s in strokes])
    return points, stroke, along, np.cumsum([len(s) for s in strokes])


def _writer_style(seed: int, writer: int):
    """What writer ``writer`` keeps across characters: ``(line width in KanjiVG units,
    slant (shear), aspect ratio)``."""
    r = np.random.default_rng([seed, 0, writer])
    return r.uniform(2.5, 4.5), r.normal(0.0, 0.12), math.exp(r.normal(0.0, 0.08))


def _draw(strokes, rng, style, size: int):
    """One drawing of a character, uint8 ``[size, size]``, ink 255.

    Noise, from ``rng``: each stroke shifted (sd 1.2 units of 109) and bent by a
    half-to-two-period sine across its length (sd 0.8); the whole character rotated
    (sd 0.08 rad), scaled by U[0.8, 1], slanted and stretched by the writer's style,
    moved (sd 3) and warped by a smooth field of three random sines (wavelength about
    150 units, amplitude sd 1.5); the line width is the writer's times U[0.85, 1.15].
    Drawn with round joints and ends at ``ss`` times the size (``ss`` at least 2,
    about 112 pixels) and reduced by averaging ``ss x ss`` blocks, which antialiases.
    """
    Image, ImageDraw = _pillow()
    points, stroke, along, ends = strokes
    width, slant, aspect = style
    n = len(ends)
    shift = rng.normal(0.0, 1.2, (n, 2))
    bend = rng.normal(0.0, 0.8, (n, 2))
    freq = rng.uniform(0.5, 2.0, n)
    phase = rng.uniform(0.0, 2 * math.pi, n)
    angle, tx, ty = rng.normal(0.0, 0.08), rng.normal(0.0, 3.0), rng.normal(0.0, 3.0)
    scale, thick = rng.uniform(0.8, 1.0), width * rng.uniform(0.85, 1.15)
    wave = rng.normal(0.0, 1.0 / 30, (3, 2))
    wave_phase = rng.uniform(0.0, 2 * math.pi, 3)
    wave_amp = rng.normal(0.0, 1.5, (3, 2))
    ca, sa = math.cos(angle), math.sin(angle)
    A = np.array([[ca, -sa], [sa, ca]]) @ np.array([[1.0, slant], [0.0, 1.0]]) @ np.diag([scale * aspect, scale / aspect])
    q = points + shift[stroke] + bend[stroke] * np.sin(math.pi * freq[stroke] * along + phase[stroke])[:, None]
    q = q @ A.T + (tx, ty)
    q = q + np.sin(q @ wave.T + wave_phase) @ wave_amp
    ss = max(2, math.ceil(112 / size))
    canvas = size * ss
    q = q * (canvas / 109.0) + canvas / 2.0
    img = Image.new("L", (canvas, canvas), 0)
    pen = ImageDraw.Draw(img)
    w = max(1, round(thick * canvas / 109.0))
    r = w / 2 - 0.5
    flat = q.tolist()
    start = 0
    for end in ends.tolist():
        line = [tuple(p) for p in flat[start:end]]
        pen.line(line, fill=255, width=w, joint="curve")
        for x, y in (line[0], line[-1]):
            pen.ellipse((x - r, y - r, x + r, y + r), fill=255)
        start = end
    return np.asarray(img.reduce(ss), dtype=np.uint8)


def _render_character(job):
    """All drawings of one character: uint8 ``[drawings, size, size]``. Drawing ``w``
    comes from the seeds ``(seed, writer w)`` and ``(seed, code point, w)`` alone, so a
    character looks the same whatever else is rendered, in any order or process."""
    char, path, seed, drawings, size = job
    strokes = _strokes(path)
    out = np.empty((drawings, size, size), dtype=np.uint8)
    for w in range(drawings):
        out[w] = _draw(strokes, np.random.default_rng([seed, 1, ord(char), w]), _writer_style(seed, w), size)
    return out


def _select_characters(available, characters, limit):
    if characters is None:
        chosen = list(available)
    else:
        if isinstance(characters, str):
            chosen = list(characters)
        elif hasattr(characters, "__iter__") and not isinstance(characters, bytes):
            chosen = list(characters)
            for i, c in enumerate(chosen):
                if not isinstance(c, str) or len(c) != 1:
                    raise TypeError(f"characters[{i}] must be a single character (str of length 1), got {c!r}")
        else:
            raise TypeError(f"characters must be a str or a sequence of single characters, or None for all, "
                            f"got {type(characters).__name__}")
        if not chosen:
            raise ValueError("characters is empty; pass at least 3 characters, or None for all")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"characters lists {sorted({c for c in chosen if chosen.count(c) > 1})} more than once; "
                             "list each character once")
        missing = [c for c in chosen if c not in available]
        if missing:
            raise ValueError(f"KanjiVG has no main file for {missing[:10]} (code points "
                             f"{[f'{ord(c):05x}' for c in missing[:10]]}); choose from "
                             "metakern.datasets.kanji_characters()")
        chosen = sorted(chosen)
    if limit is not None:
        limit = check_int("limit", limit, 3)
        if limit < len(chosen):  # evenly spaced over the code points, so kana and kanji both appear
            chosen = [chosen[(i * len(chosen)) // limit] for i in range(limit)]
    if len(chosen) < 3:
        raise ValueError(f"{len(chosen)} character(s) selected; the train / val / test splits need at least 3")
    return chosen


def render_kanji(image_size: int = 28, drawings: int = 20, seed: int = 0, characters=None, limit=None,
                 cache_dir=None, progress: bool = True, workers=None) -> ImageClasses:
    """KanjiVG characters drawn ``drawings`` times each by simulated writers, one class per character.

    Drawing ``w`` of every character is by writer ``w``, who keeps a line width, a slant
    and an aspect ratio across characters; each drawing adds its own noise (stroke
    shifts and bends, rotation, scale, translation, a smooth warp; see ``_draw``). All of
    it is deterministic from ``seed``. The strokes are KanjiVG's SVG paths, read with
    ``svg.path`` and drawn with Pillow.

    ``characters`` (a str or a sequence of single characters) restricts the set to
    those; ``limit`` keeps that many, evenly spaced by code point (for quick tests).
    By default all of :func:`kanji_characters`: 6,703 classes. ``workers`` processes
    draw in parallel (default: 2 when the CPU has them and there are at least 200
    characters, else 1; on systems without ``fork``, always 1); the result does not
    depend on it. The drawn set is cached in :func:`resolve_cache_dir` under a name keyed on
    every parameter that changes it (image size, drawings, seed, the characters, the
    kanjivg version), so the full set is drawn once: about 80 s of CPU time at 28
    pixels (two processes share it), a 102 MB file.

    KanjiVG is copyright (C) Ulrich Apel, licensed CC BY-SA 3.0 (https://kanjivg.tagaini.net).
    """
    size = check_int("image_size", image_size, 1)
    drawings = check_int("drawings", drawings, 1)
    seed = check_int("seed", seed, 0)
    check_bool("progress", progress)
    if workers is not None:
        workers = check_int("workers", workers, 1)
    folder = resolve_cache_dir(cache_dir)
    version, files = _kanjivg()
    chosen = _select_characters(files, characters, limit)
    key = {"format": _KANJI_FORMAT, "kanjivg": version, "image_size": size, "drawings": drawings, "seed": seed,
           "characters": "".join(chosen)}
    digest = _digest(key)
    path = os.path.join(folder, f"kanji-{size}px-{drawings}x{len(chosen)}-seed{seed}-{digest[:12]}.pt")
    cached = _read_cache(path, digest)
    if cached is not None:
        return cached
    _svg_path(), _pillow()  # the install hints before any work
    jobs = [(c, files[c], seed, drawings, size) for c in chosen]
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(jobs) >= 200 else 1
    images = np.empty((len(jobs), drawings, size, size), dtype=np.uint8)
    with _progress(len(jobs), "drawing kanji", "character", progress) as bar:
        for i, out in enumerate(_map(_render_character, jobs, workers)):
            images[i] = out
            bar.update(1)
    labels = torch.arange(len(jobs), dtype=torch.int64).repeat_interleave(drawings)
    data = ImageClasses(torch.from_numpy(images.reshape(-1, size, size)), labels, tuple(chosen))
    _write_cache(path, digest, data, key)
    return data


def _map(fn, jobs, workers):
    """``fn`` over ``jobs`` in order, in ``workers`` forked processes (1: here)."""
    import multiprocessing as mp

    if workers <= 1 or len(jobs) < 2 or "fork" not in mp.get_all_start_methods():
        yield from map(fn, jobs)
        return
    with mp.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(fn, jobs, chunksize=8)
