"""One model object shared by threads: the model serializes its forward passes itself (a lock), so
concurrent calls give exactly the vectors of sequential ones. On the tiny float32 and 4-bit models.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

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
