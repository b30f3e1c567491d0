"""Config backups: create, find, verify, restore, and the 10 + 7 daily + 4 weekly rotation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from labgate.config import backup

NOW = datetime(2025, 10, 21, 12, 0, tzinfo=UTC)  # a Tuesday
VALID = "providers:\n  p:\n    type: vllm\n    base_url: http://127.0.0.1:9\n    models: [m1]\n"


def test_rotation_keeps_last_ten_then_one_a_day_then_one_a_week() -> None:
    # 40 days of backups, three a day at 01:00, 09:00 and 17:00
    created = [NOW.replace(hour=h) - timedelta(days=d) for d in range(40) for h in (1, 9, 17) if
               NOW.replace(hour=h) - timedelta(days=d) <= NOW]
    kept = backup.keep(created, now=NOW)
    newest_ten = sorted(created, reverse=True)[:10]
    daily = {max(c for c in created if c.date() == (NOW - timedelta(days=d)).date()) for d in range(7)}
    weeks = [(NOW - timedelta(days=NOW.weekday() + 7 * w)).date() for w in range(4)]  # Mondays
    weekly = {max(c for c in created if w <= c.date() < w + timedelta(days=7)) for w in weeks}
    assert kept == set(newest_ten) | daily | weekly
    # the ten reach back to Saturday; Wed-Fri add a daily each, the two weeks before last a weekly each
    assert len(kept) == 10 + 3 + 2
    assert backup.keep([], now=NOW) == set()


def test_create_list_find_verify_restore(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "providers.yaml").write_text(VALID)
    (config / "ports.yaml").write_text("ports: {}\n")
    store = tmp_path / "backups"
    first = backup.create(config, store, reason="first", now=NOW)
    assert (first.name, first.reason, sorted(first.files)) == ("20251021T120000Z", "first",
                                                                ["ports.yaml", "providers.yaml"])
    assert backup.verify(first) == []
    (config / "providers.yaml").write_text(VALID.replace("[m1]", "[m1, m2]"))
    (config / "ports.yaml").unlink()
    second = backup.create(config, store, reason="second", now=NOW)
    assert second.name == "20251021T120000Z-2" and second.version != first.version
    assert [b.name for b in backup.list_backups(store)] == [second.name, first.name]
    assert backup.find(store, first.version) == first and backup.find(store, "20251021T120000Z") == first
    assert backup.ensure(config, store, reason="again") == second  # this exact config is already kept
    backup.restore(first, config)
    assert sorted(p.name for p in config.iterdir()) == ["ports.yaml", "providers.yaml"]
    assert backup.version_of(backup.read_files(config)) == first.version


def test_verify_catches_tampering_and_invalid_configs(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "providers.yaml").write_text(VALID)
    kept = backup.create(config, tmp_path / "b", reason="t", now=NOW)
    (kept.path / "providers.yaml").write_text(VALID + "# edited\n")
    assert [p.message for p in backup.verify(kept)] == ["changed since the backup was made (checksum mismatch)"]
    (config / "providers.yaml").write_text(VALID.replace("vllm", "vlm"))
    broken = backup.create(config, tmp_path / "b", reason="t", now=NOW + timedelta(seconds=1))
    assert [p.path for p in backup.verify(broken)] == ["providers.p.type"]


def test_rotate_deletes_what_is_not_kept(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    for i in range(14):
        (config / "providers.yaml").write_text(VALID + f"# {i}\n")
        backup.create(config, tmp_path / "b", reason=str(i), now=NOW - timedelta(minutes=14 - i), rotate_after=False)
    removed = backup.rotate(tmp_path / "b", now=NOW)
    # all on one day and one week: the 10 newest stay (the newest is also the daily and weekly one)
    assert sorted(b.reason for b in removed) == ["0", "1", "2", "3"]
    assert len(backup.list_backups(tmp_path / "b")) == 10
