"""The ``requests`` table: one row per request, the same columns in SQLite and PostgreSQL.

It extends the table our users know from the seeds (``model``, ``provider``,
``messages``, ``temperature``, ``max_tokens``, ``response``,
``response_time_ms``, ``tokens_used``, ``error``, ``metadata``; indexes on
model, timestamp and provider) with what the gateway knows about a request.

Migrations are numbered; ``history_schema_version`` holds the last one applied. A
store applies the missing ones when it opens (PostgreSQL under an advisory
lock, so replicas starting together do not race).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    sqlite: str
    postgres: str


_V1: tuple[Column, ...] = (  # the table as migration 1 created it: never edit
    Column("request_id", "TEXT NOT NULL", "TEXT NOT NULL"),  # labgate's own id (server/ids.py)
    Column("timestamp", "REAL NOT NULL", "TIMESTAMPTZ NOT NULL"),  # SQLite: Unix seconds, UTC
    Column("endpoint", "TEXT NOT NULL", "TEXT NOT NULL"),  # chat | completions | embeddings | …
    Column("key_id", "TEXT", "TEXT"),  # a hash prefix of the API key, never the key
    Column("model", "TEXT", "TEXT"),  # as requested (NULL when the body never parsed)
    Column("provider", "TEXT", "TEXT"),  # the provider of the last attempt
    Column("deployment", "TEXT", "TEXT"),
    Column("experiment", "TEXT", "TEXT"),
    Column("variant", "TEXT", "TEXT"),
    Column("stream", "INTEGER NOT NULL", "BOOLEAN NOT NULL"),
    Column("capture", "TEXT NOT NULL", "TEXT NOT NULL"),  # full | metadata: what this row holds
    Column("messages", "TEXT", "JSONB"),  # chat messages, a completion's prompt or embedding input
    Column("parameters", "TEXT", "JSONB"),  # every other body key (metadata capture: numbers only)
    Column("temperature", "REAL", "DOUBLE PRECISION"),
    Column("max_tokens", "INTEGER", "INTEGER"),
    Column("response", "TEXT", "TEXT"),  # the answer's text (first choice)
    Column("tool_calls", "TEXT", "JSONB"),
    Column("prompt", "TEXT", "TEXT"),  # the last user prompt, normalised, for "most common prompts"
    Column("finish_reason", "TEXT", "TEXT"),
    Column("status", "INTEGER NOT NULL", "INTEGER NOT NULL"),  # HTTP status; 499: the client left first
    Column("outcome", "TEXT NOT NULL", "TEXT NOT NULL"),  # ok | error | stream_error | client_disconnected
    Column("error_type", "TEXT", "TEXT"),
    Column("error", "TEXT", "TEXT"),
    Column("response_time_ms", "REAL", "DOUBLE PRECISION"),
    Column("ttft_ms", "REAL", "DOUBLE PRECISION"),
    Column("prompt_tokens", "INTEGER", "INTEGER"),
    Column("completion_tokens", "INTEGER", "INTEGER"),
    Column("tokens_used", "INTEGER", "INTEGER"),
    Column("cost", "REAL", "DOUBLE PRECISION"),
    Column("cache_hit", "INTEGER NOT NULL", "BOOLEAN NOT NULL"),
    Column("attempts", "INTEGER NOT NULL", "INTEGER NOT NULL"),
    Column("failed_attempts", "TEXT", "JSONB"),  # [{deployment, error, message}] per failed attempt
    Column("client_ip", "TEXT", "TEXT"),
    Column("tags", "TEXT", "JSONB"),
    Column("metadata", "TEXT", "JSONB"),
)
# Columns added since, each by its migration (ALTER TABLE … ADD COLUMN appends: the order is kept).
_V2 = Column("client_request_id", "TEXT", "TEXT")  # the client's x-request-id; never names a record
_V3 = (  # the response cache (docs/cache.md)
    Column("cache", "TEXT", "TEXT"),  # hit | miss | bypass | off | unavailable; NULL: no cache configured
    Column("cache_bytes", "INTEGER", "INTEGER"),  # hits: bytes served from the cache; misses: bytes stored
)
_V6 = Column("trace_id", "TEXT", "TEXT")  # the W3C trace id (32 hex digits) when the request was traced
# migration 7: a local_first route's decision, as x-labgate-routing said (docs/limits.md)
_V7 = Column("routing", "TEXT", "TEXT")  # local | cloud (why); NULL: not a local_first route
COLUMNS: tuple[Column, ...] = (*_V1, _V2, *_V3, _V6, _V7)
NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
JSON_COLUMNS = frozenset({"messages", "parameters", "tool_calls", "failed_attempts", "tags", "metadata"})
BOOL_COLUMNS = frozenset({"stream", "cache_hit"})
INDEXES = {"idx_requests_timestamp": "timestamp", "idx_requests_model": "model",
           "idx_requests_provider": "provider", "idx_requests_request_id": "request_id"}
TABLE = "requests"


def _create(dialect: str, primary_key: str) -> list[str]:
    columns = ",\n    ".join(f"{c.name} {getattr(c, dialect)}" for c in _V1)
    statements = [f"CREATE TABLE IF NOT EXISTS {TABLE} (\n    {primary_key},\n    {columns}\n)"]
    statements += [f"CREATE INDEX IF NOT EXISTS {name} ON {TABLE} ({column})" for name, column in INDEXES.items()]
    return statements


KEYS_TABLE = "api_keys"  # virtual keys (labgate/keys.py): only a SHA-256 of each secret, never the secret
AUDIT_TABLE = "audit_log"  # admin actions (labgate/audit.py)


def _v5(dialect: str) -> list[str]:
    """Virtual keys and the audit log; times are Unix seconds (REAL / DOUBLE PRECISION) in both dialects."""
    real, serial = ("REAL", "INTEGER PRIMARY KEY AUTOINCREMENT") if dialect == "sqlite" else \
        ("DOUBLE PRECISION", "BIGSERIAL PRIMARY KEY")
    return [
        f"""CREATE TABLE IF NOT EXISTS {KEYS_TABLE} (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, hint TEXT NOT NULL, name TEXT NOT NULL,
    project TEXT, team TEXT, models TEXT, expires_at {real}, revoked_at {real},
    rpm INTEGER, tpm INTEGER, budget_usd {real}, budget_period TEXT,
    created_at {real} NOT NULL, updated_at {real} NOT NULL)""",
        f"CREATE INDEX IF NOT EXISTS idx_{KEYS_TABLE}_updated ON {KEYS_TABLE} (updated_at)",
        f"""CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (
    id {serial}, ts {real} NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT, before TEXT, after TEXT)""",
        f"CREATE INDEX IF NOT EXISTS idx_{AUDIT_TABLE}_ts ON {AUDIT_TABLE} (ts)",
    ]


# Migration 6: the trace id (telemetry/traces.py), indexed: ``?trace_id=`` finds a trace's request.
TRACE_INDEX = f"CREATE INDEX IF NOT EXISTS idx_{TABLE}_trace_id ON {TABLE} (trace_id)"

# version → statements. Append new versions; never edit an applied one.
SQLITE_MIGRATIONS: dict[int, list[str]] = {
    1: _create("sqlite", "id INTEGER PRIMARY KEY AUTOINCREMENT"),
    2: [f"ALTER TABLE {TABLE} ADD COLUMN {_V2.name} {_V2.sqlite}"],
    3: [f"ALTER TABLE {TABLE} ADD COLUMN {c.name} {c.sqlite}" for c in _V3],
    5: _v5("sqlite"),
    6: [f"ALTER TABLE {TABLE} ADD COLUMN {_V6.name} {_V6.sqlite}", TRACE_INDEX],
    7: [f"ALTER TABLE {TABLE} ADD COLUMN {_V7.name} {_V7.sqlite}"],
}
POSTGRES_MIGRATIONS: dict[int, list[str]] = {
    1: _create("postgres", "id BIGSERIAL PRIMARY KEY"),
    2: [f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {_V2.name} {_V2.postgres}"],
    3: [f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {c.name} {c.postgres}" for c in _V3],
    5: _v5("postgres"),
    6: [f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {_V6.name} {_V6.postgres}", TRACE_INDEX],
    7: [f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {_V7.name} {_V7.postgres}"],
}
VERSION_TABLE = "history_schema_version"

# Migration 4: the ``feedback`` table (POST /v1/feedback; server/feedback.py); 3 is the cache's, 5 (above) keys
# and the audit log, 6 trace_id, 7 the routing column. One row per vote, any number per request; ``request_id``
# names the ``requests`` row (labgate's id), not a foreign key: a record and its feedback are written by
# different processes, and retention deletes records without touching votes.
FEEDBACK_TABLE = "feedback"
FEEDBACK_VERSION = 4
FEEDBACK_NAMES: tuple[str, ...] = ("feedback_id", "request_id", "timestamp", "score", "thumbs", "preferred",
                                   "comment", "who", "comparison_id", "key_id")


def _feedback(dialect: str, primary_key: str) -> list[str]:
    time, flag = ("REAL", "INTEGER") if dialect == "sqlite" else ("TIMESTAMPTZ", "BOOLEAN")
    return [
        f"CREATE TABLE IF NOT EXISTS {FEEDBACK_TABLE} (\n    {primary_key},\n    feedback_id TEXT NOT NULL,\n"
        f"    request_id TEXT NOT NULL,\n    timestamp {time} NOT NULL,\n    score INTEGER,\n"
        f"    thumbs INTEGER,\n    preferred {flag},\n    comment TEXT,\n    who TEXT,\n"
        f"    comparison_id TEXT,\n    key_id TEXT\n)",
        f"CREATE INDEX IF NOT EXISTS idx_feedback_request_id ON {FEEDBACK_TABLE} (request_id)",
    ]


SQLITE_MIGRATIONS[FEEDBACK_VERSION] = _feedback("sqlite", "id INTEGER PRIMARY KEY AUTOINCREMENT")
POSTGRES_MIGRATIONS[FEEDBACK_VERSION] = _feedback("postgres", "id BIGSERIAL PRIMARY KEY")
