"""The provider simulator: a fake OpenAI / Anthropic / Ollama upstream on a real port.

Our tests, our benchmarks and ``labgate demo`` all point at this one fake::

    async with Simulator(Behaviour(tokens_per_s=50), models=["a", "b"]) as sim:
        client = AsyncOpenAI(base_url=sim.url + "/v1", api_key="x")
        ...
        sim.set(replace(sim.behaviour, fault=Status(503)))   # flip a fault on
        assert sim.requests[-1].body["model"] == "a"

    with Simulator().run_in_thread() as sim:                  # for sync tests
        ...

    $ python -m labgate.testing.simulator --port 9001 --models a,b --latency 0.01 --tokens-per-s 50
    READY http://127.0.0.1:9001

A request goes: record → auth (401) → parse and check (400) → model known
(404) → pick the behaviour (per model, else global) and maybe a fault →
latency → answer (a whole body, or SSE events paced by ttft and tokens/s).
What the model says is in :mod:`labgate.testing.reply`; the wire formats in
``openai_wire`` and ``anthropic_wire``. Model listings (``/v1/models``,
``/api/tags``) take no latency and no faults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from labgate.testing import anthropic_wire, ollama_wire, openai_wire
from labgate.testing.behaviour import (
    Behaviour,
    CutStream,
    Disconnect,
    Fault,
    Hang,
    NotJSON,
    RateLimit,
    Status,
)
from labgate.testing.wire import Call, Dialect, Endpoint, Event, Pace

_JSON = {"Content-Type": "application/json"}
_SSE = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_NOT_JSON = b"<html><body>simulated proxy page</body></html>"
# The 400 of a body that a route's checks let through but its answer could not read: a gap in the
# checks (tests look for this message), yet never an exception inside the server.
UNREADABLE = "The simulator could not read this request"


@dataclass(frozen=True, slots=True)
class Received:
    """One request as it reached the simulator."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # the parsed JSON, or None when there was none or it did not parse


class Simulator:
    """A fake upstream speaking the OpenAI, Anthropic and Ollama wire protocols.

    ``behaviour`` applies to every model not in ``per_model``. A non-empty
    ``models`` is the list of served names (others get a 404, and
    ``/v1/models`` lists them). With ``api_key`` set, requests must carry it
    (``Authorization: Bearer`` on OpenAI routes, ``x-api-key`` on
    ``/v1/messages``). ``record=False`` keeps ``requests`` empty (for
    benchmarks); ``seed`` drives ``fail_rate``.
    """

    def __init__(
        self,
        behaviour: Behaviour | None = None,
        *,
        models: Iterable[str] = (),
        per_model: Mapping[str, Behaviour] | None = None,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        seed: int = 0,
    ) -> None:
        self._behaviour = behaviour or Behaviour()
        self._per_model = dict(per_model or {})
        self._models = tuple(models)
        self._served = frozenset(self._models)
        self._api_key = api_key
        self._host = host
        self._port = port
        self._record = record
        self._random = random.Random(seed)
        self._counts: dict[str | None, int] = {}  # requests per behaviour scope since its `set`
        self._seq = 0
        self._requests: list[Received] = []
        self._models_body = openai_wire.model_list(self._models)
        self._tags_body = ollama_wire.tags(self._models)
        self._runner: web.AppRunner | None = None
        self._active: set[asyncio.Task[Any]] = set()  # handlers answering a model request

    # --- what tests read and change -----------------------------------------

    @property
    def url(self) -> str:
        """The base URL, ``http://host:port`` (OpenAI routes are under ``/v1``)."""
        if self._runner is None:
            raise RuntimeError("the simulator is not running")
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def models(self) -> tuple[str, ...]:
        return self._models

    @property
    def requests(self) -> list[Received]:
        """Every request received (the live list), oldest first."""
        return self._requests

    @property
    def behaviour(self) -> Behaviour:
        """The behaviour of models without their own."""
        return self._behaviour

    def behaviour_for(self, model: str) -> Behaviour:
        return self._per_model.get(model, self._behaviour)

    def clear(self) -> None:
        """Forget the recorded requests."""
        self._requests.clear()

    def set(self, behaviour: Behaviour | None = None, *, model: str | None = None) -> None:
        """Replace the global behaviour, or one model's (``behaviour=None`` drops the override).

        Safe to call from another thread. Restarts that scope's ``fail_first_n`` count.
        """
        if model is None:
            self._behaviour = behaviour or Behaviour()
        elif behaviour is None:
            self._per_model = {m: b for m, b in self._per_model.items() if m != model}
        else:
            self._per_model = {**self._per_model, model: behaviour}
        self._counts.pop(model, None)

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> Simulator:
        """Start listening; ``url`` is valid afterwards. Several may run in one loop."""
        app = web.Application(client_max_size=64 * 2**20)
        routes = {
            "/v1/chat/completions": openai_wire.CHAT,
            "/v1/completions": openai_wire.COMPLETIONS,
            "/v1/embeddings": openai_wire.EMBEDDINGS,
            "/v1/messages": anthropic_wire.MESSAGES,
        }
        for path, endpoint in routes.items():
            app.router.add_post(path, self._route(endpoint))
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/api/tags", self._tags)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = runner.addresses[0][1]
        self._runner = runner
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection, cutting hanging requests and streams short."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        for task in list(self._active):
            task.cancel()  # aiohttp then closes the connection
        await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[Simulator]:
        """Run on an event loop in a daemon thread, for synchronous tests and clients."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="labgate-simulator", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=10)
            yield self
        finally:
            try:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=10)
                loop.close()

    # --- serving ---------------------------------------------------------------

    def _route(self, endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, endpoint)

        return handle

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        self._remember(request, None)
        if self._api_key is not None and (why := openai_wire.DIALECT.denied(request.headers, self._api_key)):
            return _error(openai_wire.DIALECT, 401, why, code="invalid_api_key")
        return web.Response(body=self._models_body, headers=_JSON)

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        self._remember(request, None)
        return web.Response(body=self._tags_body, headers=_JSON)

    def _remember(self, request: web.Request, body: Any) -> None:
        if self._record:
            headers = {name.lower(): value for name, value in request.headers.items()}
            self._requests.append(Received(request.method, request.path, headers, body))

    async def _serve(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._active.add(task)
        try:
            return await self._answer(request, endpoint)
        finally:
            self._active.discard(task)

    async def _answer(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self._remember(request, body)
        dialect = endpoint.dialect
        if self._api_key is not None and (why := dialect.denied(request.headers, self._api_key)):
            return _error(dialect, 401, why, code="invalid_api_key")
        if not isinstance(body, dict):
            return _error(dialect, 400, "We could not parse the JSON body of your request.")
        try:
            problem = endpoint.invalid(body, request.headers)
        except (AttributeError, KeyError, TypeError, ValueError) as error:  # a check missed a shape: still a 400
            return _error(dialect, 400, f"{UNREADABLE}: {error!r}")
        if problem is not None:
            return _error(dialect, 400, problem[0], param=problem[1])
        model = body["model"]
        if self._served and model not in self._served:
            message, code = dialect.unknown_model(model)
            return _error(dialect, 404, message, code=code)

        own = self._per_model.get(model)
        behaviour = self._behaviour if own is None else own
        fault = self._draw_fault(None if own is None else model, behaviour)
        if behaviour.latency_s:
            await asyncio.sleep(behaviour.latency_s)
        if fault is not None and not isinstance(fault, CutStream):
            return await self._inject(request, dialect, fault, stream=body.get("stream") is True)

        self._seq += 1
        try:
            answer = endpoint.answer(body, behaviour, Call(self._seq, model, int(time.time())))
        except (AttributeError, KeyError, TypeError, ValueError) as error:  # a field of the wrong shape
            return _error(dialect, 400, f"{UNREADABLE}: {error!r}")
        cut = fault.after if isinstance(fault, CutStream) else None
        if answer.events is not None:
            return await self._stream(request, answer.events, behaviour, cut)
        generating = behaviour.ttft_s + max(answer.tokens - 1, 0) * behaviour.token_interval
        if generating:
            await asyncio.sleep(generating)
        if cut is not None:
            response = web.StreamResponse(headers=_JSON)
            await response.prepare(request)
            await response.write(answer.body[: len(answer.body) // 2])
            return _drop(request, response)
        return web.Response(body=answer.body, headers=_JSON)

    def _draw_fault(self, scope: str | None, behaviour: Behaviour) -> Fault | None:
        if behaviour.fault is None:
            return None
        seen = self._counts.get(scope, 0)
        self._counts[scope] = seen + 1
        if behaviour.fail_first_n is not None and seen >= behaviour.fail_first_n:
            return None
        if behaviour.fail_rate < 1.0 and self._random.random() >= behaviour.fail_rate:
            return None
        return behaviour.fault

    async def _inject(
        self, request: web.Request, dialect: Dialect, fault: Fault, *, stream: bool
    ) -> web.StreamResponse:
        match fault:
            case Status(code=code, message=message):
                return _error(dialect, code, message)
            case RateLimit(retry_after=seconds):
                limited = _error(dialect, 429, "Rate limit reached (simulated).", code="rate_limit_exceeded")
                limited.headers["retry-after"] = f"{seconds:g}"
                return limited
            case Hang():
                # Never set: aiohttp cancels this handler when the client leaves, and `stop` cancels it too.
                await asyncio.Event().wait()
            case Disconnect():
                return _drop(request, web.Response())
            case NotJSON() if stream:
                response = web.StreamResponse(headers=_SSE)
                await response.prepare(request)
                await response.write(dialect.garbage_event)
                await response.write_eof()
                return response
            case NotJSON():
                return web.Response(body=_NOT_JSON, headers=_JSON)
        raise AssertionError(f"unhandled fault {fault!r}")

    async def _stream(
        self, request: web.Request, events: tuple[Event, ...], behaviour: Behaviour, cut: int | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE)
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        due = loop.time() + behaviour.ttft_s
        interval = behaviour.token_interval
        started = False
        tokens = 0
        for written, (pace, data) in enumerate(events):
            if written == cut:
                return _drop(request, response)
            if pace is not Pace.HEAD and not started:
                started = True
                await _sleep_until(loop, due)
            if pace is Pace.TOKEN:
                if tokens and interval:
                    due += interval
                    await _sleep_until(loop, due)
                tokens += 1
            await response.write(data)
        if cut is not None:  # every event went out; still never finish the chunked body
            return _drop(request, response)
        await response.write_eof()
        return response


def _error(
    dialect: Dialect, status: int, message: str, *, code: str | None = None, param: str | None = None
) -> web.Response:
    return web.Response(status=status, body=dialect.error(status, message, code, param), headers=_JSON)


def _drop(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Close the connection now (flushing what was written); aiohttp then skips the response."""
    if request.transport is not None:
        request.transport.close()
    return response


async def _sleep_until(loop: asyncio.AbstractEventLoop, due: float) -> None:
    delay = due - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


# --- command line ---------------------------------------------------------------


def _fault(text: str) -> Fault:
    name, _, arg = text.partition(":")
    if name == "429":
        return RateLimit(float(arg or 1))
    if name.isdigit():
        return Status(int(name))
    if name == "hang":
        return Hang()
    if name == "not-json":
        return NotJSON()
    if name == "disconnect":
        return Disconnect()
    if name == "cut":
        return CutStream(int(arg or 1))
    raise argparse.ArgumentTypeError(f"unknown fault {text!r}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m labgate.testing.simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the READY line)")
    parser.add_argument("--models", default="", help="comma-separated served model names (default: any)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before the response head")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds from head to first token")
    parser.add_argument("--tokens-per-s", type=float, default=0.0, help="0 streams without pauses")
    parser.add_argument("--completion-tokens", type=int, default=8)
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument(
        "--fault",
        type=_fault,
        default=None,
        help="500|502|503|…, 429[:retry_after], hang, not-json, disconnect, cut[:k]",
    )
    parser.add_argument("--fail-first-n", type=int, default=None)
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    behaviour = Behaviour(
        latency_s=args.latency,
        ttft_s=args.ttft,
        tokens_per_s=args.tokens_per_s,
        completion_tokens=args.completion_tokens,
        embedding_dim=args.embedding_dim,
        fault=args.fault,
        fail_first_n=args.fail_first_n,
    )
    models = [m for m in args.models.split(",") if m]
    async with Simulator(behaviour, models=models, api_key=args.api_key, host=args.host, port=args.port) as sim:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        print(f"READY {sim.url}", flush=True)
        await stopped.wait()


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGINT/SIGTERM."""
    asyncio.run(_run(_parse(argv)))


if __name__ == "__main__":
    main()
