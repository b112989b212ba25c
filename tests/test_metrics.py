"""The metrics endpoint as Prometheus's own linter judges it."""
from __future__ import annotations

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
