"""The native CPU matmul alone: GFLOP/s per instruction set, width and token count, on one layer's matrices.

    python benchmarks/kernel_speed.py [--threads 1,2] [--bits 4,8] [--output FILE]

One layer of EmbeddingGemma (q, k, v, o, gate, up, down: 5.3 M weights, group 64), random weights, times
taken as the best of several runs of all seven products. Used to choose the register blocking (ROWS x
TOKENS of the dot-product path, MR x NR of the outer-product path in _native/kernels_impl.h) and to see
what each instruction set gives on a machine; an instruction set with integer dot products is measured
with int8, int16 and float32 activations.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_embedgemma import native
from mlx_embedgemma.benchmarks.fingerprint import fingerprint

SHAPES = [(768, 768), (256, 768), (256, 768), (768, 768), (1152, 768), (1152, 768), (768, 1152)]  # (N, K)
TOKENS = (1, 18, 128, 1024)


def layer(bits: int, rng) -> list[tuple]:
    mats = []
    for N, K in SHAPES:
        codes, scales, biases = mx.quantize(mx.array(rng.standard_normal((N, K)).astype(np.float32)), group_size=64, bits=bits)
        mats.append((np.array(codes), np.array(scales.astype(mx.float16)).view(np.uint16),
                     np.array(biases.astype(mx.float16)).view(np.uint16), N, K))
    return mats


def run(mats, isa: str, M: int, bits: int, activations: int, repeats: int, rng) -> float:
    native.select_isa(isa)
    xs = [rng.standard_normal((M, K)).astype(np.float32) for *_, N, K in mats]
    outs = [np.empty((M, N), np.float32) for *_, N, K in mats]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for (codes, s, b, N, K), x, y in zip(mats, xs, outs):
            native.matmul(x, codes, native.AFFINE, N, K, y, s, b, 64, bits, activations)
        best = min(best, time.perf_counter() - start)
    return best


def activation_bits(isa: str) -> tuple[int, ...]:
    native.select_isa(isa)
    return (8, 16, 32) if native.has_int8() else (32,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--bits", default="4,8")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    best_isa = native.isa()
    runnable = native.runnable_isas()
    for threads in map(int, args.threads.split(",")):
        native.set_threads(threads)
        machine = fingerprint(mx.Device(mx.cpu), threads)
        for bits in map(int, args.bits.split(",")):
            mats = layer(bits, rng)
            for isa, activations in [(i, a) for i in runnable for a in activation_bits(i)]:
                for M in TOKENS:
                    seconds = run(mats, isa, M, bits, activations, 3 if M >= 1024 else 7, rng)
                    flops = sum(2 * M * N * K for *_, N, K in mats)
                    record = {"kind": "kernel", "isa": isa, "activations": activations, "bits": bits, "group_size": 64,
                              "tokens": M, "threads": threads, "layer_ms": round(seconds * 1000, 3),
                              "gflops": round(flops / seconds / 1e9, 2), "fingerprint": machine}
                    print(json.dumps({k: v for k, v in record.items() if k != "fingerprint"}), flush=True)
                    if args.output:
                        with args.output.open("a", encoding="utf-8") as f:
                            f.write(json.dumps(record) + "\n")
    native.select_isa(best_isa)


if __name__ == "__main__":
    main()
