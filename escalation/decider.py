"""One decider: the verdict on a stored mail, from its envelope and its parsed form, for the daemon and
for `emergencyd classify` alike, so that the two cannot disagree.

The daemon classifies in a worker process (escalation/cpu_pool.py) and `classify` in its own process:
each passes the classify it has, and everything around it is decided here once: the receive time is
the envelope's, the envelope sender counts only when an SMTP client gave it, and the sender's trust
comes from the trusted header fields and, when configured, a DKIM check of the raw bytes.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Protocol

from emergencyd.escalation.dkim_check import decide_trust
from emergencyd.escalation.policy import Verdict
from emergencyd.escalation.records import Envelope
from emergencyd.escalation.trust import TrustPolicy
from emergencyd.parsers.auth_results import SenderTrust
from emergencyd.parsers.message import ParsedMessage
from emergencyd.parsers.spam_headers import SpamVerdict

INJECTED_PEER = "local"


class Classify(Protocol):
    async def __call__(self, parsed: ParsedMessage, *, received_at: datetime, mail_from: str | None,
                       trust: SenderTrust | None, spam: SpamVerdict | None = None,
                       released: bool = False) -> Verdict: ...


def injected(recipients: tuple[str, ...], received_at: float) -> Envelope:
    """The envelope of a file handed over by the operator (`inject`), and so of one `classify` reads: the
    first of our addresses as its recipient, no SMTP sender, no peer."""
    return Envelope(source="inject", mail_from="", rcpt_to=recipients[:1], peer=INJECTED_PEER,
                    received_at=received_at)


def policy_mail_from(envelope: Envelope) -> str | None:
    """The envelope sender counts only when an SMTP client gave it: `inject` and IMAP have none of their own."""
    return envelope.mail_from if envelope.source == "smtp" else None


async def decide_verdict(envelope: Envelope, parsed: ParsedMessage, trust_policy: TrustPolicy,
                         read_raw: Callable[[], Awaitable[bytes]], classify: Classify, *,
                         spam: SpamVerdict | None = None, released: bool = False) -> Verdict:
    """The policy's verdict, at the time the mail was received (not its Date header)."""
    trust = await decide_trust(envelope, parsed, trust_policy, read_raw)
    return await classify(parsed, **classify_arguments(envelope, trust, spam=spam, released=released))


def classify_arguments(envelope: Envelope, trust: SenderTrust | None, *, spam: SpamVerdict | None = None,
                       released: bool = False) -> dict[str, Any]:
    """What classify takes besides the parsed mail, for every caller (a worker deciding at once, too)."""
    return {"received_at": datetime.fromtimestamp(envelope.received_at, timezone.utc),
            "mail_from": policy_mail_from(envelope), "trust": trust, "spam": spam, "released": released}
