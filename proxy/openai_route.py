"""``WS /v1/realtime``: OpenAI's Realtime API for transcription sessions, the door of the route
(``proxy.admission.Door``). The protocol itself is the codec's (``proxy.protocols.openai``);
the session underneath is every route's.

Clients put their credential in ``Authorization: Bearer`` (every SDK) or offer it as the
``openai-insecure-api-key.<credential>`` subprotocol (browsers), and the server selects
``realtime``. The connect query may say ``intent=transcription`` (the only kind of session here)
and ``model=`` (one of the accepted names); a session opens in OpenAI's defaults: 24 kHz PCM16,
turn detection off (commit mode).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from starlette.websockets import WebSocket

from proxy.admission import ConnectOptions, Door, realtime_door, refuse, refuse_model
from proxy.auth import presented_openai_credential
from proxy.config import ProxyConfig
from proxy.protocols.codec import Codec
from proxy.protocols.openai import DEFAULT_FORMAT, OpenAICodec, codec_for
from proxy.session.events import ErrorCode
from proxy.state import ProxyState

PATH = "/v1/realtime"
INTENT = "transcription"


def credential(websocket: WebSocket, offered: Sequence[str]) -> str | None:
    return presented_openai_credential(websocket.headers, offered)


async def connect_options(
    websocket: WebSocket, state: ProxyState, codec: Codec
) -> ConnectOptions | None:
    """OpenAI's defaults, once the query's intent and model are checked; None when refused."""
    assert isinstance(codec, OpenAICodec)
    query = websocket.query_params
    intent = query.get("intent")
    if intent not in (None, INTENT):
        await refuse(
            websocket,
            state,
            codec,
            ErrorCode.INVALID_MESSAGE,
            message=f"intent={intent[:40]!r} is not served: this server runs transcription "
            "sessions only; connect with ?intent=transcription.",
        )
        return None
    model = query.get("model")
    if model is not None and not codec.name_model(model):
        await refuse_model(
            websocket,
            state,
            codec,
            model,
            f"use one of {codec.model_names()}, or leave model out.",
        )
        return None
    return DEFAULT_FORMAT, None


def door(config: ProxyConfig) -> Door:
    return realtime_door(
        functools.partial(codec_for, config), present=credential, options=connect_options
    )
