"""Head parsing and validation (proxy.front.head) and the response-head builders (proxy.http1.replies)."""

from __future__ import annotations

import pytest

from proxy.front.head import MAX_HEADERS, HeadError, parse_head, rebuild
from proxy.http1.replies import canned, header_lines, status_line


def raw(*lines: str, start: str = "GET /x HTTP/1.1") -> bytes:
    return ("\r\n".join([start, *lines]) + "\r\n\r\n").encode("utf-8")


def test_a_plain_head():
    head = parse_head(raw("Host: gw:8080", "Content-Length: 3", "X-A: b"))
    assert (head.method, head.url, head.version, head.length, head.host) == ("GET", "/x", "1.1", 3, "gw:8080")
    assert head.keep_alive and ("X-A", "b") in head.headers


@pytest.mark.parametrize(("lines", "keep"), [
    (["Connection: close"], False), (["Connection: keep-alive, close"], False), ([], True),
    (["Connection: Upgrade", "Upgrade: h2c"], True),
])
def test_keep_alive_follows_the_connection_tokens(lines, keep):
    assert parse_head(raw("Host: gw", *lines)).keep_alive is keep


def test_http_1_0_keeps_alive_only_when_asked():
    assert not parse_head(raw(start="GET /x HTTP/1.0")).keep_alive
    assert parse_head(raw("Connection: keep-alive", start="GET /x HTTP/1.0")).keep_alive


def test_an_upgrade_is_dropped_and_other_connection_tokens_stay_listed():
    head = parse_head(raw("Host: gw", "Connection: Upgrade, HTTP2-Settings, X-Hop", "Upgrade: h2c",
                          "HTTP2-Settings: AAA", "X-Hop: 1"))
    names = {n.lower(): v for n, v in head.headers}
    assert "upgrade" not in names and "http2-settings" not in names and names["connection"] == "x-hop"


@pytest.mark.parametrize(("data", "status"), [
    (raw(start="CONNECT a:443 HTTP/1.1"), 405),
    (raw("Host: a", "Host: b"), 400),
    (raw(), 400),
    (raw("Host: a b"), 400),
    (raw("Host: gw", *(f"x-{i}: v" for i in range(MAX_HEADERS))), 431),
    (raw("Host: gw", "Content-Length: 1", "Transfer-Encoding: chunked"), 400),
    (raw("Host: gw", "X: a", " folded"), 400),
    (b"GET /x HTTP/1.1\r\nHost: gw\nX: b\n\n", 400),
])
def test_refused_heads(data, status):
    with pytest.raises(HeadError) as err:
        parse_head(data)
    assert err.value.status == status and "gw" not in err.value.reason


def test_the_head_aiohttp_is_handed_is_rebuilt_from_validated_fields_for_one_request():
    head = parse_head(raw("Host: gw", "Connection: keep-alive", "Transfer-Encoding: chunked", "X-A: b"))
    out = rebuild(head)
    assert out.startswith(b"GET /x HTTP/1.1\r\n") and out.endswith(b"Connection: close\r\n\r\n")
    assert out.count(b"Host:") == 1 and out.count(b"Transfer-Encoding: chunked") == 1
    assert b"keep-alive" not in out


def test_header_lines_drop_what_cannot_be_sent_and_never_raise():
    lines = header_lines({"A": "ok", "B": "x-\u20ac", "C": "a\r\nInjected: 1", "Bad Name": "v", "D": "caf\u00e9"})
    assert lines == [b"A: ok\r\n", b"D: caf\xe9\r\n"]


def test_status_lines_and_canned_answers_never_carry_request_bytes():
    assert status_line(200, "OK\r\nX: y") == b"HTTP/1.1 200 OK\r\n"
    assert status_line(599, "\u20ac") == b"HTTP/1.1 599 \r\n"
    answer = canned(400)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"Connection: close" in answer
    assert answer.endswith(b'"code":"bad_request"}')


def test_preflight_request_headers_are_echoed_only_when_every_name_is_a_token():
    from proxy.api.cors import allowed_headers

    assert allowed_headers(None) == "content-type"
    assert allowed_headers(",,, ,,") == allowed_headers("  ") == "content-type"  # an empty list: none asked
    assert allowed_headers("Content-Type, X-Trace") == "content-type, x-trace"
    assert allowed_headers("content-type, x-\u20ac") is None
    assert allowed_headers("a\r\nb") is None
    assert allowed_headers(",".join(f"x-{i}" for i in range(65))) is None


def test_forwarded_headers_drop_underscored_names_and_invalid_hosts():
    from proxy.http1.headers import upstream_headers, valid_host

    out = upstream_headers({"x_user": "a", "x-user": "b", "Host": "gw"}, {}, peer="1.2.3.4", scheme="http",
                           host="gw:8080")
    assert "x_user" not in out and out["x-user"] == "b" and out["X-Forwarded-Host"] == "gw:8080"
    assert "X-Forwarded-Host" not in upstream_headers({}, {}, peer=None, scheme="http", host="a b\u20ac")
    assert valid_host("[::1]:80") == "[::1]:80" and valid_host("evil/path") is None
