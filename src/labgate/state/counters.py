"""Counters for rate limits and budgets: in-process, or in Redis with one script call per request.

Rate limits are a GCRA (generic cell rate algorithm): one number per limit,
the "theoretical arrival time" (TAT). A charge of ``cost`` moves it by
``cost × period / limit``; it is refused when the TAT would run more than
one period ahead of now. That is a token bucket of ``limit`` per
``period`` refilled continuously: no window edges (a fixed window admits
twice the limit across its boundary), O(1) state per limit (a sliding log
keeps every request), and variable costs, so tpm can reserve an estimate and
settle the real count later by moving the TAT back or forth.

Budgets are caps: one number per budget window (spend so far plus what is
reserved); a charge is refused when it would pass the limit.

A request's charges are taken together or not at all, so a refusal on one
limit consumes nothing on the others. In Redis that is one ``EVALSHA`` over
every key, timed by the Redis server's clock (replicas' clocks may differ);
for Redis Cluster the keys share the ``{labgate}`` hash tag so one script
can touch them all.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from types import FunctionType
from typing import Any

from labgate.state.base import Charge

PRUNE_EVERY = 4096  # takes (by charges) and new counters between sweeps of idle in-process counters
MAX_BUCKETS = 1_000_000  # in-process counters kept at most (past it, idle ones go first, then the oldest)
_DENIED = -1
_EMPTY = (0.0, 0.0)  # a counter not (or no longer) there
MINUTE = 60.0  # a rate limit's period (rpm, tpm)
_RATE_SLACK = MINUTE + 1e-9  # a rate charge fits while its TAT runs at most this far ahead (as in decide)
_CODE: dict[tuple[int, int, int], tuple[Any, Any]] = {}  # a plan shape's take and settle code (compile)
_NO_GLOBALS: dict[str, Any] = {"__builtins__": {}}  # the generated code reads its defaults and locals only


Value = tuple[float, float]  # (the counter, when it expires; 0: never)
TakeCells = Callable[[int, float], bool]  # a plan's take: (tokens, cost) → taken (MemoryCounters.compile)
SettleCells = Callable[[int, float, int, float], bool]  # its settlement: (tokens, cost, real tokens, real cost)


def decide(charges: tuple[Charge, ...], current: Callable[[str, Value], Sequence[float]],
           now: float) -> tuple[int, float, dict[str, Value]]:
    """(index refused or -1, seconds to wait, each counter's new value by key): the take, as the Redis script
    does it (a counter charged twice gets its last charge's value, as the script's last ``SET`` wins).

    ``current(key, default)`` gives a counter's value (``default`` when it does not exist): a dict's ``get``."""
    new: dict[str, Value] = {}
    for i, (key, kind, limit, period, cost) in enumerate(charges):
        value, until = current(key, _EMPTY)
        if until and until <= now:
            value = 0.0
        if kind == "rate":
            tat = (value if value > now else now) + cost * period / limit
            if tat - now > period + 1e-9:
                return i, tat - now - period, {}
            new[key] = (tat, tat)
        else:
            total = value + cost
            if cost > 0 and total > limit + 1e-12:
                return i, period, {}
            new[key] = (total, (until if until > now else now + period) if period else 0.0)
    return _DENIED, 0.0, new


def settled(c: Charge, current: Value, delta: float, now: float) -> Value:
    value, until = current
    if c.kind == "rate":
        tat = value + delta * c.period_s / c.limit
        return tat, tat
    if until and until <= now:
        return current
    return max(0.0, value + delta), until


class MemoryCounters:
    """In-process counters (the embedded default): exact within one process.

    Each counter is a cell, a ``[value, expires at (0: never)]`` list that stays in place while the counter
    lives, so a compiled plan (state/plan.py) holds its cells and takes and settles them without looking
    up a key (:meth:`compile`); :meth:`take_now` and friends take charges by key.
    """

    backend = "memory"

    def __init__(self, *, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._values: dict[str, list[float]] = {}  # key → its cell: [value, expires at; 0: never]
        self._ops = 0
        self.on_prune: Callable[[], None] | None = None  # called when cells went (plans holding them are stale)

    def cell(self, key: str, ttl: float) -> list[float]:
        """The cell of counter ``key``; created empty (expiring in ``ttl`` s, 0: never) when there is none."""
        values = self._values
        found = values.get(key)
        if found is None:
            self._ops += 1
            found = values[key] = [0.0, self._clock() + ttl if ttl else 0.0]
        elif type(found) is not list:  # set by hand as a (value, until) pair
            found = values[key] = list(found)
        return found

    def tidy(self) -> None:
        """Prune idle counters when due (every PRUNE_EVERY new counters or takes, or past MAX_BUCKETS)."""
        if self._ops >= PRUNE_EVERY or len(self._values) > MAX_BUCKETS:
            self._prune(self._clock())

    def compile(self, rpm: Sequence[tuple[list[float], float]], tpm: Sequence[tuple[list[float], float]],
                caps: Sequence[tuple[list[float], float, float]]) -> tuple[TakeCells, SettleCells]:
        """The take and the settlement of a compiled plan's cells (state/plan.py), as two functions.

        ``rpm``: (cell, 60 / limit) — one request each; ``tpm``: (cell, limit) — the request's tokens, at most
        the limit; ``caps``: (cell, limit, spend where alerts start) — its estimated cost. ``take(tokens,
        cost)`` takes them all or none, with :func:`decide`'s arithmetic; False when one does not fit or a
        budget's counter has expired (then :meth:`take_now` says which and for how long, or renews it).
        ``settle(tokens, cost, real_tokens, real_cost)`` moves each tpm cell by the real tokens minus what it
        took and each budget by the real cost minus ``cost`` (:meth:`settle_now`'s arithmetic; a budget
        counter that expired meanwhile takes its delta too, unread: an expired counter counts as 0 everywhere
        and its next take starts it again); True when a budget is at or past the spend where its alerts
        start (the caller then reads the cells, expiry included).

        Both are generated as straight-line code, one block per cell (as :mod:`dataclasses` generates
        ``__init__``): a plan's charges are fixed, and a loop over them costs more Python operations than the
        arithmetic. Only names are generated, and compiled once per shape (how many cells of each kind); the
        cells and numbers are each plan's functions' default arguments.
        """
        names: dict[str, Any] = {"clock": self._clock, "SLACK": _RATE_SLACK, "MINUTE": MINUTE}
        check, commit, moves = [], [], []
        for i, (cell, step) in enumerate(rpm):
            names[f"r{i}"], names[f"s{i}"] = cell, step
            # from an idle counter (TAT before now) a charge always fits: at most one period ahead
            check += [f"a{i} = r{i}[0]", f"if a{i} < now: a{i} = now + s{i}",
                      f"else:\n  a{i} += s{i}\n  if a{i} - now > SLACK: return False"]
            commit.append(f"r{i}[0] = r{i}[1] = a{i}")
        for i, (cell, limit) in enumerate(tpm):
            # the limit as a float: the same quotients (an int is converted exactly), no conversion per request
            names[f"t{i}"], names[f"l{i}"] = cell, float(limit)
            check += [f"b{i} = t{i}[0]", f"c = (tokens if tokens < l{i} else l{i}) * MINUTE / l{i}",
                      f"if b{i} < now: b{i} = now + c", f"else:\n  b{i} += c\n  if b{i} - now > SLACK: return False"]
            commit.append(f"t{i}[0] = t{i}[1] = b{i}")
            moves += [f"d = real_tokens - (tokens if tokens < l{i} else l{i})",
                      f"if d: t{i}[0] = t{i}[1] = t{i}[0] + d * MINUTE / l{i}"]
        if caps:
            moves += ["d = real_cost - cost", "if d:"]
        for i, (cell, limit, alert_at) in enumerate(caps):
            names[f"k{i}"], names[f"m{i}"], names[f"q{i}"] = cell, limit + 1e-12, alert_at
            check += [f"v{i}, u{i} = k{i}", f"if u{i} <= now and u{i}: return False", f"v{i} += cost",
                      f"if v{i} > m{i} and cost > 0: return False"]
            commit.append(f"k{i}[0] = v{i}")
            moves.append(f"  v = k{i}[0] + d\n  if v < 0.0: v = 0.0\n  k{i}[0] = v")
        near = " or ".join(f"k{i}[0] >= q{i}" for i in range(len(caps))) or "False"
        shape = (len(rpm), len(tpm), len(caps))
        code = _CODE.get(shape)
        if code is None:  # compiled once per shape (how many cells of each kind); the cells are the defaults
            defaults = ", ".join(f"{name}={name}" for name in names)
            body = "\n".join("  " + line.replace("\n", "\n  ") for line in (*check, *commit, "return True"))
            moved = "\n".join("  " + line.replace("\n", "\n  ") for line in (*moves, f"return {near}"))
            source = (f"def take(tokens, cost, {defaults}):\n  now = clock()\n{body}\n"
                      f"def settle(tokens, cost, real_tokens, real_cost, {defaults}):\n{moved}\n")
            made: dict[str, Any] = dict(names)
            exec(compile(source, "<labgate.state.counters: a plan's cells>", "exec"), made)
            code = _CODE[shape] = (made["take"].__code__, made["settle"].__code__)
        values = tuple(names.values())
        return (FunctionType(code[0], _NO_GLOBALS, "take", values),
                FunctionType(code[1], _NO_GLOBALS, "settle", values))

    def take_now(self, charges: tuple[Charge, ...]) -> tuple[int, float]:
        now, values = self._clock(), self._values
        refused, wait, new = decide(charges, values.get, now)
        if refused >= 0:
            return refused, wait
        for key, (value, until) in new.items():
            found = values.get(key)
            if type(found) is list:
                found[0], found[1] = value, until
            else:
                values[key] = [value, until]
        self._ops = ops = self._ops + 1
        if ops >= PRUNE_EVERY or len(values) > MAX_BUCKETS:
            self._prune(now)
        return _DENIED, 0.0

    async def take(self, charges: tuple[Charge, ...]) -> tuple[int, float]:
        return self.take_now(charges)

    def adjust_now(self, charges: tuple[Charge, ...], deltas: tuple[float, ...]) -> None:
        now, values = self._clock(), self._values
        for c, delta in zip(charges, deltas, strict=True):
            if delta and (current := values.get(c.key)) is not None:
                self._set(c.key, settled(c, (current[0], current[1]), delta, now))

    async def adjust(self, charges: tuple[Charge, ...], deltas: tuple[float, ...]) -> None:
        self.adjust_now(charges, deltas)

    def settle_now(self, charges: tuple[Charge, ...], tokens: tuple[int, ...], caps: tuple[int, ...],
                   real_tokens: float, real_cost: float, floor: float = 0.0) -> list[float] | None:
        """A reservation's settlement in one pass: each tpm charge moves by ``real_tokens`` minus its estimate,
        each budget by ``real_cost`` minus its estimate (what :meth:`adjust_now` does with those deltas).

        Returns each budget's spend after it (``caps`` order) when one of them is at or past ``floor`` × its
        limit (the lowest alert threshold), else None: nothing for the alerts to look at."""
        values = self._values
        for i in tokens:
            key, _, limit, period, cost = charges[i]
            delta = real_tokens - cost
            if delta and (current := values.get(key)) is not None:
                tat = current[0] + delta * period / limit
                self._set(key, (tat, tat))
        if not caps:
            return None
        now, spent, near = self._clock(), [], False
        for i in caps:
            key, _, limit, _, cost = charges[i]
            current = values.get(key)
            value, until = current if current is not None else _EMPTY
            if until and until <= now:
                value = 0.0
            elif current is not None and (delta := real_cost - cost):
                value = value + delta
                if value < 0.0:
                    value = 0.0
                self._set(key, (value, until))
            spent.append(value)
            if value >= floor * limit:
                near = True
        return spent if near else None

    def _set(self, key: str, value: Value) -> None:
        """Write a counter in its cell (plans hold the cell), or as a new cell."""
        found = self._values.get(key)
        if type(found) is list:
            found[0], found[1] = value
        else:
            self._values[key] = list(value)

    async def seed(self, values: tuple[tuple[str, float, float], ...]) -> None:
        now = self._clock()
        for key, value, ttl in values:
            if self.value_now(key) == 0.0:
                self._set(key, (value, now + ttl if ttl else 0.0))

    def value_now(self, key: str) -> float:
        return self.spent(self._values.get(key, _EMPTY))

    def spent(self, cell: Sequence[float]) -> float:
        """A cell's value now (0 once it has expired)."""
        value, until = cell
        return 0.0 if until and until <= self._clock() else value

    async def read(self, keys: tuple[str, ...]) -> tuple[float, ...]:
        now = self._clock()
        out = []
        for key in keys:
            value, until = self._values.get(key, _EMPTY)
            out.append(0.0 if until and until <= now else value)
        return tuple(out)

    def _prune(self, now: float) -> None:
        values = self._values
        self._ops = 0
        for key in [k for k, (_, until) in values.items() if until and until <= now]:
            del values[key]
        while len(values) > MAX_BUCKETS:
            del values[next(iter(values))]
        if self.on_prune is not None:
            self.on_prune()

    def status(self) -> dict[str, object]:
        return {"backend": self.backend, "counters": len(self._values)}

    async def aclose(self) -> None:
        self._values.clear()
        if self.on_prune is not None:
            self.on_prune()


class SQLiteCounters:
    """Counters in a SQLite file shared by the worker processes of one ``labgate serve --workers N``.

    The embedded default across workers: each take is one ``BEGIN IMMEDIATE`` transaction (the
    file's write lock makes it atomic across processes), run on a thread of its own; about 0.1 ms
    of that thread per request. Timed by the wall clock, which the workers share.
    """

    backend = "sqlite"

    def __init__(self, path: str, *, busy_timeout_s: float = 30.0) -> None:
        import sqlite3
        from concurrent.futures import ThreadPoolExecutor

        self.path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="labgate-limits")
        self._conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=OFF")  # counters, not records: a crash may lose the last few
        self._conn.execute("CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value REAL NOT NULL, "
                           "until REAL NOT NULL)")
        self._ops = 0

    def _take(self, charges: tuple[Charge, ...]) -> tuple[int, float]:
        conn, now = self._conn, time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = {c.key: self._get(c.key) for c in charges}
            refused, wait, new = decide(charges, current.get, now)
            if refused < 0:
                conn.executemany("INSERT OR REPLACE INTO counters (key, value, until) VALUES (?, ?, ?)",
                                 [(k, v, u) for k, (v, u) in new.items()])
            self._ops += 1
            if self._ops % PRUNE_EVERY == 0:
                conn.execute("DELETE FROM counters WHERE until > 0 AND until <= ?", (now,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return refused, wait

    def _get(self, key: str) -> Value:
        row = self._conn.execute("SELECT value, until FROM counters WHERE key = ?", (key,)).fetchone()
        return (0.0, 0.0) if row is None else (row[0], row[1])

    def _adjust(self, charges: tuple[Charge, ...], deltas: tuple[float, ...]) -> None:
        conn, now = self._conn, time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for c, delta in zip(charges, deltas, strict=True):
                row = conn.execute("SELECT value, until FROM counters WHERE key = ?", (c.key,)).fetchone()
                if delta and row is not None:
                    conn.execute("UPDATE counters SET value = ?, until = ? WHERE key = ?",
                                 (*settled(c, (row[0], row[1]), delta, now), c.key))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _seed(self, values: tuple[tuple[str, float, float], ...]) -> None:
        now = time.time()
        self._conn.execute("DELETE FROM counters WHERE until > 0 AND until <= ?", (now,))
        self._conn.executemany("INSERT OR IGNORE INTO counters (key, value, until) VALUES (?, ?, ?)",
                               [(k, v, now + ttl if ttl else 0.0) for k, v, ttl in values])

    async def seed(self, values: tuple[tuple[str, float, float], ...]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._seed, values)

    async def take(self, charges: tuple[Charge, ...]) -> tuple[int, float]:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._take, charges)

    async def adjust(self, charges: tuple[Charge, ...], deltas: tuple[float, ...]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._adjust, charges, deltas)

    async def read(self, keys: tuple[str, ...]) -> tuple[float, ...]:
        def run() -> tuple[float, ...]:
            now = time.time()
            return tuple(0.0 if (u and u <= now) else v for v, u in (self._get(k) for k in keys))
        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    def status(self) -> dict[str, object]:
        return {"backend": self.backend, "path": self.path}

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._conn.close)
        self._thread.shutdown(wait=False)


# KEYS: one per charge, then (when budgets are seeded from history) the "seeded" marker.
# ARGV: per charge kind ("r" | "c"), limit, period (ms), cost.
# Returns {index of the refused charge (0: none), milliseconds to wait}; {-1, '0'} when the marker is
# missing (an empty Redis: nothing taken, the caller seeds the budgets and takes again).
TAKE = """
local n = #ARGV / 4
if #KEYS > n and redis.call('EXISTS', KEYS[#KEYS]) == 0 then return {-1, '0'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local new = {}
for i = 1, n do
  local kind, limit = ARGV[4*i-3], tonumber(ARGV[4*i-2])
  local period, cost = tonumber(ARGV[4*i-1]), tonumber(ARGV[4*i])
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  if kind == 'r' then
    if v < now then v = now end
    local tat = v + cost * period / limit
    if tat - now > period + 0.001 then return {i, tostring(tat - now - period)} end
    new[i] = tat
  else
    local total = v + cost
    if cost > 0 and total > limit + 1e-12 then return {i, tostring(period)} end
    new[i] = total
  end
end
for i = 1, n do
  local period = tonumber(ARGV[4*i-1])
  if ARGV[4*i-3] == 'r' then
    redis.call('SET', KEYS[i], string.format('%.17g', new[i]), 'PX', math.ceil(new[i] - now) + 1000)
  elseif period > 0 then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl < 0 then ttl = math.ceil(period) end
    redis.call('SET', KEYS[i], string.format('%.17g', new[i]), 'PX', ttl)
  else
    redis.call('SET', KEYS[i], string.format('%.17g', new[i]))
  end
end
return {0, '0'}
"""
# KEYS: one per charge. ARGV: per charge kind, limit, period (ms), delta (requests, tokens or USD).
# Returns each budget's (kind 'c') value after it, as a string, in charge order ('0' when absent): the
# spend the alerts look at, read in the same call.
ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local spent = {}
for i = 1, #KEYS do
  local kind, limit = ARGV[4*i-3], tonumber(ARGV[4*i-2])
  local period, delta = tonumber(ARGV[4*i-1]), tonumber(ARGV[4*i])
  local v = redis.call('GET', KEYS[i])
  if v and delta ~= 0 then
    v = tonumber(v)
    if kind == 'r' then
      local tat = v + delta * period / limit
      if tat <= now then redis.call('DEL', KEYS[i])
      else redis.call('SET', KEYS[i], string.format('%.17g', tat), 'PX', math.ceil(tat - now) + 1000) end
    else
      local total = v + delta
      if total < 0 then total = 0 end
      v = string.format('%.17g', total)
      redis.call('SET', KEYS[i], v, 'KEEPTTL')
    end
  end
  if kind == 'c' then spent[#spent + 1] = v and tostring(v) or '0' end
end
return spent
"""


def _argv(charges: tuple[Charge, ...], values: tuple[float, ...]) -> list[Any]:
    argv: list[Any] = []
    for c, v in zip(charges, values, strict=True):
        argv += ["r" if c.kind == "rate" else "c", repr(float(c.limit)), repr(c.period_s * 1000), repr(float(v))]
    return argv


class RedisCounters:
    """Counters in Redis, shared by every worker and replica: one script call per take and per adjust."""

    backend = "redis"

    def __init__(self, link: Any, *, max_connections: int) -> None:
        self.link = link  # state.redis.RedisLink
        # requests wait their turn for a pooled connection (back-pressure) rather than skipping the
        # check, which would admit them unlimited: the pool's own "exhausted" error is for the cache
        self._slots = asyncio.Semaphore(max_connections)
        self._take = link.client.register_script(TAKE)
        self._adjust = link.client.register_script(ADJUST)
        # budgets seeded from the history (state/seed.py): the key whose absence means an empty Redis
        # (first use, or restarted without its data), and what seeds it again then
        self.marker: str | None = None
        self.on_empty: Any = None  # async () -> None: seeds the budgets and sets the marker

    async def _run(self, script: Any, charges: tuple[Charge, ...], values: tuple[float, ...],
                   marker: str | None = None) -> Any:
        link = self.link
        link.check()
        keys = [c.key for c in charges]
        if marker is not None:
            keys.append(marker)
        async with self._slots:
            try:
                async with asyncio.timeout(link.timeout_s):
                    answer = await script(keys=keys, args=_argv(charges, values))
            except link.errors as exc:
                raise link.failed(exc) from None
        if link.down_until:
            link.succeeded()
        return answer

    async def take(self, charges: tuple[Charge, ...]) -> tuple[int, float]:
        costs = tuple(c.cost for c in charges)
        index, wait_ms = await self._run(self._take, charges, costs, self.marker)
        if int(index) == -1:  # an empty Redis: seed the budgets from the history, then take
            if self.on_empty is not None:
                await self.on_empty()
            index, wait_ms = await self._run(self._take, charges, costs)
        return int(index) - 1, float(wait_ms) / 1000

    async def adjust(self, charges: tuple[Charge, ...], deltas: tuple[float, ...]) -> None:
        await self._run(self._adjust, charges, deltas)

    async def adjust_read(self, charges: tuple[Charge, ...], deltas: tuple[float, ...]) -> tuple[float, ...]:
        """:meth:`adjust`, returning each budget charge's spend after it (charge order): one script call."""
        spent = await self._run(self._adjust, charges, deltas)
        return tuple(float(v) for v in spent)

    async def seed(self, values: tuple[tuple[str, float, float], ...]) -> None:
        """Set each counter that does not exist (SET NX), and the seeded marker: one pipelined round trip."""
        link = self.link
        link.check()
        try:
            async with self._slots, asyncio.timeout(link.timeout_s), link.client.pipeline(transaction=False) as pipe:
                for key, value, ttl in values:
                    pipe.set(key, repr(float(value)), nx=True, px=math.ceil(ttl * 1000) if ttl else None)
                if self.marker is not None:
                    pipe.set(self.marker, "1")
                await pipe.execute()
        except link.errors as exc:
            raise link.failed(exc) from None

    async def marked(self) -> bool:
        """Does the seeded marker exist (False when unknown: seeding again is harmless, SET NX)?"""
        try:
            async with self._slots, asyncio.timeout(self.link.timeout_s):
                return bool(await self.link.client.exists(self.marker))
        except Exception:
            return False

    async def read(self, keys: tuple[str, ...]) -> tuple[float, ...]:
        link = self.link
        link.check()
        try:  # a slot like every command: past max_connections redis-py raises instead of waiting
            async with self._slots, asyncio.timeout(link.timeout_s):
                values = await link.client.mget(list(keys)) if keys else []
        except link.errors as exc:
            raise link.failed(exc) from None
        return tuple(float(v) if v is not None else 0.0 for v in values)

    def status(self) -> dict[str, object]:
        return {"backend": self.backend, **self.link.status()}

    async def aclose(self) -> None:
        await self.link.aclose()
