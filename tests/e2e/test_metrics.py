"""The metrics endpoint as Prometheus's own linter judges it."""
from __future__ import annotations

import json
import subprocess

from tests.harness import make_message, require_tool


def test_promtool_finds_nothing_to_complain_about(live_daemon, zendesk, pagerduty):
    promtool = require_tool("promtool")
    daemon = live_daemon(policy=True)
    daemon.send(make_message())
    daemon.wait_settled(1)
    status, text = daemon.http_get("/metrics")
    assert status == 200
    assert 'emergencyd_last_ingest_timestamp_seconds{source="smtp"} 1' in text   # a unix time, ~1.8e9
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr


def test_readyz_fails_once_an_integration_has_failed_past_its_threshold(live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True, metrics="integration_failing_seconds = 1")
    assert daemon.http_get("/readyz")[0] == 200
    pagerduty.set_down()
    daemon.send(make_message())

    def not_ready():
        status, body = daemon.http_get("/readyz")
        return status == 503 and json.loads(body)
    body = daemon.wait_for(not_ready, what="/readyz to fail on PagerDuty")
    assert body["checks"]["pagerduty"].startswith("failing for"), body
    assert body["checks"]["zendesk"] == "ok"
    metrics = daemon.http_get("/metrics")[1]
    assert 'emergencyd_ready_check{check="pagerduty"} 0.0' in metrics
    assert 'emergencyd_integration_failing_since_timestamp_seconds{integration="pagerduty"} 1' in metrics

    pagerduty.set_down(False)      # the retry succeeds: ready again, and the page went out once
    daemon.wait_for(lambda: daemon.http_get("/readyz")[0] == 200, what="/readyz to recover")
    daemon.wait_settled(1)
    assert len(pagerduty.incidents()) == 1
