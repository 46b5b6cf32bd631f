"""vLLM's side: opening a realtime WebSocket, and watching vLLM's health."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import httpx
import orjson
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

log = structlog.get_logger("proxy.upstream")

CONNECT_TIMEOUT_S = 5.0


class UpstreamUnavailable(Exception):
    """vLLM's realtime endpoint could not be reached or did not greet us."""


async def open_upstream(url: str, model: str) -> ClientConnection:
    """Connects, waits for vLLM's ``session.created`` and validates the model with
    ``session.update`` (vLLM never answers a valid one; an invalid one comes back as an error
    event, which the session reports)."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            connection = await connect(
                url,
                compression=None,  # loopback: deflate would only cost CPU
                max_size=16 * 1024 * 1024,
                open_timeout=None,
                ping_interval=None,  # vLLM's uvicorn pings us; we answer automatically
                close_timeout=1.0,  # a hung vLLM must not hold up our teardown
            )
            try:
                greeting = orjson.loads(await connection.recv())
            except BaseException:
                await connection.close()
                raise
    except (OSError, TimeoutError, WebSocketException, orjson.JSONDecodeError) as exc:
        raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(greeting, dict) or greeting.get("type") != "session.created":
        await connection.close()
        raise UpstreamUnavailable("vLLM did not send session.created first")
    await connection.send(orjson.dumps({"type": "session.update", "model": model}).decode())
    return connection


class UpstreamMonitor:
    """Polls vLLM's ``/health`` and learns ``max_model_len`` from ``/v1/models``.

    ``state`` is ``starting`` until vLLM first answers, ``ready`` while ``/health`` returns 200,
    and ``down`` when it stops answering after having been ready.
    """

    def __init__(
        self,
        health_url: str,
        served_model: str,
        *,
        interval_s: float = 1.0,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.health_url = health_url
        self.models_url = health_url.rsplit("/", 1)[0] + "/v1/models"
        self.served_model = served_model
        self.interval_s = interval_s
        self.on_change = on_change
        self.state = "starting"
        self.max_model_len: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=2.0)
        await self.check()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()

    async def check(self) -> None:
        try:
            response = await self._client.get(self.health_url)
            healthy = response.status_code == 200
        except httpx.HTTPError:
            healthy = False
        if healthy:
            if self.state != "ready":
                await self._learn_max_model_len()
            new_state = "ready"
        else:
            new_state = "down" if self.state != "starting" else "starting"
        if new_state != self.state:
            log.info("upstream_state", state=new_state, previous=self.state)
            self.state = new_state
            if self.on_change is not None:
                self.on_change(new_state)

    async def _learn_max_model_len(self) -> None:
        try:
            response = await self._client.get(self.models_url)
            models = response.json().get("data", [])
        except (httpx.HTTPError, ValueError, AttributeError):
            return
        for model in models:
            if isinstance(model, dict) and model.get("id") == self.served_model:
                value = model.get("max_model_len")
                if isinstance(value, int) and value > 0:
                    self.max_model_len = value
