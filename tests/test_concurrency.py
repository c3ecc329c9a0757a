"""Models shared by threads: forward passes are serialized by one process-wide lock, so
concurrent calls give exactly the vectors of sequential ones. On the tiny float32 and 4-bit models.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import run_forked
from mlx_embedgemma import load

THREADS = 8


@pytest.mark.parametrize("fixture", ["tiny_f32", "tiny_q4"])
def test_eight_threads_get_exactly_the_sequential_results(request, fixture):
    model = load(request.getfixturevalue(fixture))
    words = "the quick brown fox jumps over the lazy dog mars venus earth".split()
    batches = [[f"{t} {k} " + " ".join(words[: (t + k) % len(words) + 1]) for k in range(12)] for t in range(THREADS)]
    sequential = [model.encode(b, prompt_name="query" if t % 2 else None, batch_size=5) for t, b in enumerate(batches)]

    def work(t: int) -> list[np.ndarray]:
        # Several rounds each, so the threads' calls really overlap; encode_iter too.
        out = []
        for _ in range(3):
            out.append(model.encode(batches[t], prompt_name="query" if t % 2 else None, batch_size=5))
        out.append(np.stack(list(model.encode_iter(batches[t], prompt_name="query" if t % 2 else None, batch_size=5, chunk_size=12))))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(work, range(THREADS)))
    for t, rounds in enumerate(results):
        for got in rounds:
            np.testing.assert_array_equal(got, sequential[t])


def test_two_models_in_eight_threads_match_sequential_and_leave_the_cache_limit(tiny_f32, tiny_q4):
    # MLX's state is process-wide: one lock for every model (backend.FORWARD_LOCK), and no global setting
    # changed per call. The old per-model lock let two models race on a save/set/restore of the cache limit.
    import mlx.core as mx

    limit = 123 << 20
    previous = mx.set_cache_limit(limit)
    try:
        models = [load(tiny_f32), load(tiny_q4)]
        texts = [[f"text {t} {k} " + "word " * ((t * 7 + k) % 23) for k in range(10)] for t in range(THREADS)]
        sequential = [models[t % 2].encode(texts[t], batch_size=3) for t in range(THREADS)]

        def work(t: int) -> list[np.ndarray]:
            return [models[t % 2].encode(texts[t], batch_size=3) for _ in range(3)]

        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(work, range(THREADS)))
        for t, rounds in enumerate(results):
            for got in rounds:
                np.testing.assert_array_equal(got, sequential[t])
        assert mx.set_cache_limit(limit) == limit, "a forward pass left MLX's cache limit changed"
    finally:
        mx.set_cache_limit(previous)


def _encode_after_fork(path, queue):
    try:
        load(path).encode(["x"])
        queue.put("ran")
    except RuntimeError as e:
        queue.put(str(e))


def test_a_child_forked_after_mlx_ran_gets_a_clear_error_not_a_hang(tiny_f32):
    load(tiny_f32).encode(["warm"])  # this process has run MLX
    exitcode, queue = run_forked(_encode_after_fork, (tiny_f32,))
    if exitcode is None:
        pytest.fail("the forked child hung")
    assert "spawn" in queue.get(timeout=5)
