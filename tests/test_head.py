"""HEAD on a token URL answers what GET would (status and headers), records nothing, sends no body.

Link checkers and chat unfurlers ask with HEAD; a revoked or used link must not look alive to them.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from conftest import API_KEY, TOKENS, issue_token, live_env, stream_entries, token_of

AUTH = {"X-API-Key": API_KEY}
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
APP = "https://app.example.com"
# Headers that differ between two answers by nature rather than by meaning.
VARYING = {"date", "content-length", "server", "x-request-id"}  # a request id is per request


def _headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in VARYING}


def _same_answer(client: Any, url: str, params: dict[str, str], headers: dict[str, str]) -> tuple[int, Any]:
    """HEAD, then the GET it stands for; both answers must agree. Returns GET's status and response."""
    head = client.head(url, params=params, headers=headers, follow_redirects=False)
    get = client.get(url, params=params, headers=headers, follow_redirects=False)
    assert (head.status_code, _headers(head)) == (get.status_code, _headers(get)), (url, params, headers)
    return get.status_code, get


STATES: dict[str, Callable[..., tuple[str, int]]] = {}


def state(name: str) -> Callable[[Callable[..., tuple[str, int]]], Callable[..., tuple[str, int]]]:
    def register(fn: Callable[..., tuple[str, int]]) -> Callable[..., tuple[str, int]]:
        STATES[name] = fn
        return fn

    return register


@state("revoked")
def _revoked(client: Any, issue: Callable[..., dict[str, Any]], clock: Any) -> tuple[str, int]:
    answer = issue()
    assert client.delete(f"{TOKENS}/{answer['id']}", headers=AUTH).status_code == 204
    return token_of(answer), 410


@state("revoked, by id")
def _revoked_id(client: Any, issue: Callable[..., dict[str, Any]], clock: Any) -> tuple[str, int]:
    answer = issue()
    assert client.delete(f"{TOKENS}/{answer['id']}", headers=AUTH).status_code == 204
    return answer["id"], 410


@state("unknown id")
def _unknown(client: Any, issue: Callable[..., dict[str, Any]], clock: Any) -> tuple[str, int]:
    return str(uuid.uuid4()), 404


@state("not a token")
def _garbage(client: Any, issue: Callable[..., dict[str, Any]], clock: Any) -> tuple[str, int]:
    token = token_of(issue())
    return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"), 401


@state("expired")
def _expired(client: Any, issue: Callable[..., dict[str, Any]], clock: Any) -> tuple[str, int]:
    answer = issue(expires_in={"minutes": 1})
    clock.advance(60 + 31)
    return token_of(answer), 410


@state("used for another answer")
def _used(client: Any, issue: Callable[..., dict[str, Any]], clock: Any) -> tuple[str, int]:
    answer = issue()
    assert client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 0}).status_code == 200
    return token_of(answer), 409


def _as_issued(answer: dict[str, Any]) -> str:
    """The token's URL path after ``TOKENS/``, as issued: ``<jwt>/<token id>``."""
    return f"{token_of(answer)}/{answer['id']}"


@state("revoked, as issued")
def _revoked_as_issued(client: Any, issue: Callable[..., dict[str, Any]], clock: Any) -> tuple[str, int]:
    answer = issue()
    assert client.delete(f"{TOKENS}/{answer['id']}", headers=AUTH).status_code == 204
    return _as_issued(answer), 410


@state("expired, as issued")
def _expired_as_issued(client: Any, issue: Callable[..., dict[str, Any]], clock: Any) -> tuple[str, int]:
    answer = issue(expires_in={"minutes": 1})
    clock.advance(60 + 31)
    return _as_issued(answer), 410


@state("used for another answer, as issued")
def _used_as_issued(client: Any, issue: Callable[..., dict[str, Any]], clock: Any) -> tuple[str, int]:
    answer = issue()
    assert client.post(f"{TOKENS}/{_as_issued(answer)}", json={"score": 0}).status_code == 200
    return _as_issued(answer), 409


@state("not a token, under its real id")
def _garbage_as_issued(client: Any, issue: Callable[..., dict[str, Any]], clock: Any) -> tuple[str, int]:
    answer = issue()
    token = token_of(answer)
    return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB") + f"/{answer['id']}", 401


@state("another token's id")
def _other_id(client: Any, issue: Callable[..., dict[str, Any]], clock: Any) -> tuple[str, int]:
    return f"{token_of(issue())}/{issue()['id']}", 401


@pytest.mark.parametrize("accept", [{}, HTML], ids=["json", "html"])
@pytest.mark.parametrize("name", sorted(STATES))
def test_head_answers_what_get_would_for_dead_links(client, issue, clock, redis_server, name, accept):
    token, status = STATES[name](client, issue, clock)
    entries = stream_entries(redis_server)
    got, _ = _same_answer(client, f"{TOKENS}/{token}", {"score": "1"}, accept)
    assert got == status
    assert stream_entries(redis_server) == entries


@pytest.mark.parametrize("form", ["as issued", "jwt"])
@pytest.mark.parametrize("accept", [{}, HTML], ids=["json", "html"])
def test_head_on_a_live_link_is_200_and_records_nothing(client, issue, redis_server, accept, form):
    answer = issue(feedback_config={"type": "continuous", "min": 0, "max": 1})
    url = f"{TOKENS}/{_as_issued(answer) if form == 'as issued' else token_of(answer)}"
    head = client.head(url, params={"score": "1"}, headers=accept)
    assert head.status_code == 200
    assert stream_entries(redis_server) == []
    get = client.get(url, params={"score": "1"}, headers=accept)
    assert get.status_code == 200 and len(stream_entries(redis_server)) == 1
    assert head.headers["content-type"] == get.headers["content-type"]
    # Now a duplicate of the recorded answer, and a different one (409): HEAD still agrees with GET.
    assert _same_answer(client, url, {"score": "1"}, accept)[0] == 200
    assert _same_answer(client, url, {"score": "0"}, accept)[0] == 409
    # A value outside the token's constraints.
    assert _same_answer(client, url, {"score": "7"}, accept)[0] == 422
    assert len(stream_entries(redis_server)) == 1


def test_head_follows_the_redirect_get_would_make(make_app, clock, redis_server):
    client = make_app(redirect_origins=(APP,))
    url = f"{TOKENS}/{_as_issued(issue_token(client, redirect_url=f'{APP}/thanks'))}"
    head = client.head(url, params={"score": "1"}, headers=HTML, follow_redirects=False)
    assert head.status_code == 303 and head.headers["location"] == f"{APP}/thanks"
    assert stream_entries(redis_server) == []
    get = client.get(url, params={"score": "1"}, headers=HTML, follow_redirects=False)
    assert (get.status_code, get.headers["location"]) == (303, head.headers["location"])


def _raw_head(port: int, path: str) -> bytes:
    """Everything the server sends for a HEAD, up to its closing the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_head_sends_no_body_over_the_wire(live_server, redis_server, keys_dir):
    import httpx

    server = live_server(live_env(redis_server, keys_dir))
    with httpx.Client(base_url=server.url) as http:
        answer = issue_token(http)
    path = httpx.URL(answer["url"]).path  # as issued: <jwt>/<token id>
    assert httpx.delete(f"{server.url}{TOKENS}/{answer['id']}", headers=AUTH).status_code == 204
    raw = _raw_head(server.port, f"{path}?score=1")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 410 "), raw
    assert b"content-type: application/problem+json" in head.lower()
    assert body == b""
