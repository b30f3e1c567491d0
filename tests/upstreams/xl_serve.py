"""Serve a GGUF with llama.cpp's own C++ HTTP server, in-process, through ``xllamacpp``.

    python tests/upstreams/xl_serve.py MODEL.gguf --port 0 --alias tiny [--embedding] [--parallel N]

Listens on 127.0.0.1 only. Prints ``READY http://127.0.0.1:PORT`` on stdout (flushed) once the
socket is listening and the model is loaded; llama.cpp's own log goes to stderr. Exits with
status 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="serve a GGUF with xllamacpp (llama.cpp's server) on 127.0.0.1")
    ap.add_argument("model", help="path to the .gguf file")
    ap.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default)")
    ap.add_argument("--alias", default="tiny", help="model id shown by /v1/models (default: tiny)")
    ap.add_argument("--embedding", action="store_true", help="enable /v1/embeddings (mean pooling)")
    ap.add_argument("--parallel", type=int, default=2, help="number of slots (default: 2)")
    ap.add_argument("--ctx-size", type=int, default=2048,
                    help="total context, split evenly across the slots (default: 2048)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for generation (default: 2)")
    ap.add_argument("--exit-with-parent", action="store_true",
                    help="exit when the parent process goes away (no orphaned servers if a test run is killed)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.path.isfile(args.model):
        print(f"xl_serve: no such model file: {args.model}", file=sys.stderr)
        return 2

    stop = threading.Event()
    parent = os.getppid()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    # install before the (slow-ish) import so a very early SIGTERM still exits cleanly
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    t0 = time.monotonic()
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = args.model
    p.model_alias = {args.alias}
    p.hostnames = ["127.0.0.1"]
    p.port = args.port
    p.n_parallel = args.parallel
    p.n_ctx = args.ctx_size
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.warmup = False
    p.ui = False
    if args.embedding:
        p.embedding = True
        p.pooling_type = xlc.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN

    server = xlc.Server(p)  # returns once the model is loaded and the socket listens
    address = str(server.listening_address)
    m = re.search(r":(\d+)/?$", address)
    if m is None:
        print(f"xl_serve: cannot parse listening address {address!r}", file=sys.stderr)
        return 1
    print(f"xl_serve: up in {time.monotonic() - t0:.2f}s", file=sys.stderr, flush=True)
    print(f"READY http://127.0.0.1:{m.group(1)}", flush=True)

    while not stop.wait(0.5):
        if args.exit_with_parent and os.getppid() != parent:
            print("xl_serve: parent process gone, exiting", file=sys.stderr, flush=True)
            break
    del server  # ~Server stops the HTTP loop and frees the model
    return 0


if __name__ == "__main__":
    sys.exit(main())
