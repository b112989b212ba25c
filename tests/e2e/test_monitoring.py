"""The alert rules: valid, unit-tested with promtool, and each one's runbook section exists."""
from __future__ import annotations

import re
import subprocess

from tests.harness import ROOT, require_tool

RULES = ROOT / "monitoring" / "emergencyd.rules.yml"
RULE_TESTS = ROOT / "monitoring" / "emergencyd.rules.test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=120,
                          cwd=RULES.parent)


def test_rules_are_valid():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_their_unit_tests():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_alert_is_unit_tested_and_has_a_runbook_section():
    rules = RULES.read_text()
    alerts = re.findall(r"- alert: (\w+)", rules)
    assert len(alerts) >= 10
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert set(alerts) <= tested, set(alerts) - tested
    sections = {line[3:].strip().lower() for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    for alert in alerts:   # runbook_url, the annotation Alertmanager's templates and Grafana link from
        assert f'runbook_url: "file:///opt/emergencyd/docs/runbook.md#{alert.lower()}"' in rules, alert
        assert alert.lower() in sections, alert
    assert "runbook:" not in rules
