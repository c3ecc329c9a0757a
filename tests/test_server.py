"""`mlx-embedgemma serve` on the tiny model, over loopback, with the real `openai` client.

One server runs as a subprocess of the installed console script for most tests; the queue-limit and
shutdown tests run the same app in-process (uvicorn in a thread) around a model made slow on purpose,
so that a full queue is certain rather than a race.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from mlx_embedgemma import load  # noqa: E402
from mlx_embedgemma.embedder import TruncationWarning  # noqa: E402
from tiny_model import SMALL_DIMS

MODEL_ID = "tiny-matryoshka"
TEXTS = ["mars is the red planet", "venus is earth's twin", "üñíçødé 中文 🚀", "", "the quick brown fox"]
MAX_INPUTS = 100
MAX_REQUEST_TOKENS = 2000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model(tiny_matryoshka):
    return load(tiny_matryoshka)


def wait_for_health(url: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            r = httpx.get(url + "/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not answer /health in time")


@pytest.fixture(scope="module")
def server(tiny_matryoshka, tmp_path_factory):
    script = shutil.which("mlx-embedgemma", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the mlx-embedgemma console script is not installed next to this Python")
    port = free_port()
    proc = subprocess.Popen(
        [script, "serve", str(tiny_matryoshka), "--port", str(port), "--batch-wait-ms", "30", "--no-access-log",
         "--max-inputs", str(MAX_INPUTS), "--max-request-tokens", str(MAX_REQUEST_TOKENS)],
        cwd=tmp_path_factory.mktemp("serve-cwd"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def vectors(response) -> np.ndarray:
    """The rows of a response; base64 asked for explicitly comes back from the client undecoded."""
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") if isinstance(d.embedding, str) else d.embedding
                     for d in response.data], np.float32)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# --- results equal model.encode -----------------------------------------------------------------------


def test_float_list_equals_encode(client, model):
    r = client.embeddings.create(model=MODEL_ID, input=TEXTS, encoding_format="float")
    np.testing.assert_allclose(vectors(r), model.encode(TEXTS), atol=1e-6)
    assert r.model == MODEL_ID and r.object == "list"
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(model.count_tokens(TEXTS))


def test_base64_equals_encode(client, model, server):
    # The openai client asks for base64 by default and decodes it itself.
    r = client.embeddings.create(model=MODEL_ID, input=TEXTS)
    np.testing.assert_allclose(vectors(r), model.encode(TEXTS), atol=1e-6)
    raw = httpx.post(server + "/v1/embeddings", json={"model": MODEL_ID, "input": TEXTS, "encoding_format": "base64"})
    assert raw.status_code == 200
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in raw.json()["data"]])
    np.testing.assert_allclose(decoded, model.encode(TEXTS), atol=1e-6)


def test_a_string_gives_one_embedding(client, model):
    r = client.embeddings.create(model=MODEL_ID, input="mars", encoding_format="float")
    assert len(r.data) == 1
    np.testing.assert_allclose(r.data[0].embedding, model.encode("mars"), atol=1e-6)
    assert r.usage.prompt_tokens == model.count_tokens(["mars"])[0]


@pytest.mark.parametrize("dim", SMALL_DIMS)
def test_dimensions_are_matryoshka_sizes(client, model, dim):
    for fmt in ("float", "base64"):
        r = client.embeddings.create(model=MODEL_ID, input=TEXTS, dimensions=dim, encoding_format=fmt)
        got = vectors(r)
        assert got.shape == (len(TEXTS), dim)
        np.testing.assert_allclose(got, model.encode(TEXTS, dim=dim), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_model_aliases_and_prompt_name_choose_the_prompt(client, model):
    q = client.embeddings.create(model=f"{MODEL_ID}:query", input=TEXTS, encoding_format="float")
    np.testing.assert_allclose(vectors(q), model.encode_query(TEXTS), atol=1e-6)
    assert q.model == f"{MODEL_ID}:query"
    assert q.usage.prompt_tokens == sum(model.count_tokens(TEXTS, prompt_name="query"))
    d = client.embeddings.create(model=MODEL_ID, input=TEXTS, encoding_format="float", extra_body={"prompt_name": "document"})
    np.testing.assert_allclose(vectors(d), model.encode_document(TEXTS), atol=1e-6)
    assert not np.allclose(vectors(q), vectors(d), atol=1e-3)
    same = client.embeddings.create(model=f"{MODEL_ID}:STS", input=TEXTS, encoding_format="float",
                                    extra_body={"prompt_name": "STS"}, dimensions=16)
    np.testing.assert_allclose(vectors(same), model.encode(TEXTS, prompt_name="STS", dim=16), atol=1e-6)


def test_a_request_larger_than_a_batch_comes_back_whole_and_in_order(client, model):
    texts = [f"n{i} {'mars ' * (i % 4)}" for i in range(MAX_INPUTS)]  # over 3 batches of 32
    r = client.embeddings.create(model=MODEL_ID, input=texts, encoding_format="float", dimensions=32)
    np.testing.assert_allclose(vectors(r), model.encode(texts, dim=32), atol=1e-6)


def test_models_lists_the_id_and_its_aliases(client, server, model):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == MODEL_ID
    assert {f"{MODEL_ID}:{name}" for name in model.prompts} == set(ids[1:])
    assert client.models.retrieve(f"{MODEL_ID}:query").id == f"{MODEL_ID}:query"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_health_reports_counters(server):
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL_ID and health["dims"] == SMALL_DIMS
    for key in ("requests", "inputs", "tokens", "batches", "forward_passes", "queued"):
        assert isinstance(health[key], int)


# --- batching ---------------------------------------------------------------------------------------


def test_concurrent_requests_share_batches(server, model):
    n = 16
    before = httpx.get(server + "/health").json()
    barrier = threading.Barrier(n)

    def one(i: int) -> np.ndarray:
        with httpx.Client() as c:
            barrier.wait()
            r = c.post(server + "/v1/embeddings", json={"model": MODEL_ID, "input": f"text number {i}"})
            assert r.status_code == 200, r.text
            return np.array(r.json()["data"][0]["embedding"], np.float32)

    with ThreadPoolExecutor(n) as pool:
        got = list(pool.map(one, range(n)))
    after = httpx.get(server + "/health").json()
    assert after["requests"] - before["requests"] == n
    batches = after["batches"] - before["batches"]
    assert 1 <= batches < n, f"{n} concurrent requests ran in {batches} batches"
    np.testing.assert_allclose(np.stack(got), model.encode([f"text number {i}" for i in range(n)]), atol=1e-6)


# --- errors -----------------------------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert e.value.code == "model_not_found"
    err = error_of(httpx.post(server + "/v1/embeddings", json={"model": "nope", "input": "x"}))
    assert err["param"] == "model" and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, param", [
    ({"input": "x", "dimensions": 100}, "dimensions"),
    ({"input": "x", "dimensions": "32"}, "dimensions"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "x", "prompt_name": "nope"}, "prompt_name"),
    ({"input": "x", "model": f"{MODEL_ID}:query", "prompt_name": "document"}, "prompt_name"),
    ({"input": [1, 2, 3]}, "input"),
    ({"input": [[1, 2], [3]]}, "input"),
    ({"input": []}, "input"),
    ({"input": ["ok", None]}, "input"),
    ({"input": {"text": "x"}}, "input"),
    ({}, "input"),
])
def test_invalid_requests_are_400_with_openai_bodies(server, body, param):
    r = httpx.post(server + "/v1/embeddings", json={"model": MODEL_ID, **body})
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_lone_surrogate_is_400_naming_the_input(server):
    body = json.dumps({"model": MODEL_ID, "input": ["ok", "bad \udc80"]})  # ASCII, with the \\udc80 escape
    r = httpx.post(server + "/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["param"] == "input" and "input[1]" in err["message"] and "surrogate" in err["message"]


def test_openai_client_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL_ID, input="x", dimensions=100)
    assert "16" in e.value.message and e.value.param == "dimensions"


def test_bad_json_is_400(server):
    r = httpx.post(server + "/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in error_of(r)["message"]
    r = httpx.post(server + "/v1/embeddings", json=["a list"])
    assert r.status_code == 400


def test_too_long_input_is_400_unless_truncation_is_asked(server, model):
    long = "mars venus " * 200  # far over the tiny model's 80 tokens
    r = httpx.post(server + "/v1/embeddings", json={"model": MODEL_ID, "input": ["ok", long]})
    assert r.status_code == 400
    err = error_of(r)
    assert err["code"] == "context_length_exceeded" and "input[1]" in err["message"] and "80" in err["message"]
    r = httpx.post(server + "/v1/embeddings", json={"model": MODEL_ID, "input": ["ok", long], "truncate": True})
    assert r.status_code == 200
    assert r.headers["x-truncated-inputs"] == "1" and r.json()["truncated"] == [1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        expected = model.encode(["ok", long])
    got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert r.json()["usage"]["prompt_tokens"] == model.count_tokens(["ok"])[0] + model.max_seq_length


def test_too_many_inputs_is_413(server, client):
    r = httpx.post(server + "/v1/embeddings", json={"model": MODEL_ID, "input": ["x"] * (MAX_INPUTS + 1)})
    assert r.status_code == 413
    assert error_of(r)["code"] == "too_many_inputs"
    with pytest.raises(openai.APIStatusError) as e:
        client.embeddings.create(model=MODEL_ID, input=["x"] * (MAX_INPUTS + 1))
    assert e.value.status_code == 413


def test_too_many_tokens_is_413(server, model):
    text = "mars venus jupiter " * 2
    per_text = model.count_tokens([text])[0]
    n = MAX_REQUEST_TOKENS // per_text + 1
    assert per_text < model.max_seq_length and n <= MAX_INPUTS
    r = httpx.post(server + "/v1/embeddings", json={"model": MODEL_ID, "input": [text] * n})
    assert r.status_code == 413
    err = error_of(r)
    assert err["code"] == "request_too_large" and str(MAX_REQUEST_TOKENS) in err["message"]


def test_too_large_body_is_413(server):
    body = json.dumps({"model": MODEL_ID, "input": "x" * (9 << 20)}).encode()
    r = httpx.post(server + "/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"


def test_unknown_route_and_method_have_error_bodies(server):
    assert error_of(httpx.get(server + "/v1/nope"))
    r = httpx.get(server + "/v1/embeddings")
    assert r.status_code == 405 and error_of(r)


# --- queue limit and shutdown, in-process --------------------------------------------------------------


class InProcessServer:
    def __init__(self, app, grace_s: float = 30.0):
        from mlx_embedgemma.server import make_server

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server(app, port=self.port, log_level="warning", access_log=False, grace_s=grace_s)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_for_health(self.url, timeout=30)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def slow_model(tiny_matryoshka):
    """A real tiny model whose forward passes take 0.3 s, so requests pile up in the queue."""
    m = load(tiny_matryoshka)
    fast = m.embed_ids

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return fast(*args, **kwargs)

    m.embed_ids = slow
    return m


def test_a_full_queue_answers_429(slow_model):
    from mlx_embedgemma.server import ServerConfig, create_app

    app = create_app(slow_model, ServerConfig(model_id=MODEL_ID, max_queue=2, max_batch_size=1, batch_wait_ms=0))
    n = 12
    with InProcessServer(app) as srv:
        barrier = threading.Barrier(n)

        def one(i: int) -> httpx.Response:
            with httpx.Client(timeout=60) as c:
                barrier.wait()
                return c.post(srv.url + "/v1/embeddings", json={"model": MODEL_ID, "input": f"t{i}"})

        with ThreadPoolExecutor(n) as pool:
            responses = list(pool.map(one, range(n)))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) <= {200, 429}, codes
        for r in responses:
            if r.status_code == 429:
                err = error_of(r)
                assert err["code"] == "queue_full" and err["type"] == "rate_limit_error"
        health = httpx.get(srv.url + "/health").json()
        assert health["rejected_queue_full"] == codes.count(429) and health["requests"] == codes.count(200)
        # The openai client sees a RateLimitError (with retries off).
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(c.embeddings.create, model=MODEL_ID, input=f"q{i}") for i in range(8)]
            errors = [f.exception() for f in futures]
        assert any(isinstance(e, openai.RateLimitError) for e in errors)


def test_a_server_shutting_down_answers_503(slow_model):
    from mlx_embedgemma.server import ServerConfig, create_app

    app = create_app(slow_model, ServerConfig(model_id=MODEL_ID))
    with InProcessServer(app) as srv:
        app.state.batcher.closing = True
        r = httpx.post(srv.url + "/v1/embeddings", json={"model": MODEL_ID, "input": "x"})
        assert r.status_code == 503 and error_of(r)["code"] == "server_shutting_down"
        assert httpx.get(srv.url + "/health").json()["status"] == "shutting_down"


def test_shutdown_answers_every_request_in_flight(slow_model):
    """uvicorn shuts down with requests queued behind 0.3 s passes and a 2 s grace (so 1 s of draining):
    each client gets its vectors or a 503, none a 500 or a dropped connection, and the pass running
    when the drain ends still delivers."""
    from mlx_embedgemma.server import ServerConfig, create_app

    app = create_app(slow_model, ServerConfig(model_id=MODEL_ID, max_batch_size=1, batch_wait_ms=0))
    n = 8
    srv = InProcessServer(app, grace_s=2.0)
    with srv:
        def one(i: int) -> httpx.Response | Exception:
            try:
                return httpx.post(srv.url + "/v1/embeddings", json={"model": MODEL_ID, "input": f"t{i}"}, timeout=60)
            except httpx.HTTPError as e:
                return e

        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            deadline = time.monotonic() + 30
            while len(app.state.batcher.queue) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(app.state.batcher.queue) >= 4, "the requests did not queue up"
            srv.server.should_exit = True
            results = [f.result() for f in futures]
    assert not srv.thread.is_alive()
    codes = [r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in results]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    for i, r in enumerate(results):
        if r.status_code == 200:
            vector = np.array(r.json()["data"][0]["embedding"], np.float32)
            np.testing.assert_allclose(vector, slow_model.encode([f"t{i}"])[0], atol=1e-5)
        else:
            assert error_of(r)["code"] == "server_shutting_down"


def test_a_job_is_compared_by_identity():
    from mlx_embedgemma.server import Job

    future = object()
    a, b = Job([[2, 5, 1]], future), Job([[2, 5, 1]], future)
    assert a != b and a == a
    assert len({a, b}) == 2  # hashable: by identity


def test_requests_from_different_prompts_and_sizes_share_one_pass(tiny_matryoshka, model):
    from mlx_embedgemma.server import ServerConfig, create_app

    slow = load(tiny_matryoshka)
    fast = slow.embed_ids
    sizes = []

    def recording(ids, *args, **kwargs):
        sizes.append(len(ids))
        time.sleep(0.3)
        return fast(ids, *args, **kwargs)

    slow.embed_ids = recording
    app = create_app(slow, ServerConfig(model_id=MODEL_ID, batch_wait_ms=0))
    requests = [("query", 16, "alpha"), ("document", 32, "beta"), (None, 64, "gamma"), ("STS", 16, "delta")]
    with InProcessServer(app) as srv:
        # Occupy the worker, then send four different requests that must wait together.
        first = threading.Thread(target=httpx.post, args=(srv.url + "/v1/embeddings",),
                                 kwargs={"json": {"model": MODEL_ID, "input": "occupy"}, "timeout": 60})
        first.start()
        time.sleep(0.1)

        def one(req):
            prompt, dim, text = req
            body = {"model": MODEL_ID, "input": [text], "dimensions": dim, **({"prompt_name": prompt} if prompt else {})}
            r = httpx.post(srv.url + "/v1/embeddings", json=body, timeout=60)
            assert r.status_code == 200, r.text
            return np.array(r.json()["data"][0]["embedding"], np.float32)

        with ThreadPoolExecutor(len(requests)) as pool:
            got = list(pool.map(one, requests))
        first.join()
    assert sizes[-1] == len(requests), sizes  # the four waited, then ran as one batch
    for (prompt, dim, text), vector in zip(requests, got):
        np.testing.assert_allclose(vector, model.encode(text, prompt_name=prompt, dim=dim), atol=1e-6)


def test_is_loopback():
    from mlx_embedgemma.server import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("::")


def test_serve_refuses_an_unknown_dim_before_binding(tiny_matryoshka):
    from click.testing import CliRunner

    from mlx_embedgemma.cli import main

    result = CliRunner().invoke(main, ["serve", str(tiny_matryoshka), "--dim", "100"])
    assert result.exit_code == 1 and "64, 32, 16" in result.output


def test_the_batch_wait_grows_only_under_concurrent_load(model):
    from mlx_embedgemma.server import Batcher, ServerConfig

    b = Batcher(model, ServerConfig(model_id=MODEL_ID, batch_wait_ms=5))
    assert b.wait_seconds() == pytest.approx(0.005)
    b._last_pass_s, b._last_batch_requests = 0.6, 1  # a lone client: no extra wait
    assert b.wait_seconds() == pytest.approx(0.005)
    b._last_batch_requests = 8  # several clients: a tenth of a pass
    assert b.wait_seconds() == pytest.approx(0.06)
    b._last_pass_s = 5.0  # capped
    assert b.wait_seconds() == pytest.approx(0.1)
    b._last_pass_s = 0.01  # never below the configured window
    assert b.wait_seconds() == pytest.approx(0.005)
    b.config.adaptive_wait = False
    b._last_pass_s = 0.6
    assert b.wait_seconds() == pytest.approx(0.005)
