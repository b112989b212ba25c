"""Structured logs: one JSON object per line on stderr, for journald (structlog over stdlib logging); on a
terminal, a line for people instead.

Every module logs with the standard library, `log.info("event", extra={...})`, and structlog's
ProcessorFormatter renders each record as {"ts", "level", "logger", "event", ...fields}, so
third-party libraries' records come out the same way. A line stays bounded whatever a
sender put in a header: each field is cut to MAX_FIELD_CHARS, a traceback to
MAX_TRACEBACK_CHARS. No secret is ever passed as a field (config wraps them in Secret).

Records are written by a thread of their own (the logging cookbook's QueueHandler and
QueueListener): the event loop only queues a record, so a journald that is slow to read stderr
never holds up a 250, and rendering the JSON (about 50 us a record, three records a mail) is not
paid on the loop. The queue is drained on exit, so nothing logged is lost to a clean stop.

Under systemd, stderr is the journal's stream (JOURNAL_STREAM names it): each line then starts with the
syslog priority, `<3>` for an error, which journald takes as the entry's PRIORITY, so that
`journalctl -u emergencyd -p err` shows the errors alone (sd-daemon(3), SyslogLevelPrefix=).
"""
from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import sys
from typing import Any

import structlog
from structlog.typing import EventDict

MAX_FIELD_CHARS = 1000
MAX_TRACEBACK_CHARS = 4000
FIRST_KEYS = ("ts", "level", "logger", "event")
# Third-party chatter at INFO would drown our events and may echo request details.
QUIET_LOGGERS = ("mail", "zenpy", "pagerduty", "httpx2", "urllib3", "mail.log", "aioimaplib", "msal", "google.auth")
# mail-parser warns of every MIME part it leaves to us (a bounce's rfc822-headers, say): a line per
# ordinary mail in the journal. The parser records what matters in ParsedMessage instead.
SILENT_LOGGERS = ("mailparser",)


def _bound(_logger: Any, _name: str, event: EventDict) -> EventDict:
    for key, value in event.items():
        if isinstance(value, (bool, int, float)) or value is None:
            continue
        limit = MAX_TRACEBACK_CHARS if key == "exception" else MAX_FIELD_CHARS
        text = value if isinstance(value, str) else str(value)
        event[key] = text if len(text) <= limit else text[:limit] + "…"
    return event


def _in_order(_logger: Any, _name: str, event: EventDict) -> EventDict:
    """When, how bad, who and what first, so a line reads well in journalctl too."""
    return {**{k: event[k] for k in FIRST_KEYS if k in event}, **event}


# sd-daemon(3)'s prefixes: syslog's priorities for Python's levels.
JOURNAL_PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def formatter(*, for_people: bool = False) -> structlog.stdlib.ProcessorFormatter:
    renderer: Any = structlog.dev.ConsoleRenderer(colors=False) if for_people else \
        structlog.processors.JSONRenderer(ensure_ascii=False, default=str)
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _bound,
            _in_order,
            renderer,
        ],
    )


class _JournalPriority(logging.Formatter):
    """The wrapped formatter's line, after its syslog priority prefix."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = JOURNAL_PRIORITIES.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{priority}>{self._inner.format(record)}"


def stderr_formatter() -> logging.Formatter:
    """JSON, with journald's priority prefix when stderr is the journal's; for people on a terminal."""
    if sys.stderr.isatty():
        return formatter(for_people=True)
    if _stderr_is_the_journal():
        return _JournalPriority(formatter())
    return formatter()


def _stderr_is_the_journal() -> bool:
    """JOURNAL_STREAM is "device:inode" of the stream systemd connected; a child whose stderr was redirected
    elsewhere inherits the variable, hence the comparison."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        found = os.fstat(sys.stderr.fileno())
        return (found.st_dev, found.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


class _QueueRecords(logging.handlers.QueueHandler):
    """Queues the record itself: the listener's formatter renders it, exception and all. The message
    is resolved now, so that arguments changed after the call cannot change what is logged."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None
        return record


_listener: logging.handlers.QueueListener | None = None


def configure_logging(level: int = logging.INFO) -> None:
    global _listener
    # Fields nothing of ours reads; the logging HOWTO's "Optimization": not gathering them is cheaper.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(stderr_formatter())
    records: queue.SimpleQueue = queue.SimpleQueue()
    stop_writing()
    _listener = logging.handlers.QueueListener(records, stderr)
    _listener.start()
    atexit.register(stop_writing)
    root = logging.getLogger()
    root.handlers[:] = [_QueueRecords(records)]
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in SILENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def stop_writing() -> None:
    """Write what is queued, then stop the writer thread; later records are written directly."""
    global _listener
    if _listener is not None:
        _listener.stop()
        logging.getLogger().handlers[:] = list(_listener.handlers)
        _listener = None


def parse_line(line: str) -> dict[str, Any] | None:
    """One log line back into its fields (a journal priority prefix skipped); None for a line not ours."""
    if line.startswith("<") and line[2:3] == ">":
        line = line[3:]
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "event" in record else None
