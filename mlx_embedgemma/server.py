"""An OpenAI-compatible embeddings server (`mlx-embedgemma serve`): Starlette on uvicorn.

    POST /v1/embeddings   {"input": str | [str], "model": id, "dimensions": 256, "encoding_format": "float" | "base64",
                           "prompt_name": "query"}   (prompt_name and truncate are extensions)
    GET  /v1/models       the served id and its prompt aliases ("<id>:query", "<id>:document", ...)
    GET  /health          status and counters (requests, inputs, batches, forward passes, queue)

Requests are tokenized as they arrive (with their task prompt, so requests with different prompts and
sizes share forward passes), queued, and one worker runs everything waiting at once: it waits up to
``batch_wait_ms`` for company (longer under concurrent load, see ``Batcher.wait_seconds``), takes up to ``max_batch_size`` texts, runs them through the model in a
single thread of its own, computes the full-size embedding and cuts it to each request's Matryoshka size.
A request bigger than one batch is run a batch at a time, its remainder going back to the end of the
queue, so a large upload does not hold up the short queries behind it.

Errors carry OpenAI's body, ``{"error": {"message", "type", "param", "code"}}``: 400 for invalid input
(and for a text longer than the model's context, unless the request or the server allows truncation),
404 for an unknown model, 413 for too many inputs, tokens or bytes in one request, 429 when the queue is
full, 503 while shutting down (requests accepted before the shutdown are still served, for up to half of
uvicorn's grace, then answered 503: see ``make_server``).

Imported only by the `serve` command: `import mlx_embedgemma` never loads Starlette or uvicorn.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .embedder import EmbeddingGemma, truncate
from .inputs import check_texts

log = logging.getLogger("mlx_embedgemma.server")


@dataclass
class ServerConfig:
    model_id: str
    max_batch_size: int = 32  # texts per batch the worker takes from the queue
    batch_wait_ms: float = 5.0  # how long the worker waits for more requests once one has arrived
    max_batch_tokens: int | None = None  # padded tokens per forward pass (default: the embedder's)
    max_queue: int = 256  # requests waiting (beyond it: 429)
    max_inputs: int = 2048  # texts per request (beyond it: 413), OpenAI's own limit
    max_request_tokens: int = 65536  # tokens per request, prompts included (beyond it: 413)
    max_body_bytes: int = 8 << 20  # request body (beyond it: 413)
    default_dim: int | None = None  # `dimensions` when a request gives none (None: the model's full size)
    default_prompt_name: str | None = None  # task prompt when a request names none (None: the model's default)
    truncate: bool = False  # cut over-long texts instead of answering 400 (requests may ask with "truncate": true)
    adaptive_wait: bool = True  # under concurrent load, wait up to 10% of a pass (<= 100 ms) for more requests


class APIError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


@dataclass(eq=False)  # a job is itself: compared and hashed by identity, never by its token lists
class Job:
    """One request's texts (token ids, prompt included) on their way through the queue."""

    ids: list[list[int]]
    future: asyncio.Future
    done: int = 0  # texts taken by the worker so far
    parts: list[np.ndarray] = field(default_factory=list)


class Batcher:
    """The queue and the worker that owns every call into the model (dynamic batching)."""

    def __init__(self, model: EmbeddingGemma, config: ServerConfig):
        self.model = model
        self.config = config
        self.max_batch_tokens = config.max_batch_tokens or model.plan.max_batch_tokens
        self.queue: deque[Job] = deque()
        self.closing = False
        self.stats = {"requests": 0, "inputs": 0, "tokens": 0, "batches": 0, "forward_passes": 0,
                      "rejected_queue_full": 0, "largest_batch": 0}
        self._wakeup: asyncio.Event | None = None
        self._last_pass_s = 0.0
        self._last_batch_requests = 0
        self._task: asyncio.Task | None = None
        self._idle: asyncio.Event | None = None  # clear while a forward pass runs
        self._progress: asyncio.Event | None = None  # set after each pass
        # One thread runs the model: MLX calls stay on it, and forward passes never overlap.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx-embedgemma-model")

    async def start(self) -> None:
        self._wakeup, self._idle, self._progress = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._idle.set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def drain(self, grace_s: float) -> None:
        """Answer every accepted request: new ones get 503; those queued are served for up to ``grace_s``,
        then answered 503; the forward pass under way always finishes and delivers its vectors.
        """
        self.closing = True
        if self._task is None:  # never started: nothing was accepted
            return
        assert self._wakeup is not None and self._idle is not None and self._progress is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while (self.queue or not self._idle.is_set()) and (left := deadline - loop.time()) > 0:
            self._progress.clear()
            self._wakeup.set()
            try:
                await asyncio.wait_for(self._progress.wait(), left)
            except asyncio.TimeoutError:
                break
        while self.queue:
            job = self.queue.popleft()
            if not job.future.done():
                job.future.set_exception(shutting_down())
        await self._idle.wait()

    async def stop(self) -> None:
        """Answer what is still queued 503 (``make_server`` drains earlier, with a grace), let the pass under
        way deliver, then end the worker, which waits idle for work that can no longer come."""
        await self.drain(0)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def embed(self, ids: list[list[int]]) -> np.ndarray:
        """Full-size embeddings (n, hidden) of already tokenized texts, in order."""
        if self.closing:
            raise shutting_down()
        if len(self.queue) >= self.config.max_queue:
            self.stats["rejected_queue_full"] += 1
            raise APIError(429, f"the server's queue is full ({self.config.max_queue} requests waiting); retry later",
                           type="rate_limit_error", code="queue_full")
        job = Job(ids, asyncio.get_running_loop().create_future())
        self.queue.append(job)
        assert self._wakeup is not None
        self._wakeup.set()
        return await job.future

    def wait_seconds(self) -> float:
        """How long a batch waits for more requests once one is queued.

        ``batch_wait_ms``, or, while several clients are sending (the last batch held more than one
        request), up to a tenth of the last batch's time (at most 100 ms): clients whose answers have
        just gone out are about to send again, and on a CPU, where a pass costs about the same whatever
        its size, catching them raises throughput (16 clients, 5 ms against an adaptive window: README
        "OpenAI-compatible server", records in benchmarks/results/serve-load-linux-x86_64.jsonl). A lone
        client never waits longer than ``batch_wait_ms``.
        """
        base = self.config.batch_wait_ms / 1000
        if not self.config.adaptive_wait or self._last_batch_requests < 2:
            return base
        return max(base, min(0.1 * self._last_pass_s, 0.1))

    def pending_inputs(self) -> int:
        return sum(len(j.ids) - j.done for j in self.queue)

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self.queue:
                continue
            # Wait a moment for company, unless a full batch is already there.
            deadline = loop.time() + self.wait_seconds()
            while (not self.closing and self.pending_inputs() < self.config.max_batch_size
                   and (left := deadline - loop.time()) > 0):
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except asyncio.TimeoutError:
                    break
                self._wakeup.clear()
            taken = self._take()
            if not taken:  # every job left had lost its client
                self._pass_over()
                continue
            ids = [x for job, start, stop in taken for x in job.ids[start:stop]]
            began = loop.time()
            self._idle.clear()
            try:
                full = await loop.run_in_executor(self._executor, self._forward, ids)
            except Exception as e:  # a failure in the model fails this batch's requests, not the server
                log.exception("forward pass failed")
                for job, _, _ in taken:
                    if not job.future.done():
                        job.future.set_exception(APIError(500, f"embedding failed: {e}", type="server_error"))
                    if job in self.queue:
                        self.queue.remove(job)
                self._pass_over()
                continue
            self._last_pass_s = loop.time() - began
            self._last_batch_requests = len(taken)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(ids))
            row = 0
            for job, start, stop in taken:
                job.parts.append(full[row : row + stop - start])
                row += stop - start
                if stop == len(job.ids) and not job.future.done():
                    job.future.set_result(np.concatenate(job.parts) if len(job.parts) > 1 else job.parts[0])
            self._pass_over()

    def _pass_over(self) -> None:
        """The worker is idle again: tell ``drain``, and wake the worker itself if work is queued."""
        assert self._wakeup is not None and self._idle is not None and self._progress is not None
        self._idle.set()
        self._progress.set()
        if self.queue:
            self._wakeup.set()

    def _take(self) -> list[tuple[Job, int, int]]:
        """Up to max_batch_size texts from the head of the queue; a partly taken job goes to the back."""
        budget = self.config.max_batch_size
        taken = []
        while self.queue and budget > 0:
            job = self.queue.popleft()
            if job.future.done():  # its client gave up
                continue
            start = job.done
            stop = min(len(job.ids), start + budget)
            taken.append((job, start, stop))
            job.done = stop
            budget -= stop - start
            if stop < len(job.ids):
                self.queue.append(job)
                break
        return taken

    def _forward(self, ids: list[list[int]]) -> np.ndarray:
        def counted(_: int) -> None:
            self.stats["forward_passes"] += 1

        if not ids:
            return np.zeros((0, self.model.network.args.embedding_dim), np.float32)
        return self.model.embed_ids(ids, self.config.max_batch_size, self.max_batch_tokens, counted)


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down; retry on another instance or later", type="server_error",
                    code="server_shutting_down")


def model_aliases(model: EmbeddingGemma, model_id: str) -> dict[str, str | None]:
    """Model names a request may give, each mapped to the prompt name it implies (None: the default)."""
    return {model_id: None, **{f"{model_id}:{name}": name for name in model.prompts}}


def check_config(model: EmbeddingGemma, config: ServerConfig) -> None:
    """ValueError for a default size or prompt the model does not have."""
    if config.default_dim is not None:
        model.check_dim(config.default_dim)
    if config.default_prompt_name is not None:
        model.prompt_prefix(config.default_prompt_name, None)


def create_app(model: EmbeddingGemma, config: ServerConfig) -> Starlette:
    check_config(model, config)
    batcher = Batcher(model, config)
    aliases = model_aliases(model, config.model_id)
    created = int(time.time())

    async def embeddings(request: Request) -> Response:
        try:
            body = await read_json(request, config.max_body_bytes)
            return await embed_request(body)
        except APIError as e:
            return e.response()

    async def embed_request(body: Any) -> Response:
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        texts = parse_input(body.get("input"), config.max_inputs)
        try:
            check_texts(texts)  # the library's input contract: a lone surrogate (JSON "\\udc80") is refused
        except (TypeError, ValueError) as e:
            raise APIError(400, str(e).replace("texts[", "input[", 1), param="input") from None
        requested_model = body.get("model", config.model_id)
        if not isinstance(requested_model, str):
            raise APIError(400, "'model' must be a string", param="model")
        if requested_model not in aliases:
            raise APIError(404, f"The model '{requested_model}' does not exist. This server serves "
                           f"{', '.join(aliases)}", param="model", code="model_not_found")
        prompt_name = resolve_prompt(body.get("prompt_name"), aliases[requested_model], config.default_prompt_name)
        try:
            prefix = model.prompt_prefix(prompt_name, None)
        except ValueError as e:
            raise APIError(400, str(e), param="prompt_name") from None
        dim = body.get("dimensions")
        if dim is None:
            dim = config.default_dim or model.network.args.embedding_dim
        else:
            try:
                dim = model.check_dim(dim)
            except ValueError as e:
                raise APIError(400, f"'dimensions': {e}", param="dimensions") from None
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise APIError(400, f"'encoding_format' must be 'float' or 'base64', got {encoding!r}", param="encoding_format")
        allow_cut = body.get("truncate", config.truncate)
        if not isinstance(allow_cut, bool):
            raise APIError(400, "'truncate' must be true or false", param="truncate")

        encoded = await run_in_threadpool(model.tokenizer.encode, [prefix + t for t in texts])
        if encoded.truncated and not allow_cut:
            first = encoded.truncated[0]
            raise APIError(400, f"This model's maximum context length is {model.max_seq_length} tokens (task prompt, "
                           f"<bos> and <eos> included); input[{first}] is longer"
                           f"{f' (and {len(encoded.truncated) - 1} more)' if len(encoded.truncated) > 1 else ''}. "
                           'Shorten it, or send "truncate": true to cut it as sentence-transformers does',
                           param="input", code="context_length_exceeded")
        tokens = sum(map(len, encoded.ids))
        if tokens > config.max_request_tokens:
            raise APIError(413, f"the request holds {tokens} tokens, over this server's limit of "
                           f"{config.max_request_tokens} per request; split it into smaller requests",
                           param="input", code="request_too_large")

        full = await batcher.embed(encoded.ids)
        vectors = truncate(full, dim)
        batcher.stats["requests"] += 1
        batcher.stats["inputs"] += len(texts)
        batcher.stats["tokens"] += tokens
        if encoding == "base64":
            items = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            items = vectors.tolist()
        payload = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)],
            "model": requested_model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        headers = {}
        if encoded.truncated:
            payload["truncated"] = encoded.truncated
            headers["X-Truncated-Inputs"] = ",".join(map(str, encoded.truncated))
        return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json", headers=headers)

    async def models(request: Request) -> Response:
        data = [{"id": name, "object": "model", "created": created, "owned_by": "mlx-embedgemma",
                 "prompt_name": prompt} for name, prompt in aliases.items()]
        return JSONResponse({"object": "list", "data": data})

    async def one_model(request: Request) -> Response:
        name = request.path_params["model"]
        if name not in aliases:
            return APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found").response()
        return JSONResponse({"id": name, "object": "model", "created": created, "owned_by": "mlx-embedgemma",
                             "prompt_name": aliases[name]})

    async def health(request: Request) -> Response:
        return JSONResponse({
            "status": "shutting_down" if batcher.closing else "ok",
            "model": config.model_id,
            "dims": list(model.dims),
            "max_seq_length": model.max_seq_length,
            "queued": len(batcher.queue),
            **batcher.stats,
        })

    async def not_found(request: Request, exc: Exception) -> Response:
        return APIError(404, f"no route {request.method} {request.url.path}", code="not_found").response()

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return APIError(405, f"method {request.method} is not allowed on {request.url.path}").response()

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return APIError(500, f"internal error: {type(exc).__name__}", type="server_error").response()

    @asynccontextmanager
    async def lifespan(app: Starlette):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = Starlette(
        routes=[
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", one_model, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed, 500: server_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return app


async def read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large_body(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large_body(limit)
    except ClientDisconnect:
        raise APIError(400, "the client disconnected before sending the whole body") from None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})") from None


def too_large_body(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes; "
                    "split it into smaller requests", code="request_too_large")


def parse_input(value: Any, max_inputs: int) -> list[str]:
    if isinstance(value, str):
        return [value]
    if value is None:
        raise APIError(400, "'input' is required: a string or a list of strings", param="input")
    if not isinstance(value, list):
        raise APIError(400, f"'input' must be a string or a list of strings, got {type(value).__name__}", param="input")
    if not value:
        raise APIError(400, "'input' must not be an empty list", param="input")
    if len(value) > max_inputs:
        raise APIError(413, f"'input' holds {len(value)} texts, over this server's limit of {max_inputs} per request",
                       param="input", code="too_many_inputs")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            if isinstance(item, (int, list)) and not isinstance(item, bool):
                raise APIError(400, "token-id arrays are not supported: send the text itself (this model has its own "
                               "tokenizer and prepends a task prompt)", param="input", code="unsupported_input")
            raise APIError(400, f"input[{i}] must be a string, got {type(item).__name__}", param="input")
    return value


def resolve_prompt(field: Any, from_alias: str | None, default: str | None) -> str | None:
    if field is not None and not isinstance(field, str):
        raise APIError(400, "'prompt_name' must be a string", param="prompt_name")
    if field is not None and from_alias is not None and field != from_alias:
        raise APIError(400, f"'prompt_name' {field!r} contradicts the model alias, which implies {from_alias!r}",
                       param="prompt_name")
    return field if field is not None else from_alias if from_alias is not None else default


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_server(app: Starlette, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info",
                access_log: bool = True, grace_s: float = 30.0):
    """A uvicorn server for ``app`` that answers every accepted request when it shuts down.

    On shutdown uvicorn waits up to ``grace_s`` for open requests, cancels those still running (their
    clients get a 500 or a dropped connection) and only then tells the app. So the batcher is drained
    first: it serves the queue for half the grace, answers the rest 503, and finishes the pass under way
    in the other half.
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            await app.state.batcher.drain(grace_s / 2)
            await super().shutdown(sockets)

    return Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                                 timeout_graceful_shutdown=grace_s))


def serve(model: EmbeddingGemma, config: ServerConfig, host: str = "127.0.0.1", port: int = 8080,
          log_level: str = "info", access_log: bool = True) -> None:
    app = create_app(model, config)
    # One warm-up pass, so the first request does not pay for MLX's first-call setup.
    model.encode("warm up")
    make_server(app, host, port, log_level, access_log).run()
