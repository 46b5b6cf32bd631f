"""The proxy on the open internet (issue 16): auth-failure limits that cannot lock others out or
be dodged with X-Forwarded-For, client tokens and the credential subprotocol, ambiguous keys,
header caps and the demo page's security headers. Real sockets, the fake vLLM behind."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from proxy.auth import AUTH_SUBPROTOCOL_PREFIX, SUBPROTOCOL
from proxy.tokens import EXPIRY_LEEWAY_S
from tests.harness import TEST_KEY, Client, RunningProxy, assert_error, fake_and_proxy

# -- helpers --------------------------------------------------------------------------------


async def attempt(
    proxy: RunningProxy,
    *,
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
    query: str = "",
) -> tuple[list[dict[str, Any]], int, str | None]:
    """One connection: every event until the server closes (after ``session.created`` the test
    ends it with a ping round trip and its own close), the close code and the subprotocol
    the server chose."""
    url = proxy.ws_url + (f"?{query}" if query else "")
    events: list[dict[str, Any]] = []
    async with connect(
        url,
        additional_headers=headers or {},
        subprotocols=subprotocols,  # type: ignore[arg-type]
    ) as ws:
        chosen = ws.subprotocol
        async with asyncio.timeout(15):
            try:
                while True:
                    event = orjson.loads(await ws.recv())
                    events.append(event)
                    if event["type"] == "session.created":
                        await Client(ws).send("ping")
                        events.append(orjson.loads(await ws.recv()))
                        await ws.close()
                        return events, 1000, chosen
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else 1006
                return events, code, chosen


def admitted(outcome: tuple[list[dict[str, Any]], int, str | None]) -> bool:
    events = outcome[0]
    return [e["type"] for e in events] == ["session.created", "pong"]


def refused_with(outcome: tuple[list[dict[str, Any]], int, str | None], code: str) -> str:
    """The refusal's message, after checking it is exactly one error event of ``code``."""
    events, close_code, _ = outcome
    assert len(events) == 1, events
    payload = assert_error(events[0], code)
    assert close_code == {"unauthorized": 4001, "rate_limited": 4008}[code]
    message: str = payload["message"]
    return message


async def mint(proxy: RunningProxy, headers: dict[str, str], body: Any = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=proxy.http_url) as http:
        return await http.post("/api/tokens", headers=headers, json=body)


async def token_for(proxy: RunningProxy, **body: Any) -> str:
    response = await mint(proxy, {"X-API-Key": proxy.api_key}, body)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def offer(credential: str) -> list[str]:
    return [SUBPROTOCOL, AUTH_SUBPROTOCOL_PREFIX + credential]


# -- finding 1: strangers' failures never lock out a valid credential ------------------------


async def test_valid_key_and_token_get_in_after_a_stranger_used_up_the_address() -> None:
    async with fake_and_proxy(max_auth_failures_per_window=3) as (_, proxy):
        token = await token_for(proxy)
        for _ in range(3):
            refused_with(await attempt(proxy, headers={"X-API-Key": "wrong"}), "unauthorized")
        refused_with(await attempt(proxy, headers={"X-API-Key": "wrong"}), "rate_limited")
        assert admitted(await attempt(proxy, headers={"X-API-Key": TEST_KEY}))
        assert admitted(await attempt(proxy, subprotocols=offer(token)))
        # Failed tokens are failures like wrong keys: still limited.
        refused_with(await attempt(proxy, subprotocols=offer(token)), "rate_limited")


# -- finding 2: X-Forwarded-For is believed only from configured front ends -----------------


async def test_spoofed_forwarded_for_does_not_escape_the_failure_limit() -> None:
    limit = 5
    async with fake_and_proxy(max_auth_failures_per_window=limit) as (_, proxy):
        codes = []
        for n in range(30):
            headers = {"X-API-Key": "wrong", "X-Forwarded-For": f"10.0.0.{n}"}
            events, _, _ = await attempt(proxy, headers=headers)
            codes.append(events[0]["payload"]["code"])
        assert codes == ["unauthorized"] * limit + ["rate_limited"] * (30 - limit)


async def test_a_trusted_front_end_names_the_client_address() -> None:
    async with fake_and_proxy(max_auth_failures_per_window=2, trusted_proxies=("127.0.0.1",)) as (
        _,
        proxy,
    ):
        mallory = {"X-API-Key": "wrong", "X-Forwarded-For": "203.0.113.7"}
        for _ in range(2):
            refused_with(await attempt(proxy, headers=mallory), "unauthorized")
        refused_with(await attempt(proxy, headers=mallory), "rate_limited")
        # Another client behind the same front end has its own count.
        alice = {"X-API-Key": "wrong", "X-Forwarded-For": "198.51.100.2"}
        refused_with(await attempt(proxy, headers=alice), "unauthorized")
        # The front end appends the peer it saw: the rightmost untrusted entry is the client,
        # whatever the client itself put in front.
        spoof = {"X-API-Key": "wrong", "X-Forwarded-For": "198.51.100.9, 203.0.113.7"}
        refused_with(await attempt(proxy, headers=spoof), "rate_limited")


# -- tokens ---------------------------------------------------------------------------------


async def test_a_token_in_the_subprotocol_opens_one_session_and_only_the_name_is_echoed() -> None:
    async with fake_and_proxy() as (_, proxy):
        token = await token_for(proxy)
        outcome = await attempt(proxy, subprotocols=offer(token))
        assert admitted(outcome)
        assert outcome[2] == SUBPROTOCOL
        message = refused_with(await attempt(proxy, subprotocols=offer(token)), "unauthorized")
        assert "already used" in message
        assert token not in message


async def test_a_key_in_the_subprotocol_is_accepted() -> None:
    async with fake_and_proxy() as (_, proxy):
        outcome = await attempt(proxy, subprotocols=offer(TEST_KEY))
        assert admitted(outcome)
        assert outcome[2] == SUBPROTOCOL


async def test_a_token_works_in_the_other_credential_places_too() -> None:
    async with fake_and_proxy() as (_, proxy):
        assert admitted(await attempt(proxy, headers={"X-API-Key": await token_for(proxy)}))
        bearer = {"Authorization": f"Bearer {await token_for(proxy)}"}
        assert admitted(await attempt(proxy, headers=bearer))


async def test_a_bound_token_names_its_session_and_refuses_another() -> None:
    async with fake_and_proxy() as (_, proxy):
        token = await token_for(proxy, session_id="call-42")
        message = refused_with(
            await attempt(proxy, subprotocols=offer(token), query="session_id=call-41"),
            "unauthorized",
        )
        assert "bound to another session_id" in message
        events, _, _ = await attempt(proxy, subprotocols=offer(token))
        assert events[0]["type"] == "session.created"
        assert events[0]["session_id"] == "call-42"


async def test_a_bound_token_keeps_its_session_id_for_the_whole_connection() -> None:
    """A later message naming another session_id is refused and renames nothing; an unbound
    connection still follows the client's latest session_id."""
    async with fake_and_proxy() as (_, proxy):
        token = await token_for(proxy, session_id="call-42")
        async with connect(proxy.ws_url, subprotocols=offer(token)) as ws:  # type: ignore[arg-type]
            assert orjson.loads(await ws.recv())["session_id"] == "call-42"
            client = Client(ws, "call-42")
            await client.send("ping", "p1")
            assert (await client.recv())["type"] == "pong"
            client.session_id = "call-43"
            await client.send("ping", "p2")
            refusal = await client.recv()
            message = assert_error(refusal, "invalid_message", "p2")["message"]
            assert "bound to its session_id" in message
            assert refusal["session_id"] == "call-42"
            client.session_id = "call-42"
            await client.send("ping", "p3")
            pong = await client.recv()
            assert (pong["type"], pong["request_id"], pong["session_id"]) == (
                "pong",
                "p3",
                "call-42",
            )
        async with connect(proxy.ws_url, subprotocols=offer(TEST_KEY)) as ws:  # type: ignore[arg-type]
            await ws.recv()
            client = Client(ws, "renamed")
            await client.send("ping", "p1")
            assert (await client.recv())["session_id"] == "renamed"


async def test_an_expired_token_is_refused() -> None:
    async with fake_and_proxy() as (_, proxy):
        token = await token_for(proxy, expires_in=1)
        # Past its expiry (rounded up to a whole second) and the leeway for clock skew.
        await asyncio.sleep(2.1 + EXPIRY_LEEWAY_S)
        message = refused_with(await attempt(proxy, subprotocols=offer(token)), "unauthorized")
        assert "expired" in message


async def test_a_token_signed_elsewhere_is_refused() -> None:
    async with (
        fake_and_proxy(api_keys=("another-deployment-key",)) as (_, elsewhere),
        fake_and_proxy() as (_, proxy),
    ):
        foreign = await token_for(elsewhere)
        message = refused_with(await attempt(proxy, subprotocols=offer(foreign)), "unauthorized")
        assert "not valid" in message


async def test_minting_needs_an_api_key_in_a_header() -> None:
    async with fake_and_proxy() as (_, proxy):
        missing = await mint(proxy, {})
        assert missing.status_code == 401
        assert "X-API-Key" in missing.json()["error"]["message"]
        wrong = await mint(proxy, {"X-API-Key": "wrong"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["message"].startswith("Wrong API key")
        token = await token_for(proxy)
        by_token = await mint(proxy, {"X-API-Key": token})
        assert by_token.status_code == 401
        assert "token cannot mint" in by_token.json()["error"]["message"]
        async with httpx.AsyncClient(base_url=proxy.http_url) as http:
            in_url = await http.post(f"/api/tokens?api_key={TEST_KEY}")
            assert in_url.status_code == 401
            for method in ("GET", "PUT", "DELETE"):
                other = await http.request(method, "/api/tokens")
                assert other.status_code == 405
                assert other.headers["allow"] == "POST"
                assert other.json()["error"]["code"] == "method_not_allowed"
                assert "POST /api/tokens" in other.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"expires_in": 0},
        {"expires_in": 100_000},
        {"expires_in": "60"},
        {"session_id": ""},
        [1],
        {"padding": "x" * 5000},  # the body is capped before it is parsed
    ],
)
async def test_minting_refuses_bad_requests(body: Any) -> None:
    async with fake_and_proxy() as (_, proxy):
        response = await mint(proxy, {"X-API-Key": TEST_KEY}, body)
        assert response.status_code == 400
        assert "expires_in" in response.json()["error"]["message"]


async def test_a_minted_token_is_not_cached_and_expires_as_asked() -> None:
    async with fake_and_proxy() as (_, proxy):
        response = await mint(proxy, {"Authorization": f"Bearer {TEST_KEY}"}, {"expires_in": 30})
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["expires_in"] == 30
        assert body["session_id"] is None
        assert TEST_KEY not in response.text


# -- finding 8: ambiguous credentials, header caps, security headers ------------------------


async def test_two_api_key_parameters_are_refused_not_last_wins() -> None:
    async with fake_and_proxy(max_auth_failures_per_window=100) as (_, proxy):
        for query in (f"api_key=wrong&api_key={TEST_KEY}", f"api_key={TEST_KEY}&api_key=wrong"):
            message = refused_with(await attempt(proxy, query=query), "unauthorized")
            assert "once" in message
        two = [SUBPROTOCOL, AUTH_SUBPROTOCOL_PREFIX + TEST_KEY, AUTH_SUBPROTOCOL_PREFIX + "x"]
        refused_with(await attempt(proxy, subprotocols=two), "unauthorized")


@pytest.mark.parametrize(
    "headers",
    [
        {f"x-filler-{n}": "1" for n in range(200)},  # too many
        {"x-filler": "a" * 100_000},  # too large, one read
    ],
    ids=["count", "size"],
)
async def test_oversized_request_heads_are_refused_with_431(headers: dict[str, str]) -> None:
    async with fake_and_proxy() as (_, proxy), httpx.AsyncClient(base_url=proxy.http_url) as http:
        assert (await http.get("/healthz", headers=headers)).status_code == 431
        assert (await http.get("/healthz")).status_code == 200


async def test_the_demo_page_sends_security_headers() -> None:
    async with fake_and_proxy() as (_, proxy), httpx.AsyncClient(base_url=proxy.http_url) as http:
        for path in ("/", "/demo/demo.js"):
            response = await http.get(path)
            assert response.status_code == 200
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp
            assert "frame-ancestors 'none'" in csp
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
