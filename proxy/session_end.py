"""How a session ends: winding down (after ``end``, at the maximum duration, at shutdown: no new
utterance, the open one finalized, the connection closed once the last one has ended), the
refusals while it winds down, and terminating now (every utterance in flight ends in ``error``).

Part of the session, as functions of it.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from proxy.actions import CloseClient, Outcome
from proxy.envelope import ENDING_AFTER_END, CloseCode, ErrorCode

if TYPE_CHECKING:
    from proxy.session import Session


class WindDown(Enum):
    """Why a connection stops taking new utterances and closes once the last one is done."""

    END = (CloseCode.NORMAL, None)
    MAX_DURATION = (CloseCode.MAX_DURATION, ErrorCode.MAX_DURATION_REACHED)
    SHUTDOWN = (CloseCode.GOING_AWAY, ErrorCode.SHUTTING_DOWN)


def wind_down(session: Session, reason: WindDown) -> None:
    if not session.closed and session.winding_down is None:
        session.winding_down = reason
        if session.open is not None:
            session._finalize(session.open)
        check_wound_down(session)


def check_wound_down(session: Session) -> None:
    """Closes a session winding down once its last utterance has ended."""
    reason = session.winding_down
    if reason is None or session.closed or session.in_flight:
        return
    close_code, error_code = reason.value
    if error_code is None:
        session._send("session.ended", None, {})
    else:
        session._error(error_code, None)
    _close(session, close_code)


def refuse_while_winding_down(session: Session, request_id: str) -> None:
    reason = session.winding_down
    assert reason is not None
    error_code = reason.value[1]
    if error_code is None:
        session._error(ErrorCode.INVALID_MESSAGE, request_id, ENDING_AFTER_END)
    else:
        session._error(error_code, request_id)


def terminate(session: Session, code: ErrorCode, close_code: int) -> None:
    for utterance in session.in_flight:
        session._error(code, utterance.request_id)
        session._ended(utterance, Outcome.ERRORED, code)
    session._error(code, None)
    _close(session, close_code)


def _close(session: Session, code: int) -> None:
    session.closed = True
    session.open = session.current = None
    session.line.clear()
    session._out.append(CloseClient(code))
