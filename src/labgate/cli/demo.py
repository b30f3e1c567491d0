"""``labgate demo``: simulated providers plus a gateway wired to them — try every endpoint, no engine needed."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from labgate.config.load import Config, build_config

DEMO_KEY_HINT = "any string (the demo runs without auth)"


def register(commands: Any) -> None:
    p = commands.add_parser("demo", help="run simulated providers and a gateway wired to them")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4000, help="gateway port (default 4000)")
    p.add_argument("--tokens-per-s", type=float, default=40.0, help="simulated generation speed")
    p.set_defaults(run=run)


def demo_config(local_url: str, cloud_url: str) -> Config:
    """Two simulated providers: a "local engine" (OpenAI dialect) and an "anthropic" cloud."""
    providers = {
        "local": {"type": "openai_compatible", "base_url": local_url, "description": "simulated local engine",
                  "models": [{"name": "sim-llama", "capabilities": ["chat"], "tags": ["local"]},
                             {"name": "sim-coder", "capabilities": ["code_generation"], "tags": ["local"]},
                             {"name": "sim-embed", "tags": ["embeddings"]}]},
        "cloud": {"type": "anthropic", "base_url": cloud_url, "description": "simulated Anthropic API",
                  "models": [{"name": "sim-claude", "capabilities": ["chat", "code_generation"]}]},
    }
    mappings = {"routing": {"exact_matches": {"default": {"provider": "local", "model": "sim-llama",
                                                          "fallback_chain": ["sim-claude"]}}}}
    return build_config({"providers": {"providers": providers}, "mappings": mappings}, {}, source="demo")


def run(args: argparse.Namespace) -> int:
    from labgate.cli.serve import _install_uvloop

    _install_uvloop()
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    from labgate.server.serve import start_gateway

    try:
        from labgate.testing import Behaviour, Simulator
    except ImportError as exc:
        print(f"labgate demo needs the simulator's extra: pip install 'labgate[testing]' ({exc})", file=sys.stderr)
        return 1

    pace = Behaviour(latency_s=0.02, ttft_s=0.05, tokens_per_s=args.tokens_per_s, completion_tokens=24)
    async with Simulator(behaviour=pace, models=["sim-llama", "sim-coder", "sim-embed"]) as local, \
            Simulator(behaviour=pace, models=["sim-claude"]) as cloud:
        running = await start_gateway(demo_config(local.url + "/v1", cloud.url), host=args.host, port=args.port)
        url = running.url
        stop = asyncio.Event()  # handled before the banner says we listen: a stop signal then is a clean stop
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"""labgate demo: gateway on {url} in front of two simulated providers
  local  {local.url}  (OpenAI dialect: sim-llama, sim-coder, sim-embed)
  cloud  {cloud.url}  (Anthropic dialect: sim-claude)
Try:
  curl {url}/v1/models
  curl {url}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{"model": "default", "messages": [{{"role": "user", "content": "hi"}}]}}'
  curl -N {url}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{"model": "sim-claude", "stream": true, "messages": [{{"role": "user", "content": "hi"}}]}}'
  curl {url}/v1/embeddings -H 'content-type: application/json' -d '{{"model": "sim-embed", "input": "hi"}}'
  curl {url}/health/providers
The Lab UI (playground, compare, history, analytics, operations): {url}/ui/
Or with the openai SDK: OpenAI(base_url="{url}/v1", api_key="demo").
Ctrl-C stops.""", file=sys.stderr, flush=True)
        await stop.wait()
        await running.stop(grace=5.0)
    return 0
