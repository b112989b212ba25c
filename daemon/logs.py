"""Log lines to stderr: one event per line, key=value fields, bounded in size.

Fields come from `extra=`; values are repr'd when they contain spaces, so a line
stays one line whatever a sender put in a header.
"""
from __future__ import annotations

import logging
import sys
import time

MAX_LINE_CHARS = 4000
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{stamp}.{int(record.msecs):03d}Z", record.levelname.lower(), record.name,
                 _value(record.getMessage())]
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                parts.append(f"{key}={_value(value)}")
        line = " ".join(parts)
        if record.exc_info:
            line += " exception=" + _value(self.formatException(record.exc_info))
        return line[:MAX_LINE_CHARS]


def _value(value: object) -> str:
    text = str(value)
    return repr(text) if (not text or any(c.isspace() or c in "='\"" for c in text)) else text


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter at INFO would drown our events and may echo request details.
    for noisy in ("mail", "mailparser", "zenpy", "pagerduty", "httpx2", "urllib3", "mail.log", "aioimaplib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
