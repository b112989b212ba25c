"""Logs: one JSON object per line, one event per state change, bounded, without secrets or bodies."""
from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

from emergencyd.daemon.ops.logs import MAX_FIELD_CHARS, MAX_TRACEBACK_CHARS, formatter
from emergencyd.escalation.records import PAGE, StepOutcome
from tests.harness import ROOT, SECRETS, base_env, log_records, make_message, write_config

BODY_MARKER = "body-marker-7c41: our production app returns 502"
FAILED_EVENT = "failed"     # the message logged with an exception


def test_every_line_is_json_with_an_event_per_step(live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True)
    daemon.send(make_message(subject="Apps down " + "x" * 900, body=BODY_MARKER))
    [message] = daemon.wait_settled(1)["messages"]
    daemon.stop()

    lines = daemon.log_text().splitlines()
    records = [json.loads(line) for line in lines]          # every line parses
    assert all({"ts", "level", "logger", "event"} <= set(r) for r in records)
    assert all(r["ts"].endswith("Z") for r in records)
    limit = 2 * MAX_FIELD_CHARS + MAX_TRACEBACK_CHARS     # a few bounded fields and names
    assert max(len(line) for line in lines) < limit, max(lines, key=len)[:300]

    steps = [r for r in records if r["event"] == "step done"]
    assert {r["step"] for r in steps} == {s for s in message["steps"]}
    for r in steps:
        assert r["message_pk"] == message["id"] and r["message_id"] == message["message_id"]
        assert r["outcome"] == StepOutcome.SUCCESS and r["attempt"] == 1 and r["seconds"] >= 0
    assert [r["event"] for r in records if r["event"] in ("emergencyd ready", "shutting down", "stopped")] == \
        ["emergencyd ready", "shutting down", "stopped"]

    text = "\n".join(lines)
    assert BODY_MARKER not in text                          # never a message body
    assert not [s for s in SECRETS if s in text]


def test_a_failed_step_is_logged_with_its_outcome_and_error(live_daemon, zendesk, pagerduty):
    pagerduty.inject_status(500, times=1)
    daemon = live_daemon(policy=True)
    daemon.send(make_message())
    daemon.wait_settled(1)
    records = log_records(daemon.log_text())
    [retry] = [r for r in records if r["event"] == "step retry"]
    assert retry["step"] == PAGE and retry["outcome"] == StepOutcome.RETRY and retry["attempt"] == 1
    assert "500" in retry["error"] and retry["level"] == "warning"


def test_a_huge_field_or_traceback_is_cut():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter())
    logger = logging.getLogger("emergencyd.test-logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("huge", extra={"subject": "s" * 50000, "count": 3})
        try:
            raise ValueError("v" * 50000)
        except ValueError:
            logger.exception(FAILED_EVENT)
    finally:
        logger.removeHandler(handler)
    huge, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert len(huge["subject"]) == MAX_FIELD_CHARS + 1 and huge["count"] == 3
    assert len(failed["exception"]) == MAX_TRACEBACK_CHARS + 1 and failed["level"] == "error"


def test_mail_parser_warnings_about_parts_it_leaves_to_us_stay_out_of_the_log(tmp_path):
    """mail-parser warns of each MIME part it does not handle itself (a bounce's rfc822-headers, a
    calendar): a journal line per ordinary mail, saying nothing an operator can act on."""
    from tests.harness import ROOT, run_cli, write_config
    fixtures = sorted(str(p) for p in (ROOT / "tests" / "fixtures" / "noise").glob("*.eml"))
    assert any("bounce_postfix_dsn" in p for p in fixtures)
    result = run_cli(write_config(tmp_path, dry_run=True), "classify", *fixtures)
    assert len(result.stdout.splitlines()) == len(fixtures)
    assert "mailparser" not in result.stderr, result.stderr[:2000]


def test_under_systemd_each_line_carries_its_journal_priority(tmp_path, start_daemon):
    """JOURNAL_STREAM names stderr's device:inode when systemd connected it to the journal; here the log file
    stands in for the stream, so journald would read `<4>` as a warning and `journalctl -p err` filter on it."""
    log_file = tmp_path / "daemon.log"
    log_file.touch()
    found = log_file.stat()
    daemon = start_daemon(env=base_env(JOURNAL_STREAM=f"{found.st_dev}:{found.st_ino}"))
    daemon.stop()
    lines = daemon.log_text().splitlines()
    ready = next(line for line in lines if '"emergencyd ready"' in line)
    warning = next(line for line in lines if '"level": "warning"' in line)     # the empty tenant directory
    assert ready.startswith('<6>{"ts"') and warning.startswith("<4>{"), (ready, warning)
    assert all(re.match(r"<[2-7]>\{", line) for line in lines if line.startswith("<")), lines[:5]


def test_on_a_terminal_the_lines_are_for_people(tmp_path):
    config = write_config(tmp_path, dry_run=True)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "emergencyd.daemon.cli", "run", "--config", str(config)],
                            cwd=ROOT, env=base_env(), stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"emergencyd ready" not in seen and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.5)[0]:
                seen += os.read(controller, 65536)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        os.close(controller)
    line = next(text for text in seen.decode().splitlines() if "emergencyd ready" in text)
    assert not line.lstrip().startswith("{") and "[info" in line and "smtp=" in line, line
