"""Ollama's native model listing (``GET /api/tags``), so discovery code has something to find."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import orjson


def tags(models: Iterable[str]) -> bytes:
    """The ``/api/tags`` body: each model with a made-up but stable size, digest and details."""
    entries = []
    for name in models:
        digest = hashlib.sha256(name.encode()).hexdigest()
        entries.append(
            {
                "name": name,
                "model": name,
                "modified_at": "2024-01-01T00:00:00Z",
                "size": 1_000_000 + int(digest[:6], 16),
                "digest": digest,
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "sim",
                    "families": ["sim"],
                    "parameter_size": "1B",
                    "quantization_level": "Q4_K_M",
                },
            }
        )
    return orjson.dumps({"models": entries})
