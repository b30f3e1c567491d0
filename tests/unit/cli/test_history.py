"""``labgate history``: each command finds the store from ``--config`` or ``--store`` and prints what it holds."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from labgate.cli.history import side_by_side
from labgate.cli.main import main
from labgate.config.load import load_config
from labgate.server.serve import RunningGateway
from labgate.testing import Behaviour, Simulator
from labgate.testing.gateway import gateway_in_thread

KEY = "sk-cli-history-test-0123456789"
SIM8 = " sim1 sim2 sim3 sim4 sim5 sim6 sim7 sim8"
IDS: dict[str, str] = {}  # the client's x-request-id → labgate's id (which names the record), per `running`


@pytest.fixture(scope="module")
def upstream() -> Iterator[Simulator]:
    with Simulator(models=["m1", "m2"], per_model={"m2": Behaviour(reply="Bonjour tout le monde")}
                   ).run_in_thread() as sim:
        yield sim


@pytest.fixture
def config_dir(tmp_path: Path, upstream: Simulator, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LABGATE_CLI_TEST_KEY", KEY)
    (tmp_path / "providers.yaml").write_text(
        f"providers:\n  sim:\n    type: openai_compatible\n    base_url: {upstream.url}/v1\n    models: [m1, m2]\n")
    (tmp_path / "gateway.yaml").write_text("auth:\n  master_key_env: LABGATE_CLI_TEST_KEY\n"
                                           "logging:\n  requests: false\n"
                                           "store:\n  url: data/history.db\n  capture: full\n")
    return tmp_path


@pytest.fixture
def running(config_dir: Path) -> Iterator[RunningGateway]:
    """A gateway on the config dir that has served three requests (two ok, one unknown model)."""
    import urllib.error
    import urllib.request

    with gateway_in_thread(load_config(config_dir)) as gw:
        for rid, model, text in (("a1", "m1", "What is   2+2?"), ("a2", "m2", "Say hello"), ("a3", "m9", "oops")):
            request = urllib.request.Request(
                gw.url + "/v1/chat/completions",
                data=orjson.dumps({"model": model, "messages": [{"role": "user", "content": text}],
                                   "temperature": 0.1}),
                headers={"content-type": "application/json", "authorization": f"Bearer {KEY}", "x-request-id": rid})
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    answer.read()
                    IDS[rid] = answer.headers["x-request-id"]
            except urllib.error.HTTPError as exc:
                assert exc.code == 404
                IDS[rid] = exc.headers["x-request-id"]
            assert IDS[rid].startswith("req_")
        history = gw.gateway.history
        assert history is not None
        for _ in range(200):
            if history.stats()["written"] == 3:
                break
            __import__("time").sleep(0.01)
        yield gw


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["history", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_search_finds_the_store_from_config_or_url(running: RunningGateway, config_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "search", "--config", str(config_dir))
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "TIME", "(UTC)", "MODEL", "PROVIDER", "STATUS", "MS", "TOKENS",
                                              "PROMPT"]
    assert [line.split()[3] for line in lines[1:]] == ["m9", "m2", "m1"]
    assert lines[1].split()[5:7] == ["404", "error"] and lines[3].endswith("what is 2+2?")
    code, out, _ = run(capsys, "search", "--store", str(config_dir / "data" / "history.db"), "--model", "m2", "--json")
    assert code == 0 and [(r["request_id"], r["client_request_id"], r["prompt"]) for r in orjson.loads(out)] == [
        (IDS["a2"], "a2", "say hello")]
    code, out, err = run(capsys, "search", "--config", str(config_dir), "--text", "nothing like this")
    assert (code, out, err) == (0, "", "no matching requests\n")


def test_show(running: RunningGateway, config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "show", IDS["a1"], "--config", str(config_dir))
    assert code == 0
    assert f"request_id         {IDS['a1']}\n" in out and "model              m1\n" in out
    assert "client_request_id  a1\n" in out
    assert out.endswith(f"--- request\n[user] What is   2+2?\n--- response\n{SIM8}\n")
    assert 'parameters         {"temperature":0.1}\n' in out
    code, out, _ = run(capsys, "show", IDS["a3"], "--config", str(config_dir), "--json")
    record = orjson.loads(out)
    assert (record["status"], record["error_type"], record["messages"]) == (
        404, "model_not_found", [{"role": "user", "content": "oops"}])
    code, _, err = run(capsys, "show", "zz", "--config", str(config_dir))
    assert code == 1 and "no request with id 'zz'" in err
    code, _, err = run(capsys, "show", "a1", "--config", str(config_dir))  # the client's id names no record
    assert code == 1 and "no request with id 'a1'" in err


def test_export(running: RunningGateway, config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "export", "--config", str(config_dir), "--format", "jsonl", "--status", "200")
    assert code == 0 and [orjson.loads(line)["request_id"] for line in out.splitlines()] == [IDS["a1"], IDS["a2"]]
    target = tmp_path / "out.csv"
    code, _, _ = run(capsys, "export", "--config", str(config_dir), "--format", "csv", "-o", str(target))
    with target.open() as f:
        assert [(r["request_id"], r["client_request_id"], r["model"]) for r in csv.DictReader(f)] == [
            (IDS["a1"], "a1", "m1"), (IDS["a2"], "a2", "m2"), (IDS["a3"], "a3", "m9")]
    code, out, _ = run(capsys, "export", "--config", str(config_dir), "--format", "json", "--since", "1h")
    assert [r["request_id"] for r in orjson.loads(out)] == [IDS["a1"], IDS["a2"], IDS["a3"]]


def test_stats(running: RunningGateway, config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "stats", "--config", str(config_dir))
    assert code == 0
    assert "requests         3  (" in out and "outcomes         error 1, ok 2\n" in out
    assert "error rate       33.3%\n" in out and "errors by type\n  model_not_found" in out
    code, out, _ = run(capsys, "stats", "--config", str(config_dir), "--json")
    totals = orjson.loads(out)
    assert (totals["requests"], totals["tokens"]["completion_tokens"]) == (3, 8 + 4)
    assert [m["model"] for m in totals["models"]] == ["m1", "m2", "m9"]


def test_replay_side_by_side(running: RunningGateway, config_dir: Path, capsys: pytest.CaptureFixture[str],
                             upstream: Simulator) -> None:
    upstream.clear()
    code, out, err = run(capsys, "replay", IDS["a1"], "--config", str(config_dir), "--url", running.url,
                         "--model", "m2")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("original · m1 via sim · ") and " │ replay · m2 via sim · " in lines[0]
    assert SIM8.strip() in out and "Bonjour tout le monde" in out
    assert lines[-1].startswith("(replayed as request req_")
    sent = upstream.requests[-1]
    assert sent.body == {"model": "m2", "messages": [{"role": "user", "content": "What is   2+2?"}],
                         "temperature": 0.1}
    assert sent.headers.get("authorization") != f"Bearer {KEY}"  # the gateway's key never goes upstream


def test_replay_errors(running: RunningGateway, config_dir: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(capsys, "replay", IDS["a1"], "--config", str(config_dir), "--url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach the gateway at http://127.0.0.1:9" in err
    monkeypatch.setenv("LABGATE_CLI_TEST_KEY", "sk-wrong")
    code, _, err = run(capsys, "replay", IDS["a1"], "--config", str(config_dir), "--url", running.url)
    assert code == 1 and "the gateway answered 401" in err


def test_missing_store_and_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "search", "--store", str(tmp_path / "none.db"))
    assert code == 1 and f"no history at {tmp_path / 'none.db'}" in err
    code, _, err = run(capsys, "search", "--store", str(tmp_path / "none.db"), "--since", "someday")
    assert code == 1 and "labgate history:" in err
    (tmp_path / "providers.yaml").write_text("providers:\n  x:\n    type: olama\n")
    code, _, err = run(capsys, "stats", "--config", str(tmp_path))
    assert code == 1 and "the config is invalid" in err
    with pytest.raises(SystemExit):
        main(["history", "search", "--config", "a", "--store", "b"])


def test_side_by_side_wraps_both_columns() -> None:
    text = side_by_side(("left title", "one two three four five"), ("right", "alpha\nbeta"), width=43)
    assert text == ("left title           │ right\n"
                    "-------------------- │ --------------------\n"
                    "one two three four   │ alpha\n"
                    "five                 │ beta\n")


