"""A bounded load test of `mlx-embedgemma serve` over loopback (issue 6).

    .venv/bin/python benchmarks/serve_load.py MODEL [--requests 2000] [--concurrency 16] [--texts-per-request 1]
                                              [--dim 768] [--output benchmarks/results/serve-load.jsonl]

Starts the server on a free loopback port as a child process, then fires ``--requests`` requests of
short queries (the `MODEL:query` alias, a few words each) from ``--concurrency`` client threads in this
second process, as fast as the server answers. Records throughput, latency percentiles, the server's
batching counters, and its RSS (sampled every 0.5 s) after the first 10% of the
requests against the end, with the machine's fingerprint, as one JSONL record.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlx_embedgemma  # noqa: F401
import mlx.core as mx
import numpy as np

from mlx_embedgemma.benchmarks.fingerprint import fingerprint
from mlx_embedgemma.benchmarks.memory import WORDS, emit, rss_mb, status_mb
from mlx_embedgemma.loading import read_config
from mlx_embedgemma.precision import describe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def queries(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = [w for w in " ".join(WORDS).split() if w]
    return [" ".join(words[j] for j in rng.integers(len(words), size=rng.integers(3, 8))) + f" {i}?"
            for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--dim", type=int, default=None, help="`dimensions` of every request [default: none sent]")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--fixed-wait", action="store_true", help="serve --fixed-wait: no adaptive batch window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    import httpx  # the client (installed with the `test` extra, or with openai)

    if sys.platform != "linux":
        print("note: the server's peak RSS (VmHWM) is read from /proc, so it is only recorded on Linux", file=sys.stderr)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    script = shutil.which("mlx-embedgemma", path=os.path.dirname(sys.executable))
    command = [script] if script else [sys.executable, "-m", "mlx_embedgemma.cli"]
    command += ["serve", str(args.model), "--port", str(port), "--no-access-log", "--log-level", "warning",
                "--batch-wait-ms", str(args.batch_wait_ms), "--max-batch-size", str(args.max_batch_size),
                "--max-queue", str(max(256, args.concurrency * 2))] + (["--fixed-wait"] if args.fixed_wait else [])
    # Taken before the run: the commit is the one whose server is measured.
    machine = fingerprint(mx.default_device(), os.cpu_count() or 1, args.model, describe(read_config(args.model)))
    started = time.perf_counter()
    server = subprocess.Popen(command)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}")
            try:
                health = httpx.get(url + "/health", timeout=2).json()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        ready_s = time.perf_counter() - started
        model_id = health["model"]
        texts = queries(args.requests * args.texts_per_request, args.seed)
        bodies = [{"model": f"{model_id}:query", "input": texts[i * args.texts_per_request : (i + 1) * args.texts_per_request],
                   "encoding_format": "base64", **({"dimensions": args.dim} if args.dim else {})}
                  for i in range(args.requests)]

        latencies = np.zeros(args.requests)
        statuses = np.zeros(args.requests, np.int32)
        tokens = np.zeros(args.requests, np.int64)
        done = [0]
        lock = threading.Lock()
        next_index = iter(range(args.requests))

        def worker() -> None:
            with httpx.Client(timeout=600) as client:
                while True:
                    with lock:
                        i = next(next_index, None)
                    if i is None:
                        return
                    t0 = time.perf_counter()
                    r = client.post(url + "/v1/embeddings", json=bodies[i])
                    latencies[i] = time.perf_counter() - t0
                    statuses[i] = r.status_code
                    if r.status_code == 200:
                        tokens[i] = r.json()["usage"]["prompt_tokens"]
                    with lock:
                        done[0] += 1

        rss: list[tuple[int, float, float]] = []  # (requests done, seconds, RSS MB)
        stop = threading.Event()

        def sampler() -> None:
            while not stop.is_set():
                value = rss_mb(server.pid)
                if value is not None:
                    rss.append((done[0], round(time.perf_counter() - t_start, 1), round(value, 1)))
                stop.wait(0.5)

        rss_idle = rss_mb(server.pid)
        load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
        t_start = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        sampling = threading.Thread(target=sampler, daemon=True)
        sampling.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t_start
        stop.set()
        sampling.join()
        health = httpx.get(url + "/health", timeout=10).json()
        peak = status_mb("VmHWM", server.pid)
        load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()

    ok = statuses == 200
    warm = [mb for n, _, mb in rss if n >= args.requests // 10]
    record = {
        "benchmark": "serve-load",
        "model": str(args.model),
        "storage": describe(read_config(args.model)),
        "command": " ".join(["benchmarks/serve_load.py", *sys.argv[1:]]),
        "requests": args.requests,
        "texts_per_request": args.texts_per_request,
        "concurrency": args.concurrency,
        "dimensions": args.dim,
        "batch_wait_ms": args.batch_wait_ms,
        "adaptive_wait": not args.fixed_wait,
        "max_batch_size": args.max_batch_size,
        "ok": int(ok.sum()),
        "status_counts": {str(s): int((statuses == s).sum()) for s in np.unique(statuses)},
        "tokens_per_text_median": float(np.median(tokens[ok] / args.texts_per_request)) if ok.any() else None,
        "seconds": round(seconds, 2),
        "server_ready_s": round(ready_s, 2),
        "requests_per_s": round(args.requests / seconds, 2),
        "texts_per_s": round(args.requests * args.texts_per_request / seconds, 2),
        "tokens_per_s": round(float(tokens.sum()) / seconds, 1),
        "latency_ms": {p: round(float(np.percentile(latencies[ok], q)) * 1000, 1)
                       for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))} if ok.any() else None,
        "server": {k: health[k] for k in ("requests", "inputs", "tokens", "batches", "forward_passes", "largest_batch",
                                          "rejected_queue_full")},
        "mean_batch": round(health["inputs"] / max(health["batches"], 1), 2),
        "rss_idle_mb": round(rss_idle, 1) if rss_idle else None,
        "rss_after_10pct_mb": warm[0] if warm else None,
        "rss_end_mb": rss[-1][2] if rss else None,
        "rss_growth_mb": round(rss[-1][2] - warm[0], 1) if warm else None,
        # Single samples land during or between passes (about 10 MB apart): compare the highest sample of
        # the second tenth of the requests with that of the last tenth.
        "rss_max_second_tenth_mb": max((mb for n, _, mb in rss if args.requests // 10 <= n < args.requests // 5), default=None),
        "rss_max_last_tenth_mb": max((mb for n, _, mb in rss if n >= args.requests * 9 // 10), default=None),
        "rss_max_sampled_mb": max(mb for _, _, mb in rss) if rss else None,
        "peak_rss_mb": round(peak, 1) if peak else None,
        # Other work on the machine slows the server down: the 1-minute load average, at start and end.
        "loadavg_1min": [round(x[0], 2) if x else None for x in (load_start, load_end)],
        "rss_series": rss[:: max(1, len(rss) // 200)],
        "fingerprint": machine,
    }
    emit(record, args.output)


if __name__ == "__main__":
    main()
