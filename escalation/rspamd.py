"""rspamd asked directly ([spam] rspamd_url): its scanner's HTTP protocol, POST /checkv2 with the message.

Asked once per message while it is parsed, in a thread of its own, and never waited on past
`timeout_seconds`: an emergency never waits on a spam filter. Down, slow, or answering what is not
its JSON, rspamd is simply not heard, the mail is decided without it, and the failure is counted
(emergencyd_spam_checks_total{outcome}). Its answer becomes a SpamVerdict (parsers/spam_headers.py):
"reject" is spam to suppress, "add header" and "rewrite subject" are suspected spam, "greylist"
and "no action" are not spam (a greylist needs a retrying MTA, which emergencyd is not).
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

import requests

from emergencyd.parsers.spam_headers import MAX_SYMBOLS, SpamVerdict

SPAM_ACTIONS = frozenset({"reject", "add header", "rewrite subject", "soft reject"})
KNOWN_ACTIONS = SPAM_ACTIONS | {"no action", "greylist"}
_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rspamd")


@dataclass(frozen=True)
class SpamCheck:
    """[spam]: where rspamd's scanner listens, and how long a decision may wait for it."""
    rspamd_url: str = ""               # e.g. http://127.0.0.1:11333; empty: not asked
    timeout_seconds: float = 2.0

    @property
    def enabled(self) -> bool:
        return bool(self.rspamd_url)


class CheckOutcome(StrEnum):
    ANSWERED = "answered"
    TIMEOUT = "timeout"                # no answer within timeout_seconds
    UNREACHABLE = "unreachable"        # refused, reset, or an HTTP error status
    GARBLED = "garbled"                # an answer that is not rspamd's JSON


@dataclass(frozen=True)
class CheckResult:
    outcome: CheckOutcome
    verdict: SpamVerdict | None = None
    detail: str = ""


async def ask_rspamd(raw: bytes, check: SpamCheck) -> CheckResult:
    """rspamd's verdict on the raw message, or why there is none; never raises, never waits past the timeout."""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(_THREADS, ask_rspamd_now, raw, check),
                                      check.timeout_seconds)
    except asyncio.TimeoutError:
        return CheckResult(CheckOutcome.TIMEOUT, detail=f"no answer within {check.timeout_seconds:g} s")


def ask_rspamd_now(raw: bytes, check: SpamCheck) -> CheckResult:
    """Blocking: for `emergencyd classify` and the thread above."""
    try:
        response = requests.post(check.rspamd_url.rstrip("/") + "/checkv2", data=raw,
                                 timeout=check.timeout_seconds, headers={"Content-Type": "message/rfc822"})
        response.raise_for_status()
    except requests.Timeout:
        return CheckResult(CheckOutcome.TIMEOUT, detail=f"no answer within {check.timeout_seconds:g} s")
    except requests.RequestException as exc:
        return CheckResult(CheckOutcome.UNREACHABLE, detail=type(exc).__name__)
    try:
        return CheckResult(CheckOutcome.ANSWERED, verdict_of(response.json()))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return CheckResult(CheckOutcome.GARBLED, detail=f"{type(exc).__name__}: {str(exc)[:100]}")


def verdict_of(answer: dict) -> SpamVerdict:
    """rspamd's /checkv2 JSON -> SpamVerdict; KeyError or ValueError when it is not that JSON."""
    action = answer["action"]
    if action not in KNOWN_ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    symbols = answer.get("symbols") or {}
    scored = sorted(((float(s.get("score", 0)), name) for name, s in symbols.items()), key=lambda item: -item[0])
    return SpamVerdict("rspamd", action in SPAM_ACTIONS, float(answer["score"]), float(answer["required_score"]),
                       tuple(name for _, name in scored[:MAX_SYMBOLS]), action=action)
