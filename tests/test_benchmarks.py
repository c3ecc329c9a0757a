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
    ]
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = precision.table([], results).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| float32 |")
    row = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert row[:3] == ["q4-mixed", "4.86", "185 MB"]
    assert row[6:10] == ["87.75 (-0.25)", "88.10 (+0.10)", "88.00 (+0.00)", "86.50 (-0.50)"]
    assert row[10:] == ["–"] * 4


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
