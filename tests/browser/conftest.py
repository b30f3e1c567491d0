"""The Lab UI in a real browser: Playwright (PyPI) driving the system Chromium, against a real gateway
wired to the provider simulator.

- ``lab``: one gateway per test module, read from a config directory (so the UI's reload has files to
  read again), auth on (``lab.key``), history in SQLite with ``capture: full``; its provider is a
  simulator serving ``m-a``, ``m-b``, ``m-c`` that streams at a readable pace.
- ``page``: a fresh browser tab (1280×900) with the key already in session storage, unless the test
  asks for ``bare_page`` (no key: the UI must ask).
- ``shot``: ``shot(page, name)`` takes a screenshot saved under ``tests/browser/artifacts/`` (``LABGATE_UI_ARTIFACTS``
  overrides) and checked for non-blank content.

Chromium: ``LABGATE_CHROMIUM`` or ``/usr/bin/chromium`` (Debian's ``chromium``); never ``playwright
install``. Where Chromium or Playwright is missing these tests skip with the reason — and fail under
``LABGATE_REQUIRE_INTEGRATION=1`` (``.ci/run``), as every ``integration`` test does.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from labgate.config.reload import ConfigSource, load_files
from labgate.server.serve import RunningGateway, start_gateway
from labgate.telemetry.logs import AccessLog
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import LoopThread

KEY = "sk-lab-ui-browser-test"
KEY_ENV = "LABGATE_UI_TEST_MASTER_KEY"
MODELS = ("m-a", "m-b", "m-c")
PACE = Behaviour(ttft_s=0.05, tokens_per_s=40, completion_tokens=24)  # ~0.6 s a stream: visibly token by token
ARTIFACTS = Path(os.environ.get("LABGATE_UI_ARTIFACTS", Path(__file__).parent / "artifacts"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


def chromium_path() -> str | None:
    given = os.environ.get("LABGATE_CHROMIUM")
    if given:
        return given
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Lab:
    running: RunningGateway
    thread: LoopThread
    sim: Simulator
    config_dir: Path
    key: str = KEY

    @property
    def url(self) -> str:
        return self.running.url

    def rewrite(self, *, extra_model: str | None = None) -> None:
        """Change the config files on disk (the running gateway serves the old ones until reloaded)."""
        write_config(self.config_dir, self.sim.url, extra_model=extra_model)

    def flush(self) -> None:
        assert self.running.gateway.history is not None
        self.thread.run(self.running.gateway.history.flush())


def write_config(directory: Path, sim_url: str, *, extra_model: str | None = None) -> None:
    models = [*MODELS, *([extra_model] if extra_model else [])]
    providers = {"sim": {"type": "openai_compatible", "base_url": sim_url + "/v1", "models": models,
                         "pricing": {"input_per_1m": 1.0, "output_per_1m": 2.0}}}
    (directory / "providers.yaml").write_bytes(orjson.dumps({"providers": providers}))
    (directory / "gateway.yaml").write_bytes(orjson.dumps({
        "auth": {"master_key_env": KEY_ENV},
        "store": {"url": str(directory / "history.db"), "capture": "full", "flush_interval_s": 0.05},
        "logging": {"requests": False}}))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    os.environ[KEY_ENV] = KEY
    directory = Path(tempfile.mkdtemp(prefix="labgate-ui-"))
    thread = LoopThread()
    sim = Simulator(PACE, models=[*MODELS, "m-new"])
    thread.run(sim.__aenter__())
    write_config(directory, sim.url)
    loaded = load_files(directory)
    running = thread.run(start_gateway(loaded.config, host="127.0.0.1", port=0, access_log=AccessLog(enabled=False),
                                       source=ConfigSource(path=directory), loaded=loaded))
    try:
        yield Lab(running, thread, sim, directory)
    finally:
        thread.run(running.stop(grace=1.0))
        thread.run(sim.__aexit__(None, None, None))
        thread.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, per module: Playwright's sync API runs an event loop in the main thread while it is
    started, which would break every asyncio test collected after these (session scope kept it running)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install playwright; never `playwright install`)")
    executable = chromium_path()
    if executable is None or not Path(executable).exists():
        pytest.skip("no Chromium: apt-get install chromium (or set LABGATE_CHROMIUM)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def _context(browser: Any, *, key: str | None, **options: Any) -> Any:
    context = browser.new_context(**{"viewport": {"width": 1280, "height": 900}, **options})
    if key:
        context.add_init_script(f"sessionStorage.setItem('labgate.key', {orjson.dumps(key).decode()});")
    return context


@pytest.fixture
def page(browser: Any, lab: Lab) -> Iterator[Any]:
    context = _context(browser, key=lab.key)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.set_default_timeout(10_000)
    yield tab
    context.close()
    # a CSP violation or an uncaught exception shows here; 401/404 answers the UI handles are expected
    assert not [e for e in errors if "Failed to load resource" not in e], errors


@pytest.fixture
def bare_page(browser: Any, lab: Lab) -> Iterator[Any]:
    context = _context(browser, key=None)
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    yield tab
    context.close()


@pytest.fixture
def phone_page(browser: Any, lab: Lab) -> Iterator[Any]:
    context = _context(browser, key=lab.key, viewport={"width": 390, "height": 844}, is_mobile=True,
                       has_touch=True, device_scale_factor=2, color_scheme="dark")
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    yield tab
    context.close()


def distinct_rows(png: bytes) -> int:
    """How many distinct (filtered) rows a PNG holds: a blank page has a handful. zlib only, no PIL."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data, width, bpp = 8, b"", 0, 4
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        chunk = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width = struct.unpack(">I", chunk[:4])[0]
            bpp = {2: 3, 6: 4, 0: 1, 4: 2}.get(chunk[9], 4)
        elif kind == b"IDAT":
            data += chunk
        pos += 12 + length
    raw = zlib.decompress(data)
    stride = width * bpp + 1
    # filtered rows, not undone: a blank image's rows filter to the same bytes (Sub/Up of equal pixels: zeros)
    return len({raw[start:start + stride] for start in range(0, len(raw), stride)})


@pytest.fixture
def expect(browser: Any) -> Any:
    """Playwright's ``expect`` (imported here: without Playwright the tests skip, or fail in CI)."""
    from playwright.sync_api import expect

    return expect


@pytest.fixture
def artifacts() -> Path:
    return ARTIFACTS


@pytest.fixture
def shot() -> Any:
    """``shot(page, name)``: see :func:`take_shot`."""
    return take_shot


def take_shot(page: Any, name: str, *, full_page: bool = True) -> Path:
    """Save a screenshot as a test artifact (and for docs/ui.md) and check it is not blank."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    png = page.screenshot(path=str(path), full_page=full_page)
    assert distinct_rows(png) >= 30, f"screenshot {name} looks blank"
    return path
