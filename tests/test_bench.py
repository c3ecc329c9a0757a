"""`mlx-embedgemma bench` and `bench report` on the tiny model: records' schema and sanity, never timing values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlx_embedgemma.cli import main

FINGERPRINT_KEYS = {
    "schema", "package", "git_commit", "mlx", "backend", "device_name", "os", "machine", "python", "cores",
    "kernel", "plan", "threads", "model_hash", "random_weights", "storage", "date",
}
REFERENCE_TEXTS = [("query", "which planet is red?"), ("document", "mars is the red planet"), ("STS", "hello world")]


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_source, tiny_f32) -> Path:
    """A ../shared-like folder whose reference embeddings come from sentence-transformers on the tiny model.

    From token ids: the tiny source's tokenizer.json is a stub, so sentence-transformers is given the
    ids of its SentencePiece model, as in the parity tests.
    """
    from tiny_model import reference_embeddings

    from mlx_embedgemma import load

    model = load(tiny_f32)
    root = tmp_path_factory.mktemp("shared")
    (root / "reference").mkdir()
    rows = [{"id": str(i), "prompt_name": p, "text": t} for i, (p, t) in enumerate(REFERENCE_TEXTS)]
    ids = [model.tokenizer.encode([model.prompts[r["prompt_name"]] + r["text"]]).ids[0] for r in rows]
    vectors = np.concatenate([reference_embeddings(tiny_source, [seq]) for seq in ids])
    (root / "reference" / "public.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.save(root / "reference" / "public.npy", (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32))
    return root


@pytest.fixture(scope="module")
def bench_records(tmp_path_factory, tiny_f32, tiny_source, shared) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("bench") / "bench.jsonl"
    args = ["bench", str(tiny_f32), "--device", "cpu", "--dims", "64", "--quick", "--threads", "1",
            "--peers", "sentence-transformers", "--st-model", str(tiny_source), "--shared", str(shared),
            "--no-quality", "--output", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, [json.loads(line) for line in out.read_text().splitlines()]


def test_every_record_carries_the_fingerprint(bench_records, tiny_f32):
    from mlx_embedgemma.benchmarks.fingerprint import model_hash

    _, records = bench_records
    for r in records:
        assert {"kind", "runner", "device", "dim", "fingerprint"} <= set(r)
        f = r["fingerprint"]
        assert set(f) == FINGERPRINT_KEYS
        assert f["backend"] == "cpu" and f["threads"] == 1 and f["cores"] >= 1 and f["device_name"]
        assert f["model_hash"] == model_hash(tiny_f32) and f["random_weights"] is False


def test_fingerprints_name_the_kernel_that_ran(bench_records):
    from mlx_embedgemma import native

    _, records = bench_records
    ours = {r["fingerprint"]["kernel"] for r in records if r["runner"] == "mlx-embedgemma" and r["kind"] != "import"}
    assert ours == {f"native-{native.isa()}" if native.available() else "mlx-cpu"}
    peers = {r["fingerprint"]["kernel"] for r in records if r["runner"] == "sentence-transformers"}
    assert len(peers) == 1 and peers.pop().startswith("torch ")


def test_encode_overhead_against_the_bare_network_is_recorded(bench_records):
    _, records = bench_records
    overhead = [r for r in records if r["kind"] == "overhead"]
    assert {r["workload"] for r in overhead} == {"query", "32 x 128"}
    for r in overhead:
        assert r["runner"] == "mlx-embedgemma" and r["forward_s"] > 0
        assert r["ratio"] == pytest.approx(r["encode_s"] / r["forward_s"], rel=0.02)


def test_latency_and_throughput_records_are_complete_and_consistent(bench_records):
    _, records = bench_records
    for runner in ("mlx-embedgemma", "sentence-transformers"):
        mine = [r for r in records if r["runner"] == runner]
        (latency,) = [r for r in mine if r["kind"] == "latency"]
        assert latency["runs"] >= 30 and 0 < latency["min_ms"] <= latency["p50_ms"] <= latency["p95_ms"]
        throughput = [r for r in mine if r["kind"] == "throughput"]
        assert sorted((r["doc_tokens"], r["batch"]) for r in throughput) == [(t, b) for t in (128, 512) for b in (1, 8, 32)]
        for r in throughput:
            assert r["texts_per_s"] > 0
            assert r["tokens_per_s"] == pytest.approx(r["texts_per_s"] * r["doc_tokens"], rel=0.01)
        (process,) = [r for r in mine if r["kind"] == "process"]
        assert process["peak_rss_mb"] > 0
        assert mine[0]["runner_version"]


def test_memory_scenarios_run_in_fresh_processes(bench_records):
    _, records = bench_records
    memory = [r for r in records if r["kind"] == "memory"]
    assert sorted(r["scenario"] for r in memory) == ["docs128", "query"]
    for r in memory:
        assert r["peak_rss_mb"] > 0 and r["mlx_peak_mb"] > 0
        assert r["cold_start_s"] > r["load_s"] > 0  # cold start counts interpreter start and the first embedding
    assert [r["texts"] for r in memory if r["scenario"] == "docs128"] == [32]


def test_accuracy_is_measured_against_the_reference_for_every_runner(bench_records):
    _, records = bench_records
    accuracy = {r["runner"]: r for r in records if r["kind"] == "accuracy"}
    assert set(accuracy) == {"mlx-embedgemma", "sentence-transformers"}
    for r in accuracy.values():
        assert r["rows"] == len(REFERENCE_TEXTS) and -1 <= r["min_cosine"] <= r["mean_cosine"] <= 1
    # Float32 on both sides: the same network, so the same vectors. (The sentence-transformers peer
    # tokenizes with the tiny source's stub tokenizer.json, so its cosine here means nothing.)
    assert accuracy["mlx-embedgemma"]["min_cosine"] > 0.9999


def test_downstream_costs_follow_the_dimension(bench_records):
    _, records = bench_records
    (r,) = [r for r in records if r["kind"] == "downstream"]
    assert r["bytes_per_vector"] == {"float32": 256, "float16": 128, "int8": 64, "binary": 8}
    assert r["index_mb"]["float32"] == pytest.approx(256 * 1_000_000 / 1e6)
    assert r["search_vectors"] == 100_000 and 0 < r["search_p50_ms"] <= r["search_p95_ms"]


def test_import_cost_is_recorded(bench_records):
    _, records = bench_records
    (r,) = [r for r in records if r["kind"] == "import"]
    assert r["runner"] == "mlx-embedgemma" and r["runs"] >= 1 and r["modules"] > 0
    # Separate processes: their RSS differs by page-level noise (seen: 9.7 against 9.8 MB), hence 1 MB of slack.
    assert r["import_ms"] > 0 and r["rss_mb"] >= r["python_rss_mb"] - 1 and r["python_rss_mb"] > 0


def test_report_renders_tables_and_plots(bench_records, tmp_path):
    path, _ = bench_records
    result = CliRunner().invoke(main, ["bench", "report", str(path), "--output", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "report" / "README.md").read_text()
    for section in ("Single-query latency", "Throughput", "Against the other ways", "Memory and cold start", "downstream",
                    "## Import"):
        assert section in text
    assert "1.00×" in text  # sentence-transformers against itself
    for plot in ("latency.png", "throughput.png", "memory.png"):
        assert (tmp_path / "report" / plot).read_bytes()[:4] == b"\x89PNG"


def test_report_refuses_files_that_are_not_bench_results(tmp_path):
    bad = tmp_path / "notes.jsonl"
    bad.write_text("this is not json\n")
    result = CliRunner().invoke(main, ["bench", "report", str(bad)])
    assert result.exit_code != 0 and "line 1: not JSON" in result.output


def test_quality_comes_from_the_cache_when_present(tmp_path, tiny_f32):
    from mlx_embedgemma.benchmarks import harness
    from mlx_embedgemma.benchmarks.fingerprint import model_hash

    scores = {"sts": {"768": 80.0, "128": 70.0}, "retrieval": {"768": 60.0, "128": 50.0}}
    (tmp_path / f"quality-{model_hash(tiny_f32)}.json").write_text(json.dumps(scores))
    records = list(harness.quality_records(tiny_f32, tmp_path / "no-data", tmp_path, compute=False))
    assert {(r["task"], r["dim"], r["score"]) for r in records} == {
        ("sts", 768, 80.0), ("sts", 128, 70.0), ("retrieval", 768, 60.0), ("retrieval", 128, 50.0)}
    assert all(r["cached"] for r in records)
    assert list(harness.quality_records(tiny_f32, tmp_path, tmp_path / "empty", compute=False)) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dims", "100"], "dim must be one of"),
        (["--peers", "onnx"], "unknown peer 'onnx'"),
    ],
)
def test_bench_rejects_bad_options_with_the_fix(tiny_f32, args, message):
    result = CliRunner().invoke(main, ["bench", str(tiny_f32), *args])
    assert result.exit_code != 0 and message in result.output


def test_bench_says_when_there_is_no_gpu(tiny_f32):
    import mlx.core as mx

    if mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available()):
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(main, ["bench", str(tiny_f32), "--device", "gpu"])
    assert result.exit_code != 0 and "use --device cpu" in result.output
