"""The benchmark scripts' scoring and measuring code (never timing values)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import quality  # noqa: E402


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
