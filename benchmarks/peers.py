"""The other ways to run EmbeddingGemma, behind the harness's Encoder interface (optional extras).

- sentence-transformers (torch), the reference implementation, on the same device and thread count;
- llama.cpp through llama-cpp-python, on a GGUF converted with the Dense modules (benchmarks/README.md).

Each peer embeds the same texts with the same task prompts, so its cosine to the reference is
measured beside its speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from measure import Encoder, Job  # by path, from peer_child.py: this package is never imported here


class PeerEncoder(Encoder):
    kernel = ""

    def describe(self) -> dict:
        return {"kernel": self.kernel}


class SentenceTransformersEncoder(PeerEncoder):
    name = "sentence-transformers"

    def __init__(self, job: Job):
        import sentence_transformers
        import torch

        torch.set_num_threads(job.threads)
        device = "cpu"
        if job.device == "gpu":
            device = "mps" if torch.backends.mps.is_available() else "cuda"
        self.model = sentence_transformers.SentenceTransformer(job.model, device=device, local_files_only=True)
        self.version = f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}"
        self.kernel = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"

    def encode(self, texts, prompt_name, dim):
        out = self.model.encode(texts, prompt_name=prompt_name, batch_size=max(1, len(texts)), convert_to_numpy=True)
        return _truncate(np.asarray(out, np.float32), dim)


class LlamaCppEncoder(PeerEncoder):
    """llama.cpp adds no task prompts: the MLX folder's are prepended here, as sentence-transformers does."""

    name = "llama.cpp"

    def __init__(self, job: Job):
        import llama_cpp

        self.llama = llama_cpp.Llama(
            model_path=job.model, embedding=True, n_ctx=2048, n_batch=2048, n_ubatch=2048,
            n_threads=job.threads, n_threads_batch=job.threads, n_gpu_layers=-1 if job.device == "gpu" else 0, verbose=False,
        )
        self.prompts = json.loads(Path(job.texts_file).read_text(encoding="utf-8"))["prompts"]
        self.version = f"llama-cpp-python {llama_cpp.__version__}"
        self.kernel = f"llama.cpp ({job.threads} threads)"

    def encode(self, texts, prompt_name, dim):
        prefix = self.prompts[prompt_name]
        out = np.array(self.llama.embed([prefix + t for t in texts], normalize=False, truncate=True), np.float32)
        return _truncate(out, dim)


def _truncate(x: np.ndarray, dim: int) -> np.ndarray:
    x = x[:, :dim]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make(job: Job) -> Encoder:
    if job.runner == "sentence-transformers":
        return SentenceTransformersEncoder(job)
    if job.runner == "llama.cpp":
        return LlamaCppEncoder(job)
    raise ValueError(f"unknown runner {job.runner!r}")
