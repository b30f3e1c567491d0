"""CLI tables and records with hostile values: line breaks and ANSI escapes are shown escaped, never obeyed.

Model names, prompts, answers and error messages reach the CLI from clients
and upstreams; each one printed raw could break a table's rows or drive the
terminal (``\\x1b[2J`` clears it, ``\\x1b]0;…\\x07`` retitles it, ``\\u202e``
reverses what follows).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from labgate.cli.history import side_by_side
from labgate.cli.main import main
from labgate.cli.style import shown
from labgate.record import RequestRecord
from labgate.store.capture import build_row
from labgate.store.sqlite import SQLiteStore

EVIL_MODEL = "evil\nmodel\x1b[2J"
EVIL_PROMPT = "hi\x1b]0;pwned\x07 there\r\nID  fake row"
EVIL_ERROR = "upstream said \x1b[31mred\x1b[0m\u202etxt.exe"


def fill(path: Path) -> None:
    good = RequestRecord("req_good", "chat", "127.0.0.1", started=0.0, timestamp=1_700_000_000.0)
    good.model, good.provider, good.finished = "m1", "sim", 0.1
    good.payload = {"model": "m1", "messages": [{"role": "user", "content": "hello"}]}
    evil = RequestRecord("req_evil", "chat", "127.0.0.1", "client\x1b[1m", started=0.0, timestamp=1_700_000_001.0)
    evil.model, evil.provider, evil.finished = EVIL_MODEL, "sim\r", 0.1
    evil.status, evil.outcome, evil.error_type, evil.error_message = 502, "error", "bad\ttype", EVIL_ERROR
    evil.payload = {"model": EVIL_MODEL, "messages": [{"role": "user", "content": EVIL_PROMPT}]}
    evil.reply = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "line1\nline2\x1b[8m"}}]})

    async def write() -> None:
        store = SQLiteStore(path)
        await store.open()
        await store.write([build_row(r, capture="full", client_ip=True) for r in (good, evil)])
        await store.aclose()

    asyncio.run(write())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["history", *argv]) == 0
    out, _ = capsys.readouterr()
    return out


def no_controls(text: str) -> None:
    for line in text.split("\n"):
        assert line.isprintable(), repr(line)


def test_the_search_table_has_one_line_per_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path / "h.db")
    out = run(capsys, "search", "--store", str(tmp_path / "h.db"))
    no_controls(out)
    lines = out.splitlines()
    assert len(lines) == 3  # header + 2 records: the line breaks inside values did not add rows
    assert "evil\\nmodel\\x1b[2J" in lines[1] and "sim\\r" in lines[1] and "502 error" in lines[1]
    assert lines[2].split()[3:5] == ["m1", "sim"]


def test_show_and_stats_escape_every_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path / "h.db")
    out = run(capsys, "show", "req_evil", "--store", str(tmp_path / "h.db"))
    no_controls(out)
    assert "model              evil\\nmodel\\x1b[2J\n" in out
    assert "client_request_id  client\\x1b[1m\n" in out
    assert "error              upstream said \\x1b[31mred\\x1b[0m\\u202etxt.exe\n" in out
    # free text keeps its line breaks, but not its escapes
    assert out.endswith("--- request\n[user] hi\\x1b]0;pwned\\x07 there\\r\nID  fake row\n"
                        "--- response\nline1\nline2\\x1b[8m\n")
    out = run(capsys, "stats", "--store", str(tmp_path / "h.db"))
    no_controls(out)
    assert "  evil\\nmodel\\x1b[2J" in out and "  bad\\ttype" in out


def test_side_by_side_escapes_both_columns() -> None:
    out = side_by_side(("orig\x1b[2J", "a\x1b[31mb\nc"), ("replay", "d\re"), width=60)
    no_controls(out)
    assert "orig\\x1b[2J" in out and "a\\x1b[31mb" in out and "d\\re" in out


@pytest.mark.parametrize(("text", "expected"), [
    ("plain text", "plain text"), ("a\nb", "a\\nb"), ("a\r\nb", "a\\r\\nb"), ("\t", "\\t"), ("\x1b[31m", "\\x1b[31m"),
    ("\x00\x7f\x85", "\\x00\\x7f\\x85"), ("\u202e\u2028\ufeff", "\\u202e\\u2028\\ufeff"), ("\U000e0001", "\\U000e0001"),
    ("\xa0", "\\xa0"), ("café 模型 ✓", "café 模型 ✓"),
])
def test_shown_escapes_what_a_terminal_would_act_on(text: str, expected: str) -> None:
    assert shown(text) == expected


def test_shown_can_keep_line_breaks() -> None:
    assert shown("a\nb\x1b[0m\tc", keep="\n\t") == "a\nb\\x1b[0m\tc"


@given(st.text())
def test_shown_output_is_always_printable(text: str) -> None:
    out = shown(text)
    assert out.isprintable() and (out == text) == text.isprintable()
