"""Async client for the envelope protocol spoken on `/api/asr-streaming`.

One `VoxtralClient` is one WebSocket session. `client.stream(audio)` sends one utterance
(opening commit, audio, final commit) from a background task and returns an `Utterance`: iterate
it for the transcript deltas as they arrive, then `await utterance.result()` for the final text and
timings. Several utterances can share one connection, back to back.

The session's audio format (PCM16 at 8-48 kHz or G.711 at 8 kHz, mono or stereo) is chosen at
connect and asked for in the query; audio travels as binary frames or as base64 JSON appends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from clients.audio import load_audio, paced_chunks
from clients.timing import UtteranceTimings, now
from proxy.audio_format import (
    CHUNK_MS,
    NATIVE,
    AudioFormat,
    UnsupportedAudioFormat,
    make_format,
    parse_audio_object,
)

API_PATH = "/api/asr-streaming"
API_KEY_ENV = "VOXTRAL_API_KEY"
USER_AGENT = "yap-voxtral-clients/0.1"

# Error codes after which the server closes the socket: an utterance that receives one waits a
# moment for the close so the exception can carry the close code too.
CLOSING_ERROR_CODES = frozenset(
    {
        "unauthorized",
        "server_at_capacity",
        "idle_timeout",
        "max_duration_reached",
        "inbound_queue_full",
        "upstream_unavailable",
        "shutting_down",
        "internal_error",
    }
)
_CLOSE_WAIT_S = 2.0
# Audio goes as binary frames by default (a quarter fewer bytes, no base64 on either side);
# base64 JSON appends on request.
BINARY_DEFAULT = True
# Larger caller-supplied chunks are split so a frame stays far below max_message_bytes (a
# multiple of every frame size: 1, 2 and 4 bytes).
_MAX_APPEND_BYTES = 96_000

AudioSource = bytes | bytearray | memoryview | str | os.PathLike[str] | AsyncIterable[bytes]


class ClientError(Exception):
    """Any failure of the client; `str()` is one line fit for a user."""


class ClientTimeout(ClientError):
    """The server did not answer within the allowed time."""


class ProtocolError(ClientError):
    """An `error` event from the server, or the server closing the socket.

    `code` is the protocol's error code (or `connection_closed` when the socket closed without one),
    `close_code` the WebSocket close code when the server closed the connection.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        request_id: str | None = None,
        close_code: int | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.details = details or {}
        self.request_id = request_id
        self.close_code = close_code
        super().__init__(self._describe())

    def _describe(self) -> str:
        text = f"{self.code}: {self.message}"
        if self.close_code is not None:
            text += f" (close {self.close_code})"
        return text

    def with_close_code(self, close_code: int | None) -> ProtocolError:
        return ProtocolError(
            self.code,
            self.message,
            details=self.details,
            request_id=self.request_id,
            close_code=close_code,
        )

    @classmethod
    def from_event(cls, event: dict[str, Any], close_code: int | None = None) -> ProtocolError:
        payload = event.get("payload") or {}
        details = payload.get("details")
        return cls(
            str(payload.get("code", "unknown_error")),
            str(payload.get("message", "")),
            details=details if isinstance(details, dict) else None,
            request_id=event.get("request_id"),
            close_code=close_code,
        )


@dataclass(frozen=True)
class SessionInfo:
    """What `session.created` announced."""

    session_id: str
    id: str
    model: str
    transcription_delay_ms: int | None
    limits: dict[str, Any]
    payload: dict[str, Any]

    @property
    def idle_timeout_s(self) -> float | None:
        value = self.limits.get("idle_timeout_s")
        return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class CloseInfo:
    """How the connection ended: close code and reason, and the `error` event that preceded it."""

    code: int | None
    reason: str
    error: ProtocolError | None


@dataclass
class UtteranceResult:
    """The outcome of one utterance: `status` is `done` or `cancelled`."""

    request_id: str
    status: Literal["done", "cancelled"]
    text: str
    deltas: list[str]
    timings: UtteranceTimings
    cancel_reason: str | None = None
    usage: dict[str, Any] | None = None
    audio_ms: float | None = None
    end_index: int | None = None  # arrival position of the ending event on the connection

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "status": self.status,
            "text": self.text,
            "deltas": len(self.deltas),
            "cancel_reason": self.cancel_reason,
            "audio_ms": self.audio_ms,
            **self.timings.as_dict(),
        }


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def build_url(
    server: str,
    *,
    default_scheme: str = "ws",
    session_id: str | None = None,
    audio: AudioFormat = NATIVE,
) -> str:
    """Turn `host:port`, `ws(s)://host[:port][/path]` or `http(s)://...` into the endpoint URL.

    A bare host gets `default_scheme` and the API path; an explicit path is kept as given. An
    audio format other than the default is asked for with its query parameters.
    """
    text = server.strip()
    if "://" not in text:
        text = f"{default_scheme}://{text}"
    parts = urlsplit(text)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ClientError(f"unsupported scheme {parts.scheme!r}: use ws://, wss:// or host:port")
    if not parts.hostname:
        raise ClientError(f"no host in server address {server!r}")
    path = parts.path if parts.path not in ("", "/") else API_PATH
    query = parse_qsl(parts.query, keep_blank_values=True)
    if session_id is not None and not any(k == "session_id" for k, _ in query):
        query.append(("session_id", session_id))
    if not audio.is_native:
        params = audio.query_params()
        query = [(k, v) for k, v in query if k not in params] + list(params.items())
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def redact_url(url: str) -> str:
    """The URL for messages and reports: an `api_key` value hidden, `session_id` left out."""
    parts = urlsplit(url)
    query = [
        (k, "***" if k == "api_key" else v)
        for k, v in parse_qsl(parts.query, True)
        if k != "session_id"
    ]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def _is_loopback(host: str | None) -> bool:
    if host in (None, "localhost"):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


@dataclass
class _Closed:
    error: ProtocolError


@dataclass
class _Failed:
    error: BaseException


class _Sent:
    """Queued when the final commit is out, so a reader already waiting starts the done timer."""


_QueueItem = dict[str, Any] | _Closed | _Failed | _Sent
_TERMINAL_TYPES = frozenset({"transcription.done", "cancelled", "error"})


class Utterance:
    """One utterance in flight. Async-iterate it for deltas; `await result()` for the outcome.

    Raises `ProtocolError` when the server answers with an `error` for this utterance or the
    connection closes before its end, and `ClientTimeout` when `done` does not arrive within
    `done_timeout` seconds of the final commit.
    """

    def __init__(
        self,
        client: VoxtralClient,
        request_id: str,
        chunks: AsyncIterator[bytes],
        done_timeout: float | None,
        *,
        binary: bool,
    ) -> None:
        self.request_id = request_id
        self.timings = UtteranceTimings()
        self.deltas: list[str] = []
        self.audio_sent = asyncio.Event()  # set once the final commit is out
        # Position of this utterance's ending event among all events received on the connection.
        self.end_index: int | None = None
        self._client = client
        self._binary = binary
        self._done_timeout = done_timeout
        self._queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        self._outcome: UtteranceResult | BaseException | None = None
        self._ended = False  # the server sent this utterance's last event (read or not)
        self._sender = asyncio.create_task(self._send(chunks), name=f"send-{request_id}")

    async def wait_sent(self) -> bool:
        """Wait until all audio and the final commit are sent (True) or sending stopped (False)."""
        await asyncio.shield(self._sender)
        return self.audio_sent.is_set()

    @property
    def finished(self) -> bool:
        return self._outcome is not None

    def _deliver(self, item: _QueueItem, index: int | None = None) -> None:
        # Arrival times are taken here, in the reader, so a consumer that reads late does not
        # inflate the latencies.
        if isinstance(item, dict):
            kind = item.get("type")
            payload = item.get("payload") or {}
            if kind == "transcription.delta" and payload.get("delta"):
                if self.timings.first_word is None:
                    self.timings.first_word = now()
            elif kind in _TERMINAL_TYPES and not self._ended:
                self._ended = True
                self.end_index = index
                if kind == "transcription.done":
                    self.timings.done = now()
        self._queue.put_nowait(item)

    async def _send(self, chunks: AsyncIterator[bytes]) -> None:
        client, rid, t = self._client, self.request_id, self.timings
        try:
            t.opened = now()
            await client._send("input_audio_buffer.commit", rid, {"final": False})
            bytes_per_second = client.audio_format.bytes_per_second
            async for chunk in chunks:
                if self._ended or self.finished:  # cancelled, superseded or failed: stop
                    return
                if t.first_audio is None:
                    t.first_audio = now()
                if self._binary:
                    await client._send_binary(chunk)
                else:
                    audio = base64.b64encode(chunk).decode("ascii")
                    await client._send("input_audio_buffer.append", rid, {"audio": audio})
                t.audio_s += len(chunk) / bytes_per_second
            if self._ended or self.finished:
                return
            t.final_commit = now()
            await client._send("input_audio_buffer.commit", rid, {"final": True})
            self.audio_sent.set()
            self._deliver(_Sent())
        except ConnectionClosed:
            pass  # the reader reports the close to every open utterance
        except Exception as exc:
            self._deliver(_Failed(exc))
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        if self._outcome is not None:
            raise StopAsyncIteration
        while True:
            item = await self._next_item()
            if isinstance(item, _Sent):
                continue  # the done timer runs from now on
            if isinstance(item, _Closed | _Failed):
                self._finish(item.error)
                raise item.error
            kind = item.get("type")
            payload = item.get("payload") or {}
            if kind == "transcription.delta":
                delta = str(payload.get("delta", ""))
                if not delta:
                    continue
                self.deltas.append(delta)
                return delta
            if kind == "transcription.done":
                self._finish(self._result("done", payload))
                raise StopAsyncIteration
            if kind == "cancelled":
                self._finish(self._result("cancelled", payload))
                raise StopAsyncIteration
            if kind == "error":
                error = ProtocolError.from_event(item)
                if error.code in CLOSING_ERROR_CODES:
                    info = await self._client._wait_close_briefly()
                    if info is not None:
                        error = error.with_close_code(info.code)
                self._finish(error)
                raise error

    async def _next_item(self) -> _QueueItem:
        final_commit = self.timings.final_commit
        if final_commit is None or self._done_timeout is None:
            return await self._queue.get()
        remaining = final_commit + self._done_timeout - now()
        try:
            return await asyncio.wait_for(self._queue.get(), max(remaining, 0.0))
        except TimeoutError:
            error = ClientTimeout(
                f"no transcription.done for {self.request_id} within "
                f"{self._done_timeout:g} s of the final commit"
            )
            self._finish(error)
            raise error from None

    def _result(
        self, status: Literal["done", "cancelled"], payload: dict[str, Any]
    ) -> UtteranceResult:
        text = payload.get("text")
        audio_ms = payload.get("audio_ms")
        usage = payload.get("usage")
        return UtteranceResult(
            request_id=self.request_id,
            status=status,
            text=str(text) if isinstance(text, str) else "".join(self.deltas),
            deltas=self.deltas,
            timings=self.timings,
            cancel_reason=str(payload["reason"]) if "reason" in payload else None,
            end_index=self.end_index,
            usage=usage if isinstance(usage, dict) else None,
            audio_ms=float(audio_ms) if isinstance(audio_ms, int | float) else None,
        )

    def _finish(self, outcome: UtteranceResult | BaseException) -> None:
        if self._outcome is None:
            self._outcome = outcome
            self._client._forget(self.request_id)

    async def result(self) -> UtteranceResult:
        """Wait for the end of the utterance (consuming any deltas not yet read)."""
        async for _ in self:
            pass
        outcome = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome

    async def cancel(self, reason: str | None = None) -> None:
        """Ask the server to drop this utterance; it then ends with status `cancelled`."""
        payload = {"reason": reason} if reason is not None else {}
        await self._client._send("cancel", self.request_id, payload)

    async def aclose(self) -> None:
        """Stop the sender task (the server-side utterance is left as it is)."""
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender


@dataclass
class _PendingPing:
    future: asyncio.Future[dict[str, Any]]
    sent: float = field(default_factory=now)


class VoxtralClient:
    """One WebSocket session with the service. Create it with `await VoxtralClient.connect(...)`."""

    def __init__(
        self,
        ws: ClientConnection,
        session: SessionInfo,
        url: str,
        *,
        audio_format: AudioFormat = NATIVE,
        binary: bool = BINARY_DEFAULT,
    ) -> None:
        self.session = session
        self.session_id = session.session_id
        self.url = url
        self.audio_format = audio_format  # what this session's audio is sent as
        self.binary = binary  # binary frames (True) or base64 JSON appends
        self.ended_payload: dict[str, Any] | None = None
        self.connection_errors: list[ProtocolError] = []  # errors not tied to an utterance
        self._ws = ws
        self._utterances: dict[str, Utterance] = {}
        self._pings: dict[str, _PendingPing] = {}
        self._close_info: CloseInfo | None = None
        self._closed = asyncio.Event()
        self.events_received = 0
        self._reader = asyncio.create_task(self._read(), name=f"read-{self.session_id}")

    # -- connecting ---------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        server: str,
        *,
        api_key: str | None = None,
        session_id: str | None = None,
        default_scheme: str = "ws",
        open_timeout: float = 10.0,
        audio_format: str = NATIVE.encoding.value,
        sample_rate: int | None = None,
        channels: int = NATIVE.channels,
        binary: bool = BINARY_DEFAULT,
    ) -> VoxtralClient:
        """Open a session and wait for `session.created`.

        `server` is `host:port` or a ws/wss/http/https URL. The key comes from `api_key` or else the
        `VOXTRAL_API_KEY` environment variable (its first entry when it lists several) and travels
        in the `X-API-Key` header. A refusal raises `ProtocolError` with the server's code and the
        close code (for example `server_at_capacity`, close 4002).

        `audio_format` (`pcm16`, `g711_ulaw`, `g711_alaw`), `sample_rate` (default: 16000 for
        pcm16, 8000 for G.711) and `channels` (1 or 2) say what this session's audio will be;
        a format other than pcm16 16 kHz mono is asked for in the query, and a server that does
        not announce it in `session.created` fails the connect with `ClientError`. `binary`
        (the default) sends audio as binary frames; False sends base64 JSON appends.
        """
        try:
            fmt = make_format(
                audio_format,
                sample_rate,
                channels,
                names=("audio_format", "sample_rate", "channels"),
            )
        except UnsupportedAudioFormat as exc:
            raise ClientError(exc.message) from None
        session_id = session_id or new_id("cli")
        url = build_url(server, default_scheme=default_scheme, session_id=session_id, audio=fmt)
        key = api_key if api_key is not None else _key_from_env()
        headers = {"X-API-Key": key} if key else {}
        shown = redact_url(url)
        try:
            ws = await ws_connect(
                url,
                additional_headers=headers,
                user_agent_header=USER_AGENT,
                open_timeout=open_timeout,
                max_size=16 * 1024 * 1024,
                proxy=None if _is_loopback(urlsplit(url).hostname) else True,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ClientError(f"{shown} refused the WebSocket upgrade: HTTP {status}") from None
        except TimeoutError:
            limit = f"{open_timeout:g} s"
            raise ClientTimeout(f"no WebSocket handshake from {shown} within {limit}") from None
        except (OSError, InvalidHandshake) as exc:
            raise ClientError(f"cannot connect to {shown}: {exc}") from None
        try:
            session = await cls._await_session(ws, session_id, open_timeout)
            _check_announced_format(session, fmt)
        except BaseException:
            await ws.close()
            raise
        return cls(ws, session, url, audio_format=fmt, binary=binary)

    @staticmethod
    async def _await_session(
        ws: ClientConnection, session_id: str, timeout_s: float
    ) -> SessionInfo:
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout_s)
        except TimeoutError:
            raise ClientTimeout(f"no session.created within {timeout_s:g} s") from None
        except ConnectionClosed:
            code = ws.close_code
            raise ProtocolError(
                "connection_closed", "the server closed the connection", close_code=code
            ) from None
        event = orjson.loads(raw)
        if event.get("type") == "error":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.wait_closed(), _CLOSE_WAIT_S)
            raise ProtocolError.from_event(event, close_code=ws.close_code)
        if event.get("type") != "session.created":
            raise ClientError(f"expected session.created, got {event.get('type')!r}")
        payload = event.get("payload") or {}
        limits = payload.get("limits")
        delay = payload.get("transcription_delay_ms")
        return SessionInfo(
            session_id=str(event.get("session_id") or session_id),
            id=str(payload.get("id", "")),
            model=str(payload.get("model", "")),
            transcription_delay_ms=int(delay) if isinstance(delay, int | float) else None,
            limits=limits if isinstance(limits, dict) else {},
            payload=payload,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- utterances ---------------------------------------------------------------------------

    def stream(
        self,
        audio: AudioSource,
        *,
        request_id: str | None = None,
        speed: float | None = 1.0,
        done_timeout: float | None = 30.0,
        chunk_ms: int = CHUNK_MS,
        binary: bool | None = None,
    ) -> Utterance:
        """Start sending one utterance and return it at once.

        `audio` is a file path (decoded into the session's format with `load_audio`), bytes in
        the session's format (cut into `chunk_ms` pieces paced at `speed` times real time;
        `speed=None` sends as fast as possible), or an async iterable of such bytes (sent as they
        come: the caller paces them). `binary` overrides the session's choice of binary frames.
        """
        if self._close_info is not None:
            raise ProtocolError("connection_closed", "the connection is closed")
        rid = request_id or new_id("utt")
        if rid in self._utterances:
            raise ClientError(f"utterance {rid} is already in flight")
        fmt = self.audio_format
        if isinstance(audio, str | os.PathLike):
            audio = load_audio(Path(audio), fmt)
        if isinstance(audio, bytes | bytearray | memoryview):
            data = bytes(audio)
            problem = fmt.audio_problem(len(data)) if data else None
            if problem is not None:
                raise ClientError(problem)
            chunk_bytes = fmt.chunk_bytes(chunk_ms)
            if chunk_bytes <= 0:
                raise ClientError(f"chunk_ms must hold at least one sample frame, not {chunk_ms}")
            chunks = paced_chunks(data, speed=speed, chunk_bytes=chunk_bytes, fmt=fmt)
        else:
            chunks = _whole_frames(audio, fmt.frame_bytes)
        binary = self.binary if binary is None else binary
        utterance = Utterance(self, rid, chunks, done_timeout, binary=binary)
        self._utterances[rid] = utterance
        return utterance

    async def transcribe(
        self,
        audio: AudioSource,
        *,
        on_delta: Callable[[str], None] | None = None,
        **options: Any,
    ) -> UtteranceResult:
        """Stream one utterance and wait for its result; `on_delta` sees each delta on arrival."""
        utterance = self.stream(audio, **options)
        async for delta in utterance:
            if on_delta is not None:
                on_delta(delta)
        return await utterance.result()

    # -- connection-level messages ------------------------------------------------------------

    async def ping(self, payload: dict[str, Any] | None = None, timeout_s: float = 10.0) -> float:
        """Send `ping` and wait for its `pong`; returns the round trip in seconds."""
        rid = new_id("ping")
        pending = _PendingPing(asyncio.get_running_loop().create_future())
        self._pings[rid] = pending
        try:
            await self._send("ping", rid, payload or {})
            await asyncio.wait_for(pending.future, timeout_s)
        except TimeoutError:
            raise ClientTimeout(f"no pong within {timeout_s:g} s") from None
        finally:
            self._pings.pop(rid, None)
        return now() - pending.sent

    async def end(self, timeout_s: float = 30.0) -> CloseInfo:
        """Send `end`: utterances in flight get their `done`, then the server closes with 1000."""
        with contextlib.suppress(ConnectionClosed):
            await self._send("end", None, {})
        return await self.wait_closed(timeout_s)

    async def wait_closed(self, timeout_s: float | None = None) -> CloseInfo:
        """Wait until the server closes the connection."""
        try:
            await asyncio.wait_for(self._closed.wait(), timeout_s)
        except TimeoutError:
            raise ClientTimeout(f"the server did not close within {timeout_s:g} s") from None
        assert self._close_info is not None
        return self._close_info

    @property
    def close_info(self) -> CloseInfo | None:
        return self._close_info

    async def close(self) -> None:
        """Close the socket from our side (1000) and stop the background tasks."""
        for utterance in list(self._utterances.values()):
            await utterance.aclose()
        await self._ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    # -- internals ----------------------------------------------------------------------------

    async def _send(self, kind: str, request_id: str | None, payload: dict[str, Any]) -> None:
        message = {
            "type": kind,
            "session_id": self.session_id,
            "request_id": request_id,
            "payload": payload,
        }
        await self._ws.send(orjson.dumps(message).decode())

    async def _send_binary(self, audio: bytes) -> None:
        """Audio for the open utterance as one binary frame."""
        await self._ws.send(audio)

    def _forget(self, request_id: str) -> None:
        self._utterances.pop(request_id, None)

    async def _wait_close_briefly(self) -> CloseInfo | None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), _CLOSE_WAIT_S)
        return self._close_info

    async def _read(self) -> None:
        last_error: ProtocolError | None = None
        try:
            async for raw in self._ws:
                try:
                    event = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue  # not an envelope: nothing to route
                if not isinstance(event, dict):
                    continue
                error = self._dispatch(event)
                if error is not None:
                    last_error = error
        except ConnectionClosed:
            pass
        finally:
            self._on_closed(last_error)

    def _dispatch(self, event: dict[str, Any]) -> ProtocolError | None:
        """Route one server event; returns a connection-level error to remember."""
        self.events_received += 1
        kind = event.get("type")
        rid = event.get("request_id")
        if kind == "pong" and isinstance(rid, str) and rid in self._pings:
            future = self._pings[rid].future
            if not future.done():
                future.set_result(event)
            return None
        if kind == "session.ended":
            payload = event.get("payload")
            self.ended_payload = payload if isinstance(payload, dict) else {}
            return None
        if isinstance(rid, str) and rid in self._utterances:
            self._utterances[rid]._deliver(event, self.events_received)
            return None
        if kind == "error":
            error = ProtocolError.from_event(event)
            self.connection_errors.append(error)
            if isinstance(rid, str) and rid in self._pings:
                self._pings[rid].future.set_exception(error)
            return error
        return None

    def _on_closed(self, last_error: ProtocolError | None) -> None:
        code = self._ws.close_code
        reason = self._ws.close_reason or ""
        error = last_error.with_close_code(code) if last_error is not None else None
        self._close_info = CloseInfo(code=code, reason=reason, error=error)
        lost = error or ProtocolError(
            "connection_closed",
            "the connection closed before the utterance ended",
            close_code=code,
        )
        for utterance in list(self._utterances.values()):
            utterance._deliver(_Closed(lost))
        for pending in self._pings.values():
            if not pending.future.done():
                pending.future.set_exception(lost)
        self._closed.set()


def _key_from_env() -> str | None:
    """The first key in `VOXTRAL_API_KEY` (the variable may hold a comma-separated list)."""
    raw = os.environ.get(API_KEY_ENV, "")
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    return keys[0] if keys else None


def _check_announced_format(session: SessionInfo, asked: AudioFormat) -> None:
    """Fail unless the server announced the asked-for audio format: a server that ignored the
    query would take the audio as something else and transcribe noise."""
    announced = session.payload.get("audio", NATIVE.as_payload())
    try:
        taken = parse_audio_object(announced)
    except UnsupportedAudioFormat:
        raise ClientError(
            f"session.created announced an unknown audio format: {announced!r}"
        ) from None
    if taken != asked:
        raise ClientError(
            f"the server takes {taken.describe()}, not {asked.describe()}: it does not support "
            "this audio format; send pcm16 16000 Hz mono, or use a server that does"
        )


async def _whole_frames(source: AsyncIterable[bytes], frame_bytes: int) -> AsyncIterator[bytes]:
    """Forward caller chunks, carrying a partial sample frame over and splitting very large
    chunks."""
    carry = b""
    async for piece in source:
        data = carry + bytes(piece)
        cut = len(data) // frame_bytes * frame_bytes
        data, carry = data[:cut], data[cut:]
        for start in range(0, len(data), _MAX_APPEND_BYTES):
            yield data[start : start + _MAX_APPEND_BYTES]
