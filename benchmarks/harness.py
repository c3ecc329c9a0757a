"""`mlx-embedgemma bench`: speed, memory, downstream cost and quality per Matryoshka dim and device.

The parent process plans the run, starts one child process per runner and device (this package on
MLX's CPU or GPU, sentence-transformers, llama.cpp), streams their records into a live table and a
JSONL file, and adds the fingerprint of what they ran on. Memory and cold start are measured in a
fresh child per scenario, so nothing an earlier measurement allocated counts against them.

Every record has ``kind`` (latency, throughput, memory, accuracy, downstream, quality, import), ``runner``,
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
from mlx_embedgemma.benchmarks.memory import make_texts, peak_rss_mb

QUERY = "Which planet is known as the Red Planet?"  # 18 tokens with the query prompt, <bos> and <eos>
DOC_TOKENS = (128, 512)
BATCHES = (1, 8, 32)


@dataclass
class Settings:
    """How long each measurement runs; ``--quick`` takes the short column."""

    latency_runs: int = 100
    warmup_runs: int = 5
    throughput_repeats: int = 3
    memory_docs: int = 256
    index_vectors: int = 100_000
    search_runs: int = 100
    index_sizes_for: int = 1_000_000  # index size is reported for this many vectors

    @classmethod
    def quick(cls) -> "Settings":
        return cls(latency_runs=30, warmup_runs=3, throughput_repeats=1, memory_docs=32, search_runs=30)


@dataclass
class Job:
    """What one child process measures (passed to it as JSON)."""

    runner: str
    device: str  # "cpu" or "gpu"
    model: str  # MLX folder, sentence-transformers folder or GGUF file
    variant: str  # storage of the model: "q4-mixed", "float32", "GGUF Q4_0", ...
    dims: list[int]
    threads: int
    settings: dict[str, Any]
    texts_file: str
    reference_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- children


class Encoder:
    """The interface the measuring code needs from every runner: embed texts with a task prompt."""

    name = ""
    version = ""

    def encode(self, texts: list[str], prompt_name: str, dim: int) -> np.ndarray:
        raise NotImplementedError


class MLXEncoder(Encoder):
    name = "mlx-embedgemma"

    def __init__(self, job: Job):
        mx.set_default_device(mx.gpu if job.device == "gpu" else mx.cpu)
        self.model = mlx_embedgemma.load(job.model)
        self.version = mlx_embedgemma.__version__

    def encode(self, texts, prompt_name, dim):
        return self.model.encode(texts, prompt_name=prompt_name, dim=dim, batch_size=max(1, len(texts)))

    def peak_mlx_mb(self) -> float:
        return mx.get_peak_memory() / 2**20


def make_encoder(job: Job) -> Encoder:
    if job.runner == "mlx-embedgemma":
        return MLXEncoder(job)
    from mlx_embedgemma.benchmarks import peers

    return peers.make(job)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_speed(job: Job) -> Iterator[dict]:
    s = Settings(**job.settings)
    texts = json.loads(Path(job.texts_file).read_text(encoding="utf-8"))
    encoder = make_encoder(job)
    yield {"kind": "runner", "runner_version": encoder.version}
    for dim in job.dims:
        for _ in range(s.warmup_runs):
            encoder.encode([QUERY], "query", dim)
        times = np.array([timed(lambda: encoder.encode([QUERY], "query", dim)) for _ in range(s.latency_runs)]) * 1000
        yield {
            "kind": "latency", "dim": dim, "tokens": texts["query_tokens"], "runs": s.latency_runs,
            "p50_ms": round(float(np.percentile(times, 50)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2),
            "min_ms": round(float(times.min()), 2),
        }
        for tokens in DOC_TOKENS:
            docs = texts[f"docs{tokens}"]
            for batch in BATCHES:
                encoder.encode(docs[: min(batch, 8)], "document", dim)  # warm-up at this length
                seconds = [timed(lambda: encoder.encode(docs[:batch], "document", dim)) for _ in range(s.throughput_repeats)]
                best = float(np.median(seconds))
                yield {
                    "kind": "throughput", "dim": dim, "doc_tokens": tokens, "batch": batch, "repeats": len(seconds),
                    "seconds": round(best, 4), "texts_per_s": round(batch / best, 3), "tokens_per_s": round(batch * tokens / best, 1),
                }
    if job.reference_dir:
        full = max(job.dims)
        record = accuracy(lambda texts, name: encoder.encode(texts, name, full), Path(job.reference_dir), full)
        if record:
            yield record
    yield {"kind": "process", "peak_rss_mb": round(peak_rss_mb(), 1)}


def accuracy(encode: Callable[[list[str], str], np.ndarray], reference_dir: Path, dim: int) -> dict | None:
    """Cosine to the reference embeddings (sentence-transformers float32) on their own texts and prompts.

    ``encode(texts, prompt_name)`` gives full-size embeddings; the 2,331-token row is truncated, as in
    the reference, so truncation warnings are silenced.
    """
    import warnings

    reference = np.load(reference_dir / "public.npy")
    if reference.shape[1] != dim:
        return None  # another model than the reference's (the tests' tiny one)
    rows = [json.loads(line) for line in (reference_dir / "public.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    ours = np.zeros_like(reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted({r["prompt_name"] for r in rows}):
            index = [i for i, r in enumerate(rows) if r["prompt_name"] == name]
            ours[index] = encode([rows[i]["text"] for i in index], name)
    cosine = np.sum(ours * reference, axis=1) / np.linalg.norm(ours, axis=1)
    return {"kind": "accuracy", "dim": reference.shape[1], "rows": len(rows),
            "mean_cosine": round(float(cosine.mean()), 5), "min_cosine": round(float(cosine.min()), 5)}


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
        "peak_rss_mb": round(peak_rss_mb(), 1), "mlx_peak_mb": round(encoder.peak_mlx_mb(), 1),
        "load_s": round(load_s, 3), "cold_start_s": round(cold_start, 3),
        "plan": encoder.model.plan.describe(),
    }


def child_main(spec: str) -> None:
    job_dict = json.loads(spec)
    task = job_dict.pop("task")
    spawned_at = job_dict.pop("spawned_at")
    job = Job(**job_dict)
    records = measure_speed(job) if task == "speed" else [measure_memory(job, task, spawned_at)]
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
    bare = probe(IMPORT_PROBE.replace("import mlx_embedgemma\n", ""))
    return {
        "kind": "import", "runs": runs,
        "import_ms": round(min(s["seconds"] for s in samples) * 1000, 1),
        "rss_mb": round(min(s["rss_mb"] for s in samples), 1),
        "python_rss_mb": round(bare["rss_mb"], 1),
        "modules": samples[0]["modules"] - bare["modules"],
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

    def jobs(self, texts_file: Path) -> list[tuple[str, Job]]:
        from mlx_embedgemma.precision import describe as storage

        config = json.loads((self.model / "config.json").read_text())
        variant = config.get("recipe") or storage(config)
        full = [max(config.get("matryoshka_dims") or self.dims)]  # peers run at full size: dims cost them nothing
        common = dict(threads=self.threads, settings=asdict(self.settings), texts_file=str(texts_file),
                      reference_dir=str(self.reference_dir) if self.reference_dir else None)
        jobs: list[tuple[str, Job]] = []
        for device in self.devices:
            ours = Job("mlx-embedgemma", device, str(self.model), variant, list(self.dims), **common)
            jobs.append(("speed", ours))
            for dim in self.dims:
                for scenario in ("query", "docs128"):
                    jobs.append((scenario, Job("mlx-embedgemma", device, str(self.model), variant, [dim], **common)))
            if "sentence-transformers" in self.peers and self.st_model:
                jobs.append(("speed", Job("sentence-transformers", device, str(self.st_model), "float32", full, **common)))
            if "llama.cpp" in self.peers:
                for gguf in self.ggufs:
                    jobs.append(("speed", Job("llama.cpp", device, str(gguf), f"GGUF {peer_quant(gguf)}", full, **common)))
        return jobs

    def expected_records(self, jobs: list[tuple[str, Job]]) -> int:
        per_speed_job = lambda j: 2 + len(j.dims) * (1 + len(DOC_TOKENS) * len(BATCHES)) + bool(j.reference_dir)
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
                key = (device, record.get("runner"))
                if key not in prints:
                    prints[key] = fingerprint.fingerprint(mx.Device(mx.gpu if device == "gpu" else mx.cpu), self.threads,
                                                          self.model, record.get("variant"))
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
                        job.extra["runner_version"] = record["runner_version"]
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
        proc = subprocess.Popen([sys.executable, __file__, "--child", spec],
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
