"""Request checks of the simulated OpenAI routes, worded like api.openai.com's 400s.

Every field the simulator reads is checked before it is read, with the real
API's limits, so a body the real API refuses gets a 400 envelope here too:
never an exception inside the server, never an answer whose size the client
chose without bound (``dimensions: 1000000000`` once made the simulator
allocate until the kernel killed it). Fields the simulator ignores are not
checked, as a lenient upstream would not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# The real API's limits.
MAX_CHOICES = 128  # `n`
MAX_STOPS = 4  # `stop` sequences
MAX_EMBEDDING_INPUTS = 2048  # items of an embeddings `input` array
MAX_DIMENSIONS = 3072  # `dimensions` (text-embedding-3-large's size)

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})

Problem = tuple[str, str | None]  # (message, param) of a 400
Check = Callable[[dict[str, Any]], Problem | None]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: object) -> str:
    """How the real API names a JSON value's type in its messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


_REFERENCE = "Please check the API reference: https://platform.openai.com/docs/api-reference."


def _invalid(name: str) -> Problem:
    return f"'$.{name}' is invalid. {_REFERENCE}", name


def _wrong_type(name: str, expected: str, value: object) -> Problem:
    return f"Invalid type for '{name}': expected {expected}, but got {_kind(value)} instead.", name


def integer(name: str, *, low: int, high: int | None = None) -> Check:
    """``name`` is absent, null, or an integer within ``[low, high]``."""

    def check(body: dict[str, Any]) -> Problem | None:
        value = body.get(name)
        if value is None:
            return None
        if not _is_int(value):
            return _wrong_type(name, "an integer", value)
        if value < low:
            return (f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
                    f"but got {value} instead.", name)
        if high is not None and value > high:
            return (f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, "
                    f"but got {value} instead.", name)
        return None

    return check


def boolean(name: str) -> Check:
    def check(body: dict[str, Any]) -> Problem | None:
        value = body.get(name)
        return None if value is None or isinstance(value, bool) else _wrong_type(name, "a boolean", value)

    return check


def obj(name: str) -> Check:
    def check(body: dict[str, Any]) -> Problem | None:
        value = body.get(name)
        return None if value is None or isinstance(value, dict) else _wrong_type(name, "an object", value)

    return check


def one_of(name: str, allowed: tuple[str, ...]) -> Check:
    def check(body: dict[str, Any]) -> Problem | None:
        value = body.get(name)
        if value is None or value in allowed:
            return None
        shown = ", ".join(repr(a) for a in allowed)
        return f"Invalid value for '{name}': expected one of {shown}.", name

    return check


def _stop(body: dict[str, Any]) -> Problem | None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return None
    if not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        return _wrong_type("stop", "a string or an array of strings", stop)
    if len(stop) > MAX_STOPS:
        return (f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOPS}, "
                f"but got an array with length {len(stop)} instead.", "stop")
    return None


def _model(body: dict[str, Any]) -> Problem | None:
    return None if isinstance(body.get("model"), str) else ("you must provide a model parameter", "model")


def required(name: str) -> Check:
    def check(body: dict[str, Any]) -> Problem | None:
        return None if name in body else (f"Missing required parameter: '{name}'.", name)

    return check


def run(checks: tuple[Check, ...], body: dict[str, Any]) -> Problem | None:
    """The first problem ``checks`` find, in order."""
    for check in checks:
        if (problem := check(body)) is not None:
            return problem
    return None


# --- chat -----------------------------------------------------------------


def _content(content: object, where: str) -> Problem | None:
    if content is None or isinstance(content, str):
        return None
    if not isinstance(content, list):
        return _wrong_type(where, "one of a string or an array of objects", content)
    for i, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            return _invalid(f"{where}[{i}]")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            return _wrong_type(f"{where}[{i}].text", "a string", part.get("text"))
    return None


def _messages(body: dict[str, Any]) -> Problem | None:
    messages = body["messages"]
    if not isinstance(messages, list):
        return _wrong_type("messages", "an array", messages)
    if not messages:
        return "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array "\
               "instead.", "messages"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return _wrong_type(f"messages[{i}]", "an object", message)
        role = message.get("role")
        if not (isinstance(role, str) and role in ROLES):
            return _invalid(f"messages[{i}].role")
        if (problem := _content(message.get("content"), f"messages[{i}].content")) is not None:
            return problem
    return None


def _tools(body: dict[str, Any]) -> Problem | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        return _wrong_type("tools", "an array", tools)
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return f"Missing required parameter: 'tools[{i}].function.name'.", f"tools[{i}].function.name"
    return None


def _tool_choice(body: dict[str, Any]) -> Problem | None:
    choice = body.get("tool_choice")
    if choice is None or (isinstance(choice, str) and choice in TOOL_CHOICES):
        return None
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return None
        return "Missing required parameter: 'tool_choice.function.name'.", "tool_choice.function.name"
    return _invalid("tool_choice")


_SAMPLING: tuple[Check, ...] = (
    integer("n", low=1, high=MAX_CHOICES),
    integer("max_tokens", low=1),
    boolean("stream"),
    obj("stream_options"),
    _stop,
)
CHAT: tuple[Check, ...] = (
    _model, required("messages"), _messages, integer("max_completion_tokens", low=1), *_SAMPLING,
    _tools, _tool_choice, boolean("parallel_tool_calls"), obj("response_format"),
)


# --- completions and embeddings: a string, strings, token ids, or arrays of token ids ------------


def _texts(name: str, *, max_items: int | None) -> Check:
    def check(body: dict[str, Any]) -> Problem | None:
        value = body[name]
        if isinstance(value, str):
            return None if value or max_items is None else _invalid(name)  # an embedding of "" is refused
        if not isinstance(value, list) or not value:
            return _invalid(name)
        if max_items is not None and len(value) > max_items:
            return (f"Invalid '{name}': array too long. Expected an array with maximum length {max_items}, "
                    f"but got an array with length {len(value)} instead.", name)
        if all(_is_int(v) for v in value):
            return None
        for item in value:
            if isinstance(item, str):
                if not item and max_items is not None:
                    return _invalid(name)
            elif not (isinstance(item, list) and item and all(_is_int(v) for v in item)):
                return _invalid(name)
        return None

    return check


COMPLETIONS: tuple[Check, ...] = (_model, required("prompt"), _texts("prompt", max_items=None), *_SAMPLING)
EMBEDDINGS: tuple[Check, ...] = (
    _model, required("input"), _texts("input", max_items=MAX_EMBEDDING_INPUTS),
    integer("dimensions", low=1, high=MAX_DIMENSIONS), one_of("encoding_format", ("float", "base64")),
)


def checker(checks: tuple[Check, ...]) -> Callable[[dict[str, Any], Mapping[str, str]], Problem | None]:
    """An :class:`~labgate.testing.wire.Endpoint` ``invalid`` function running ``checks``."""

    def invalid(body: dict[str, Any], headers: Mapping[str, str]) -> Problem | None:
        return run(checks, body)

    return invalid
