"""Text for few-shot classification: WordNet glosses (:mod:`metakern.text.wordnet`)
encoded once into frozen sentence features and cached.

Feature sources, one small module each, with ``NAME``, ``DIM``, ``model_id()`` (what
the features depend on, a cache key; raises ImportError naming the extra when a
package is missing) and ``encode(texts, progress) -> float32 [len(texts), DIM]``:

* ``"minilm"`` (:mod:`.minilm`): all-MiniLM-L6-v2, 384-d (Apache-2.0);
* ``"glove"`` (:mod:`.glove`): mean GloVe 6B 50-d word vectors (PDDL 1.0);
* ``"tfidf"`` (:mod:`.tfidf`): scikit-learn's TF-IDF, 1024-d, no weights.

All of them: ``pip install "metakern[text]"``. ``metakern.tasks.wordnet`` builds the
episode sampler on :func:`load_wordnet`.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Tuple

import torch

from .. import datasets
from .._validate import check_bool, check_int
from . import wordnet

__all__ = ["FEATURES", "LABELS", "TextClasses", "encoder", "load_wordnet"]

FEATURES = ("minilm", "glove", "tfidf")
LABELS = ("lexname", "domain")
TEXT_EXTRA = 'pip install "metakern[text]"'
# Bump when the parsing or the selection of glosses changes what a cache file holds.
_WORDNET_FORMAT = 1


@dataclass(frozen=True)
class TextClasses:
    """Encoded texts of labelled classes: ``features`` float32 ``[M, D]``, ``labels``
    int64 ``[M]`` (indices into ``names``), ``names`` one str per class."""

    features: torch.Tensor
    labels: torch.Tensor
    names: Tuple[str, ...]


def _choice(name, value, options):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {options}, got {type(value).__name__}")
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def encoder(features: str):
    """The module of feature source ``features`` (one of :data:`FEATURES`), its packages
    checked: a missing one raises ImportError naming ``pip install "metakern[text]"``."""
    _choice("features", features, FEATURES)
    mod = importlib.import_module(f"{__name__}.{features}")
    mod.model_id()  # raises with the install hint
    return mod


def _classes(synsets, labels, min_per_class):
    """``(names, [[synset keys of class c], ...])`` of the classes with at least
    ``min_per_class`` glosses, in file order within each class."""
    members = {}
    for s in synsets.values():
        c = wordnet.LEXNAMES[s.lexfile] if labels == "lexname" else s.domain
        if c is not None and s.gloss:
            members.setdefault(c, []).append(s.key)
    if labels == "domain":  # a domain's name: its synset's first word, unique with its key
        words = {}
        for key in members:
            words.setdefault(synsets[key].word if key in synsets else key, []).append(key)
        rename = {k: (w if len(ks) == 1 else f"{w} ({k})") for w, ks in words.items() for k in ks}
        members = {rename[k]: v for k, v in members.items()}
    kept = sorted((c for c, v in members.items() if len(v) >= min_per_class), key=str)
    return kept, [members[c] for c in kept]


def _cap(keys, per_class):
    """At most ``per_class`` of ``keys``, evenly spaced (all when there are fewer)."""
    if per_class is None or len(keys) <= per_class:
        return list(keys)
    return [keys[(i * len(keys)) // per_class] for i in range(per_class)]


def load_wordnet(root=None, labels: str = "lexname", features: str = "minilm", per_class=200,
                 min_per_class: int = 20, cache_dir=None, progress: bool = True) -> TextClasses:
    """WordNet glosses as feature vectors, one class per lexicographer file
    (``labels="lexname"``: 45 classes, ``noun.animal``, ``verb.motion``, ...) or per
    topic domain (``labels="domain"``: the target of each synset's first ``;c``
    pointer: ``law``, ``military``, ...; 71 with at least 20 glosses).

    ``root``: the folder of WordNet 3.0's ``data.noun``, ``data.verb``, ``data.adj``,
    ``data.adv`` (``None``: :func:`metakern.text.wordnet.find_root`). Classes with fewer
    than ``min_per_class`` glosses are left out; at most ``per_class`` glosses of each
    class are kept, evenly spaced in file order (``None``: all), which keeps the first
    encoding to minutes with MiniLM on 2 cores (45 x 200 glosses: about 90 s). The
    encoded set is cached in :func:`metakern.datasets.resolve_cache_dir` under a name keyed
    on the labels, the features and their model, the caps and the size and modification
    time of the four files, so a second load reads one file.
    """
    labels = _choice("labels", labels, LABELS)
    enc = encoder(features)
    if per_class is not None:
        per_class = check_int("per_class", per_class, 1)
    min_per_class = check_int("min_per_class", min_per_class, 1)
    check_bool("progress", progress)
    folder = datasets.resolve_cache_dir(cache_dir)
    root = wordnet.find_root(root)
    stats = []
    for name in wordnet.DATA_FILES:
        st = os.stat(os.path.join(root, name))
        stats.append([name, st.st_size, st.st_mtime_ns])
    key = {"format": _WORDNET_FORMAT, "labels": labels, "features": enc.model_id(), "per_class": per_class,
           "min_per_class": min_per_class, "files": stats}
    digest = datasets._digest(key)
    path = os.path.join(folder, f"wordnet-{labels}-{features}-{digest[:16]}.pt")
    blob = datasets._read_blob(path, digest)
    if blob is not None and {"features", "labels", "names"} <= set(blob):
        return TextClasses(blob["features"], blob["labels"], tuple(blob["names"]))
    synsets = wordnet.read_synsets(root)
    names, members = _classes(synsets, labels, min_per_class)
    if len(names) < 3:
        raise ValueError(f"WordNet root {root} has {len(names)} {labels} class(es) with at least {min_per_class} "
                         "glosses; the train / val / test splits need at least 3: lower min_per_class or use the "
                         "full WordNet 3.0 database")
    keys, ids = [], []
    for c, m in enumerate(members):
        chosen = _cap(m, per_class)
        keys += chosen
        ids += [c] * len(chosen)
    feats = enc.encode([synsets[k].gloss for k in keys], progress=progress).to(torch.float32).contiguous()
    data = TextClasses(feats, torch.tensor(ids, dtype=torch.int64), tuple(names))
    datasets._write_blob(path, digest, {**key, "root": root}, {"features": data.features, "labels": data.labels,
                                                                "names": list(data.names)})
    return data
