"""Where the history store is: the default data dir, paths relative to the config, URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from labgate.store import resolve_url, store_for
from labgate.store.sqlite import SQLiteStore


def test_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABGATE_DATA_DIR", str(tmp_path / "data"))
    assert resolve_url(None) == str(tmp_path / "data" / "history.db")
    monkeypatch.delenv("LABGATE_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert resolve_url(None) == str(tmp_path / "xdg" / "labgate" / "history.db")
    config_dir = tmp_path / "cfg"
    config_dir.mkdir()
    (config_dir / "labgate.yaml").write_text("providers: {}\n")
    assert resolve_url("data/h.db", source=str(config_dir)) == str(config_dir / "data" / "h.db")
    assert resolve_url("h.db", source=str(config_dir / "labgate.yaml")) == str(config_dir / "h.db")
    assert resolve_url("sqlite:////var/lib/labgate/h.db") == "/var/lib/labgate/h.db"
    assert resolve_url("sqlite:///h.db", source=str(config_dir)) == str(config_dir / "h.db")
    pg = "postgresql://u:secret@db:5432/lab"
    assert resolve_url(pg) == pg
    assert type(store_for(pg)).__name__ == "PostgresStore"
    assert store_for(pg).display_url == "postgresql://u:***@db:5432/lab"
    assert isinstance(store_for(str(tmp_path / "x.db")), SQLiteStore)
