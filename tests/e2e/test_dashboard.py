"""The Grafana dashboard: every panel queries metrics the daemon really exports, in valid PromQL."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.harness import ROOT, require_tool

DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"
INSTANCE_MATCHER = 'instance=~"$instance"'
METRIC = re.compile(r"\bemergencyd_[a-z0-9_]+")
# A metric name and the label matchers that follow it, if any.
SELECTOR = re.compile(r"\b(emergencyd_[a-z0-9_]+|up)\b(\{[^}]*\})?")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
# Grafana's own interval variables, and what stands in for them when promtool checks the syntax.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    """Every panel, including those inside collapsed rows."""
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(all_panels(panel.get("panels", [])))
    return found


def query_panels(dashboard: dict) -> list[dict]:
    return [p for p in all_panels(dashboard["panels"]) if p.get("type") != "row"]


def exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title and refId, expr) for every target."""
    return [(f"{p['title']} [{t['refId']}]", t["expr"]) for p in query_panels(dashboard) for t in p["targets"]]


def metric_types(exposition: str) -> dict[str, str]:
    """{family: type} from the `# TYPE` lines of a /metrics page."""
    types = {}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            types[name] = kind
    return types


def family_of(name: str, types: dict[str, str]) -> str:
    """A histogram's _bucket, _count and _sum series belong to the histogram; any other name is its own."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return base
    return name


@pytest.fixture
def exported(start_daemon) -> dict[str, str]:
    """{family: type} as a dry-run daemon exports them on /metrics."""
    daemon = start_daemon()
    assert daemon.http_get("/readyz")[0] == 200   # also sets emergencyd_ready_check
    status, text = daemon.http_get("/metrics")
    assert status == 200
    return metric_types(text)


def test_the_dashboard_has_its_datasource_and_instance_variables():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["datasource"]["uid"] == "${datasource}"
    assert instance["query"]["query"] == "label_values(emergencyd_build_info, instance)"


def test_every_panel_has_a_title_and_queries_through_the_datasource_variable():
    dashboard = load_dashboard()
    for panel in all_panels(dashboard["panels"]):
        assert panel.get("title", "").strip(), panel
    panels = query_panels(dashboard)
    assert len(panels) >= 20
    ids = [p["id"] for p in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel.get("targets"), f"{panel['title']}: no target"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target.get("expr", "").strip(), f"{panel['title']} [{target['refId']}]: no expr"


def test_every_selector_is_filtered_by_the_instance_variable():
    for where, expr in exprs(load_dashboard()):
        selectors = SELECTOR.findall(expr)
        assert selectors, f"{where}: no metric in {expr}"
        for name, matchers in selectors:
            assert INSTANCE_MATCHER in matchers, f"{where}: {name} lacks {INSTANCE_MATCHER} in {expr}"


def test_every_metric_on_the_dashboard_is_exported_and_every_exported_metric_is_shown(exported):
    used = set()
    for where, expr in exprs(load_dashboard()):
        for name in METRIC.findall(expr):
            family = family_of(name, exported)
            assert family in exported, f"{where}: {name} is not exported by the daemon"
            used.add(family)
    ours = {name for name in exported if name.startswith("emergencyd_")}
    assert ours - used == set(), f"exported but on no panel: {sorted(ours - used)}"


def test_every_expr_is_valid_promql(tmp_path):
    """promtool has no expression checker: it checks a rules file with one recording rule per expr."""
    promtool = require_tool("promtool")
    rules = []
    for number, (where, expr) in enumerate(exprs(load_dashboard())):
        concrete = GRAFANA_INTERVALS.sub("5m", expr.replace("$instance", ".*"))
        assert "$" not in concrete, f"{where}: a variable promtool cannot stand in for: {expr}"
        rules.append({"record": f"dashboard:expr_{number}", "expr": concrete})
        print(f"dashboard:expr_{number} = {where}")   # shown when the test fails, to map rule to panel
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=2))   # JSON is YAML
    result = subprocess.run([promtool, "check", "rules", str(path)], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout + result.stderr
