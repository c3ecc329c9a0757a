"""The benchmark scripts' scoring and measuring code (never timing values)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlx_embedgemma.benchmarks import precision, quality, stream

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_ranks_share_ties_like_scipy():
    np.testing.assert_allclose(quality.average_ranks(np.array([3, 1, 2, 2, 5.0])), [4, 1, 2.5, 2.5, 5])


def test_spearman_is_rank_correlation():
    x = np.array([0.1, 0.4, 0.2, 0.9])
    assert quality.spearman(x, x**3) == pytest.approx(1.0)
    assert quality.spearman(x, -x) == pytest.approx(-1.0)


def test_ndcg_at_10():
    scores = np.array([[0.9, 0.1, 0.5], [0.1, 0.9, 0.5]])
    assert quality.ndcg_at_10(scores, [{0}, {0}]) == pytest.approx((1.0 + 0.5) / 2)


def test_memory_benchmark_records_one_fresh_process_per_scenario(tiny_f32, tmp_path):
    out = tmp_path / "memory.jsonl"
    subprocess.run(
        [sys.executable, str(BENCHMARKS / "memory.py"), str(tiny_f32), "--scenarios", "query,docs128",
         "--scale", "0.005", "--output", str(out)],
        check=True, capture_output=True, text=True,
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["scenario"] for r in records] == ["query", "docs128"]
    assert records[1]["texts"] == 10
    for r in records:
        assert r["peak_rss_mb"] >= r["end_rss_mb"] > 0 and r["mlx_peak_mb"] > 0
        assert r["first_embedding_s"] >= r["load_s"] > 0 and r["recipe"] == "float32"


def test_bits_per_weight_count_scales_and_biases(tiny_f32, tiny_q4):
    from mlx_embedgemma import load

    assert precision.block_bits_per_weight(load(tiny_f32)) == pytest.approx(32)
    # 4-bit codes plus a float16 scale and bias per group of 32: 4 + 32 / 32.
    assert precision.block_bits_per_weight(load(tiny_q4)) == pytest.approx(5.0)


def test_precision_table_shows_each_score_beside_its_float32_difference(tmp_path):
    results = tmp_path / "precision.jsonl"
    records = [
        {"weights_sha256": "aa", "storage": "float32", "measurement": "sts", "scores": {"768": 88.0, "512": 88.0, "256": 88.0, "128": 87.0}},
        {"weights_sha256": "bb", "storage": "recipe q4-mixed: 4-bit", "measurement": "sts", "scores": {"768": 87.75, "512": 88.1, "256": 88.0, "128": 86.5}},
        {"weights_sha256": "bb", "storage": "recipe q4-mixed: 4-bit", "measurement": "size", "size_mb": 185.2, "block_bits_per_weight": 4.86},
        {"weights_sha256": "bb", "storage": "recipe q4-mixed: 4-bit", "measurement": "cosine_validation", "mean_cosine": 0.98891,
         "min_cosine": 0.9401, "worst": {"id": "repeat-word-en", "kind": "repeated-word", "cosine": 0.9401}},
        {"weights_sha256": "aa", "storage": "float32", "measurement": "cosine", "mean_cosine": 1.0, "min_cosine": 1.0},  # older record
    ]
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = precision.table([], results).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| float32 |")
    assert [c.strip() for c in lines[2].strip("|").split("|")][4:10] == ["1.0000", "1.0000", "–", "–", "–", "–"]
    row = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert row[:3] == ["q4-mixed", "4.86", "185 MB"]
    assert row[4:10] == ["–", "–", "–", "0.9889", "0.9401", "repeated-word (repeat-word-en)"]
    assert row[10:14] == ["87.75 (-0.25)", "88.10 (+0.10)", "88.00 (+0.00)", "86.50 (-0.50)"]
    assert row[14:] == ["–"] * 4


def test_per_text_cosine_names_the_worst_text_and_its_kind():
    import numpy as np

    rows = [{"id": "a", "kind": "short", "prompt_name": "query", "text": "x"},
            {"id": "b", "kind": "log", "prompt_name": "document", "text": "y"},
            {"id": "c", "kind": "code", "prompt_name": "query", "text": "z"}]
    reference = np.eye(3, dtype=np.float32)
    ours = {"x": [1, 0, 0], "y": [0.6, 0.8, 0], "z": [0, 0, 2]}  # unnormalized: cosine divides by the norm
    seen = []

    def encode(texts, prompt_name):
        seen.append((prompt_name, texts))
        return np.array([ours[t] for t in texts], np.float32)

    record = precision.per_text_cosine(encode, rows, reference)
    assert sorted(seen) == [("document", ["y"]), ("query", ["x", "z"])]  # one call per prompt
    assert record["cosines"] == {"a": 1.0, "b": 0.8, "c": 1.0}
    assert record["mean_cosine"] == pytest.approx(0.93333, abs=1e-5) and record["min_cosine"] == 0.8
    assert record["worst"] == {"id": "b", "kind": "log", "n_tokens": None, "cosine": 0.8}


def test_validation_set_is_frozen_beside_its_reference_and_disjoint_from_the_test_set():
    rows, reference = precision.text_set("validation")
    assert reference.shape == (len(rows), 768) and len(rows) >= 40
    assert len({r["script"] for r in rows}) >= 10 and all(r["n_tokens"] <= 2048 for r in rows)
    assert {"long-doc", "code", "table-csv", "table-md", "log", "repeated-word", "repeated-phrase", "short"} <= {r["kind"] for r in rows}
    test_set = precision.SHARED / "reference" / "public.jsonl"
    if test_set.is_file():
        held_out = {json.loads(line)["text"] for line in test_set.read_text(encoding="utf-8").splitlines() if line.strip()}
        assert not held_out & {r["text"] for r in rows}


def test_stream_lengths_mix_short_texts_with_a_long_tail():
    lengths = stream.target_lengths(3000, 32, seed=0)
    assert lengths.min() >= 1 and lengths.max() == stream.MAX_TOKENS
    assert list(lengths[999::1000]) == [stream.MAX_TOKENS] * 3
    assert 20 <= np.median(lengths) <= 45 and (lengths > 512).sum() >= 10


def test_stream_benchmark_samples_rss_after_every_call(tiny_f32, tmp_path):
    out = tmp_path / "stream.jsonl"
    subprocess.run(
        [sys.executable, str(BENCHMARKS / "stream.py"), str(tiny_f32), "--count", "30", "--chunk", "10",
         "--median-tokens", "8", "--output", str(out)],
        check=True, capture_output=True, text=True,
    )
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["texts"] == 30 and [n for n, _ in record["rss_series"]] == [10, 20, 30]
    assert record["growth_mb"] == pytest.approx(record["rss_end_mb"] - record["rss_after_warmup_mb"], abs=0.11)
    assert record["peak_rss_mb"] >= record["rss_max_sampled_mb"] > 0
    assert record["tokens_per_text"]["max"] <= 80  # the tiny model's maximum length


def test_stream_benchmark_records_none_where_rss_cannot_be_read(tiny_f32, tmp_path, monkeypatch, capsys):
    out = tmp_path / "stream.jsonl"
    monkeypatch.setattr(stream, "rss_mb", lambda pid=None: None)
    monkeypatch.setattr(sys, "argv", ["stream.py", str(tiny_f32), "--count", "20", "--chunk", "10",
                                      "--median-tokens", "8", "--output", str(out)])
    stream.main()
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["rss_series"] == [[10, None], [20, None]]
    assert record["rss_end_mb"] is record["growth_mb"] is record["rss_max_sampled_mb"] is None
    assert record["peak_rss_mb"] > 0 and "RSS unknown" in capsys.readouterr().err


@pytest.fixture
def no_proc(monkeypatch, tmp_path):
    """As on macOS: no /proc to read."""
    from mlx_embedgemma.benchmarks import memory

    monkeypatch.setattr(memory, "PROC", tmp_path / "no-proc")
    return memory


def test_rss_without_proc_comes_from_ps(no_proc):
    assert no_proc.status_mb("VmRSS") is None
    # The child says when it has started: sampled while the interpreter still starts, its RSS moves by 10%.
    child = subprocess.Popen([sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"ready"
        from_ps = no_proc.rss_mb(child.pid)
        on_linux = int(next(line.split()[1] for line in open(f"/proc/{child.pid}/status") if line.startswith("VmRSS:"))) / 1024
    finally:
        child.communicate(b"")
    assert from_ps == pytest.approx(on_linux, rel=0.05)


def test_macos_rss_of_this_process_falls_back_to_ps_where_mach_is_missing(no_proc, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert no_proc._mach_resident_mb() is None  # no libSystem on Linux: the ctypes call fails cleanly
    before = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS:"))) / 1024
    assert no_proc.rss_mb() == pytest.approx(before, rel=0.1)


@pytest.mark.parametrize("platform, unit", [("darwin", 1), ("linux", 1024)])
def test_peak_rss_from_getrusage_in_each_platforms_unit(no_proc, monkeypatch, platform, unit):
    import resource
    import types

    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(resource, "getrusage", lambda who: types.SimpleNamespace(ru_maxrss=300 * 2**20 // unit))
    assert no_proc.peak_rss_mb() == pytest.approx(300)


# Writes 1 MB to stderr before its one record: far more than a pipe holds, so a parent that reads stderr
# only once stdout has closed waits on the child while the child waits on it.
NOISY_CHILD = "import sys; sys.stderr.write('x' * (1 << 20)); sys.stderr.flush(); print('{\"kind\": \"noise\"}')"


@pytest.mark.parametrize("fails", [False, True])
def test_bench_child_writing_much_to_stderr_does_not_block_the_parent(monkeypatch, fails):
    import threading

    from mlx_embedgemma.benchmarks import harness

    real_popen = subprocess.Popen
    code = NOISY_CHILD + ("; sys.exit(3)" if fails else "")
    monkeypatch.setattr(harness.subprocess, "Popen", lambda args, **kw: real_popen([sys.executable, "-c", code], **kw))
    job = harness.Job(runner="noisy", device="cpu", model="", variant="", dims=[], threads=1, settings={}, texts_file="")
    outcome: dict = {}

    def consume() -> None:
        try:
            outcome["records"] = list(harness.run_child("latency", job, 1))
        except RuntimeError as e:
            outcome["error"] = str(e)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    reader.join(120)
    assert not reader.is_alive(), "the parent blocked on a child that filled its stderr pipe"
    if fails:
        assert "noisy on cpu (latency) failed" in outcome["error"] and outcome["error"].endswith("x" * 100)
    else:
        assert outcome["records"] == [{"kind": "noise"}]


def test_tokenize_scaling_benchmark_records_both_sizes_and_their_ratio(tiny_f32, tmp_path):
    out = tmp_path / "scaling.jsonl"
    subprocess.run([sys.executable, str(BENCHMARKS / "tokenize_scaling.py"), str(tiny_f32), "--megabytes", "0.01",
                    "--runs", "1", "--output", str(out)], check=True, capture_output=True, text=True)
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["bytes"]["large"] == 4 * record["bytes"]["small"] >= 10_000
    assert record["ratio"] == pytest.approx(record["seconds"]["large"] / record["seconds"]["small"], rel=0.05)
    assert record["fingerprint"]["git_commit"] and record["fingerprint"]["model_hash"]
