"""``POST /api/tokens`` and the token secret, against ``python -m proxy`` in a subprocess: the
secret is never derived from the keys, a token lives at least the seconds asked for, and a
client that stalls or leaves mid-body is answered or forgotten without a traceback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time

import httpx
import pytest

from devtools.fake_vllm import FakeVllm
from tests.harness import proxy_subprocess

WEAK_KEY = "change-me"
GUARD_S = 20.0


async def mint(http_url: str, key: str, body: bytes = b"{}") -> dict[str, object]:
    async with httpx.AsyncClient(base_url=http_url, timeout=GUARD_S) as http:
        answer = await http.post("/api/tokens", headers={"X-API-Key": key}, content=body)
    assert answer.status_code == 200, answer.text
    minted: dict[str, object] = answer.json()
    return minted


def signed_with_the_keys(token: str, keys: tuple[str, ...]) -> bool:
    """Whether the token verifies with a secret derived from the keys, as before issue 24 (one
    token was then an offline oracle for the key)."""
    claims_b64, signature = token[len("vxt1.") :].split(".")
    material = "\n".join(sorted(keys)).encode()
    secret = hmac.new(material, b"voxtral-stt client token v1", hashlib.sha256).digest()
    expected = hmac.new(secret, claims_b64.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(expected).rstrip(b"=").decode() == signature


async def test_without_a_secret_tokens_owe_nothing_to_the_key_and_the_start_warns() -> None:
    lines: list[str] = []
    async with (
        FakeVllm() as fake,
        proxy_subprocess(fake.url, (WEAK_KEY,), lines) as one,
        proxy_subprocess(fake.url, (WEAK_KEY,), []) as other,
    ):
        token = str((await mint(one.http_url, WEAK_KEY))["token"])
        assert not signed_with_the_keys(token, (WEAK_KEY,))
        # A random secret per process: another process with the same key does not accept it.
        async with httpx.AsyncClient(base_url=other.http_url, timeout=GUARD_S) as http:
            answer = await http.post("/api/tokens", headers={"X-API-Key": token})
        assert answer.status_code == 401
    assert any("token_secret_random" in line for line in lines)
    assert any("api_key_weak" in line for line in lines)
    assert not any(WEAK_KEY in line for line in lines)


async def test_a_token_lives_at_least_the_seconds_asked_for() -> None:
    async with FakeVllm() as fake, proxy_subprocess(fake.url, (WEAK_KEY,), []) as proxy:
        for _ in range(3):
            asked_at = time.time()
            minted = await mint(proxy.http_url, WEAK_KEY, b'{"expires_in": 1}')
            expires_at = minted["expires_at"]
            assert isinstance(expires_at, int)
            assert expires_at >= asked_at + 1


# Every endpoint that sells a credential for a key reads its body the same way.
MINTING_PATHS = ("/api/tokens", "/v1/realtime/client_secrets", "/v1/client/sessions")


@pytest.mark.parametrize("path", MINTING_PATHS)
async def test_a_stalled_body_gets_408_and_a_vanished_client_no_traceback(path: str) -> None:
    lines: list[str] = []
    async with (
        FakeVllm() as fake,
        proxy_subprocess(fake.url, (WEAK_KEY,), lines, HTTP_HEAD_TIMEOUT_S="1") as proxy,
    ):
        port = int(proxy.http_url.rsplit(":", 1)[1])
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {WEAK_KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        ).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)  # and the rest of the body never comes
        async with asyncio.timeout(GUARD_S):
            answer = await reader.readuntil(b"\r\n")
        assert answer.startswith(b"HTTP/1.1 408 ")
        writer.close()
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.close()  # leaves mid-body
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        assert (await mint(proxy.http_url, WEAK_KEY))["token"]
    for line in lines:
        assert "Traceback" not in line, line
        assert '"level": "error"' not in line, line
