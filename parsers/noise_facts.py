"""What the noise rules look at: the message plus the caller's context, with
derived evidence computed once per message, and the helpers the rules share
(subject folding and patterns, reason quoting). Pure, no I/O."""

from __future__ import annotations

import re
import unicodedata

from emergencyd.parsers.identity import is_null_envelope_sender, is_null_path
from emergencyd.parsers.message import ParsedMessage

# Bounds for what the rules look at: subjects and header values are already
# bounded by the parser; the body is only sampled for corroboration.
MAX_REASON_VALUE_CHARS = 80
MAX_BODY_SAMPLE_CHARS = 4096

COMMENT = re.compile(r"\([^()]*\)")
_PARAMETER = re.compile(r";\s*([A-Za-z0-9_.\-*]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^;\s]*)")


class _once:
    """functools.cached_property without the lock Python 3.11 takes on each first read (a microsecond
    each, nine reads a message): a Facts lives in one thread."""

    def __init__(self, work_out):
        self._work_out = work_out
        self.__doc__ = work_out.__doc__

    def __set_name__(self, owner, name: str) -> None:
        self._name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = instance.__dict__[self._name] = self._work_out(instance)
        return value


class Facts:
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
        values = self.headers(name)
        return values[0] if values else None

    def headers(self, name: str) -> tuple[str, ...]:
        """As ParsedMessage.header_values, from one pass over the headers: the rules ask for a dozen."""
        return self._by_name.get(name.strip().lower(), ())

    @_once
    def _by_name(self) -> dict[str, tuple[str, ...]]:
        grouped: dict[str, list[str]] = {}
        for key, value in self.parsed.headers:
            grouped.setdefault(key.lower(), []).append(value)
        return {key: tuple(values) for key, values in grouped.items()}

    @_once
    def content_type(self) -> str:
        """type/subtype, lower case."""
        return (self.parsed.content_type or "").partition(";")[0].strip().lower()

    @_once
    def report_type(self) -> str | None:
        """report-type of a multipart/report, lower case, unquoted."""
        if self.content_type != "multipart/report":
            return None
        value = _parameter(self.parsed.content_type, "report-type")
        return value.lower() if value is not None else None

    @_once
    def part_types(self) -> frozenset[str]:
        return frozenset((a.content_type or "").lower() for a in self.parsed.attachments)

    @_once
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
            value = re.sub(r"<[^<>]*>", " ", COMMENT.sub(" ", raw))
        value = value.strip().strip("\"'").strip().lower()
        return value if value and " " not in value else None

    @_once
    def sender_local_part(self) -> str:
        sender = self.sender or ""
        return sender.rpartition("@")[0] if "@" in sender else sender

    @_once
    def reverse_path(self) -> str | None:
        """The envelope sender, else the first Return-Path, lower case,
        without angle brackets ("" for the null reverse path)."""
        value = self.mail_from if self.mail_from is not None else self.header("Return-Path")
        if value is None:
            return None
        return COMMENT.sub("", value).strip().strip("<>").strip().lower()

    @_once
    def null_reverse_path(self) -> str | None:
        """The evidence of a null reverse path, or None."""
        if self.mail_from is not None:
            if is_null_envelope_sender(self.mail_from):
                return "null reverse path (MAIL FROM:<>)"
            return None
        return_path = self.header("Return-Path")
        if return_path is not None and is_null_path(return_path):
            return "null reverse path (Return-Path: <>)"
        return None

    @_once
    def subject(self) -> str:
        return fold(self.parsed.subject or "")

    @_once
    def auto_submitted(self) -> str | None:
        """The Auto-Submitted keyword without parameters or comments, lower
        case, or None when absent or "no"."""
        # ParsedMessage.headers stops after 200 fields; .auto_submitted does not.
        values = self.headers("Auto-Submitted") or (self.parsed.auto_submitted or "",)
        for value in values:
            keyword = COMMENT.sub(" ", value).split(";")[0].strip().lower()
            if keyword and keyword != "no":
                return keyword
        return None

    @_once
    def body_sample(self) -> str:
        return fold(self.parsed.text[:MAX_BODY_SAMPLE_CHARS])


def _parameter(content_type: str, name: str) -> str | None:
    """A Content-Type parameter, quoted or not (best effort; RFC 2231
    continuations do not occur for report-type)."""
    for key, value in _PARAMETER.findall(content_type):
        if key.lower() == name:
            if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            return value.strip()
    return None


def fold(text: str) -> str:
    """Case-folded, compatibility-normalised, without diacritics, with
    whitespace collapsed: "Réponse  automatique" -> "reponse automatique"."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


def subject_pattern(*alternatives: str) -> re.Pattern[str]:
    """Alternatives matched at the start of a folded subject, after any
    leading punctuation ("[Automatyczna odpowiedz] ..."). The pattern text
    is folded like the subject (diacritics dropped, compatibility forms
    normalised) but not case-folded, which would turn \\W into \\w."""
    return _folded_pattern("^\\W*(?:" + "|".join(alternatives) + ")")


def phrase_pattern(*alternatives: str) -> re.Pattern[str]:
    """Alternatives found anywhere in folded text, each starting a word (not
    inside one: "undeliverable", never "xundeliverable"); folded like
    subject_pattern. Japanese and Chinese, written without spaces, are found
    wherever they stand."""
    return _folded_pattern("(?<![a-z0-9])(?:" + "|".join(alternatives) + ")")


def _folded_pattern(source: str) -> re.Pattern[str]:
    decomposed = unicodedata.normalize("NFKD", source)
    return re.compile("".join(ch for ch in decomposed if not unicodedata.combining(ch)))


def quote(value: str) -> str:
    value = " ".join(value.split())
    if len(value) > MAX_REASON_VALUE_CHARS:
        value = value[: MAX_REASON_VALUE_CHARS - 3] + "..."
    return value


def subject_evidence(facts: Facts) -> str:
    return f"subject '{quote(facts.parsed.subject)}'"


# Amazon SES reports bounces and complaints to an SNS topic; an e-mail
# subscription of that topic receives them as JSON ("AWS Notification
# Message"). Only these two notification types are noise: the same SNS
# mail carries CloudWatch alarms, which a tenant may well route to us.
_SES_NOTIFICATION = re.compile(r'"(?:notificationtype|eventtype)"\s*:\s*"(bounce|complaint)"')


def ses_notification_type(facts: Facts) -> str | None:
    """The type of an Amazon SES notification mailed by SNS: bounce, complaint or None."""
    if facts.header("x-amz-sns-message-id") is None:
        return None
    match = _SES_NOTIFICATION.search(facts.body_sample)
    return match.group(1) if match else None
