"""Logs: one JSON object per line, one event per state change, bounded, without secrets or bodies."""
from __future__ import annotations

import io
import json
import logging

from emergencyd.daemon.ops.logs import MAX_FIELD_CHARS, MAX_TRACEBACK_CHARS, formatter
from emergencyd.escalation.records import PAGE, StepOutcome
from tests.harness import SECRETS, log_records, make_message

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
