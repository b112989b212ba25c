"""Noise rules, bounces (non-delivery and delay notices, DSN, RFC 3464).

Three tiers, placed apart in the rule table (see parsers.noise): structural
evidence first, heuristic evidence after the explicit report types, and the
bare null reverse path last of all.
"""

from __future__ import annotations

import re

from emergencyd.parsers.noise_facts import (
    Facts,
    fold,
    quote,
    ses_notification_type,
    subject_evidence,
    subject_pattern,
)

# ---------------------------------------------------------------------------
# Structural evidence
# ---------------------------------------------------------------------------


def delivery_status_report(facts: Facts) -> str | None:
    if facts.report_type == "delivery-status":
        return "Content-Type multipart/report; report-type=delivery-status"
    return None


def delivery_status_part(facts: Facts) -> str | None:
    for part_type in ("message/delivery-status", "message/global-delivery-status"):
        if part_type in facts.part_types:
            return f"a {part_type} part"
    return None


def failed_recipients_header(facts: Facts) -> str | None:
    value = facts.header("X-Failed-Recipients")
    if value is not None:
        return f"X-Failed-Recipients: {quote(value)}"
    return None


def exchange_ndr_header(facts: Facts) -> str | None:
    value = facts.header("X-MS-Exchange-Message-Is-Ndr")
    if value is not None:
        return "X-MS-Exchange-Message-Is-Ndr header (Exchange non-delivery report)"
    return None


def ses_bounce_notification(facts: Facts) -> str | None:
    if ses_notification_type(facts) == "bounce":
        return 'Amazon SES bounce notification via SNS (x-amz-sns-message-id, "notificationType":"Bounce")'
    return None


# ---------------------------------------------------------------------------
# Heuristic evidence
# ---------------------------------------------------------------------------

_BOUNCE_LOCAL_PARTS = {"mailer-daemon", "mailer_daemon", "mailerdaemon", "postmaster"}


def mailer_daemon_sender(facts: Facts) -> str | None:
    local = facts.sender_local_part
    if local in _BOUNCE_LOCAL_PARTS:
        kind = local.upper() if "daemon" in local else local
        return f"sender {facts.sender} (a {kind} sender is treated as a bounce)"
    return None


# Subjects of non-delivery and delay notices (folded, see fold; the patterns
# are folded the same way): at the start of the subject here, anywhere in it
# for a notice's other evidence (parsers.noise_notices).
BOUNCE_SUBJECT_PHRASES = (
    r"undeliver(?:able|ed)\b|undelivered mail|non[- ]?deliver|not delivered",
    r"delivery (?:status notification|failure|failed|has failed|notification|problem|report|error|warning|delayed)",
    r"(?:mail|message) delivery (?:failed|failure|error|problem|report|status)",
    r"delivery failure|failure notice|failed delivery|returned mail|returned to sender|mail returned",
    r"mail system error|could not (?:be )?(?:sent|send|delivered|deliver)",
    r"warning: (?:could not send|message .{0,80} delayed|delayed mail)|delayed mail",
    r"message (?:delayed|not delivered|undeliverable|delivery)",
    r"(?:email |mail )?bounced? (?:notification|message|notice)",
    r"postmaster notify",
    # German, French, Spanish, Italian, Dutch, Polish, Portuguese, Nordic,
    # Czech, Japanese, Chinese
    r"unzustellbar|nicht zustellbar|zustellung fehlgeschlagen",
    r"non remis|non distribuable|échec de (?:la )?(?:remise|distribution)",
    r"no se puede entregar|no entregado|error de entrega",
    r"non recapitabile|mancato recapito|impossibile recapitare",
    r"onbestelbaar|niet bezorgd",
    r"niedostarczalne|niedostarczona|nie dostarczono",
    r"não (?:é possível entregar|entregue)|impossível entregar",
    r"kan ikke leveres|kunde inte levereras|ej levererat",
    r"nedoručitelné|nelze doručit",
    r"配信不能|配送不能|不達|配信エラー|メールエラー",
    r"退信|投递失败|无法投递",
)
_BOUNCE_SUBJECT = subject_pattern(*BOUNCE_SUBJECT_PHRASES)


_DAEMON_NAME = re.compile(
    r"mail delivery|mailer|postmaster|mail administrator|mail system|delivery (?:sub)?system|^system administrator$"
)
_DAEMON_LOCAL_PART = re.compile(r"daemon|bounce|mail-?delivery|^mailadmin|^no-?reply$|^do-?not-?reply$")


def _weak_bounce_signal(facts: Facts) -> str | None:
    """A second, weak sign of a machine-made notice, to corroborate a bounce
    subject. Deliberately not: an attached message/rfc822 (a tenant attaches
    the bounce they got) and body wording (a tenant reporting "Delivery
    failure for all outbound mail" uses exactly a bounce's words)."""
    if facts.null_reverse_path:
        return facts.null_reverse_path
    if facts.auto_submitted:
        return f"Auto-Submitted: {facts.auto_submitted}"
    if "text/rfc822-headers" in facts.part_types:
        return "a returned text/rfc822-headers part"
    if facts.content_type == "multipart/report":
        return "Content-Type multipart/report"
    name = facts.parsed.sender_name or ""
    if _DAEMON_NAME.search(fold(name)):
        return f"sender name '{quote(name)}'"
    if _DAEMON_LOCAL_PART.search(facts.sender_local_part):
        return f"sender {facts.sender}"
    reverse_path = facts.reverse_path
    if reverse_path and _DAEMON_LOCAL_PART.search(reverse_path.rpartition("@")[0] or reverse_path):
        return f"reverse path <{reverse_path}>"
    return None


def bounce_subject(facts: Facts) -> str | None:
    if not _BOUNCE_SUBJECT.match(facts.subject):
        return None
    signal = _weak_bounce_signal(facts)
    if signal is None:
        return None
    return f"{subject_evidence(facts)} with {signal}"


# ---------------------------------------------------------------------------
# The null reverse path alone (the table's last rule)
# ---------------------------------------------------------------------------


def null_reverse_path(facts: Facts) -> str | None:
    return facts.null_reverse_path
