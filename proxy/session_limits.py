"""The session's limits on what the client sends: the rate limits' verdicts (refused with
``rate_limited``, or the connection ended when the client keeps going) and the bound on messages
and audio waiting for vLLM (``inbound_queue_full``).

Part of the session, as functions of it; the bounds themselves are ``limits.SessionLimits``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy import session_end
from proxy.envelope import Append, ClientMessage, CloseCode, ErrorCode

if TYPE_CHECKING:
    from proxy.session import Session


def admitted(session: Session, verdict: dict[str, Any] | bool, request_id: str | None) -> bool:
    """Carries out a rate limit's verdict (``limits.Admission``); whether the message goes on."""
    if verdict is True:
        return True
    if verdict is False:
        # Told often enough: the client keeps going, so the connection ends.
        session_end.terminate(session, ErrorCode.RATE_LIMITED, CloseCode.RATE_LIMITED)
    else:
        session._error(ErrorCode.RATE_LIMITED, request_id, details=verdict)
    return False


def backlog_full(
    session: Session, backlog: int, backlog_bytes: int, message: ClientMessage
) -> bool:
    """Whether ``message`` comes on top of too many messages, or too many bytes of audio,
    waiting for vLLM (the relay's backlog and the audio held by the session); it ends the
    connection then."""
    session.inbound_depth = depth = backlog + session.held_messages
    session.inbound_depth_bytes = depth_bytes = backlog_bytes + session.held_bytes
    incoming = len(message.audio) if isinstance(message, Append) else 0
    if not session.limits.inbound_full(depth, depth_bytes, incoming):
        return False
    session_end.terminate(session, ErrorCode.INBOUND_QUEUE_FULL, CloseCode.INBOUND_QUEUE_FULL)
    return True
