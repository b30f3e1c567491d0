"""Config commands given bad arguments or secrets: usage errors, one report path, no resolved secrets."""

from __future__ import annotations

import socket
from pathlib import Path

import orjson
import pytest
import yaml

from labgate.cli.main import main
from labgate.config.problems import Problem


@pytest.mark.parametrize(("args", "error"), [
    (["--engine", "vllm:99999"], "argument --engine: port '99999' is not a number from 1 to 65535"),
    (["--engine", "vllm:0"], "argument --engine: port '0' is not a number from 1 to 65535"),
    (["--engine", "vllm:-1"], "argument --engine: port '-1' is not a number from 1 to 65535"),
    (["--engine", "vllm:８０"], "argument --engine: port '８０' is not a number from 1 to 65535"),
    (["--engine", "vllm"], "argument --engine: expected TYPE:PORT (e.g. vllm:8002), got 'vllm'"),
    (["--engine", ":8000"], "argument --engine: expected TYPE:PORT (e.g. vllm:8002), got ':8000'"),
    (["--engine", "mistral:8000"], "argument --engine: unknown engine type 'mistral'; one of: ollama, llama_cpp, "
     "vllm, lmstudio, openai_compatible"),
    (["--host", ""], "argument --host: '' is not a host name or address"),
    (["--host", "a b"], "argument --host: 'a b' is not a host name or address"),
    (["--host", "h/x"], "argument --host: 'h/x' is not a host name or address"),
    (["--timeout", "-1"], "argument --timeout: -1 must be more than 0 and at most 60 seconds"),
    (["--timeout", "0"], "argument --timeout: 0 must be more than 0 and at most 60 seconds"),
    (["--timeout", "nan"], "argument --timeout: nan must be more than 0 and at most 60 seconds"),
    (["--timeout", "inf"], "argument --timeout: inf must be more than 0 and at most 60 seconds"),
    (["--timeout", "soon"], "argument --timeout: 'soon' is not a number of seconds"),
])
def test_discover_rejects_bad_arguments_as_usage_errors(args: list[str], error: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["discover", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"labgate discover: error: {error}" and "Traceback" not in err


def test_discover_accepts_an_ipv6_host_and_an_extra_engine(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port where nothing answers
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    assert main(["discover", "--host", "::1", "--engine", f"vllm:{free}", "--timeout", "0.2", "--json"]) in (0, 1)
    assert isinstance(orjson.loads(capsys.readouterr().out), list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ports_reports_duplicate_registrations_like_validate(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    (tmp_path / "providers.yaml").write_text("providers: {p: {type: vllm, base_url: 'http://127.0.0.1:9'}}\n")
    (tmp_path / "ports.yaml").write_text(f"ports:\n  a: {{port: {port}}}\n  b: {{port: {port}}}\n")
    duplicate = Problem(str(tmp_path / "ports.yaml"), "ports.b.port", f"port {port} is also registered to 'a'",
                        line=3)
    assert main(["validate", "--config", str(tmp_path), "--check-ports", "--json"]) == 1
    assert orjson.loads(capsys.readouterr().out)["errors"] == [duplicate.as_dict()]
    assert main(["ports", "--config", str(tmp_path), "--json"]) == 1
    assert orjson.loads(capsys.readouterr().out)["problems"] == [duplicate.as_dict()]
    assert main(["ports", "--config", str(tmp_path), "--color", "never"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [str(duplicate), "2 port(s), 1 problem(s)"]


def test_ports_reports_the_gateway_port_registered_to_another_service(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    (tmp_path / "providers.yaml").write_text("providers: {p: {type: vllm, base_url: 'http://127.0.0.1:9'}}\n")
    (tmp_path / "gateway.yaml").write_text(f"server: {{port: {port}}}\n")
    (tmp_path / "ports.yaml").write_text(f"ports:\n  redis: {{port: {port}, protocol: redis}}\n")
    assert main(["ports", "--config", str(tmp_path), "--json"]) == 1
    assert orjson.loads(capsys.readouterr().out)["problems"] == [Problem(
        str(tmp_path / "ports.yaml"), "ports.redis.port", f"the gateway is configured to listen on port {port} "
        "(gateway.yaml `server.port`), which is registered to 'redis'", line=2).as_dict()]


SECRETS = {"LAB_OLLAMA_URL": "http://secret-host.internal:11434/v1", "LAB_TIMEOUT": "33",
           "LAB_VLLM_HOST": "secret-vllm.internal", "LAB_MODEL": "secret-model-name", "LAB_KEY_NAME": "x"}


def test_export_litellm_writes_references_never_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "providers.yaml").write_text("""\
providers:
  local:
    type: ollama
    base_url: ${LAB_OLLAMA_URL}
    timeout_s: ${LAB_TIMEOUT}
    models: [llama3, "${LAB_MODEL}"]
  remote:
    type: vllm
    base_url: http://${LAB_VLLM_HOST}:8000/v1
    api_key_env: VLLM_KEY
    models: [m1]
""")
    (tmp_path / "model-mappings.yaml").write_text("routing:\n  aliases: {chat: '${LAB_MODEL}'}\n")
    assert main(["export", "litellm", "--config", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert not any(value in out.out + out.err for value in SECRETS.values() if len(value) > 2)
    doc = yaml.safe_load(out.out)
    local = {"model": "ollama_chat/llama3", "api_base": "os.environ/LAB_OLLAMA_URL",
             "timeout": "os.environ/LAB_TIMEOUT"}
    assert doc["model_list"] == [
        {"model_name": "llama3", "litellm_params": local},
        {"model_name": "os.environ/LAB_MODEL", "litellm_params": {**local, "model": "ollama_chat/${LAB_MODEL}"}},
        {"model_name": "m1", "litellm_params": {"model": "hosted_vllm/m1", "api_base": "http://${LAB_VLLM_HOST}:8000/v1",
                                                "api_key": "os.environ/VLLM_KEY"}},
    ]
    assert doc["router_settings"]["model_group_alias"] == {"chat": "os.environ/LAB_MODEL"}
    assert out.err.splitlines() == [
        "approximate: `model_list[1].litellm_params.model`: 'ollama_chat/${LAB_MODEL}' uses an environment variable "
        "inside a longer value (or with a default); LiteLLM reads only whole values as os.environ/NAME: written as "
        "it stands, put the whole value in one variable",
        "approximate: `model_list[2].litellm_params.api_base`: 'http://${LAB_VLLM_HOST}:8000/v1' uses an environment "
        "variable inside a longer value (or with a default); LiteLLM reads only whole values as os.environ/NAME: "
        "written as it stands, put the whole value in one variable",
    ]


@pytest.mark.parametrize(("data", "problem"), [
    (b"model_list:\n  - model_name: caf\xe9\n", "not UTF-8: byte 0xe9 at line 2, column 20 (byte 31); config files "
     "must be UTF-8"),
    (b"model_list: []\nmodel_list: []\n", "`model_list`: duplicate key `model_list` (first at line 1, again at "
     "line 2); YAML would keep only the last one"),
])
def test_import_litellm_reads_with_the_same_reader(tmp_path: Path, data: bytes, problem: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "config.yaml"
    source.write_bytes(data)
    assert main(["import", "litellm", str(source), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"labgate: cannot read {source}:", f"error: {source}:2: {problem}"]
    assert not (tmp_path / "out").exists()


def test_process_names_that_are_not_utf8_are_read(tmp_path: Path) -> None:
    from labgate.config.ports import _read

    (tmp_path / "comm").write_bytes(b"caf\xe9-engine\n")
    assert _read(tmp_path / "comm") == "caf\ufffd-engine"


def test_ports_in_a_single_file_config_name_that_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    (tmp_path / "labgate.yaml").write_text("providers: {p: {type: vllm, base_url: 'http://127.0.0.1:9'}}\n"
                                           f"ports:\n  a: {{port: {port}}}\n  b: {{port: {port}}}\n")
    duplicate = Problem(str(tmp_path / "labgate.yaml"), "ports.b.port", f"port {port} is also registered to 'a'",
                        line=4)
    assert main(["validate", "--config", str(tmp_path), "--check-ports", "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert (report["errors"], report["warnings"]) == ([duplicate.as_dict()], [])
    assert main(["ports", "--config", str(tmp_path), "--json"]) == 1
    assert orjson.loads(capsys.readouterr().out)["problems"] == [duplicate.as_dict()]
