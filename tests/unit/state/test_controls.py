"""Request controls: ``cache-control`` and the body's ``cache`` object."""

from __future__ import annotations

import pytest

from labgate.errors import RequestError
from labgate.state.controls import Controls, parse_controls


def test_controls_from_header_and_body() -> None:
    assert parse_controls(None, None) == Controls()
    assert parse_controls("no-cache", None) == Controls(no_cache=True)
    assert parse_controls("No-Store, max-age=30", None) == Controls(no_store=True, max_age=30.0)
    assert parse_controls(None, {"no-cache": True, "ttl": 60, "s-maxage": 10}) == Controls(True, False, 60.0, 10.0)
    assert parse_controls(None, {"no-store": True}) == Controls(no_store=True)


@pytest.mark.parametrize(("field", "param"), [
    ("yes", "cache"), ({"ttl": -1}, "cache.ttl"), ({"ttl": True}, "cache.ttl"), ({"ttl": "60"}, "cache.ttl"),
    ({"ttl": 10**9}, "cache.ttl"), ({"s-maxage": 0}, "cache.s-maxage"), ({"no-cache": "true"}, "cache.no-cache")])
def test_bad_controls_are_request_errors(field: object, param: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_controls(None, field)
    assert caught.value.param == param
