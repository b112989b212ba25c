"""Noise rules, notices that no header marks: a mail system's failure notice, a mailing list's automatic notice.

Real mail servers, anti-virus and content-filter gateways and list servers send plain text/plain or
multipart/mixed notices with no report part, no null reverse path and no Auto-Submitted. No single weak
sign decides, because a tenant uses the same words ("our mails bounce and the site is down", a subject
"Delivery failure for all outbound mail" with a bounce pasted in). Two independent signs must agree:

* failure_notice (bounce): a mail system's sender (its From, display name or reverse path: postmaster,
  mailer-daemon, ndr, bounces, an anti-virus or content-filter gateway) with the notice's own machine wording
  anywhere in its text (an SMTP reply code, "could not be delivered to the following recipients", "user
  unknown", ...); or that wording opening the text, where a human starts with their own words, with a failure
  subject (in the languages mail servers use, RFC 2047-decoded, anywhere in the subject) or with the returned
  original (a message/rfc822 or text/rfc822-headers part, or the original quoted below a marker).
* list_notice: a mailing list's sender or List-* fields with a list server's wording ("awaits moderator
  approval", "you have been unsubscribed", ...).

The text read is the mail's own readable text (ParsedMessage.text), never an attached original: a tenant
forwarding a bounce keeps their own words above it, and the attached bounce does not speak for them.
"""

from __future__ import annotations

import re

from emergencyd.parsers.noise_bounces import BOUNCE_SUBJECT_PHRASES
from emergencyd.parsers.noise_facts import MAX_BODY_SAMPLE_CHARS, Facts, fold, phrase_pattern, quote

# How much of the text opens it: a notice says what it is in its first lines, a human says something else first.
OPENING_CHARS = 400

# Mail systems' names: local parts and display names, folded. A name alone decides nothing.
# Not "smtp" or "monitor": a tenant's relay monitoring that reports its outage must page.
_SYSTEM_LOCAL_PART = re.compile(
    r"mailer-?daemon|postmaster|^ndr\b|non-?deliver|bounces?\b|^mail-?delivery|^mailadmin|anti-?virus|anti-?spam"
    r"|content-?filter|mailscanner|mail-?gateway|^imss\b|interscan|^mdaemon\b|^mail-?system|^sysadmin$|^system$")
_SYSTEM_NAME = re.compile(
    r"mail delivery|mailer|postmaster|mail administrator|mail system|delivery (?:sub)?system|system administrator"
    r"|anti-?virus|virus scan|content filter|mail gateway|non-?delivery|mail security")
# How a person opens a report of their own trouble; a notice opens with what happened to "your message".
_HUMAN_OPENING = re.compile(r"\b(?:we|we're|we've|our|ours|us)\b|forwarded message")
# A person forwarding a notice: the forwarded-bounce rule answers them with a ticket.
_FORWARD_SUBJECT = re.compile(r"^\W*(?:fwd?|fw|wg|tr|rv|enc)\s*:")

# A failure notice's own wording (folded text: lower case, no diacritics, one space).
_FAILURE_WORDING = re.compile(
    r"(?<!\w)(?:[45]\d\d[ -][245]\.\d{1,3}\.\d{1,3}"                       # 550 5.1.1
    r"|smtp error code \d{3}|smtp error"
    r"|(?:could not|couldn't|cannot|can't|was not|wasn't|has not been|could not be) (?:be )?deliver(?:ed)? to"
    r"|(?:unable|failed) to deliver (?:the |your )?(?:message|mail)"
    r"|deliver(?:y|ing) to the following recipients? (?:failed|has failed|was unsuccessful)"
    r"|following (?:recipients?|address(?:es|\(es\))?) (?:failed|could not|was rejected|were rejected)"
    r"|failed recipients|permanent(?:ly)? (?:error|fatal errors?|failure)|message could not be delivered"
    r"|user unknown|unknown user|no such user|mailbox (?:unavailable|full|is full|not found|does not exist)"
    r"|quota exceeded|over quota|recipient address rejected|returned mail|returning (?:the )?message to sender"
    r"|delivery attempts will continue|(?:will|shall) continue to (?:try|attempt)|has not yet been delivered"
    r"|do not resend your original message|this is an automatically generated (?:delivery|message)"
    r"|this is an advisory-only (?:e-?mail|message)|(?:postponed|deferred|delayed) due to a full mailbox"
    # German, French, Spanish, Italian, Portuguese, Dutch, Polish
    r"|konnte nicht zugestellt werden|nicht zugestellt werden konnte|unzustellbar"
    r"|n'a pas pu (?:etre )?(?:delivre|remis|distribue)|n'a pas ete (?:delivre|remis|distribue)"
    r"|no (?:pudo|ha podido) ser entregado|no se (?:pudo|ha podido) entregar"
    r"|non (?:e stato|e stata|puo essere) recapitat[oa]|impossibile recapitare"
    r"|nao (?:pode|foi possivel) ser entregue|nao foi entregue"
    r"|kon niet worden (?:afgeleverd|bezorgd)|niet (?:afgeleverd|bezorgd) worden"
    r"|nie (?:moze|mogla|mogl|zostala|zostal) (?:byc )?dostarczon[aey])(?!\w)")

# Failure and warning subjects anywhere in the subject (a gateway may wrap them: "RE: ... : non remis"): the
# bounce subjects, and what a notice says besides.
_FAILURE_SUBJECT = phrase_pattern(
    *BOUNCE_SUBJECT_PHRASES,
    r"could not be delivered|error during delivery|(?:mail|message) delivery (?:warning|delayed)|送信エラー",
)

# A list server's wording, and a list's sender.
_LIST_WORDING = re.compile(
    r"(?<!\w)(?:awaits? moderator approval|awaiting moderator approval|held for moderation|is being held until the list"
    r"|you have been unsubscribed|you are now unsubscribed|your subscription to the .{1,80} (?:mailing )?list"
    r"|confirm your subscription|subscription request for|attend l'approbation du moderateur"
    r"|wartet auf die freigabe durch (?:den|einen) moderator|en espera de aprobacion del moderador"
    r"|in attesa di approvazione del moderatore)(?!\w)")
_LIST_LOCAL_PART = re.compile(r"-(?:bounces?|owner|request|admin)(?:\+|$)|^owner-|^(?:majordomo|listserv|mailman|"
                              r"sympa|ecartis|lyris)$")
_LIST_FIELDS = ("List-Id", "List-Unsubscribe", "List-Post", "List-Help", "X-Mailman-Version")


def system_sender(facts: Facts) -> str | None:
    """A mail system's From (address, local part or display name, read even when the address is malformed), else
    its reverse path."""
    raw_from = facts.header("From") or ""
    name = fold(facts.parsed.sender_name or "")
    if facts.sender_local_part and _SYSTEM_LOCAL_PART.search(facts.sender_local_part):
        return f"sender {facts.sender}"
    if name and _SYSTEM_NAME.search(name):
        return f"sender name '{quote(facts.parsed.sender_name or '')}'"
    if not facts.sender and _SYSTEM_NAME.search(fold(raw_from)):   # a From the address parser cannot split
        return f"sender '{quote(raw_from)}'"
    reverse = facts.reverse_path or ""
    if reverse and _SYSTEM_LOCAL_PART.search(_unbatv(reverse.rpartition("@")[0] or reverse)):
        return f"reverse path <{reverse}>"
    return None


def _unbatv(local_part: str) -> str:
    """A BATV-tagged reverse path (prvs=TAG=user, btv1==TAG==user) names its user last."""
    for marker in ("prvs=", "btv1=="):
        if local_part.startswith(marker):
            return re.split(r"=+", local_part)[-1]
    return local_part


def failure_wording(text: str) -> str | None:
    match = _FAILURE_WORDING.search(text)
    return f"the wording '{quote(match.group(0))}'" if match else None


def _opens_as_a_person(text: str) -> bool:
    """First-person words anywhere in the opening. A few notices speak so of their mail system ("We will continue
    to try to deliver your message") and page; "Your relay answers 554 5.7.1 to every message we submit" is a
    person, and a missed emergency costs more than a notice paged."""
    return _HUMAN_OPENING.search(text[:OPENING_CHARS]) is not None


def failure_notice(facts: Facts) -> str | None:
    # The cheap signs first: most mail has none, and its text is then never folded (classify's hot path).
    if _FORWARD_SUBJECT.match(facts.subject):
        return None
    sender = system_sender(facts)
    subject = _FAILURE_SUBJECT.search(facts.subject)
    original = returned_part(facts) or quoted_original(facts.parsed.text[:MAX_BODY_SAMPLE_CHARS].lower())
    if sender is None and subject is None and original is None:
        return None
    text = facts.body_sample
    wording = failure_wording(text)
    if wording is None or _opens_as_a_person(text):
        return None
    if sender is not None:
        return f"a mail system's failure notice: {sender} and {wording}"
    opening = failure_wording(text[:OPENING_CHARS])
    if opening is None:
        return None
    if subject is not None:
        return f"a failure notice: the subject names '{quote(subject.group(0))}' and its text opens with {opening}"
    return f"a failure notice: its text opens with {opening} and it returns {original}"


# A bounce's own markers above the mail it returns (ASCII, read in lower case; not a reply's "Original Message").
_QUOTED_ORIGINAL = re.compile(
    r"(?<!\w)(?:-+ ?(?:returned mail|this is a copy of the message)|below this line is a copy"
    r"|copy of (?:the|your) (?:original )?message(?: follows)?|original message follows)(?!\w)")


def returned_part(facts: Facts) -> str | None:
    """The mail that failed, sent back as a part of its own."""
    return next((f"a {t} part" for t in ("message/rfc822", "text/rfc822-headers") if t in facts.part_types), None)


# Every marker holds one of these: looked for first (C speed), the pattern only when one is there.
_QUOTED_ORIGINAL_WORDS = ("returned mail", "copy of", "original message follows")


def quoted_original(lower_text: str) -> str | None:
    """The mail that failed, quoted below the notice's marker."""
    if not any(word in lower_text for word in _QUOTED_ORIGINAL_WORDS):
        return None
    match = _QUOTED_ORIGINAL.search(lower_text)
    return f"the original below '{quote(match.group(0))}'" if match else None


def list_notice(facts: Facts) -> str | None:
    # A list's evidence first, so other mail's text is never folded here.
    field = next((name for name in _LIST_FIELDS if facts.header(name) is not None), None)
    who = next((who for who in (facts.sender_local_part, _unbatv((facts.reverse_path or "").rpartition("@")[0]))
                if who and _LIST_LOCAL_PART.search(who)), None)
    if field is None and who is None:
        return None
    text = facts.body_sample
    match = _LIST_WORDING.search(text) or _LIST_WORDING.search(facts.subject)
    if match is None or _opens_as_a_person(text):
        return None
    evidence = f"a {field} field" if field is not None else f"sender {who}"
    return f"a mailing list's notice: {evidence} and the wording '{quote(match.group(0))}'"
