"""Fixtures for integration tests against real engines.

``llamacpp`` (session scope): two real llama.cpp servers (xllamacpp) on a generated tiny GGUF.
    .chat_url   base URL (no ``/v1``), model alias ``tiny`` (``.chat_model``)
    .embed_url  base URL (no ``/v1``), embedding mode, alias ``tiny-embed`` (``.embed_model``)
Skips (with a reason) when xllamacpp or gguf cannot be imported; ``.ci/run`` turns that skip
into a failure.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

UPSTREAMS = Path(__file__).resolve().parent.parent / "upstreams"


def _load_upstream_helper() -> ModuleType:
    name = "_labgate_upstreams_llamacpp"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, UPSTREAMS / "llamacpp.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def llamacpp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        import gguf  # noqa: F401
        import xllamacpp  # noqa: F401
    except (ImportError, OSError) as e:
        pytest.skip(f"llama.cpp upstream unavailable: cannot import xllamacpp/gguf ({e}); "
                    "install with: pip install xllamacpp==2026.10.11549 gguf==0.19.0")
    helper = _load_upstream_helper()
    with helper.llamacpp_servers(tmp_path_factory.mktemp("llamacpp"), timeout=30.0) as servers:
        yield servers
