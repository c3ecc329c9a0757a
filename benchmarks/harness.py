"""`mlx-embedgemma bench`: speed, memory, downstream cost and quality per Matryoshka dim and device.

The parent process plans the run, starts one child process per runner and device (this package on
MLX's CPU or GPU, sentence-transformers, llama.cpp), streams their records into a live table and a
JSONL file, and adds the fingerprint of what they ran on. Memory and cold start are measured in a
fresh child per scenario, so nothing an earlier measurement allocated counts against them.

Every record has ``kind`` (latency, throughput, memory, accuracy, overhead, downstream, quality, import), ``runner``,
``device``, ``dim`` and ``fingerprint``; the rest depends on the kind (see ``tests/test_bench.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import mlx_embedgemma
import mlx.core as mx
import numpy as np

from mlx_embedgemma.benchmarks import fingerprint, quality
from mlx_embedgemma.benchmarks.measure import (
    BATCHES, DOC_TOKENS, QUERY, Encoder, Job, Settings, accuracy, measure_speed, timed,
)
from mlx_embedgemma.benchmarks.memory import make_texts, peak_rss_mb

# ---------------------------------------------------------------------------------------------- children


class MLXEncoder(Encoder):
    name = "mlx-embedgemma"

    def __init__(self, job: Job):
        mx.set_default_device(mx.gpu if job.device == "gpu" else mx.cpu)
        self.model = mlx_embedgemma.load(job.model, kernels=job.extra.get("kernels", "auto"), threads=job.threads)
        self.version = mlx_embedgemma.__version__

    def encode(self, texts, prompt_name, dim):
        return self.model.encode(texts, prompt_name=prompt_name, dim=dim, batch_size=max(1, len(texts)))

    def describe(self) -> dict:
        plan = self.model.plan
        return {"kernel": fingerprint.kernel(plan), "plan": plan.describe()}

    def overhead(self, texts: dict, dim: int) -> Iterator[dict]:
        """``encode`` against a bare forward pass of the same padded batch (tokens already made, nothing after).

        The ratio is what the API adds to the network: tokenizing, batching, the plan's work between passes
        and the copy back to numpy. Measured for the query and for 32 documents of 128 tokens.
        """
        m = self.model
        for label, batch, prompt in (("query", [QUERY], "query"), ("32 x 128", texts["docs128"][:32], "document")):
            ids = m.tokenizer.encode([m.prompt_prefix(prompt, None) + t for t in batch]).ids
            if len(ids) * max(map(len, ids)) > m.plan.max_batch_tokens:
                ids = ids[: max(1, m.plan.max_batch_tokens // max(map(len, ids)))]
                batch = batch[: len(ids)]
            width = max(map(len, ids))
            tokens = mx.array([x + [0] * (width - len(x)) for x in ids])
            valid = mx.array([[i < len(x) for i in range(width)] for x in ids])
            forward = lambda: mx.eval(m.network(tokens, valid, m.compute_dtype))  # noqa: E731
            encode = lambda: m.encode(batch, prompt_name=prompt, dim=dim, batch_size=len(batch))  # noqa: E731
            forward(), encode()
            runs = 5 if label == "query" else 2
            f = min(timed(forward) for _ in range(runs))
            e = min(timed(encode) for _ in range(runs))
            yield {"kind": "overhead", "dim": dim, "workload": label, "texts": len(batch), "forward_s": round(f, 6),
                   "encode_s": round(e, 6), "ratio": round(e / f, 3)}

    def peak_mlx_mb(self) -> float:
        return mx.get_peak_memory() / 2**20


def measure_memory(job: Job, scenario: str, spawned_at: float) -> dict:
    """One fresh process: load, embed, report peak RSS and MLX peak; ``spawned_at`` gives cold start."""
    import warnings

    started = time.perf_counter()
    encoder = MLXEncoder(job)
    load_s = time.perf_counter() - started
    dim = job.dims[0]
    if scenario == "query":
        encoder.encode([QUERY], "query", dim)
        cold_start = time.time() - spawned_at
        texts = 1
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder.encode(["warm"], "document", dim)
            cold_start = time.time() - spawned_at
            docs = json.loads(Path(job.texts_file).read_text(encoding="utf-8"))["docs128"][: job.settings["memory_docs"]]
            encoder.model.encode(docs, prompt_name="document", dim=dim)
        texts = len(docs)
    return {
        "kind": "memory", "scenario": scenario, "dim": dim, "texts": texts,
        "peak_rss_mb": round(peak_rss_mb(), 1), "mlx_peak_mb": round(encoder.peak_mlx_mb(), 3),
        "load_s": round(load_s, 3), "cold_start_s": round(cold_start, 3),
        "plan": encoder.model.plan.describe(),
    }


def child_main(spec: str) -> None:
    job_dict = json.loads(spec)
    task = job_dict.pop("task")
    spawned_at = job_dict.pop("spawned_at")
    job = Job(**job_dict)
    records = measure_speed(job, MLXEncoder(job)) if task == "speed" else [measure_memory(job, task, spawned_at)]
    for record in records:
        print(json.dumps(record), flush=True)


# ---------------------------------------------------------------------------------------------- parent

# Run in a fresh interpreter: what `import mlx_embedgemma` alone costs an app that starts cold.
IMPORT_PROBE = """
import sys, time
start = time.perf_counter()
import mlx_embedgemma
seconds = time.perf_counter() - start
modules = len(sys.modules)
import json, resource
try:
    rss = next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmRSS:"))
except (OSError, StopIteration):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
print(json.dumps({"seconds": seconds, "rss_mb": rss, "modules": modules}))
"""


def measure_import(runs: int = 3) -> dict:
    """Time and resident memory of `import mlx_embedgemma` in fresh interpreters (best of ``runs``),
    beside a bare interpreter's memory. Run outside any checkout so the installed package is measured."""
    def probe(code: str) -> dict:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=tempfile.gettempdir())
        return json.loads(out.stdout.strip().splitlines()[-1])

    samples = [probe(IMPORT_PROBE) for _ in range(runs)]
    # the bare interpreter measured the same way (best of ``runs``): one sample of it sat above the best
    # import sample by a few hundred kB of noise
    bare = [probe(IMPORT_PROBE.replace("import mlx_embedgemma\n", "")) for _ in range(runs)]
    return {
        "kind": "import", "runs": runs,
        "import_ms": round(min(s["seconds"] for s in samples) * 1000, 1),
        "rss_mb": round(min(s["rss_mb"] for s in samples), 1),
        "python_rss_mb": round(min(b["rss_mb"] for b in bare), 1),
        "modules": samples[0]["modules"] - bare[0]["modules"],
    }



def downstream(dim: int, s: Settings, seed: int = 0) -> dict:
    """What the dimension costs after embedding: storage per vector and exact top-10 search time."""
    per_vector = {"float32": 4 * dim, "float16": 2 * dim, "int8": dim, "binary": -(-dim // 8)}
    rng = np.random.default_rng(seed)
    index = rng.standard_normal((s.index_vectors, dim), dtype=np.float32)
    index /= np.linalg.norm(index, axis=1, keepdims=True)
    query = index[rng.integers(s.index_vectors)]
    times = []
    for i in range(s.search_runs + 3):
        start = time.perf_counter()
        scores = index @ query
        top = np.argpartition(-scores, 10)[:10]
        top = top[np.argsort(-scores[top])]
        if i >= 3:
            times.append(time.perf_counter() - start)
    times_ms = np.array(times) * 1000
    return {
        "kind": "downstream", "dim": dim, "bytes_per_vector": per_vector,
        "index_mb": {k: round(v * s.index_sizes_for / 1e6, 1) for k, v in per_vector.items()},
        "index_vectors_for_size": s.index_sizes_for,
        "search_vectors": s.index_vectors, "search_runs": s.search_runs, "search_dtype": "float32",
        "search_p50_ms": round(float(np.percentile(times_ms, 50)), 3),
        "search_p95_ms": round(float(np.percentile(times_ms, 95)), 3),
    }


def quality_records(model_path: Path, data_dir: Path, cache_dir: Path, compute: bool) -> Iterator[dict]:
    """STS Spearman and retrieval NDCG@10 per dim, cached per weights hash (they do not depend on the device)."""
    key = fingerprint.model_hash(model_path)
    cache = cache_dir / f"quality-{key}.json"
    if cache.is_file():
        scores, cached = json.loads(cache.read_text()), True
    elif compute:
        model = mlx_embedgemma.load(model_path)
        scores = {task: {str(d): round(v, 3) for d, v in fn(model, data_dir, None).items()}
                  for task, fn in (("sts", quality.sts), ("retrieval", quality.retrieval))}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(scores))
        cached = False
    else:
        return
    for task, by_dim in scores.items():
        for dim, score in by_dim.items():
            yield {"kind": "quality", "task": task, "metric": "spearman" if task == "sts" else "ndcg@10",
                   "dim": int(dim), "score": score, "cached": cached, "data": str(data_dir)}


class Table:
    """The live view: a progress bar and one row per record, on stderr."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        print(f"{'':14} {'device':6} {'runner':24} {'dim':>4}  measurement", file=stream)

    def row(self, record: dict) -> None:
        self.done += 1
        filled = round(12 * min(self.done, self.total) / max(self.total, 1))
        bar = f"[{'#' * filled}{'.' * (12 - filled)}]"
        print(f"{bar} {record.get('device', ''):6} {record.get('runner', '') + ' ' + record.get('variant', ''):24.24} "
              f"{record.get('dim') or '':>4}  {describe(record)}", file=self.stream, flush=True)


def describe(r: dict) -> str:
    kind = r["kind"]
    if kind == "latency":
        return f"query latency p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms ({r['runs']} runs)"
    if kind == "throughput":
        return f"{r['doc_tokens']}-token docs, batch {r['batch']:>2}: {r['texts_per_s']:.2f} texts/s, {r['tokens_per_s']:.0f} tokens/s"
    if kind == "memory":
        return (f"memory ({r['scenario']}, {r['texts']} texts): peak RSS {r['peak_rss_mb']:.0f} MB, MLX {r['mlx_peak_mb']:.0f} MB, "
                f"load {r['load_s']:.2f} s, cold start {r['cold_start_s']:.2f} s")
    if kind == "accuracy":
        return f"cosine to reference: mean {r['mean_cosine']:.4f}, min {r['min_cosine']:.4f}"
    if kind == "downstream":
        return f"{r['bytes_per_vector']['float32']} B/vector (f32), top-10 of {r['search_vectors']:,}: {r['search_p50_ms']:.2f} ms"
    if kind == "quality":
        return f"{r['task']} {r['metric']} {r['score']:.2f}{' (cached)' if r['cached'] else ''}"
    if kind == "import":
        return (f"import mlx_embedgemma: {r['import_ms']:.0f} ms, RSS {r['rss_mb']:.0f} MB "
                f"(bare Python {r['python_rss_mb']:.0f} MB), {r['modules']} modules")
    if kind == "overhead":
        return f"encode / bare forward ({r['workload']}): {r['ratio']:.2f} ({r['encode_s']:.3f} s / {r['forward_s']:.3f} s)"
    if kind == "process":
        return f"peak RSS of the whole run {r['peak_rss_mb']:.0f} MB"
    return kind


@dataclass
class Run:
    model: Path
    devices: list[str]
    dims: list[int]
    output: Path | None
    settings: Settings
    threads: int
    peers: list[str]
    st_model: Path | None
    ggufs: list[Path]
    data_dir: Path | None
    reference_dir: Path | None
    cache_dir: Path
    quality: bool = True
    quality_from_cache_only: bool = False
    kernels: list[str] = field(default_factory=lambda: ["auto"])

    def jobs(self, texts_file: Path) -> list[tuple[str, Job]]:
        from mlx_embedgemma.precision import describe as storage

        config = json.loads((self.model / "config.json").read_text())
        variant = config.get("recipe") or storage(config)
        full = [max(config.get("matryoshka_dims") or self.dims)]  # peers run at full size: dims cost them nothing
        common = dict(threads=self.threads, settings=asdict(self.settings), texts_file=str(texts_file),
                      reference_dir=str(self.reference_dir) if self.reference_dir else None)
        jobs: list[tuple[str, Job]] = []
        for device in self.devices:
            # `--kernels native,mlx`: the plans side by side, each in its own processes (the GPU has one plan)
            for kernels in (self.kernels if device == "cpu" else ["auto"]):
                label = variant if kernels == "auto" else f"{variant} [{kernels}]"
                extra = {"kernels": kernels}
                jobs.append(("speed", Job("mlx-embedgemma", device, str(self.model), label, list(self.dims), **common, extra=dict(extra))))
                for dim in self.dims:
                    for scenario in ("query", "docs128"):
                        jobs.append((scenario, Job("mlx-embedgemma", device, str(self.model), label, [dim], **common,
                                                   extra=dict(extra))))
            if "sentence-transformers" in self.peers and self.st_model:
                jobs.append(("speed", Job("sentence-transformers", device, str(self.st_model), "float32", full, **common)))
            if "llama.cpp" in self.peers:
                for gguf in self.ggufs:
                    jobs.append(("speed", Job("llama.cpp", device, str(gguf), f"GGUF {peer_quant(gguf)}", full, **common)))
        return jobs

    def expected_records(self, jobs: list[tuple[str, Job]]) -> int:
        per_speed_job = lambda j: (2 + len(j.dims) * (1 + len(DOC_TOKENS) * len(BATCHES)) + bool(j.reference_dir)
                                   + 2 * (j.runner == "mlx-embedgemma"))
        n = sum(per_speed_job(j) if task == "speed" else 1 for task, j in jobs)
        return n + 1 + len(self.dims) + (2 * len(self.dims) if self.quality and self.data_dir else 0)

    def execute(self) -> list[dict]:
        records: list[dict] = []
        with tempfile.TemporaryDirectory(prefix="mlx-embedgemma-bench-") as tmp:
            texts_file = Path(tmp) / "texts.json"
            texts_file.write_text(json.dumps(self.texts()), encoding="utf-8")
            jobs = self.jobs(texts_file)
            table = Table(self.expected_records(jobs))
            prints = {}

            def emit(record: dict, job: Job | None, device: str) -> None:
                if job is not None:
                    record = {"runner": job.runner, "variant": job.variant, "device": device, "dim": job.dims[0], **record}
                    record.setdefault("threads", job.threads)
                key = (device, record.get("runner"), record.get("variant"))
                if key not in prints:
                    prints[key] = fingerprint.fingerprint(mx.Device(mx.gpu if device == "gpu" else mx.cpu), self.threads,
                                                          self.model, record.get("variant"))
                    if job is not None:  # what the child says ran the model
                        prints[key].update({k: job.extra[k] for k in ("kernel", "plan") if k in job.extra})
                record["fingerprint"] = prints[key]
                records.append(record)
                table.row(record)
                if self.output:
                    self.output.parent.mkdir(parents=True, exist_ok=True)
                    with self.output.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(record, ensure_ascii=False) + "\n")

            for task, job in jobs:
                for record in run_child(task, job, self.threads):
                    if record["kind"] == "runner":
                        job.extra.update({k: v for k, v in record.items() if k != "kind"})
                        continue
                    if record["kind"] == "isolation":  # peer_child.py checked it never imported this package
                        continue
                    record["runner_version"] = job.extra.get("runner_version")
                    emit(record, job, job.device)
            emit({"runner": "mlx-embedgemma", "variant": "", "device": "cpu", "dim": None, **measure_import()}, None, "cpu")
            for dim in self.dims:
                emit({"kind": "downstream", "runner": "numpy", "variant": "", "device": "cpu", **downstream(dim, self.settings)},
                     None, "cpu")
            if self.quality and self.data_dir:
                for record in quality_records(self.model, self.data_dir, self.cache_dir, compute=not self.quality_from_cache_only):
                    if record["dim"] in self.dims:
                            emit({"runner": "mlx-embedgemma", "variant": "", "device": "any", **record}, None, "cpu")
        return records

    def texts(self) -> dict:
        model = mlx_embedgemma.load(self.model)
        count = max(BATCHES + (self.settings.memory_docs,))
        return {
            "query_tokens": model.count_tokens([QUERY], "query")[0],
            "prompts": model.prompts,
            **{f"docs{n}": make_texts(model, count if n == 128 else max(BATCHES), n, seed=n) for n in DOC_TOKENS},
        }


def peer_quant(gguf: Path) -> str:
    for q in ("Q4_0", "Q4_K_M", "Q5_0", "Q8_0", "F16", "BF16", "F32"):
        if q.lower() in gguf.name.lower():
            return q
    return gguf.stem


def run_child(task: str, job: Job, threads: int) -> Iterator[dict]:
    """Start a fresh process for one job and yield its records as they arrive."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    spec = json.dumps({**asdict(job), "task": task, "spawned_at": time.time()})
    # By path, not `-m`: from a checkout, `-m` would find the source folder `mlx_embedgemma/`, which
    # has no `benchmarks` inside, before the installed package.
    # stderr goes to a file: a pipe nobody reads until stdout closes blocks a child that logs more than
    # the pipe's buffer (a few tens of kB) to it, and the parent with it.
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errors:
        # Peers run from peer_child.py, which never imports this package.
        script = [__file__, "--child"] if job.runner == "mlx-embedgemma" else [str(Path(__file__).with_name("peer_child.py"))]
        proc = subprocess.Popen([sys.executable, *script, spec],
                                stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                yield json.loads(line)
        if proc.wait():
            errors.seek(0)
            raise RuntimeError(f"{job.runner} on {job.device} ({task}) failed:\n{errors.read()[-4000:]}")


def available_devices() -> list[str]:
    devices = ["cpu"]
    if mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available()):
        devices.insert(0, "gpu")
    return devices


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
    else:
        sys.exit("run benchmarks with `mlx-embedgemma bench MODEL ...`")
