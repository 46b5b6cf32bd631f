"""Logging: structlog for our lines and uvicorn's, JSON when not on a terminal, keys redacted."""

from __future__ import annotations

import logging
import sys

import structlog

from proxy.auth import redact_keys

# How the websockets library starts its debug lines about frames, headers and state.
_FRAME_DUMP_PREFIXES = ("< ", "> ", "= ", "% ", "x ", "! ", "? ")


class RedactKeys(logging.Filter):
    """Scrubs keys from every stdlib record (uvicorn logs WebSocket paths with their query
    string, and headers at debug level); the message is rendered once here so its arguments
    cannot carry a key either."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.keys = keys

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG and str(record.msg).startswith(_FRAME_DUMP_PREFIXES):
            # The WebSocket layer's frame and header dumps carry audio, transcripts and keys.
            return False
        if isinstance(record.msg, str) or record.args:
            record.msg = redact_keys(record.getMessage(), self.keys)
            record.args = None
        return True


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
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(RedactKeys(keys))
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
