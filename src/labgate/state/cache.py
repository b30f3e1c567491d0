"""The response cache: one lookup before the attempts, one store when the request finishes.

``Gateway.handle`` calls :meth:`Cache.get` once the route is resolved; a hit
is answered from here (a stream request gets the entry replayed as SSE, see
:mod:`labgate.state.replay`). A miss that may be stored leaves a
:class:`Ticket` on the record; ``Gateway.finish`` calls :meth:`Cache.store`,
which keeps only successful, complete answers (``finish_reason`` stop,
length or tool_calls; embeddings) and writes them in the background.

The key is ``labgate:{namespace}:{hash}``: a BLAKE2b hash of the endpoint, the
route's resolved target (its primary deployments) and the request body as
canonical JSON, less the fields that cannot change the answer
(:data:`labgate.state.keys.NOT_KEYED`; ``stream`` among them, so a streamed and a whole request
share an entry).

Single flight: identical concurrent misses in one process make one upstream
call; the others wait for it (at most ``single_flight_wait_s``, after which a
waiter goes upstream itself). Across processes there is no single flight:
replicas that miss together each call upstream once.

Repeated bytes: once a request's exact bytes were a hit, :meth:`Cache.known` hands their parse and key
back to the next request sending them (``Gateway.handle`` then skips the parse; :meth:`Cache.get` the
policy and the key). The parse is shared, read-only: nothing after the parse changes a body in place.

Fail open: when the backend is unavailable the request is served without the
cache (status ``unavailable``, counted; the backend logs the outage once).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from labgate.config.schema.cache import CacheConfig, RouteCacheConfig, StateConfig
from labgate.providers.base import IteratorStream, Reply, Stream, StreamInfo, Translated
from labgate.state.base import KEY_PREFIX, EntryStore, StateUnavailableError
from labgate.state.controls import NONE, Controls, parse_controls
from labgate.state.entry import Capture, Entry
from labgate.state.keys import key_hash
from labgate.state.replay import assemble, replay

if TYPE_CHECKING:
    from labgate.config.load import Config
    from labgate.record import RequestRecord
    from labgate.routing.table import Route

log = logging.getLogger("labgate.state")

STORABLE = frozenset({"stop", "length", "tool_calls"})  # finish reasons of complete answers
STREAM_OVERHEAD = 4  # a stream miss is captured up to this many times max_entry_bytes of SSE (framing, repeats)
_MEMO_LIMIT = 4096  # routes whose policy is remembered (dynamic names are bounded like the route table's)
HASHED_LIMIT = 256  # request bodies whose key hash is remembered (identical bytes, identical key)
HASHED_BODY_BYTES = 16 * 1024  # only bodies up to this size are remembered (bounded memory)
KNOWN_LIMIT = 256  # request bodies whose parse and key are remembered after a hit (identical bytes)
DECODED_LIMIT = 64  # hot entries kept decoded (with their reply and replayed streams), by key and stored bytes


@dataclass(frozen=True, slots=True)
class Policy:
    """A route's cache options, resolved once per route name."""

    namespace: str
    prefix: str  # "labgate:{namespace}:"
    ttl_s: float
    endpoints: frozenset[str]
    nondeterministic: bool  # cache requests whose temperature is not 0


@dataclass(slots=True)
class Counts:
    """What one namespace has seen in this process (``/admin/cache/stats``)."""

    hits: int = 0
    misses: int = 0
    bypass: int = 0
    off: int = 0
    unavailable: int = 0
    waited: int = 0  # hits served by waiting for an identical request in flight (single flight)
    stored: int = 0
    store_failures: int = 0
    bytes_served: int = 0
    bytes_stored: int = 0
    saved_prompt_tokens: int = 0
    saved_completion_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        looked = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "bypass": self.bypass, "off": self.off,
                "unavailable": self.unavailable, "hit_rate": round(self.hits / looked, 4) if looked else None,
                "single_flight_waits": self.waited, "stored": self.stored, "store_failures": self.store_failures,
                "bytes_served": self.bytes_served, "bytes_stored": self.bytes_stored,
                "saved_tokens": {"prompt": self.saved_prompt_tokens, "completion": self.saved_completion_tokens}}


@dataclass(slots=True, eq=False)
class Ticket:
    """A miss the request will store at its end (and release the requests waiting for it)."""

    key: str
    ttl_s: float
    counts: Counts
    store: bool  # false: the client said no-store
    flight: asyncio.Future[Entry | None] | None = None
    result: Reply | Stream | None = None  # set by the gateway once the attempts answered
    capture_bytes: int = 0  # a stream's SSE bytes kept for assembling its entry

    def capture(self) -> list[bytes] | None:
        """Where the relay keeps a stream's chunks for this entry (None: nothing to store)."""
        return Capture(self.capture_bytes) if self.store else None


@dataclass(frozen=True, slots=True, eq=False)
class Known:
    """Request bytes answered from the cache before: what they parsed to (shared by every request sending
    them, read-only), and the key they were looked up by for ``route`` (and ``key_id``, for per-key entries)."""

    endpoint: str
    parsed: dict[str, Any] | Translated
    route: Route
    key_id: str | None
    key: str
    policy: Policy
    counts: Counts


@dataclass(slots=True, eq=False)
class _Flight:
    future: asyncio.Future[Entry | None]
    started: float = field(default_factory=time.monotonic)


class Cache:
    """The response cache of one Runtime (``Runtime.cache``; None when ``cache:`` is absent)."""

    def __init__(self, config: CacheConfig, routes: dict[str, RouteCacheConfig], entries: EntryStore, *,
                 counts: dict[str, Counts] | None = None) -> None:
        self.config = config
        self.entries = entries
        self.counts: dict[str, Counts] = counts if counts is not None else {}
        self.owns_entries = True  # false once a reload handed them to the next Runtime's cache
        self._routes = {k: v for k, v in routes.items() if not _is_glob(k)}
        self._globs = [(re.compile(fnmatch.translate(k)), v) for k, v in routes.items() if _is_glob(k)]
        self._memo: dict[str, tuple[Policy | None, str]] = {}
        self._hashed: dict[tuple[str, str, bytes], str] = {}  # (endpoint, target, raw body) → key hash
        self._known: dict[bytes, Known] = {}  # raw body → its parse and key, once it was a hit (known())
        # a hit reuses the decoded Entry of the bytes it got (with its Reply and pre-rendered streams): a memory
        # backend hands back the very object it holds (checked by identity), Redis equal bytes (compared); a
        # replaced or re-stored value differs (its head has its time of storing) and is decoded afresh
        self._decoded: dict[str, tuple[bytes, Entry]] = {}
        self._get_now = getattr(entries, "get_now", None)  # in-process: the lookup without a coroutine
        self._flights: dict[str, _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.default = self._policy(None)
        for name in {self.default.namespace, *(r.namespace for r in routes.values() if r.namespace)}:
            self.counts.setdefault(name, Counts())

    # --- the request path ------------------------------------------------------

    async def get(self, route: Route, record: RequestRecord, body: dict[str, Any], *, known: Known | None = None,
                  parsed: dict[str, Any] | Translated | None = None) -> Reply | Stream | None:
        """A hit to answer with, or None (then ``record.cache_ticket`` may hold the store to make).

        ``parsed``: what the request's bytes parsed to, when ``body`` comes from them alone (no experiment
        changed it): a hit remembers it, and :meth:`known` hands it back, with the key, for the same bytes.
        ``known``: that, for this request (its key is made once, its policy passed once).
        """
        if known is not None and known.route is route and (not self.config.per_key or known.key_id == record.key_id):
            policy, key, counts = known.policy, known.key, known.counts
            header = record.cache_control
            asked = NONE if header is None else parse_controls(header, None)
        else:
            decided = self._decide(route, record, body)
            if decided is None:
                return None
            policy, key, asked, counts, plain = decided
            if not plain:
                parsed = None  # the body's own cache controls are read afresh each time: not remembered
            known = None
        if asked.no_cache:
            record.cache_status = "bypass"
            counts.bypass += 1
        else:
            record.cache_status = "miss"
            started = time.perf_counter()  # the lookup's span (telemetry/spans.py): two clock reads
            try:
                get_now = self._get_now
                if get_now is None:
                    hit = await self._lookup(key, record, counts, asked.max_age)
                else:  # in-process: no await unless an identical request is in flight (single flight)
                    raw = get_now(key)
                    decoded = self._decoded.get(key)  # the common hit, without _found's and _decode's frames
                    if decoded is not None and decoded[0] is raw and asked.max_age is None:
                        hit = self._hit(record, decoded[1], counts)
                    else:
                        hit = self._found(key, raw, record, counts, asked.max_age)
                    if hit is None and self._flights:
                        hit = await self._waited(key, record, counts)
            finally:
                record.cache_lookup = (started, time.perf_counter())
            if hit is not None:
                if known is None and parsed is not None:
                    self._remember(record, parsed, route, policy, key, counts)
                return hit
        ticket = Ticket(key, policy.ttl_s if asked.ttl is None else asked.ttl, counts, not asked.no_store,
                        capture_bytes=self.config.max_entry_bytes * STREAM_OVERHEAD)
        if ticket.store and self.config.single_flight and key not in self._flights:
            ticket.flight = asyncio.get_running_loop().create_future()
            self._flights[key] = _Flight(ticket.flight)
        record.cache_ticket = ticket
        if record.cache_status == "miss":
            counts.misses += 1
        return None

    def _decide(self, route: Route, record: RequestRecord,
                body: dict[str, Any]) -> tuple[Policy, str, Controls, Counts, bool] | None:
        """The policy, key, controls and counts of a lookup, and whether the body had no ``cache`` field; None
        when the request is not looked up (off, bypass)."""
        memo = self._memo.get(route.name)
        if memo is None:
            memo = self._remember_route(route)
        policy, target = memo
        controls = body.pop("cache", None)
        if record.payload is not None and record.payload is not body:
            record.payload.pop("cache", None)  # the Anthropic surface's translation carries it too
        if policy is None or record.endpoint not in policy.endpoints:
            record.cache_status = "off"
            if policy is not None:
                self.counts[policy.namespace].off += 1
            return None
        counts = self.counts[policy.namespace]
        asked = parse_controls(record.cache_control, controls)
        if not (policy.nondeterministic or record.endpoint == "embeddings" or body.get("temperature") == 0):
            record.cache_status = "bypass"  # non-deterministic: the policy says skip
            counts.bypass += 1
            return None
        key = policy.prefix + self._hash(record, f"{record.key_id}|{target}" if self.config.per_key else target, body)
        return policy, key, asked, counts, controls is None

    def known(self, record: RequestRecord, raw: bytes) -> Known | None:
        """What these exact request bytes parsed to when a request sent them and was answered from the cache
        (None: not remembered). The same bytes parse to the same body, and no step after the parse changes a
        body in place (history reads it later too), so the parse is shared by every request sending them."""
        known = self._known.get(raw) if self._known and type(raw) is bytes else None
        return known if known is not None and known.endpoint == record.endpoint else None

    def _remember(self, record: RequestRecord, parsed: dict[str, Any] | Translated, route: Route, policy: Policy,
                  key: str, counts: Counts) -> None:
        raw = record.body
        if type(raw) is not bytes or len(raw) > HASHED_BODY_BYTES:
            return  # large bodies are not kept
        known = self._known
        if len(known) >= KNOWN_LIMIT and raw not in known:
            del known[next(iter(known))]  # the oldest: bounded, whatever the traffic
        known[raw] = Known(record.endpoint, parsed, route, record.key_id, key, policy, counts)

    def _hash(self, record: RequestRecord, target: str, body: dict[str, Any]) -> str:
        """The key hash; for a small body, remembered by its raw bytes (the same bytes parse to the same body)."""
        raw = record.body
        if type(raw) is not bytes or len(raw) > HASHED_BODY_BYTES:
            return key_hash(record.endpoint, target, body)
        memo = (record.endpoint, target, raw)
        hashed = self._hashed.get(memo)
        if hashed is None:
            hashed = key_hash(record.endpoint, target, body)
            if len(self._hashed) >= HASHED_LIMIT:
                del self._hashed[next(iter(self._hashed))]  # the oldest: bounded, whatever the traffic
            self._hashed[memo] = hashed
        return hashed

    async def _lookup(self, key: str, record: RequestRecord, counts: Counts,
                      max_age: float | None) -> Reply | Stream | None:
        try:
            raw = await self.entries.get(key)
        except StateUnavailableError:
            record.cache_status = "unavailable"
            counts.unavailable += 1
            raw = None
        hit = self._found(key, raw, record, counts, max_age)
        if hit is None and self._flights:
            hit = await self._waited(key, record, counts)
        return hit

    def _found(self, key: str, raw: bytes | None, record: RequestRecord, counts: Counts,
               max_age: float | None) -> Reply | Stream | None:
        """The hit the backend's value makes, or None (absent, unreadable, older than ``max_age``)."""
        if raw is None:
            if self._decoded:
                self._decoded.pop(key, None)  # gone from the backend (expired, evicted, purged): not kept alive here
            return None
        entry = self._decode(key, raw)
        if entry is not None and (max_age is None or time.time() - entry.created <= max_age):
            return self._hit(record, entry, counts)
        return None

    async def _waited(self, key: str, record: RequestRecord, counts: Counts) -> Reply | Stream | None:
        """A hit from the identical request in flight (single flight), or None."""
        if self.config.single_flight and self._flights.get(key) is not None:
            entry = await self._join(key)
            if entry is not None:
                counts.waited += 1
                return self._hit(record, entry, counts)
        return None

    def _decode(self, key: str, raw: bytes) -> Entry | None:
        decoded = self._decoded
        known = decoded.get(key)
        if known is not None and (known[0] is raw or known[0] == raw):
            return known[1]
        entry = Entry.decode(raw)
        if entry is not None:
            if known is None and len(decoded) >= DECODED_LIMIT:
                del decoded[next(iter(decoded))]  # the oldest decoded: bounded, whatever the key count
            decoded[key] = (raw, entry)
        return entry

    async def _join(self, key: str) -> Entry | None:
        """Wait for the identical request in flight; None when it failed or took too long."""
        wait = self.config.single_flight_wait_s
        deadline = time.monotonic() + wait
        while (flight := self._flights.get(key)) is not None:
            remaining = deadline - time.monotonic()
            if flight.started < time.monotonic() - wait:
                self._flights.pop(key, None)  # stale: its request never finished; the next one leads
                return None
            if remaining <= 0:
                return None
            await asyncio.wait((flight.future,), timeout=remaining)
            if flight.future.done():
                entry = flight.future.result()
                if entry is not None:
                    return entry
        return None

    def _hit(self, record: RequestRecord, entry: Entry, counts: Counts) -> Reply | Stream:
        record.cache_status, record.cache_hit = "hit", True
        age = int(time.time() - entry.created)
        record.cache_age = age if age > 0 else 0
        record.cache_bytes = size = len(entry.body)
        usage = record.usage = entry.usage
        record.finish_reason = entry.finish_reason
        record.provider, record.deployment = entry.provider, entry.deployment
        counts.hits += 1
        counts.bytes_served += size
        if usage is not None:
            counts.saved_prompt_tokens += usage.prompt_tokens
            counts.saved_completion_tokens += usage.completion_tokens
        if not record.stream:
            return entry.reply or entry.as_reply()
        options = (record.payload or {}).get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        streams = entry.streams
        if streams is None:
            streams = entry.streams = {}
        rendered = streams.get(include_usage)
        if rendered is None:  # replayed once per entry: later hits send the same bytes
            events = replay(orjson.loads(entry.body), dialect=entry.dialect, endpoint=entry.endpoint,
                            include_usage=include_usage)
            rendered = streams[include_usage] = (b"".join(events), len(events))
        info = StreamInfo(usage=entry.usage, finish_reason=entry.finish_reason, chunks=rendered[1])
        return IteratorStream(_iterate(rendered[0]), info, entry.dialect)  # type: ignore[arg-type]

    def store(self, record: RequestRecord) -> None:
        """At the request's end: keep its answer if complete, and release the requests waiting for it."""
        ticket, record.cache_ticket = record.cache_ticket, None
        entry = None
        if ticket.store and record.outcome == "ok" and ticket.result is not None:
            try:
                entry = self._entry(record, ticket.result)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                # an upstream answer we cannot read back is served as it came, and not stored
                log.warning("cache: could not read the answer of request %s back; not stored", record.request_id)
        if ticket.flight is not None:
            flight = self._flights.get(ticket.key)
            if flight is not None and flight.future is ticket.flight:
                del self._flights[ticket.key]
            if not ticket.flight.done():
                ticket.flight.set_result(entry)
        if entry is None:
            return
        value = entry.encode()
        if len(value) > self.config.max_entry_bytes:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # finished outside the loop (interpreter shutdown): the record matters, not the entry
            return
        record.cache_bytes = len(value)
        task = loop.create_task(self._put(ticket, value))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _entry(self, record: RequestRecord, result: Reply | Stream) -> Entry | None:
        endpoint = record.endpoint
        if isinstance(result, Reply):
            body = result.body
        else:
            chunks = record.chunks
            if chunks is None or (isinstance(chunks, Capture) and chunks.overflowed):
                return None  # longer than an entry may be
            doc = assemble(chunks, dialect=result.dialect, endpoint=endpoint)
            if doc is None:
                return None  # the stream did not finish: never stored
            if result.dialect == "openai" and "usage" not in doc and record.usage is not None:
                usage = record.usage
                doc["usage"] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                                "total_tokens": usage.total_tokens}
            body = orjson.dumps(doc)
        if record.finish_reason not in STORABLE and not (endpoint == "embeddings" and record.finish_reason is None):
            return None
        return Entry(body, result.dialect, endpoint, time.time(), record.finish_reason, record.usage,
                     record.provider, record.deployment)

    async def _put(self, ticket: Ticket, value: bytes) -> None:
        try:
            await self.entries.put(ticket.key, value, ticket.ttl_s)
        except StateUnavailableError:
            ticket.counts.store_failures += 1
            return
        ticket.counts.stored += 1
        ticket.counts.bytes_stored += len(value)

    # --- policy ------------------------------------------------------------------

    def _remember_route(self, route: Route) -> tuple[Policy | None, str]:
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        options = self._routes.get(route.name) or next(
            (options for glob, options in self._globs if glob.match(route.name)), None)
        policy = None if options is not None and not options.enabled else self._policy(options)
        target = "|".join(d.key for d in route.groups[0].deployments)
        memo = self._memo[route.name] = (policy, target)
        return memo

    def _policy(self, options: RouteCacheConfig | None) -> Policy:
        c = self.config
        namespace = (options.namespace if options else None) or c.namespace
        ttl = (options.ttl_s if options else None) or c.ttl_s
        endpoints = (options.endpoints if options else None) or c.endpoints
        nondeterministic = (options.nondeterministic if options else None) or c.nondeterministic
        return Policy(namespace, f"{KEY_PREFIX}:{namespace}:", ttl, frozenset(endpoints),
                      nondeterministic == "cache")

    def namespaces(self) -> list[str]:
        """The namespaces this config writes to."""
        return sorted(self.counts)

    async def drain(self) -> None:
        """Wait for the stores still being written (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()
        for flight in self._flights.values():
            if not flight.future.done():
                flight.future.set_result(None)
        self._flights.clear()
        if self.owns_entries:
            await self.entries.aclose()


async def _iterate(events: bytes) -> AsyncIterator[bytes]:
    yield events  # a replayed stream's events in one chunk: one write, the same bytes as one per event


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def cache_for(config: Config, *, previous: Cache | None = None) -> Cache | None:
    """The Runtime's cache for ``cache:`` (None when absent or disabled).

    A reload that keeps the backend settings keeps the entries (and the counts) of ``previous``.
    """
    gateway = config.gateway
    settings = gateway.cache
    if settings is None or not settings.enabled:
        return None
    routes = config.mappings.routing.cache
    if previous is not None and _same_backend(previous.config, settings, gateway.state, previous):
        previous.owns_entries = False
        return Cache(settings, routes, previous.entries, counts=previous.counts)
    cache = Cache(settings, routes, _entries(settings, gateway.state))
    status = cache.entries.status()
    log.info("cache: %s backend%s, namespace %s, ttl %gs, %s requests%s", status["backend"],
             f" at {status['url']}" if "url" in status else "", settings.namespace, settings.ttl_s,
             "every" if settings.nondeterministic == "cache" else "temperature-0",
             ", per API key" if settings.per_key else "")
    return cache


def preload(config: Config) -> None:
    """Import the cache backend's client before the gateway listens (``labgate serve`` calls it).

    Importing redis-py takes about 0.4 s of CPU, several seconds on a loaded machine; done while
    building the Runtime, it ran after the port was already accepting, so clients (and readiness
    checks that only connect) were accepted and then waited, unanswered, until it finished.
    """
    settings = config.gateway.cache
    if settings is None or not settings.enabled:
        return
    try:
        backend, _ = _backend(settings, config.gateway.state)
    except ValueError:
        return  # reported when the Runtime is built
    if backend == "redis":
        from labgate.state.redis import import_client

        import_client()


def _backend(settings: CacheConfig, state: StateConfig) -> tuple[str, str | None]:
    url = settings.url or state.url
    backend = settings.backend or ("redis" if url else "memory")
    if backend == "redis" and not url:
        raise ValueError("cache.backend is redis but there is no Redis URL: set cache.url or state.url")
    return backend, url


def _entries(settings: CacheConfig, state: StateConfig) -> EntryStore:
    backend, url = _backend(settings, state)
    if backend == "memory":
        from labgate.state.memory import MemoryEntries

        return MemoryEntries(max_entries=settings.max_entries, max_bytes=settings.max_bytes)
    from labgate.state.redis import RedisEntries, RedisLink

    assert url is not None
    link = RedisLink(url, timeout_s=state.timeout_s, retry_s=state.retry_s, max_connections=state.max_connections)
    link.source = (url, state)
    return RedisEntries(link)


def _same_backend(old: CacheConfig, new: CacheConfig, state: StateConfig, previous: Cache) -> bool:
    if not previous.owns_entries:
        return False
    backend, url = _backend(new, state)
    if backend != previous.entries.backend:
        return False
    if backend == "memory":
        return (old.max_entries, old.max_bytes) == (new.max_entries, new.max_bytes)
    link = getattr(previous.entries, "link", None)
    return link is not None and getattr(link, "source", None) == (url, state)
