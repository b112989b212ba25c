"""The status page's HTML (daemon/ops/status_page.py): escaped, dry run shown, open incidents first."""
from datetime import datetime, timedelta, timezone

from emergencyd.daemon.ops.status_page import render_page
from emergencyd.escalation.records import PAGE, TICKET, EscalationState, StepState

HOSTILE = '<script>alert(1)</script><img src=x onerror=alert(2)>"\'&'
NOW = datetime(2026, 12, 4, 2, 30, tzinfo=timezone.utc)


def message(pk: int, *, subject: str, state: EscalationState, group: int | None, error: str | None = None,
            respond_by: datetime | None = None) -> dict:
    return {"id": pk, "received_at": (NOW - timedelta(minutes=20)).isoformat(timespec="seconds"),
            "sender": "ops@tenant.example", "subject": subject, "state": state, "group_id": group,
            "decision": "P1 (apps not served)", "suppressed_reason": None, "relation_reason": "a new incident",
            "ticket_id": 7 if group else None,
            "verdict": {"respond_by": respond_by.isoformat() if respond_by else None, "update_every_seconds": 3600},
            "steps": {TICKET: {"state": StepState.DONE, "last_error": None},
                      PAGE: {"state": StepState.FAILED if error else StepState.DONE, "last_error": error}}}


def document(*, dry_run: bool) -> dict:
    return {"dry_run": dry_run, "counts": {"pending": 1, "done": 1},
            "groups": [{"group_id": 2, "fingerprint": "x", "dedup_key": "k2", "reports": 1, "tenants": ["b"],
                        "problem_ticket_id": 9, "incident_ticket_ids": [], "incident_url": None},
                       {"group_id": 1, "fingerprint": "y", "dedup_key": "k1", "reports": 3, "tenants": ["a", "c"],
                        "problem_ticket_id": 7, "incident_ticket_ids": [8], "incident_url": "https://pd/incidents/1"}],
            "messages": [message(2, subject="Old and settled", state=EscalationState.DONE, group=2),
                         message(1, subject=HOSTILE, state=EscalationState.PENDING, group=1,
                                 error="HTTP 400: Invalid Routing Key", respond_by=NOW + timedelta(minutes=10))]}


def page(*, dry_run: bool = False) -> str:
    return render_page(document(dry_run=dry_run), {"store": "ok", "pagerduty": "failing for 400 s"},
                       {"mode": "dry run"} if dry_run else {}, zendesk_url="https://z.example", now=NOW.timestamp())


def test_a_tenants_subject_is_text_never_markup():
    html = page()
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;&quot;&#x27;&amp;" in html


def test_open_incidents_come_first_with_their_links_and_deadlines():
    html = page()
    assert html.index("&lt;script&gt;") < html.index("Old and settled")     # the open incident first
    assert 'href="https://z.example/agent/tickets/7"' in html and 'href="https://pd/incidents/1"' in html
    assert "respond by 02:40 UTC: in 10 min" in html and "next update due 03:10 UTC (in 40 min)" in html


def test_a_failed_step_shows_its_error_and_a_dry_run_its_banner():
    assert "HTTP 400: Invalid Routing Key" in page() and "failing for 400 s" in page()
    assert "id=dry-run" not in page() and "DRY RUN" in page(dry_run=True)
