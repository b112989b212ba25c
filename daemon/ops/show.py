"""`emergencyd show ID`: one message whole, for the on-call engineer: its envelope, its headers, the verdict
and why, how it relates to other mail, and every step with its attempts and errors. Read from the store alone:
it works with the daemon stopped."""
from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from typing import Any

from emergencyd.daemon.ops.status import message_document
from emergencyd.daemon.store.core import Store
from emergencyd.escalation.content import iso

HEADER_BYTES = 64 * 1024      # the header block of a mail is far smaller; a runaway one is cut here


def show_document(store: Store, pk: int) -> dict[str, Any]:
    """The message as `status --json` gives it, with its envelope and header fields; KeyError when unknown."""
    with store.snapshot():
        record = store.record(pk)
        raw = store.raw(pk)
    document = message_document(record)
    envelope = record.envelope
    document["envelope"] = {"source": envelope.source, "mail_from": envelope.mail_from,
                            "rcpt_to": list(envelope.rcpt_to), "peer": envelope.peer, "helo": envelope.helo,
                            "tls": envelope.tls}
    document["size"] = record.size
    document["retried_at"] = iso(record.retried_at)
    document["released_at"] = iso(record.released_at)
    document["headers"] = _headers(raw)
    return document


def _headers(raw: bytes) -> list[tuple[str, str]]:
    end = raw.find(b"\r\n\r\n")
    block = raw[:HEADER_BYTES if end < 0 else min(end + 4, HEADER_BYTES)]
    parsed = BytesHeaderParser(policy=default_policy).parsebytes(block)
    return [(name, " ".join(str(value).split())) for name, value in parsed.items()]


def render_show(document: dict[str, Any]) -> str:
    d, env = document, document["envelope"]
    lines = [f"message {d['id']}: {d['state']}, received {d['received_at']} UTC over {env['source']} "
             f"from {env['peer']} (HELO {env['helo']}, {'TLS' if env['tls'] else 'no TLS'}), {d['size']} bytes, "
             f"{d['deliveries']} deliver{'y' if d['deliveries'] == 1 else 'ies'}",
             f"  MAIL FROM: <{env['mail_from']}>  RCPT TO: {', '.join(f'<{r}>' for r in env['rcpt_to'])}",
             f"  dedup_key {d['dedup_key']}; ticket {d['ticket_id'] or '-'}; page key {d['page_key'] or '-'}; "
             f"paged at {d['paged_at'] or '-'}" + (f"; {d['incident_url']}" if d["incident_url"] else ""),
             "", "headers:"]
    lines += [f"  {name}: {value[:300]}" for name, value in d["headers"]]
    lines += ["", "decision:", f"  {d['decision'] or 'not decided yet'}"]
    if d["verdict"]:
        lines.append(f"  decided by: {d['verdict'].get('reason', '')[:300]}")
    if d["relation"]:
        lines.append(f"  relation: {d['relation']}: {d['relation_reason'] or ''}"
                     + (f" (message {d['parent_id']})" if d["parent_id"] else ""))
    if d["decide_error"]:
        lines.append(f"  deciding failed {d['decide_failures']} time(s): {d['decide_error'][:300]}")
    for label, key in (("released", "released_at"), ("retried", "retried_at")):
        if d[key]:
            lines.append(f"  {label} by hand at {d[key]} UTC")
    lines += ["", "steps:"]
    if not d["steps"]:
        lines.append("  none")
    for name, step in d["steps"].items():
        due = f", next attempt {step['next_attempt_at']} UTC" if step["next_attempt_at"] else ""
        lines.append(f"  {name}: {step['state']} after {step['attempts']} attempt(s){due}")
        if step["last_error"]:
            lines.append(f"    last error: {step['last_error'][:500]}")
    return "\n".join(lines)
