"""Reading config files: both layouts, ``${VAR}``, and problems that name the file and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from labgate.config.load import Config, load_config
from labgate.config.problems import ConfigError, Problem
from labgate.config.schema.gateway import AuthConfig, GatewayConfig, ServerConfig
from labgate.config.schema.mappings import ExactMatchConfig, MappingsConfig, PatternConfig, RoutingConfig
from labgate.config.schema.providers import ModelConfig, PricingConfig
from labgate.providers.anthropic.config import AnthropicConfig
from labgate.providers.openai_compat.config import OpenAICompatibleConfig

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TYPES_LIST = "one of: openai, openai_compatible, vllm, llama_cpp, ollama, lmstudio, anthropic, local_embeddings"

PROVIDERS = """
    providers:
      ollama:
        type: ollama
        base_url: http://127.0.0.1:11434
        models:
          - llama3.1:8b
          - {name: qwen2.5-coder:7b, alias: coder, capabilities: [code_generation]}
"""
MAPPINGS = """
    routing:
      exact_matches:
        general: {provider: ollama, model: llama3.1:8b, fallback_chain: [coder]}
    fallbacks:
      "*": [llama3.1:8b]
"""
GATEWAY = """
    server: {port: 4100}
    auth: {master_key_env: LAB_KEY}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, env: dict[str, str] | None = None) -> tuple[Problem, ...]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return info.value.problems


def expected_sample(source: str) -> Config:
    return Config(
        providers={"ollama": OpenAICompatibleConfig(
            type="ollama", base_url="http://127.0.0.1:11434",
            models=(ModelConfig(name="llama3.1:8b"),
                    ModelConfig(name="qwen2.5-coder:7b", alias="coder", capabilities=("code_generation",))))},
        mappings=MappingsConfig(
            routing=RoutingConfig(exact_matches={"general": ExactMatchConfig(
                provider="ollama", model="llama3.1:8b", fallback_chain=("coder",))}),
            fallbacks={"*": ("llama3.1:8b",)}),
        gateway=GatewayConfig(server=ServerConfig(port=4100), auth=AuthConfig(master_key_env="LAB_KEY")),
        source=source,
    )


# ---------------------------------------------------------------- layouts


def test_directory_form_reads_each_file(tmp_path: Path) -> None:
    write(tmp_path / "providers.yaml", PROVIDERS)
    write(tmp_path / "model-mappings.yaml", MAPPINGS)
    write(tmp_path / "gateway.yaml", GATEWAY)
    assert load_config(tmp_path, env={}) == expected_sample(str(tmp_path))


def test_directory_with_only_providers_uses_defaults_elsewhere(tmp_path: Path) -> None:
    write(tmp_path / "providers.yaml", "providers: {o: {type: ollama}}\n")
    config = load_config(tmp_path, env={})
    assert (config.mappings, config.gateway, config.warnings) == (MappingsConfig(), GatewayConfig(), ())


def test_single_file_form_given_as_a_file(tmp_path: Path) -> None:
    single = write(tmp_path / "labgate.yaml", PROVIDERS + MAPPINGS + GATEWAY)
    assert load_config(single, env={}) == expected_sample(str(single))


def test_single_file_form_found_in_a_directory(tmp_path: Path) -> None:
    write(tmp_path / "labgate.yaml", PROVIDERS + MAPPINGS + GATEWAY)
    assert load_config(tmp_path, env={}) == expected_sample(str(tmp_path))


def test_directory_form_wins_over_a_stray_labgate_yaml(tmp_path: Path) -> None:
    write(tmp_path / "providers.yaml", PROVIDERS)
    write(tmp_path / "model-mappings.yaml", MAPPINGS)
    write(tmp_path / "gateway.yaml", GATEWAY)
    write(tmp_path / "labgate.yaml", "this is: [not read\n")
    assert load_config(tmp_path, env={}) == expected_sample(str(tmp_path))


def test_single_file_unknown_section_suggests_the_closest(tmp_path: Path) -> None:
    single = write(tmp_path / "labgate.yaml", PROVIDERS + "    routng: {}\n")
    assert problems_of(single) == (
        Problem(str(single), "routng", "unknown top-level section", suggestion="routing", line=9),)


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope") == (Problem(str(tmp_path / "nope"), "", "no such file or directory"),)
    assert problems_of(tmp_path) == (Problem(str(tmp_path), "", "no providers.yaml (or labgate.yaml) here"),)


def test_examples_load_cleanly() -> None:
    lab = load_config(EXAMPLES / "lab", env={})
    single = load_config(EXAMPLES / "single-file" / "labgate.yaml", env={})
    assert (sorted(lab.providers), lab.warnings) == (["anthropic", "llama_cpp", "ollama", "openai", "vllm"], ())
    assert (dict(single.providers), single.mappings.routing.aliases, single.warnings) == (
        {"ollama": OpenAICompatibleConfig(type="ollama", models=(ModelConfig(name="llama3.1:8b"),))},
        {"default": "llama3.1:8b"}, ())


# ---------------------------------------------------------------- ${VAR}


def test_variables_are_substituted_with_defaults(tmp_path: Path) -> None:
    write(tmp_path / "providers.yaml", """
        providers:
          local:
            type: ${KIND:-ollama}
            base_url: ${URL}
            timeout_s: ${TIMEOUT:-30}
            description: "${DESC:-}"
    """)
    config = load_config(tmp_path, env={"URL": "http://10.0.0.7:11434", "TIMEOUT": "5"})
    assert dict(config.providers) == {"local": OpenAICompatibleConfig(
        type="ollama", base_url="http://10.0.0.7:11434", timeout_s=5.0, description="")}


def test_missing_variable_is_a_problem_naming_the_file(tmp_path: Path) -> None:
    file = write(tmp_path / "providers.yaml", """
        providers:
          local: {type: ollama, base_url: "${OLLAMA_URL}"}
    """)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={"OLLAMA_HOST": "http://x"})
    assert info.value.problems == (Problem(str(file), "providers.local.base_url",
                                           "environment variable ${OLLAMA_URL} is not set", line=3),)
    assert str(info.value) == (f"error: {file}:3: `providers.local.base_url`: environment variable "
                               "${OLLAMA_URL} is not set")


def test_variable_in_a_comment_is_ignored(tmp_path: Path) -> None:
    write(tmp_path / "providers.yaml", """
        # base_url: ${OLLAMA_URL}   (uncomment to use a remote engine)
        providers:
          local: {type: ollama}
    """)
    assert sorted(load_config(tmp_path, env={}).providers) == ["local"]


def test_a_variables_value_is_text_never_yaml(tmp_path: Path) -> None:
    write(tmp_path / "providers.yaml", """
        providers:
          local:
            type: ollama
            description: ${DESC}
    """)
    config = load_config(tmp_path, env={"DESC": "lab box # 2\nstatus: inactive"})
    assert (config.providers["local"].description, config.providers["local"].status) == (
        "lab box # 2\nstatus: inactive", "active")


# ---------------------------------------------------------------- YAML problems


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    file = write(tmp_path / "providers.yaml", """\
        providers:
          ollama:
            type: ollama
           base_url: http://x
    """)
    assert problems_of(tmp_path) == (Problem(
        str(file), "", "invalid YAML: line 4, column 4: expected <block end>, but found '<block mapping start>'",
        line=4),)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    file = write(tmp_path / "providers.yaml", "- ollama\n")
    assert problems_of(tmp_path) == (Problem(str(file), "", "the top level must be a mapping of keys, not a list",
                                             line=1),)


def test_problems_of_every_file_are_reported_together(tmp_path: Path) -> None:
    providers = write(tmp_path / "providers.yaml", "providers: {o: {type: ollama, timeout_s: -1}}\n")
    gateway = write(tmp_path / "gateway.yaml", "server: {port: 70000}\n")
    assert problems_of(tmp_path) == (
        Problem(str(providers), "providers.o.timeout_s", "must be greater than 0", line=1),
        Problem(str(gateway), "server.port", "must be at most 65535", line=1),
    )


# ---------------------------------------------------------------- schema problems


@pytest.mark.parametrize(("file", "text", "path", "suggestion"), [
    ("providers.yaml", "providers: {ollama: {type: ollama, base_ulr: 'http://x'}}",
     "providers.ollama.base_ulr", "base_url"),
    ("providers.yaml", "providers: {o: {type: ollama, models: [{name: a, capabilites: [chat]}]}}",
     "providers.o.models[0].capabilites", "capabilities"),
    ("providers.yaml", "providers: {o: {type: ollama, quirks: {renam: {}}}}",
     "providers.o.quirks.renam", "rename"),
    ("providers.yaml", "providers: {o: {type: anthropic, default_max_token: 5}}",
     "providers.o.default_max_token", "default_max_tokens"),
    ("model-mappings.yaml", "routing: {exact_matches: {x: {provider: o, fallback_chian: []}}}",
     "routing.exact_matches.x.fallback_chian", "fallback_chain"),
    ("model-mappings.yaml", "routing: {load_balancing: {x: {deployments: [{provider: o, wieght: 2}]}}}",
     "routing.load_balancing.x.deployments[0].wieght", "weight"),
    ("model-mappings.yaml", "routing: {patterns: [{pattern: 'l*', provider: o, fallback_chian: []}]}",
     "routing.patterns[0].fallback_chian", "fallback_chain"),
    ("model-mappings.yaml", "fallback: {}", "fallback", "fallbacks"),
    ("model-mappings.yaml", "routing: {alias: {}}", "routing.alias", "aliases"),
    ("gateway.yaml", "server: {prot: 4000}", "server.prot", "port"),
    ("gateway.yaml", "resilience: {circuit: {cooldown: 5}}", "resilience.circuit.cooldown", "cooldown_s"),
    ("gateway.yaml", "servr: {}", "servr", "server"),
])
def test_unknown_key_suggests_the_closest(tmp_path: Path, file: str, text: str, path: str,
                                          suggestion: str) -> None:
    if file != "providers.yaml":
        write(tmp_path / "providers.yaml", "providers: {o: {type: ollama, models: [m]}}\n")
    target = write(tmp_path / file, text + "\n")
    assert [p for p in problems_of(tmp_path) if p.message == "unknown key"] == [
        Problem(str(target), path, "unknown key", suggestion=suggestion, line=1)]


def test_unknown_top_level_key_in_providers_yaml(tmp_path: Path) -> None:
    file = write(tmp_path / "providers.yaml", "provider: {o: {type: ollama}}\n")
    assert problems_of(tmp_path) == (Problem(str(file), "provider", "unknown top-level key", suggestion="providers",
                                             line=1),)


@pytest.mark.parametrize(("kind", "message", "suggestion"), [
    ("olama", f"unknown provider type 'olama'; {TYPES_LIST}", "ollama"),
    ("vlm", f"unknown provider type 'vlm'; {TYPES_LIST}", "vllm"),
    ("mistral", f"unknown provider type 'mistral'; {TYPES_LIST}", None),
    ("[ollama]", f"unknown provider type ['ollama']; {TYPES_LIST}", "ollama"),
    ("null", f"`type` is required; {TYPES_LIST}", None),
])
def test_unknown_provider_type(tmp_path: Path, kind: str, message: str, suggestion: str | None) -> None:
    file = write(tmp_path / "providers.yaml", f"providers: {{local: {{type: {kind}}}}}\n")
    assert problems_of(tmp_path) == (Problem(str(file), "providers.local.type", message, suggestion=suggestion,
                                             line=1),)


@pytest.mark.parametrize(("body", "path", "message"), [
    ("{type: ollama, timeout_s: soon}", "providers.ollama.timeout_s", "expected a number"),
    ("{type: ollama, priority: first}", "providers.ollama.priority", "expected a whole number"),
    ("{type: ollama, base_url: 'localhost:11434'}", "providers.ollama.base_url",
     "must start with http:// or https://"),
    ("{type: ollama, status: off}", "providers.ollama.status", "expected 'active' or 'inactive'"),
    ("{type: ollama, models: llama3}", "providers.ollama.models", "expected a list"),
    ("{type: ollama, models: [3]}", "providers.ollama.models[0]",
     "expected a model name or a mapping with `name`"),
    ("{type: ollama, models: [{name: a, context_length: 0}]}", "providers.ollama.models[0].context_length",
     "must be at least 1"),
    ("{type: openai_compatible}", "providers.ollama", "`base_url` is required for type openai_compatible"),
    ("[ollama]", "providers.ollama", "expected a mapping of provider settings (`type`, `base_url`, `models`, ...)"),
])
def test_wrong_types_name_the_key(tmp_path: Path, body: str, path: str, message: str) -> None:
    file = write(tmp_path / "providers.yaml", f"providers:\n  ollama: {body}\n")
    assert problems_of(tmp_path) == (Problem(str(file), path, message, line=2),)


def test_models_as_strings_or_objects(tmp_path: Path) -> None:
    write(tmp_path / "providers.yaml", """
        providers:
          claude:
            type: anthropic
            api_key_env: ANTHROPIC_API_KEY
            models:
              - claude-haiku
              - name: claude-sonnet-4-5
                alias: claude
                context_length: 200000
                tags: [smart]
                pricing: {input_per_1m: 3, output_per_1m: 15}
    """)
    assert dict(load_config(tmp_path, env={}).providers) == {"claude": AnthropicConfig(
        type="anthropic", api_key_env="ANTHROPIC_API_KEY",
        models=(ModelConfig(name="claude-haiku"),
                ModelConfig(name="claude-sonnet-4-5", alias="claude", context_length=200000, tags=("smart",),
                            pricing=PricingConfig(input_per_1m=3, output_per_1m=15))))}


def test_patterns_accept_the_mapping_short_form(tmp_path: Path) -> None:
    write(tmp_path / "providers.yaml", "providers: {o: {type: ollama}, v: {type: vllm}}\n")
    write(tmp_path / "model-mappings.yaml", """
        routing:
          patterns:
            "llama*": o
            "qwen*": {provider: v, fallback_chain: [o]}
    """)
    assert load_config(tmp_path, env={}).mappings.routing.patterns == (
        PatternConfig(pattern="llama*", provider="o"),
        PatternConfig(pattern="qwen*", provider="v", fallback_chain=("o",)),
    )
