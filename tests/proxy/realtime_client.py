"""Reading a vendor realtime route (OpenAI's, Mistral's) from the client's side in the proxy
tests: its JSON events, each named by ``type``, and the close that ends them."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(10):
        event: dict[str, Any] = orjson.loads(await ws.recv())
    return event


async def until(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
    """The events up to and including the first of type ``kind``."""
    events = []
    while True:
        events.append(await recv(ws))
        if events[-1]["type"] == kind:
            return events


async def until_closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], int]:
    """The events until the server closes, and its close code (1006: closed without one)."""
    events: list[dict[str, Any]] = []
    try:
        while True:
            events.append(await recv(ws))
    except ConnectionClosed as closed:
        return events, closed.rcvd.code if closed.rcvd is not None else 1006
