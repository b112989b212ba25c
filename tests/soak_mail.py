"""The seeded mail of a soak run: incidents, other tenants' reports, replies, forwards and noise.

Every mail is P1 by the shipped policy (rule production-p1, whatever the time of day) or
noise, so what should page does not depend on when the run happens. Each incident has a
subject of its own: production-p1 is not platform-wide, so incidents group on category and
subject, and another tenant's report of the same subject joins the incident instead of
paging again.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from tests.harness import RECIPIENT

INCIDENT, REPORT, REPLY, FORWARD, BOUNCE, AUTO_REPLY = "incident", "report", "reply", "forward", "bounce", "auto-reply"
NOISE = (BOUNCE, AUTO_REPLY)
COMMENTS = (REPLY, FORWARD)
TICKETED = (INCIDENT, REPORT)
# Shares of the mix; replies and reports need an earlier incident, so the first mail opens one.
WEIGHTS = {INCIDENT: 25, REPORT: 12, REPLY: 28, FORWARD: 10, BOUNCE: 12, AUTO_REPLY: 13}
TENANTS = 8
SERVICES = ("checkout", "billing", "search", "login", "api", "payments", "reports", "uploads", "mobile-backend")


@dataclass(frozen=True)
class Mail:
    key: str                  # how the store names it: its Message-ID, or its subject when it has none
    kind: str
    raw: bytes
    mail_from: str            # envelope sender ("" for a bounce's null reverse path)
    incident: int             # the incident it is about (-1 for noise)
    parent: str | None = None  # the key of the mail it answers: sent only once that one was acknowledged

    @property
    def has_message_id(self) -> bool:
        return "@" in self.key


def plan(seed: int, count: int) -> list[Mail]:
    """`count` distinct mails, in the order they are first sent."""
    rng = random.Random(seed)
    mails: list[Mail] = []
    reporters: dict[int, set[int]] = {}      # incident -> tenants that reported it
    threads: list[Mail] = []                 # mails a reply can answer
    for n in range(count):
        kind = INCIDENT if not reporters else rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        if kind == REPORT:
            open_ = [i for i, tenants in reporters.items() if len(tenants) < TENANTS]
            kind = REPORT if open_ else INCIDENT
        if kind == INCIDENT:
            mail = incident_mail(seed, n, len(reporters), tenant=rng.randrange(TENANTS))
            reporters[mail.incident] = {int(mail.mail_from.split("tenant")[1].split(".")[0])}
        elif kind == REPORT:
            incident = rng.choice(open_)
            tenant = rng.choice([t for t in range(TENANTS) if t not in reporters[incident]])
            reporters[incident].add(tenant)
            mail = report_mail(seed, n, incident, tenant)
        elif kind in COMMENTS:
            mail = follow_up(seed, n, kind, rng.choice(threads[-40:]))
        else:
            mail = noise_mail(seed, n, kind, rng)
        mails.append(mail)
        if kind in TICKETED + COMMENTS:
            threads.append(mail)
    return mails


# Incidents are told apart by words: one sender's subjects that differ only in numbers are one loop.
CASE_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
              "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
              "whiskey", "xray", "yankee", "zulu")


def _subject(seed: int, incident: int) -> str:
    case = " ".join(CASE_WORDS[(incident // len(CASE_WORDS) ** i) % len(CASE_WORDS)] for i in range(2))
    return f"P1: {SERVICES[incident % len(SERVICES)]} outage in production (case {seed} {case})"


def _message(*, sender: str, subject: str, message_id: str | None, body: str, headers: str = "",
             content_type: str = "text/plain; charset=utf-8") -> bytes:
    mid = f"Message-ID: <{message_id}>\r\n" if message_id else ""
    return (f"From: {sender}\r\nTo: {RECIPIENT}\r\nSubject: {subject}\r\n{mid}"
            f"Date: Fri, 27 Nov 2026 02:15:00 +0000\r\nMIME-Version: 1.0\r\n{headers}"
            f"Content-Type: {content_type}\r\n\r\n{body}\r\n").encode()


def incident_mail(seed: int, n: int, incident: int, *, tenant: int) -> Mail:
    sender = f"ops@tenant{tenant}.example"
    mid = f"soak{seed}-{n}@tenant{tenant}.example"
    body = (f"Critical incident: our production {SERVICES[incident % len(SERVICES)]} service fails every request "
            f"since 02:10 UTC and we cannot resolve it without the platform team.\r\nCase {seed}-{incident}.")
    return Mail(mid, INCIDENT, _message(sender=sender, subject=_subject(seed, incident), message_id=mid, body=body),
                sender, incident)


def report_mail(seed: int, n: int, incident: int, tenant: int) -> Mail:
    sender = f"ops@tenant{tenant}.example"
    mid = f"soak{seed}-{n}@tenant{tenant}.example"
    body = (f"Critical incident on our side too: production {SERVICES[incident % len(SERVICES)]} fails for all "
            "our customers. Please call us.")
    return Mail(mid, REPORT, _message(sender=sender, subject=_subject(seed, incident), message_id=mid, body=body),
                sender, incident)


def follow_up(seed: int, n: int, kind: str, parent: Mail) -> Mail:
    """A reply by the parent's sender, or a forward by a colleague, threaded by In-Reply-To/References."""
    tenant_domain = parent.mail_from.split("@")[1]
    sender = parent.mail_from if kind == REPLY else f"lead{n % 3}@{tenant_domain}"
    mid = f"soak{seed}-{n}@{tenant_domain}"
    subject = ("Re: " if kind == REPLY else "Fwd: ") + _subject(seed, parent.incident)
    body = (f"Still failing here, any news? (update {n})" if kind == REPLY
            else f"Forwarding this to you, we see the same here. (note {n})")
    header = (f"In-Reply-To: <{parent.key}>\r\nReferences: <{parent.key}>\r\n" if kind == REPLY
              else f"References: <{parent.key}>\r\n")
    return Mail(mid, kind, _message(sender=sender, subject=subject, message_id=mid, body=body, headers=header),
                sender, parent.incident, parent=parent.key)


def noise_mail(seed: int, n: int, kind: str, rng: random.Random) -> Mail:
    tenant = rng.randrange(TENANTS)
    if kind == BOUNCE:
        mid = f"soak{seed}-{n}.bounce@mx.tenant{tenant}.example"
        boundary = f"b{seed}x{n}"
        body = (f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
                f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; "
                f"mx.tenant{tenant}.example\r\n\r\nFinal-Recipient: rfc822; gone{n}@tenant{tenant}.example\r\n"
                f"Action: failed\r\nStatus: 5.1.1\r\n--{boundary}--")
        raw = _message(sender=f"MAILER-DAEMON@mx.tenant{tenant}.example", message_id=mid, body=body,
                       subject="Undelivered Mail Returned to Sender",
                       content_type=f'multipart/report; report-type=delivery-status; boundary="{boundary}"')
        return Mail(mid, kind, raw, "", -1)
    # An auto-reply; every other one has no Message-ID, so the store knows it by its bytes.
    sender = f"ops@tenant{tenant}.example"
    mid = f"soak{seed}-{n}.ooo@tenant{tenant}.example" if n % 2 else None
    subject = f"Automatic reply: away until Monday [{seed}-{n}]"
    raw = _message(sender=sender, subject=subject, message_id=mid, headers="Auto-Submitted: auto-replied\r\n",
                   body="I am out of the office until Monday with limited access to email.")
    return Mail(mid or subject, kind, raw, sender, -1)
