"""Peak memory of the whole process that loads a model and embeds, one fresh process per scenario.

    .venv/bin/python benchmarks/memory.py MODEL [--scenarios query,docs128,docs2048] [--scale 1.0]
                                                [--stream-weights auto|on|off] [--output FILE.jsonl]

Scenarios (issue 3): one ~16-token query; 2,000 documents of ~128 tokens; 50 documents of 2,048 tokens.
``--scale 0.1`` runs a tenth of the documents (the record says how many ran). Each scenario appends one
JSON record: peak RSS of the process (VmHWM on Linux, ru_maxrss elsewhere), MLX's peak memory, RSS at
the end, load time, time to first embedding, and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

SCENARIOS = {"query": (1, 16), "docs128": (2000, 128), "docs2048": (50, 2048)}
WORDS = (
    "the of and to in is was for on that with as by at from his her an which they were be this are or "
    "planet river mountain system memory vector search index model token window layer quantized matrix "
    "Paris Lisboa Tokyo Москва 北京 मुंबई القاهرة emoji 🚀 code def return while for if else import numpy"
).split()


PROC = Path("/proc")  # Linux; absent on macOS (and the tests point it elsewhere to take the other paths)


def status_mb(field: str, pid: int | str = "self") -> float | None:
    """A memory field of /proc/PID/status (VmRSS, VmHWM) in MB; None where /proc is absent or once the process is gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, else ru_maxrss (bytes on macOS, KiB on Linux: getrusage(2))."""
    peak = status_mb("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def rss_mb(pid: int | None = None) -> float | None:
    """Resident memory of a process (default: this one) now, in MB; None where no way to read it works.

    /proc where it exists; on macOS the kernel's own count for this process (mach ``task_info``), and
    ``ps`` (which reports KiB on both) for another process or when that call fails.
    """
    now = status_mb("VmRSS", "self" if pid is None else pid)
    if now is None and pid is None and sys.platform == "darwin":
        now = _mach_resident_mb()
    if now is None:
        now = _ps_rss_mb(os.getpid() if pid is None else pid)
    return now


def _mach_resident_mb() -> float | None:
    """``resident_size`` of MACH_TASK_BASIC_INFO (mach/task_info.h) for this task; unverified: no Mac here."""
    import ctypes

    class MachTaskBasicInfo(ctypes.Structure):
        _pack_ = 4  # the header's #pragma pack(4)
        _fields_ = [("virtual_size", ctypes.c_uint64), ("resident_size", ctypes.c_uint64),
                    ("resident_size_max", ctypes.c_uint64), ("user_time", ctypes.c_int32 * 2),
                    ("system_time", ctypes.c_int32 * 2), ("policy", ctypes.c_int32), ("suspend_count", ctypes.c_int32)]

    mach_task_basic_info = 20
    try:
        libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib")
        task = ctypes.c_uint32.in_dll(libc, "mach_task_self_")  # what the mach_task_self() macro reads
        info = MachTaskBasicInfo()
        count = ctypes.c_uint32(ctypes.sizeof(info) // 4)  # in natural_t units
        if libc.task_info(task, mach_task_basic_info, ctypes.byref(info), ctypes.byref(count)) != 0:
            return None
    except (OSError, ValueError):
        return None
    return info.resident_size / 2**20


def _ps_rss_mb(pid: int) -> float | None:
    try:
        out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, timeout=10).stdout
        return int(out.strip()) / 1024
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def emit(record: dict, output: Path | None) -> None:
    """Print one JSONL record, and append it to ``output`` if given."""
    line = json.dumps(record, ensure_ascii=False)
    print(line, flush=True)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def make_texts(model, count: int, tokens: int, seed: int) -> list[str]:
    """Texts of exactly ``tokens`` tokens (document prompt included), varied so many rows are used."""
    import numpy as np

    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(count):
        words = list(rng.choice(WORDS, size=tokens * 2))
        text = " ".join(words)
        ids = model.tokenizer.encode([model.prompt_prefix("document", None) + text]).ids[0]
        while len(ids) > tokens:  # trim words until it fits exactly or just under
            words = words[: max(1, len(words) * tokens // len(ids) - 1)]
            text = " ".join(words)
            ids = model.tokenizer.encode([model.prompt_prefix("document", None) + text]).ids[0]
        texts.append(text)
    return texts


def child(model_path: str, scenario: str, scale: float, kernels: str) -> dict:
    start = time.perf_counter()
    import mlx_embedgemma
    import mlx.core as mx

    model = mlx_embedgemma.load(model_path, kernels=kernels)
    load_s = time.perf_counter() - start
    count, tokens = SCENARIOS[scenario]
    count = max(1, round(count * scale)) if scenario != "query" else 1
    if scenario == "query":
        texts, prompt = ["Which planet is known as the Red Planet?"], "query"
    else:
        texts, prompt = make_texts(model, count, tokens, seed=0), "document"
    t0 = time.perf_counter()
    model.encode(texts[:1], prompt_name=prompt)
    first_s = time.perf_counter() - t0 + load_s
    t1 = time.perf_counter()
    out = model.encode(texts, prompt_name=prompt)
    run_s = time.perf_counter() - t1
    assert out.shape[0] == len(texts)
    end_rss = rss_mb()
    return {
        "scenario": scenario,
        "plan": model.plan.describe(),
        "texts": len(texts),
        "tokens_per_text": tokens if scenario != "query" else model.count_tokens(texts, "query")[0],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "end_rss_mb": end_rss and round(end_rss, 1),
        "mlx_peak_mb": round(mx.get_peak_memory() / 2**20, 3),
        "load_s": round(load_s, 3),
        "first_embedding_s": round(first_s, 3),
        "run_s": round(run_s, 2),
        "texts_per_s": round(len(texts) / run_s, 2),
        "device": str(mx.default_device()),
        "mlx": mx.__version__,
        "mlx_embedgemma": mlx_embedgemma.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the documents to run")
    parser.add_argument("--output", type=Path, default=None, help="append JSONL records here (default: stdout only)")
    parser.add_argument("--kernels", choices=("auto", "native", "native-int8", "native-int16", "native-float32", "mlx"), default="auto", help="load(..., kernels=...)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.child, args.scale, args.kernels)))
        return
    config = json.loads((Path(args.model) / "config.json").read_text())
    for scenario in args.scenarios.split(","):
        if scenario not in SCENARIOS:
            parser.error(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        proc = subprocess.run(
            [sys.executable, __file__, args.model, "--child", scenario, "--scale", str(args.scale)]
            + ["--kernels", args.kernels],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode:
            sys.exit(f"scenario {scenario} failed:\n{proc.stderr}")
        record = json.loads(proc.stdout.strip().splitlines()[-1])
        record.update(
            model=str(args.model), recipe=config.get("recipe") or config.get("dtype"),
            machine=f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores", python=platform.python_version(),
            date=datetime.now(timezone.utc).isoformat(timespec="seconds"), git_commit=_commit(),
        )
        emit(record, args.output)


def _commit() -> str:
    from mlx_embedgemma.benchmarks.fingerprint import git_commit

    return git_commit()


if __name__ == "__main__":
    main()
