"""Recognise mail that must never page anyone: bounces, auto-replies, read
receipts, ARF feedback reports and mail loops. Pure, no I/O, never raising.

``detect_noise`` walks an ordered table of ``(kind, predicate)`` rules, the
way Mailman walks a chain: the first predicate that returns a reason wins.
Each predicate is a small named function that looks at one kind of evidence
and returns a human-readable reason naming that evidence, or None.

The order of the table is the policy:

1. loop: our own address in X-Loop, a Received header "by" one of our own
   hostnames, or a From address that is one of our own addresses.
2. bounce, structural evidence: multipart/report with
   report-type=delivery-status, a message/delivery-status part,
   X-Failed-Recipients, Exchange's X-MS-Exchange-Message-Is-Ndr, an Amazon
   SES bounce notification mailed by SNS. These come before everything else
   (but loops) because many bounces also carry ``Auto-Submitted:
   auto-replied`` (Exim, Exchange).
3. feedback_report: report-type=feedback-report or a message/feedback-report
   part (ARF, RFC 5965), or an SES complaint notification mailed by SNS.
4. read_receipt: report-type=disposition-notification or a
   message/disposition-notification part (MDN, RFC 8098).
5. bounce, heuristic evidence: a MAILER-DAEMON or postmaster sender (as the
   spec says, even when a human writes from postmaster@; the reason says
   so), and a typical bounce subject corroborated by a second, weak signal
   (null reverse path, Auto-Submitted, a text/rfc822-headers part,
   multipart/report, a daemon-like sender name, local part or reverse path).
   These come after the explicit report types so that an ARF report or an
   MDN sent from postmaster@ keeps its precise kind; it is noise either way.
6. read_receipt by subject ("Read:", "Gelesen:", ...) corroborated by
   receipt-style evidence (Content-Class urn:content-classes:mdn, a null
   reverse path, Auto-Submitted, text/rfc822-headers, an Outlook TNEF body,
   "was read on" wording).
7. auto_reply: Auto-Submitted other than "no" (RFC 3834), X-Autoreply /
   X-Autorespond / X-Autoresponse, Precedence auto_reply/bulk/junk/list
   (naming a mailing list when List-Id is present), auto-reply subjects in
   many languages.
8. bounce, last: a null reverse path (``MAIL FROM:<>`` or ``Return-Path: <>``)
   with no other evidence. RFC 3834 auto-replies and RFC 8098 receipts use
   the null reverse path too, so it only means "bounce" once every more
   specific rule has declined.

Decisions, so they are not rediscovered:

* Subjects are matched at their start (after leading punctuation, as in
  "[Automatyczna odpowiedz]"), after decoding, Unicode NFKD normalisation,
  dropping diacritics and case folding. So a subject starting with "Re:",
  "AW:", "Fwd:" etc. never matches a subject rule: it is a human answering
  or forwarding ("Re: Automatic reply: ...", or "Fwd: Undeliverable: ..." -
  a tenant forwarding a bounce may well be reporting an emergency). Header
  rules still apply to such mail.
* The body never makes a message noise by itself: "I'm out of office
  tomorrow but our app is down" in a body is a human. It is read only to
  corroborate a read-receipt subject and for the JSON type of an SES
  notification. A bounce subject is not corroborated by body wording nor
  by an attached message/rfc822: a tenant writing "Delivery failure for all
  outbound mail" with a sample bounce attached is reporting an emergency.
* A From local part of MAILER-DAEMON or postmaster is a bounce by itself,
  as the spec says, even for a human writing from postmaster@ (the reason
  says "a postmaster sender is treated as a bounce").
* X-Auto-Response-Suppress is not evidence. It asks *recipients* not to
  auto-respond; Outlook puts it on ordinary meeting mail and ticket systems
  on ordinary notifications. Real Outlook/Exchange auto-replies also carry
  Auto-Submitted or an "Automatic reply:" subject, which decide.
* X-Precedence and X-Mailer are not evidence.
* ``mail_from`` is authoritative when known: "" (or "<>") is the null
  reverse path. Only when it is None (IMAP, inject) is ``Return-Path: <>``
  (the first Return-Path, the one the final delivery wrote) used instead.
  A caller that stores "" for "unknown" (``inject``) must pass None.
* ``own_hostnames`` must name hosts that only *our* outgoing path uses. The
  MX that delivers mail to us writes "by <mx>" on every message; listing it
  would make every message a loop.
* Should a predicate raise (a bug), it is skipped and the next rule is
  tried; should everything fail, the answer is None: paging for noise is
  the lesser harm than swallowing an emergency.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from parsers.message import ParsedMessage

__all__ = ["NOISE_KINDS", "RULES", "Noise", "detect_noise"]

NOISE_KINDS = ("loop", "bounce", "feedback_report", "read_receipt", "auto_reply")

# Bounds for what the rules look at: subjects and header values are already
# bounded by the parser; the body is only sampled for corroboration.
MAX_REASON_VALUE_CHARS = 80
MAX_BODY_SAMPLE_CHARS = 4096


@dataclass(frozen=True)
class Noise:
    kind: str  # one of NOISE_KINDS
    reason: str  # human-readable, names the evidence


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def detect_noise(
    parsed: ParsedMessage,
    *,
    mail_from: str | None,
    own_addresses: tuple[str, ...],
    own_hostnames: tuple[str, ...] = (),
) -> Noise | None:
    """The first rule of ``RULES`` that recognises ``parsed`` as noise, or
    None for mail a human should see. Never raises."""
    try:
        facts = _Facts(parsed, mail_from, own_addresses, own_hostnames)
    except Exception:
        return None
    for kind, predicate in RULES:
        try:
            reason = predicate(facts)
        except Exception:  # a bug in one rule must not silence the others
            continue
        if reason:
            return Noise(kind=kind, reason=reason)
    return None


# ---------------------------------------------------------------------------
# Facts derived once per message, lazily
# ---------------------------------------------------------------------------

_ADDRESS = re.compile(r"[^\s<>()\"',;:@\[\]]+@[A-Za-z0-9.\-\[\]:]+")
_COMMENT = re.compile(r"\([^()]*\)")
_PARAMETER = re.compile(r";\s*([A-Za-z0-9_.\-*]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^;\s]*)")
class _Facts:
    """The message plus caller context, with derived values computed at most
    once (several rules share them)."""

    def __init__(
        self,
        parsed: ParsedMessage,
        mail_from: str | None,
        own_addresses: tuple[str, ...],
        own_hostnames: tuple[str, ...],
    ) -> None:
        self.parsed = parsed
        self.mail_from = mail_from
        self.own_addresses = frozenset(a.strip().lower() for a in own_addresses or () if a and a.strip())
        self.own_hostnames = frozenset(
            h.strip().lower().rstrip(".") for h in own_hostnames or () if h and h.strip()
        )

    def header(self, name: str) -> str | None:
        return self.parsed.header(name)

    def headers(self, name: str) -> tuple[str, ...]:
        return self.parsed.header_values(name)

    @cached_property
    def content_type(self) -> str:
        """type/subtype, lower case."""
        return (self.parsed.content_type or "").partition(";")[0].strip().lower()

    @cached_property
    def report_type(self) -> str | None:
        """report-type of a multipart/report, lower case, unquoted."""
        if self.content_type != "multipart/report":
            return None
        value = _parameter(self.parsed.content_type, "report-type")
        return value.lower() if value is not None else None

    @cached_property
    def part_types(self) -> frozenset[str]:
        return frozenset((a.content_type or "").lower() for a in self.parsed.attachments)

    @cached_property
    def sender(self) -> str | None:
        """The From address, lower case. The parser drops a From without a
        domain: "MAILER-DAEMON", "MAILER-DAEMON <>" (DragonFly), "<MAILER-DAEMON>";
        those are read from the raw header (the address, else the name)."""
        if self.parsed.sender:
            return self.parsed.sender.strip().lower()
        raw = self.header("From")
        if raw is None:
            return None
        match = re.search(r"<([^<>]*)>", raw)
        if match and match.group(1).strip():
            value = match.group(1)
        else:
            value = re.sub(r"<[^<>]*>", " ", _COMMENT.sub(" ", raw))
        value = value.strip().strip("\"'").strip().lower()
        return value if value and " " not in value else None

    @cached_property
    def sender_local_part(self) -> str:
        sender = self.sender or ""
        return sender.rpartition("@")[0] if "@" in sender else sender

    @cached_property
    def reverse_path(self) -> str | None:
        """The envelope sender, else the first Return-Path, lower case,
        without angle brackets ("" for the null reverse path)."""
        value = self.mail_from if self.mail_from is not None else self.header("Return-Path")
        if value is None:
            return None
        return _COMMENT.sub("", value).strip().strip("<>").strip().lower()

    @cached_property
    def null_reverse_path(self) -> str | None:
        """The evidence of a null reverse path, or None."""
        if self.mail_from is not None:
            if self.mail_from.strip() in ("", "<>"):
                return "null reverse path (MAIL FROM:<>)"
            return None
        return_path = self.header("Return-Path")
        if return_path is not None and _COMMENT.sub("", return_path).replace(" ", "") in ("<>", ""):
            return "null reverse path (Return-Path: <>)"
        return None

    @cached_property
    def subject(self) -> str:
        return _fold(self.parsed.subject or "")

    @cached_property
    def auto_submitted(self) -> str | None:
        """The Auto-Submitted keyword without parameters or comments, lower
        case, or None when absent or "no"."""
        # ParsedMessage.headers stops after 200 fields; .auto_submitted does not.
        values = self.headers("Auto-Submitted") or (self.parsed.auto_submitted or "",)
        for value in values:
            keyword = _COMMENT.sub(" ", value).split(";")[0].strip().lower()
            if keyword and keyword != "no":
                return keyword
        return None

    @cached_property
    def body_sample(self) -> str:
        return _fold(self.parsed.text[:MAX_BODY_SAMPLE_CHARS])


def _parameter(content_type: str, name: str) -> str | None:
    """A Content-Type parameter, quoted or not (best effort; RFC 2231
    continuations do not occur for report-type)."""
    for key, value in _PARAMETER.findall(content_type):
        if key.lower() == name:
            if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            return value.strip()
    return None


def _fold(text: str) -> str:
    """Case-folded, compatibility-normalised, without diacritics, with
    whitespace collapsed: "Réponse  automatique" -> "reponse automatique"."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


def _subject_pattern(*alternatives: str) -> re.Pattern[str]:
    """Alternatives matched at the start of a folded subject, after any
    leading punctuation ("[Automatyczna odpowiedz] ..."). The pattern text
    is folded like the subject (diacritics dropped, compatibility forms
    normalised) but not case-folded, which would turn \\W into \\w."""
    source = "^\\W*(?:" + "|".join(alternatives) + ")"
    decomposed = unicodedata.normalize("NFKD", source)
    return re.compile("".join(ch for ch in decomposed if not unicodedata.combining(ch)))


def _quote(value: str) -> str:
    value = " ".join(value.split())
    if len(value) > MAX_REASON_VALUE_CHARS:
        value = value[: MAX_REASON_VALUE_CHARS - 3] + "..."
    return value


def _subject_evidence(facts: _Facts) -> str:
    return f"subject '{_quote(facts.parsed.subject)}'"


# ---------------------------------------------------------------------------
# 1. Loops
# ---------------------------------------------------------------------------


def x_loop_names_own_address(facts: _Facts) -> str | None:
    if not facts.own_addresses:
        return None
    for value in facts.headers("X-Loop"):
        candidates = {m.lower() for m in _ADDRESS.findall(value)} | {value.strip().strip("<>").lower()}
        for address in sorted(candidates & facts.own_addresses):
            return f"X-Loop names {address}"
    return None


_RECEIVED_BY = re.compile(r"(?:^|[\s;)])by\s+\[?([A-Za-z0-9][A-Za-z0-9.\-:_]*)", re.IGNORECASE)


def received_by_own_host(facts: _Facts) -> str | None:
    if not facts.own_hostnames:
        return None
    for value in facts.headers("Received"):
        for host in _RECEIVED_BY.findall(value):
            host = host.lower().rstrip(".]")
            if host in facts.own_hostnames:
                return f"Received header 'by {host}': the message already passed through us"
    return None


def sent_from_own_address(facts: _Facts) -> str | None:
    if facts.sender and facts.sender in facts.own_addresses:
        return f"From is our own address {facts.sender}"
    return None


# ---------------------------------------------------------------------------
# 2. Bounces: structural evidence
# ---------------------------------------------------------------------------


def delivery_status_report(facts: _Facts) -> str | None:
    if facts.report_type == "delivery-status":
        return "Content-Type multipart/report; report-type=delivery-status"
    return None


def delivery_status_part(facts: _Facts) -> str | None:
    for part_type in ("message/delivery-status", "message/global-delivery-status"):
        if part_type in facts.part_types:
            return f"a {part_type} part"
    return None


def failed_recipients_header(facts: _Facts) -> str | None:
    value = facts.header("X-Failed-Recipients")
    if value is not None:
        return f"X-Failed-Recipients: {_quote(value)}"
    return None


def exchange_ndr_header(facts: _Facts) -> str | None:
    value = facts.header("X-MS-Exchange-Message-Is-Ndr")
    if value is not None:
        return "X-MS-Exchange-Message-Is-Ndr header (Exchange non-delivery report)"
    return None


# Amazon SES reports bounces and complaints to an SNS topic; an e-mail
# subscription of that topic receives them as JSON ("AWS Notification
# Message"). Only these two notification types are noise: the same SNS
# mail carries CloudWatch alarms, which a tenant may well route to us.
_SES_NOTIFICATION = re.compile(r'"(?:notificationtype|eventtype)"\s*:\s*"(bounce|complaint)"')


def _ses_notification_type(facts: _Facts) -> str | None:
    if facts.header("x-amz-sns-message-id") is None:
        return None
    match = _SES_NOTIFICATION.search(facts.body_sample)
    return match.group(1) if match else None


def ses_bounce_notification(facts: _Facts) -> str | None:
    if _ses_notification_type(facts) == "bounce":
        return 'Amazon SES bounce notification via SNS (x-amz-sns-message-id, "notificationType":"Bounce")'
    return None


# ---------------------------------------------------------------------------
# 3. Feedback reports (ARF) and 4. read receipts (MDN): structural evidence
# ---------------------------------------------------------------------------


def feedback_report(facts: _Facts) -> str | None:
    if facts.report_type == "feedback-report":
        return "Content-Type multipart/report; report-type=feedback-report (ARF)"
    if "message/feedback-report" in facts.part_types:
        return "a message/feedback-report part (ARF)"
    return None


def ses_complaint_notification(facts: _Facts) -> str | None:
    if _ses_notification_type(facts) == "complaint":
        return 'Amazon SES complaint notification via SNS (x-amz-sns-message-id, "notificationType":"Complaint")'
    return None


def disposition_notification(facts: _Facts) -> str | None:
    if facts.report_type == "disposition-notification":
        return "Content-Type multipart/report; report-type=disposition-notification (MDN)"
    for part_type in ("message/disposition-notification", "message/global-disposition-notification"):
        if part_type in facts.part_types:
            return f"a {part_type} part (MDN)"
    return None


# ---------------------------------------------------------------------------
# 5. Bounces: heuristic evidence
# ---------------------------------------------------------------------------

_BOUNCE_LOCAL_PARTS = {"mailer-daemon", "mailer_daemon", "mailerdaemon", "postmaster"}


def mailer_daemon_sender(facts: _Facts) -> str | None:
    local = facts.sender_local_part
    if local in _BOUNCE_LOCAL_PARTS:
        return f"sender {facts.sender} (a {local.upper() if 'daemon' in local else local} sender is treated as a bounce)"
    return None


# Subjects of non-delivery and delay notices, matched at the start of the
# folded subject (see _fold; the patterns are folded the same way).
_BOUNCE_SUBJECT = _subject_pattern(
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


_DAEMON_NAME = re.compile(
    r"mail delivery|mailer|postmaster|mail administrator|mail system|delivery (?:sub)?system|^system administrator$"
)
_DAEMON_LOCAL_PART = re.compile(r"daemon|bounce|mail-?delivery|^mailadmin|^no-?reply$|^do-?not-?reply$")


def _weak_bounce_signal(facts: _Facts) -> str | None:
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
    if _DAEMON_NAME.search(_fold(name)):
        return f"sender name '{_quote(name)}'"
    if _DAEMON_LOCAL_PART.search(facts.sender_local_part):
        return f"sender {facts.sender}"
    reverse_path = facts.reverse_path
    if reverse_path and _DAEMON_LOCAL_PART.search(reverse_path.rpartition("@")[0] or reverse_path):
        return f"reverse path <{reverse_path}>"
    return None


def bounce_subject(facts: _Facts) -> str | None:
    if not _BOUNCE_SUBJECT.match(facts.subject):
        return None
    signal = _weak_bounce_signal(facts)
    if signal is None:
        return None
    return f"{_subject_evidence(facts)} with {signal}"


# ---------------------------------------------------------------------------
# 6. Read receipts by subject
# ---------------------------------------------------------------------------

_RECEIPT_SUBJECT = _subject_pattern(
    r"(?:read|gelesen|lu|leído|letto|gelezen|lido|przeczytan[ay]|lest|läst|luettu|přečteno)\s*(?::|$)",
    r"return receipt|read receipt|read notification|lesebestätigung|accusé de (?:réception|lecture)",
    r"confirmación de lectura|conferma di lettura|leesbevestiging",
    r"(?:message )?disposition notification",
    r"開封済み|已读",
)


_RECEIPT_WORDING = re.compile(
    r"\bwas read on\b|\bdisposition: (?:manual|automatic)-action|\boriginal-message-id:|\bwurde am .{0,80} gelesen"
)


def _receipt_evidence(facts: _Facts) -> str | None:
    content_class = facts.header("Content-Class")
    if content_class and "mdn" in content_class.lower():
        return f"Content-Class: {_quote(content_class)}"
    if facts.null_reverse_path:
        return facts.null_reverse_path
    if facts.auto_submitted:
        return f"Auto-Submitted: {facts.auto_submitted}"
    if "text/rfc822-headers" in facts.part_types:
        return "a text/rfc822-headers part"
    if facts.content_type == "application/ms-tnef" or "application/ms-tnef" in facts.part_types:
        return "an Outlook TNEF (winmail.dat) body"
    if _RECEIPT_WORDING.search(facts.body_sample):
        return "read-notification wording in the body"
    return None


def read_receipt_subject(facts: _Facts) -> str | None:
    if not _RECEIPT_SUBJECT.match(facts.subject):
        return None
    evidence = _receipt_evidence(facts)
    if evidence is None:
        return None
    return f"{_subject_evidence(facts)} with {evidence}"


# ---------------------------------------------------------------------------
# 7. Auto-replies
# ---------------------------------------------------------------------------


def auto_submitted_header(facts: _Facts) -> str | None:
    if facts.auto_submitted:
        return f"Auto-Submitted: {facts.auto_submitted}"
    return None


_NEGATIVE_VALUES = {"no", "false", "0", "off"}


def x_autoreply_header(facts: _Facts) -> str | None:
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponse", "X-Autoresponder", "X-Auto-Reply"):
        value = facts.header(name)
        if value is not None and value.strip().lower() not in _NEGATIVE_VALUES:
            return f"{name}: {_quote(value)}" if value.strip() else f"{name} header"
    return None


def precedence_header(facts: _Facts) -> str | None:
    value = facts.header("Precedence") or facts.parsed.precedence
    if value is None:
        return None
    keyword = _COMMENT.sub(" ", value).strip().lower()
    if keyword == "list":
        list_id = facts.header("List-Id")
        if list_id:
            return f"mailing list: Precedence: list with List-Id: {_quote(list_id)}"
        return "mailing list: Precedence: list"
    if keyword in ("bulk", "junk", "auto_reply", "auto-reply"):
        return f"Precedence: {keyword}"
    return None


# Phrases that only an auto-responder puts at the start of a subject. Words
# a human might start a subject with ("Absence", "Out of office") must be
# followed by a colon, a dash, a parenthesis or the end of the subject.
_END = r"\s*(?:[-:(]|$)"
_AUTO_REPLY_SUBJECT = _subject_pattern(
    r"auto(?:matic|matische|matisch)?[- ]?(?:reply|respons|antwort|answer)",
    r"auto:",  # Lotus Notes "AUTO: Smith, John is out of the office"
    r"out of (?:the )?office(?:" + _END + r"|\s*(?:auto|reply|until|till|notice|notification|message|response))",
    r"(?:i am|i'm|i will be) (?:currently )?(?:out of (?:the )?office|away|on (?:vacation|holiday|leave))",
    r"on (?:vacation|holiday|leave)" + _END + r"|vacation(?:" + _END + r"|\s*(?:reply|response|message|notice))",
    r"away from (?:the |my )?(?:office|desk|e-?mail)|office closed" + _END,
    r"abwesenheitsnotiz|abwesenheit" + _END + r"|automatische antwort|nicht im büro",
    r"réponse automatique|absence(?:" + _END + r"|\s*du bureau|\s*prolongée)|absente? du bureau",
    r"respuesta automática|fuera de (?:la )?oficina|ausente" + _END,
    r"risposta automatica|fuori (?:ufficio|sede)",
    r"automatisch antwoord|afwezig" + _END,
    r"automatyczna odpowiedź|nieobecność" + _END,
    r"resposta automática|ausência" + _END + r"|fora do escritório",
    r"autosvar|automatisk svar|fravær" + _END + r"|frånvaro" + _END,
    r"automaattinen vastaus|poissa" + _END,
    r"automatická odpověď|automatikus válasz|otomatik (?:yanıt|cevap)",
    r"автоматический ответ|автоответ|αυτόματη απάντηση",
    r"自動応答|自動返信|自动回复|自動回覆|不在通知|자동 ?응답",
)


def auto_reply_subject(facts: _Facts) -> str | None:
    if not _AUTO_REPLY_SUBJECT.match(facts.subject):
        return None
    return _subject_evidence(facts)


# ---------------------------------------------------------------------------
# 8. Bounces: the null reverse path alone
# ---------------------------------------------------------------------------


def null_reverse_path(facts: _Facts) -> str | None:
    return facts.null_reverse_path


# ---------------------------------------------------------------------------
# The rule table: order is policy (see the module docstring)
# ---------------------------------------------------------------------------

Predicate = Callable[[_Facts], str | None]

RULES: tuple[tuple[str, Predicate], ...] = (
    ("loop", x_loop_names_own_address),
    ("loop", received_by_own_host),
    ("loop", sent_from_own_address),
    ("bounce", delivery_status_report),
    ("bounce", delivery_status_part),
    ("bounce", failed_recipients_header),
    ("bounce", exchange_ndr_header),
    ("bounce", ses_bounce_notification),
    ("feedback_report", feedback_report),
    ("feedback_report", ses_complaint_notification),
    ("read_receipt", disposition_notification),
    ("bounce", mailer_daemon_sender),
    ("bounce", bounce_subject),
    ("read_receipt", read_receipt_subject),
    ("auto_reply", auto_submitted_header),
    ("auto_reply", x_autoreply_header),
    ("auto_reply", precedence_header),
    ("auto_reply", auto_reply_subject),
    ("bounce", null_reverse_path),
)
