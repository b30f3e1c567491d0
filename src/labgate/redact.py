"""Mask what looks like a credential in text that came from outside (an upstream's error message).

An upstream may echo the key we sent it ("Incorrect API key provided:
sk-…"), or any other secret, in an error body; that text becomes our error
message and from there reaches the client, the log, request history and
``/health/providers``. :func:`redact` runs once, where upstream text becomes
our error (``providers/http.py``), so every one of those sees the masked
text. It runs on error paths only, never per successful request.

What is masked (the label is kept, the value becomes ``***``):

- OpenAI/Anthropic style keys: ``sk-…``, ``sk-ant-…``, ``sk-proj-…``;
- other well-known key shapes: ``AIza…`` (Google), ``AKIA…`` (AWS access key id),
  ``ghp_…``/``gho_…``/``github_pat_…`` (GitHub), ``xox…-`` (Slack), ``hf_…`` (Hugging Face);
- ``Bearer <token>`` and ``Basic <token>``;
- a value after a word such as ``api-key``, ``x-api-key``, ``token``, ``secret``,
  ``password``, ``authorization`` (``key: value``, ``key=value``, ``"key": "value"``);
- JWTs (``eyJ….eyJ….…``);
- the exact values in ``secrets`` (the provider's own configured key), whatever they look like.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
MIN_SECRET_CHARS = 8  # configured values shorter than this are not masked verbatim (too many false hits)

_TOKEN = r"[A-Za-z0-9._~+/=\-]"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # a labelled value: keep the label and separator, mask the value
    (re.compile(r"(?i)((?:x-)?api[ _-]?key|access[_-]?key|secret(?:[_-]?key)?|client[_-]?secret|password|passwd"
                r"|(?:access|refresh|id|auth|session)?[_-]?token|authorization)"
                r"([\"']?\s*(?:provided\s*)?[:=]\s*[\"']?)(?!(?:bearer|basic)\b)(?![0-9]+\b)(" + _TOKEN + r"{6,})"),
     r"\1\2" + MASK),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)(" + _TOKEN + r"{4,})"), r"\1\2" + MASK),
    (re.compile(r"\b(sk-(?:ant-|proj-)?)[A-Za-z0-9_\-]{6,}"), r"\1" + MASK),
    (re.compile(r"\b(AIza)[0-9A-Za-z_\-]{20,}"), r"\1" + MASK),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{12,}"), r"\1" + MASK),
    (re.compile(r"\b(gh[pousr]_|github_pat_)[A-Za-z0-9_]{10,}"), r"\1" + MASK),
    (re.compile(r"\b(xox[abposr]-)[A-Za-z0-9\-]{8,}"), r"\1" + MASK),
    (re.compile(r"\b(hf_)[A-Za-z0-9]{16,}"), r"\1" + MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{6,}\.eyJ[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]*"), MASK),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every credential-looking value (and every one of ``secrets``) replaced by ``***``."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET_CHARS and secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def secrets_in(headers: dict[str, str]) -> tuple[str, ...]:
    """The credential values among configured request headers (what an upstream could echo back)."""
    found: list[str] = []
    for name, value in headers.items():
        lower = name.lower()
        if lower in ("authorization", "proxy-authorization"):
            scheme, _, token = value.partition(" ")
            found.append(token.strip() if token.strip() else scheme)
        elif any(word in lower for word in ("key", "token", "secret", "auth", "password")):
            found.append(value.strip())
    return tuple(value for value in found if len(value) >= MIN_SECRET_CHARS)
