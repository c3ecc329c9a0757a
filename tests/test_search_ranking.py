"""Quantization against sentence-transformers' own `quantize_embeddings`, the first pass against brute
force, the Matryoshka funnel, and reciprocal rank fusion against its definition."""

from __future__ import annotations

import numpy as np
import pytest

try:
    from sentence_transformers.util.quantization import quantize_embeddings
except ImportError:  # sentence-transformers before the move to util
    from sentence_transformers.quantization import quantize_embeddings

from mlx_embedgemma.search import quantize, ranking


def unit(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("dim", [768, 256, 100])  # 100: the last byte of a binary code is padded
def test_codes_are_sentence_transformers_codes(dim):
    vectors = unit(300, dim)
    ranges = quantize.calibrate(vectors)
    np.testing.assert_array_equal(quantize.encode(vectors, "int8", ranges),
                                  quantize_embeddings(vectors, "int8", calibration_embeddings=vectors))
    np.testing.assert_array_equal(quantize.encode(vectors, "binary"), quantize_embeddings(vectors, "ubinary"))
    # New vectors coded with ranges calibrated on others, as a store does.
    new = unit(50, dim, seed=1)
    np.testing.assert_array_equal(quantize.encode(new, "int8", ranges), quantize_embeddings(new, "int8", ranges=ranges))
    assert quantize.covers(ranges, vectors) and not quantize.covers(ranges, vectors * 2)


@pytest.mark.parametrize("store", ["float32", "int8", "binary"])
def test_first_pass_scores_rank_as_brute_force_on_decoded_codes(store):
    vectors, query = unit(5000, 100), unit(1, 100, seed=2)[0]  # 5000 > a block of int8 rows
    ranges = quantize.calibrate(vectors)
    codes = quantize.encode(vectors, store, ranges)
    scores = quantize.FirstPass(codes, store, 100, ranges).scores(query)
    if store == "binary":  # minus the Hamming distance, counted bit by bit
        bits = np.unpackbits(codes, axis=1)[:, :100]
        expected = -(bits != (query > 0)).sum(axis=1)
        np.testing.assert_array_equal(scores, expected)
        return
    if store == "int8":  # the dot product with the decoded vectors, up to one constant for all rows
        steps = (ranges[1] - ranges[0]) / 255
        decoded = ranges[0] + (codes.astype(np.float64) + 128) * steps
        expected = decoded @ query
        np.testing.assert_allclose(scores - expected, (scores - expected)[0], atol=1e-4)
        return
    np.testing.assert_allclose(scores, vectors @ query, atol=1e-6)


def test_nearest_binary_rows_by_histogram_are_the_smallest_distances():
    vectors = unit(20000, 64, seed=3)
    first = quantize.FirstPass(quantize.encode(vectors, "binary"), "binary", 64)
    query = unit(1, 64, seed=4)[0]
    distances = first.distances(query)
    for m in (1, 37, 500, 20000):
        got = ranking.nearest(first, query, m)
        assert len(got) == len(set(got.tolist())) == m
        assert distances[got].max() <= np.sort(distances)[m - 1]  # none farther than the m-th nearest


def test_funnel_rescores_candidates_with_full_vectors():
    full = unit(3000, 768, seed=5)
    query = (full[42] + 0.05 * unit(1, 768, seed=6)[0]) / np.linalg.norm(full[42] + 0.05 * unit(1, 768, seed=6)[0])
    exact = full @ query
    first = quantize.FirstPass(quantize.encode(full[:, :256] / np.linalg.norm(full[:, :256], axis=1, keepdims=True),
                                               "binary"), "binary", 256)
    read = []

    def rescore(rows):
        read.append(rows)
        return full[rows]

    rows, scores = ranking.funnel(query, first, k=5, rescore=rescore, candidates=200)
    assert rows[0] == 42 and len(read) == 1 and len(read[0]) == 200  # only the candidates were read
    np.testing.assert_allclose(scores, exact[rows], atol=1e-6)  # scores are the exact cosines...
    assert list(scores) == sorted(scores, reverse=True)  # ...best first
    # Candidates cover everything: the funnel is exact search.
    rows, _ = ranking.funnel(query, first, k=10, rescore=lambda r: full[r], candidates=3000)
    np.testing.assert_array_equal(rows, np.argsort(-exact)[:10])


def test_reciprocal_rank_fusion_follows_its_definition():
    fused = dict(ranking.fuse([[7, 3, 9], [3, 5]], k=60))
    assert fused == pytest.approx({7: 1 / 61, 3: 1 / 62 + 1 / 61, 9: 1 / 63, 5: 1 / 62})
    assert [i for i, _ in ranking.fuse([[7, 3, 9], [3, 5]])] == [3, 7, 5, 9]  # 1/61 (7, first in one list) beats 1/62 (5, second)


def test_top_breaks_ties_by_row():
    assert list(ranking.top(np.array([1.0, 3.0, 3.0, 2.0, 3.0]), 3)) == [1, 2, 4]
    assert list(ranking.top(np.array([1.0, 2.0]), 5)) == [1, 0]
