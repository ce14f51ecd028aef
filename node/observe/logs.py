"""`serve --log-format json`: one JSON object per line, for log shippers (Loki, ELK).

Fields: `ts` (ISO-8601 UTC), `level`, `logger`, `msg`, `node` (this node's code), and
where the call knows them `child` (a link on the parent's side), `parent` (a link on the
child's side) and `batch` (`after_seq`, `last_seq` of an applied window group);
a logged exception goes into `exc`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

# Attributes a log call may pass with `extra=` that become fields of the line.
CONTEXT_FIELDS = ("child", "parent", "batch")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON carrying the node's code."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "node": self.node,
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str, node: str) -> None:
    """Route every logger to stderr in the chosen format (`text` or `json`)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter(node))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s node={node} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
