"""A small aiohttp app served on an ephemeral port for a test: a fake engine, webhook or upstream.

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serving(app) as url:        # http://127.0.0.1:PORT, stopped at the end of the block
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str = "127.0.0.1", **runner: Any) -> AsyncIterator[str]:
    """Serve ``app`` on a free port of ``host``; yields its base URL (no trailing slash).

    ``runner`` goes to :class:`aiohttp.web.AppRunner` (``access_log=None`` unless given).
    """
    runner.setdefault("access_log", None)
    app_runner = web.AppRunner(app, **runner)
    await app_runner.setup()
    try:
        site = web.TCPSite(app_runner, host, 0)
        await site.start()
        yield f"http://{host}:{app_runner.addresses[0][1]}"
    finally:
        await app_runner.cleanup()
