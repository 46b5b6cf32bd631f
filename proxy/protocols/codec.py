"""The seam between a wire protocol and the session: what every protocol module implements.

A codec belongs to one connection and holds that connection's wire state (event ids, item ids,
an id echoed back): the session holds none. The I/O layer hands it each client frame and gets
the session's typed input back; it hands it each event the session emits and gets the text
frames to send. A refusal before the session exists (bad credential, no capacity) is rendered
the same way, from a ``SessionError`` with ``closes`` set, followed by ``close_code``.
"""

from __future__ import annotations

from typing import Protocol

from proxy.session.events import ClientEvent, ErrorCode
from proxy.session.inputs import ClientInput, SessionRules


class Codec(Protocol):
    # How the session treats this protocol's inputs (given to the session by the route).
    rules: SessionRules
    # The protocol's name in metrics and logs.
    protocol: str
    # The id the client knows the session by, as its latest message gave it (for log lines).
    session_id: str

    def parse_text(self, text: str) -> ClientInput:
        """One text frame: its input, or ``InvalidInput`` saying why it was refused (a frame
        over the connection's size bound included)."""
        ...

    def parse_binary(self, data: bytes) -> ClientInput:
        """One binary frame (raw audio, where the protocol allows it)."""
        ...

    def render(self, event: ClientEvent) -> tuple[str, ...]:
        """The text frames that carry ``event`` (none when the protocol has no word for it)."""
        ...

    def close_code(self, error: ErrorCode | None) -> int:
        """The WebSocket close code for a session that ends with ``error`` (None: normally)."""
        ...

    def label(self, message: ClientInput) -> str:
        """The metrics label of a parsed frame: its message type in this protocol."""
        ...
