"""framing.py's helpers on their own: the transfer-coding rule, the request-target split, the 431 error.

Through the server, llhttp refuses most bad ``Transfer-Encoding`` values before ``check_codings`` sees
them (a repeated ``chunked``, ``chunked`` not last but with another coding after it); the checks here
are what holds if it stops doing so. The messages are what the client reads in the error envelope.
"""

from __future__ import annotations

import pytest

from labgate.errors import HeaderTooLargeError, RequestError, UnsupportedFramingError
from labgate.server.framing import check_codings, header_too_large, split_target

SEND_ALONE = "is not supported; send the body with Content-Length or chunked alone."


@pytest.mark.parametrize("value", ["chunked", "Chunked", " chunked ", ", chunked"])
def test_chunked_alone_is_accepted(value: str) -> None:
    check_codings(value)


def test_a_last_coding_other_than_chunked_leaves_the_length_unknown() -> None:
    with pytest.raises(RequestError) as caught:
        check_codings("gzip")
    assert (type(caught.value), caught.value.message) == (
        RequestError, "The request's last transfer coding is not chunked: its length is unknown.")


@pytest.mark.parametrize("value", ["chunked, chunked", "gzip, Chunked, CHUNKED"])
def test_chunked_applied_twice_is_a_bad_request(value: str) -> None:
    with pytest.raises(RequestError) as caught:
        check_codings(value)
    assert (type(caught.value), caught.value.message) == (
        RequestError, "The chunked transfer coding is applied more than once.")


@pytest.mark.parametrize(("value", "named"), [
    ("gzip, chunked", "'gzip'"),
    ("a, b, chunked", "'a', 'b'"),  # every coding before chunked, not only the first
    ("a, b, c, d, e, chunked", "'a', 'b', 'c'"),  # at most three named
    ("x" * 50 + ", chunked", repr("x" * 40)),  # each cut at 40 characters
])
def test_other_codings_before_chunked_are_named_as_unsupported(value: str, named: str) -> None:
    with pytest.raises(UnsupportedFramingError) as caught:
        check_codings(value)
    assert (caught.value.status, caught.value.message) == (501, f"Transfer coding {named} {SEND_ALONE}")


@pytest.mark.parametrize(("target", "parts"), [
    (b"/p", ("/p", "")),
    (b"/p?a=1&b", ("/p", "a=1&b")),
    (b"/p?a?b", ("/p", "a?b")),  # split at the first "?" only
    (b"/p?q#f", ("/p", "q#f")),  # an origin-form target is not interpreted beyond that split
    (b"//x", ("//x", "")),
    (b"/caf\xe9", ("/caf\xe9", "")),  # bytes as latin-1: every byte a character
    (b"*", ("*", "")),  # OPTIONS * (RFC 9112 §3.2.4)
    (b"http://h/x?y=1", ("/x", "y=1")),  # absolute form: the authority is dropped
    (b"http://h/x", ("/x", "")),
    (b"http://h", ("/", "")),
    (b"http://h?q", ("/", "q")),
])
def test_a_request_target_splits_into_path_and_raw_query(target: bytes, parts: tuple[str, str]) -> None:
    assert split_target(target) == parts


def test_a_malformed_absolute_target_is_a_bad_request_quoting_200_bytes_of_it() -> None:
    target = b"http://a:b:c/" + b"x" * 300
    with pytest.raises(RequestError) as caught:
        split_target(target)
    assert caught.value.message == f"Malformed request target {target[:200]!r}."


def test_the_header_limit_error() -> None:
    error = header_too_large()
    assert (type(error), error.status, error.message) == (
        HeaderTooLargeError, 431, "The request's header section is too large.")
