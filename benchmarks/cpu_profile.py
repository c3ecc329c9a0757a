"""Where a forward pass spends its time on this device, per kind of operation (issue 4's CPU profile).

    .venv/bin/python benchmarks/cpu_profile.py MODEL [MODEL ...] [--st-model HF_FOLDER] [--threads N]
                                           [--texts 32] [--tokens 128] [--output FILE.jsonl]

Embeds ``--texts`` documents of ``--tokens`` tokens in one call (32 x 128: the workload of issue 4's
speed bar; four passes of the CPU's default 1,024-token budget) and one 18-token query through each MLX model folder, and, with
``--st-model``, through sentence-transformers under torch's profiler on the same texts and threads.

For MLX every operation of a kind is evaluated on its own and timed (matmuls with their weight reading
and dequantizing, attention, RoPE, norms, the GELU, the embedding lookup); ``other`` is the rest of
the instrumented pass (residual adds, reshapes, pooling). Evaluating each operation alone costs a
little overlap, so the uninstrumented time of the same pass (best of ``--repeats``) is recorded beside
it.
One JSON record per runner and workload.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import mlx_embedgemma
import mlx.core as mx
import mlx.nn as nn
from mlx_embedgemma import mapped, model as network, native_layers, precision
from mlx_embedgemma.benchmarks import fingerprint
from mlx_embedgemma.benchmarks.harness import QUERY
from mlx_embedgemma.benchmarks.memory import emit, make_texts


def best_of(fn, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return min(seconds)


class Timers:
    def __init__(self):
        self.ms: dict[str, float] = defaultdict(float)
        self._floats: dict[tuple[int, int], mx.array] = {}

    def wrap(self, kind: str, fn):
        def timed(*args, **kwargs):
            mx.eval([a for a in args if isinstance(a, mx.array)])
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            mx.eval(out)
            self.ms[kind] += (time.perf_counter() - start) * 1000
            return out

        return timed


@contextmanager
def instrumented(timers: Timers):
    """Every operation of a kind timed on its own, by patching the network's building blocks."""
    patches = [
        (network.Attend, "__call__", timers.wrap("attention", network.Attend.__call__)),
        (network.GeluGate, "__call__", timers.wrap("gelu", network.GeluGate.__call__)),
        # the native plan runs each encoder block in one call: its time is one kind, "block"
        (native_layers.NativeBlock, "__call__", timers.wrap("block", native_layers.NativeBlock.__call__)),
        (network.RMSNorm, "__call__", timers.wrap("norm", network.RMSNorm.__call__)),
        (nn.RoPE, "__call__", timers.wrap("rope", nn.RoPE.__call__)),
        (nn.Embedding, "__call__", timers.wrap("embedding", nn.Embedding.__call__)),
        (nn.QuantizedEmbedding, "__call__", timers.wrap("embedding", nn.QuantizedEmbedding.__call__)),
        (mapped.MappedEmbedding, "__call__", timers.wrap("embedding", mapped.MappedEmbedding.__call__)),
    ]
    for cls in (nn.Linear, nn.QuantizedLinear, native_layers.NativeLinear):
        patches.append((cls, "__call__", timers.wrap("linear", cls.__dict__.get("__call__", cls.__call__))))
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patches]
    try:
        for owner, name, fn in patches:
            setattr(owner, name, fn)
        yield
    finally:
        for owner, name, fn in saved:
            if fn is None:
                delattr(owner, name)
            else:
                setattr(owner, name, fn)


def profile_mlx(path: Path, workloads: dict, repeats: int, threads: int) -> list[dict]:
    model = mlx_embedgemma.load(path)
    records = []
    for name, (texts, prompt, tokens) in workloads.items():
        run = lambda: model.encode(texts, prompt_name=prompt)
        run()  # warm-up: first-touch of the weights, allocator cache
        total = best_of(run, repeats)
        timers = Timers()
        with instrumented(timers):
            start = time.perf_counter()
            run()
            instrumented_ms = (time.perf_counter() - start) * 1000
        ms = dict(timers.ms)
        ms["other"] = max(0.0, instrumented_ms - sum(ms.values()))
        records.append({
            "runner": "mlx-embedgemma", "variant": model.config.get("recipe") or precision.describe(model.config),
            "workload": name, "tokens": tokens, "total_ms": total * 1000,
            "instrumented_ms": instrumented_ms, "components_ms": ms,
            "fingerprint": fingerprint.fingerprint(mx.default_device(), threads, path, precision.describe(model.config), model.plan),
        })
    return records


# torch operators by kind; self time is summed per kind, the rest is "other".
TORCH_KINDS = {
    "linear": ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_softmax", "aten::_safe_softmax"),
    "gelu": ("aten::gelu", "aten::tanh"),
}


def profile_st(path: Path, workloads: dict, repeats: int, threads: int) -> list[dict]:
    import sentence_transformers
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    st = sentence_transformers.SentenceTransformer(str(path), device="cpu", local_files_only=True)
    records = []
    for name, (texts, prompt, tokens) in workloads.items():
        run = lambda: st.encode(texts, prompt_name=prompt, batch_size=len(texts))
        run()
        total = best_of(run, repeats)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            run()
            instrumented_ms = (time.perf_counter() - start) * 1000
        ms: dict[str, float] = defaultdict(float)
        for event in prof.key_averages():
            kind = next((k for k, ops in TORCH_KINDS.items() if event.key in ops), None)
            if kind:
                ms[kind] += event.self_cpu_time_total / 1000
        ms["other"] = max(0.0, instrumented_ms - sum(ms.values()))
        records.append({
            "runner": "sentence-transformers", "variant": "float32", "workload": name,
            "tokens": tokens,
            "total_ms": total * 1000, "instrumented_ms": instrumented_ms, "components_ms": dict(ms),
            "runner_version": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
            "fingerprint": fingerprint.fingerprint(mx.Device(mx.cpu), threads, path, "float32"),
        })
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--st-model", type=Path)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    os.environ["MLX_EMBEDGEMMA_THREADS"] = str(args.threads)
    mx.set_default_device(mx.cpu)

    first = mlx_embedgemma.load(args.models[0])
    docs = make_texts(first, args.texts, args.tokens, seed=args.tokens)
    workloads = {
        f"docs {args.texts}x{args.tokens}": (docs, "document", sum(first.count_tokens(docs, "document"))),
        "query": ([QUERY], "query", first.count_tokens([QUERY], "query")[0]),
    }
    del first
    records = [r for path in args.models for r in profile_mlx(path, workloads, args.repeats, args.threads)]
    if args.st_model:
        records += profile_st(args.st_model, workloads, args.repeats, args.threads)
    for record in records:
        emit({"kind": "profile", "device": "cpu", "threads": args.threads, **record}, args.output)
    print_table(records)


def print_table(records: list[dict]) -> None:
    kinds = ["block", "linear", "attention", "norm", "rope", "gelu", "embedding", "other"]
    print(f"\n{'runner':<24}{'workload':<14}{'total':>8}{'instr.':>8}" + "".join(f"{k:>10}" for k in kinds))
    for r in records:
        c = r["components_ms"]
        print(f"{r['runner'] + ' ' + r['variant']:<24.24}{r['workload']:<14}{r['total_ms']:>8.0f}{r['instrumented_ms']:>8.0f}"
              + "".join(f"{c.get(k, 0):>10.0f}" for k in kinds))


if __name__ == "__main__":
    main()
