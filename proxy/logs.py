"""Logging: structlog for our lines and uvicorn's, JSON when not on a terminal, credentials
scrubbed from every value."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from proxy.auth import redact_keys

# How the websockets library starts its debug lines about frames, headers and state.
_FRAME_DUMP_PREFIXES = ("< ", "> ", "= ", "% ", "x ", "! ", "? ")


class DropFrameDumps(logging.Filter):
    """The WebSocket layer's debug dumps of frames and headers carry audio, transcripts and
    credentials: they never reach the output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno <= logging.DEBUG and str(record.msg).startswith(_FRAME_DUMP_PREFIXES)
        )


class ScrubCredentials:
    """A structlog processor: every string value of every line, whatever its field (a
    ``session_id`` or ``request_id`` chosen by a client may be a key), loses its credentials."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return redact_keys(value, self.keys)
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for name, value in event_dict.items():
            event_dict[name] = self._scrub(value)
        return event_dict


def configure_logging(
    level: str, *, keys: tuple[str, ...] = (), json_lines: bool | None = None
) -> None:
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            ScrubCredentials(keys),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(DropFrameDumps())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # One line per health poll (every second) would drown everything else.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
