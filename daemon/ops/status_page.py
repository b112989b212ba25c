"""The read-only status page at `/` ([metrics] status_page = true): what `emergencyd status` says, for a phone.

Open incidents first (reports, tenants, the ticket and PagerDuty links, the respond-by countdown and when the
next update is due), then the recent mail with its verdict, why, state and each step's last error, then the
daemon's own checks. Server-rendered, no script and no external asset (the page sends a Content-Security-Policy
that allows none), refreshing itself. Every value is escaped: a tenant's subject is hostile input.
"""
from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from typing import Any

from emergencyd.escalation.records import EscalationState, StepState

REFRESH_SECONDS = 15
MESSAGES_SHOWN = 50
# An incident is open while any of its mail is unfinished, or failed or stuck: each needs the on-call's eyes.
OPEN_STATES = (EscalationState.NEW, EscalationState.PENDING, EscalationState.FAILED, EscalationState.STUCK)

STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;padding:0 12px 24px;color:#111;background:#fafafa}
h1{font-size:20px;margin:12px 0}h2{font-size:17px;margin:18px 0 6px}
.banner{background:#b45309;color:#fff;padding:10px 12px;margin:0 -12px;font-weight:600}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 10px;margin:6px 0}
.late{color:#b91c1c;font-weight:600}.bad{color:#b91c1c}.ok{color:#15803d}.muted{color:#666;font-size:13px}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:3px 6px;border-bottom:1px solid #eee;
vertical-align:top}@media(max-width:700px){.wide{display:none}}
"""


def render_page(document: dict[str, Any], checks: dict[str, str], details: dict[str, str], *,
                zendesk_url: str, now: float) -> str:
    """The whole page, from `status_document`'s dict, the readiness checks and their details."""
    parts = ["<!doctype html><html lang=en><head><meta charset=utf-8>",
             '<meta name=viewport content="width=device-width,initial-scale=1">',
             f'<meta http-equiv=refresh content="{REFRESH_SECONDS}"><title>emergencyd status</title>',
             f"<style>{STYLE}</style></head><body>"]
    if document.get("dry_run"):
        parts.append('<div class=banner id=dry-run>DRY RUN: mail is taken and decided, nothing is sent to '
                     "Zendesk or PagerDuty</div>")
    parts.append(f"<h1>emergencyd</h1><p class=muted>{_e(_utc(now))} UTC; refreshes every {REFRESH_SECONDS} s; "
                 f"{_e(_counts(document['counts']))}</p>")
    parts += _incidents(document, zendesk_url, now)
    parts += _messages(document["messages"][:MESSAGES_SHOWN], zendesk_url)
    parts += _health(checks, details)
    parts.append("</body></html>")
    return "".join(parts)


def _incidents(document: dict[str, Any], zendesk_url: str, now: float) -> list[str]:
    by_group: dict[int, list[dict[str, Any]]] = {}
    for message in document["messages"]:
        if message["group_id"] is not None:
            by_group.setdefault(message["group_id"], []).append(message)
    open_groups = [g for g in document["groups"]
                   if any(m["state"] in OPEN_STATES for m in by_group.get(g["group_id"], []))]
    others = [g for g in document["groups"] if g not in open_groups]
    out = ["<h2>Incidents</h2>"]
    if not document["groups"]:
        out.append("<p class=muted>none</p>")
    for group in open_groups + others:
        members = sorted(by_group.get(group["group_id"], []), key=lambda m: m["id"])
        first = members[0] if members else None
        state = "open" if group in open_groups else "settled"
        links = [_ticket_link(zendesk_url, group["problem_ticket_id"], "problem ticket")]
        links += [_ticket_link(zendesk_url, t, "incident ticket") for t in group["incident_ticket_ids"] if t]
        if group["incident_url"]:
            links.append(f'<a href="{_e(group["incident_url"])}">PagerDuty incident</a>')
        out.append(f'<div class="card incident" data-state={state}><b>{_e((first or {}).get("subject") or "")}</b> '
                   f'<span class=muted>({state}; {group["reports"]} report(s) from {len(group["tenants"])} '
                   f'tenant(s): {_e(", ".join(group["tenants"]))})</span><br>'
                   f'{" · ".join(x for x in links if x)}<br>{_deadlines(first, now)}</div>')
    return out


def _deadlines(message: dict[str, Any] | None, now: float) -> str:
    verdict = (message or {}).get("verdict") or {}
    if not verdict.get("respond_by"):
        return ""
    respond_by = datetime.fromisoformat(verdict["respond_by"]).timestamp()
    left = respond_by - now
    text = f"respond by {_e(_utc(respond_by)[11:16])} UTC: " + (
        f"in {_minutes(left)}" if left >= 0 else f'<span class=late>{_minutes(-left)} late</span>')
    every = verdict.get("update_every_seconds")
    received = message["received_at"] if message else None
    if every and received:
        start = datetime.fromisoformat(received).replace(tzinfo=timezone.utc).timestamp()
        due = start + every * (int(max(now - start, 0) // every) + 1)
        text += f"; next update due {_e(_utc(due)[11:16])} UTC (in {_minutes(due - now)})"
    return text


def _messages(messages: list[dict[str, Any]], zendesk_url: str) -> list[str]:
    out = ["<h2>Recent mail</h2><table><tr><th>id</th><th class=wide>received (UTC)</th><th>sender</th>"
           "<th>subject</th><th>verdict, and why</th><th>state</th><th>steps</th></tr>"]
    for m in messages:
        steps = []
        for name, step in m["steps"].items():
            error = f': <span class=bad>{_e(step["last_error"][:300])}</span>' \
                if step["last_error"] and step["state"] != StepState.DONE else ""
            steps.append(f"{_e(name)} {_e(step['state'])}{error}")
        why = m["suppressed_reason"] or m["relation_reason"] or ""
        ticket = _ticket_link(zendesk_url, m["ticket_id"], f"#{m['ticket_id']}")
        out.append(f"<tr class=message data-id={m['id']}><td>{m['id']}</td>"
                   f"<td class=wide>{_e((m['received_at'] or '')[:19])}</td><td>{_e(m['sender'] or '')}</td>"
                   f"<td>{_e(m['subject'] or '')} {ticket}</td><td>{_e(m['decision'] or 'not decided yet')}"
                   f"<br><span class=muted>{_e(why)}</span></td><td>{_e(m['state'])}</td>"
                   f"<td>{'<br>'.join(steps)}</td></tr>")
    out.append("</table>")
    return out


def _health(checks: dict[str, str], details: dict[str, str]) -> list[str]:
    out = ["<h2>Health</h2><table>"]
    for name, result in sorted(checks.items()):
        cls = "ok" if result == "ok" else "bad"
        out.append(f"<tr><td>{_e(name)}</td><td class={cls}>{_e(result)}</td></tr>")
    for name, result in sorted(details.items()):
        out.append(f"<tr><td>{_e(name)}</td><td class=muted>{_e(result)}</td></tr>")
    out.append("</table>")
    return out


def _ticket_link(zendesk_url: str, ticket_id: int | None, label: str) -> str:
    if ticket_id is None:
        return ""
    return f'<a href="{_e(zendesk_url)}/agent/tickets/{int(ticket_id)}">{_e(label)}</a>'


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "no mail yet"


def _minutes(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _e(text: object) -> str:
    return escape(str(text), quote=True)
