"""TF-IDF features of texts with scikit-learn: no weights to download.

The vocabulary and its inverse document frequencies come from the texts encoded
together (no labels are used): the ``dim`` most frequent words, English stop words
left out, sublinear term frequency, each row scaled to unit length.
"""
from __future__ import annotations

import numpy as np
import torch

NAME = "tfidf"
DIM = 1024


def _sklearn():
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError as e:
        raise ImportError('features="tfidf" needs scikit-learn, which is not installed: pip install "metakern[text]" '
                          "(or pip install scikit-learn)") from e
    return TfidfVectorizer


def model_id() -> str:
    """What the features depend on besides the texts (a cache key)."""
    _sklearn()
    import sklearn

    return f"tfidf-{DIM}-sklearn{sklearn.__version__}"


def encode(texts, progress: bool = True) -> torch.Tensor:
    """float32 ``[len(texts), DIM]`` (fewer columns if the texts have fewer words)."""
    vec = _sklearn()(max_features=DIM, stop_words="english", sublinear_tf=True, dtype=np.float32)
    return torch.from_numpy(vec.fit_transform(list(texts)).toarray())
