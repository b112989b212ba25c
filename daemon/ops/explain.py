"""`emergencyd classify`: the policy's decision for each file, one JSON object per line.

The daemon's own decider (escalation/decider.py) on each file, as if it were handed over with
`emergencyd inject` (its envelope: no SMTP sender, the operator's own hands), with an injectable
receive time, so an operator can ask "what would happen to this mail at 02:00 on Boxing Day?".
"""
from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from emergencyd.daemon.config.model import Config
from emergencyd.daemon.store.backends import open_store, store_exists
from emergencyd.escalation.content import describe_verdict
from emergencyd.escalation.decider import decide_verdict, injected
from emergencyd.escalation.directory import kept_copy, with_directory
from emergencyd.escalation.policy import Verdict, classify
from emergencyd.escalation.rspamd import ask_rspamd_now
from emergencyd.escalation.trust import TrustPolicy
from emergencyd.parsers.message import ParsedMessage, parse_message
from emergencyd.parsers.spam_headers import SpamVerdict

KEYS = ("file", "suppressed", "reason", "category", "severity", "window", "page", "urgency", "zendesk_priority",
        "respond_by", "rules", "sender_trust", "page_held", "tenant", "stranger")


def receive_time(at: str | None, config: Config) -> datetime:
    """--at as ISO-8601; a time without an offset is local to the policy's time zone."""
    if at is None:
        return datetime.now(timezone.utc)
    when = datetime.fromisoformat(at)
    return when if when.tzinfo else when.replace(tzinfo=config.policy.calendar.zone)


def explain_file(path: Path, config: Config, received_at: datetime, *, offline: bool = False) -> dict[str, Any]:
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()     # `classify -`: a pipe
    except OSError as exc:
        return {"file": str(path), "error": f"cannot read: {exc.strerror}"}
    # As the daemon would: the configured rspamd is asked too, unless --offline.
    asked = ask_rspamd_now(raw, config.policy.spam) if config.policy.spam.enabled and not offline else None
    try:
        decided = asyncio.run(_decide(raw, config, received_at, asked.verdict if asked else None))
    except Exception as exc:   # a broken file gets an answer, never a traceback
        return {"file": str(path), "error": f"{type(exc).__name__}: {exc}"}
    verdict = decided.as_dict()
    result = {"file": str(path), **{k: verdict[k] for k in KEYS[1:]}}
    if asked is not None:
        result["rspamd"] = asked.outcome.value if asked.verdict is None else asked.verdict.as_dict()
    # No ticket (noise, say): no ticket subject or Zendesk priority either, which would read as if one were made.
    result["ticket_subject"] = verdict["ticket_subject"] if decided.ticket else None
    if not decided.ticket:
        result["zendesk_priority"] = None
    result["decision"] = describe_verdict(decided)
    return result


async def _decide(raw: bytes, config: Config, received_at: datetime, spam: SpamVerdict | None) -> Verdict:
    async def classify_here(parsed: ParsedMessage, **kwargs: Any) -> Verdict:
        return classify(parsed, own_addresses=config.own_addresses, own_hostnames=(config.smtp.hostname,),
                        policy=config.policy, **kwargs)

    async def read_raw() -> bytes:
        return raw

    envelope = injected(config.smtp.recipients, received_at.timestamp())
    return await decide_verdict(envelope, parse_message(raw), config.policy.trust, read_raw, classify_here,
                                spam=spam)


def kept_directory_in_force(config: Config) -> TrustPolicy:
    """The directory as the daemon decides with it: the config's, and the copy of Zendesk's kept in the store."""
    if not config.policy.trust.directory_from_zendesk or not store_exists(config.store):
        return config.policy.trust
    store = open_store(config.store)
    try:
        return with_directory(config.policy.trust, kept_copy(store, config.policy.trust))
    finally:
        store.close()


def write_text(result: dict[str, Any], out: TextIO) -> None:
    if "error" in result:
        out.write(f"{result['file']}: error: {result['error']}\n")
        return
    out.write(f"{result['file']}\n  {result['decision']}\n  decided by: {result['reason']}\n")
    if result.get("tenant"):
        out.write(f"  sender: {result['tenant']}\n")
    for hit in result["rules"]:
        line = f"rule {hit['rule']} matched {hit['matched']!r} in the {hit['field']}"
        if line != result["reason"]:          # the deciding rule is already the "decided by" line
            out.write(f"  {line}\n")
    out.write(f"  ticket subject: {result['ticket_subject']}\n" if result["ticket_subject"] is not None
              else "  no ticket\n")


def run_classify(config: Config, files: list[Path], at: str | None, text: bool, out: TextIO = sys.stdout,
                 *, offline: bool = False) -> int:
    try:
        received_at = receive_time(at, config)
    except ValueError:
        print(f"emergencyd: --at {at!r} is not an ISO-8601 time", file=sys.stderr)
        return 2
    config = replace(config, policy=replace(config.policy, trust=kept_directory_in_force(config)))
    errors = 0
    for path in files:
        result = explain_file(path, config, received_at, offline=offline)
        errors += "error" in result
        if text:
            write_text(result, out)
        else:
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
    return 1 if errors else 0
