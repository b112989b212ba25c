"""Authentication-Results (RFC 8601) from our own MTA -> SenderTrust. Pure: headers in, data out.

Which header fields count. Anyone can write an Authentication-Results field into a
mail, including one that names our MTA's authserv-id. Header fields are prepended
hop by hop, so the fields our own MTA wrote are the ones at the top, above the
Received field it added when it took the mail from outside (RFC 8601 sections 4
and 7.1 ask MTAs to put them there). emergencyd therefore counts a field only
when both hold:

- its authserv-id is one of the configured trusted ids (compared without case);
- it sits in the topmost block: above the first Received field, or, for an MTA
  known to write its results just below its own Received line, above the
  (own_received_fields + 1)-th Received field, counted from the top.

A field with our id below that line (under a Received line from outside) is the
sender's own writing and is ignored, whatever it says. Within the block the
topmost result of each method wins, so a field slipped in below ours cannot
overrule it. A field without an authserv-id (Exchange Online writes such) can
never be attributed to our MTA, so it never counts. Whether the fields count at
all (the SMTP peer is our relay) is the caller's decision, not this module's.
"""
from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from emergencyd.parsers.relay_block import relay_block
from emergencyd.parsers.spam_headers import SpamVerdict, relay_spam_verdict

__all__ = ["AuthResults", "DkimCheck", "MethodResult", "SenderTrust", "from_domain", "parse_authentication_results",
           "sender_trust", "trusted_fields"]

MAX_VALUE_CHARS = 8 * 1024          # a real field is a few hundred characters
MAX_RESULTS = 50                    # resinfo items read from one field
MAX_FIELDS = 20                     # trusted fields read from one message
_KEY_VALUE = re.compile(r'([A-Za-z0-9_.\-/]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;"]+)')
_DMARC_POLICY = re.compile(r"\bp\s*=\s*([A-Za-z]+)")


@dataclass(frozen=True, slots=True)
class MethodResult:
    method: str                                  # lower-case: spf, dkim, dmarc, arc, iprev, ...
    result: str                                  # lower-case: pass, fail, none, softfail, temperror, ...
    properties: tuple[tuple[str, str], ...] = () # ("header.from", "example.com"), names lower-cased
    comment: str = ""                            # the comments inside this resinfo, joined

    def prop(self, name: str) -> str | None:
        return next((value for key, value in self.properties if key == name), None)


@dataclass(frozen=True, slots=True)
class AuthResults:
    authserv_id: str | None                      # None when the field names none (not attributable)
    results: tuple[MethodResult, ...]


@dataclass(frozen=True, slots=True)
class DkimCheck:
    """emergencyd's own DKIM verification: the best result over the signatures checked."""
    result: str                                  # pass | fail | permerror | temperror | none
    domains: tuple[str, ...] = ()                # d= of the signatures that passed
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SenderTrust:
    authserv_id: str | None          # the trusted MTA the results came from; None when no field counted
    spf: str | None                  # each method's result, None when not reported
    dkim: str | None
    dmarc: str | None
    dmarc_policy: str | None         # the From domain's published p= (none/quarantine/reject) when reported
    from_domain: str | None          # the one From address's domain; None when absent or ambiguous
    dkim_domains: tuple[str, ...]    # d= of passing DKIM signatures (reported and our own check)
    dkim_checked: str | None         # our own DKIM verification's result; None when not run
    verified: bool | None            # True: authenticated; False: DMARC failed; None: cannot tell
    reason: str                      # one line for humans
    relay_spam: SpamVerdict | None = None   # the relay's spam filter, when its fields count
    #                                         ([trust] relay_spam_headers)

    @property
    def outcome(self) -> str:
        return {True: "pass", False: "fail", None: "none"}[self.verified]

    def as_dict(self) -> dict[str, object]:
        return {"verified": self.verified, "outcome": self.outcome, "reason": self.reason,
                "from_domain": self.from_domain, "authserv_id": self.authserv_id, "spf": self.spf,
                "dkim": self.dkim, "dmarc": self.dmarc, "dmarc_policy": self.dmarc_policy,
                "dkim_domains": list(self.dkim_domains), "dkim_checked": self.dkim_checked}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> "SenderTrust":
        """As as_dict() wrote it (the relay's spam verdict is kept in the verdict's own field)."""
        return cls(authserv_id=stored.get("authserv_id"), spf=stored.get("spf"), dkim=stored.get("dkim"),
                   dmarc=stored.get("dmarc"), dmarc_policy=stored.get("dmarc_policy"),
                   from_domain=stored.get("from_domain"), dkim_domains=tuple(stored.get("dkim_domains") or ()),
                   dkim_checked=stored.get("dkim_checked"), verified=stored.get("verified"),
                   reason=stored.get("reason") or "")


# ---------------------------------------------------------------------------
# One field
# ---------------------------------------------------------------------------


def parse_authentication_results(value: str) -> AuthResults | None:
    """One field's value; None when it is not an Authentication-Results payload at all."""
    segments = _split_outside_quotes(value[:MAX_VALUE_CHARS])
    if not segments:
        return None
    head_text, _ = _strip_comments(segments[0])
    head = head_text.split()
    if not head:
        return None
    if "=" in head_text:                  # no authserv-id: the first segment is already a result
        authserv_id, rest = None, segments
    else:
        authserv_id, rest = _unquote(head[0]).lower(), segments[1:]
    results = tuple(r for r in (_resinfo(s) for s in rest[:MAX_RESULTS]) if r is not None)
    if authserv_id is None and not results:
        return None
    return AuthResults(authserv_id, results)


def _resinfo(segment: str) -> MethodResult | None:
    text, comment = _strip_comments(segment)
    pairs = _KEY_VALUE.findall(text)
    if not pairs:
        return None                       # "none", or garbage
    method, result = pairs[0]
    properties = tuple((key.lower(), _unquote(val)) for key, val in pairs[1:] if key.lower() != "reason")
    return MethodResult(method.split("/")[0].lower(), _unquote(result).lower(), properties, comment)


def _scan(text: str) -> Iterator[tuple[str, int, str]]:
    """Each character with the comment depth before it and its kind: plain, escape, escaped,
    quoted, open or close (a comment's parenthesis). Quoted strings and comments are RFC 5322's."""
    depth, quoted, escaped = 0, False, False
    for char in text:
        before, kind = depth, "plain"
        if escaped:
            escaped, kind = False, "escaped"
        elif char == "\\":
            escaped, kind = True, "escape"
        elif quoted:
            quoted, kind = char != '"', "quoted"
        elif char == '"' and depth == 0:
            quoted, kind = True, "quoted"
        elif char == "(":
            depth, kind = depth + 1, "open"
        elif char == ")" and depth:
            depth, kind = depth - 1, "close"
        yield char, before, kind


def _split_outside_quotes(value: str) -> list[str]:
    """Split on ';' outside quoted strings and comments."""
    parts: list[str] = []
    current: list[str] = []
    for char, depth, kind in _scan(value):
        if kind == "plain" and char == ";" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _strip_comments(text: str) -> tuple[str, str]:
    """(text without its (nested) comments, the comments' text); quoted strings are kept whole."""
    kept, comments = [], []
    for char, depth, kind in _scan(text):
        if kind == "open" and depth == 0:
            kept.append(" ")
        elif kind == "close" and depth == 1:
            comments.append(" ")
        else:
            (comments if depth else kept).append(char)
    return "".join(kept), " ".join("".join(comments).split())


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


# ---------------------------------------------------------------------------
# The message
# ---------------------------------------------------------------------------


def trusted_fields(headers: Sequence[tuple[str, str]], trusted_authserv_ids: Iterable[str], *,
                   own_received_fields: int = 0) -> list[AuthResults]:
    """The Authentication-Results fields that count, top first (see the module docstring)."""
    trusted = {i.strip().lower() for i in trusted_authserv_ids if i.strip()}
    found: list[AuthResults] = []
    for key, value in relay_block(headers, own_received_fields):
        if key == "authentication-results" and trusted:
            parsed = parse_authentication_results(value)
            if parsed is not None and parsed.authserv_id in trusted:
                found.append(parsed)
                if len(found) == MAX_FIELDS:
                    break
    return found


def from_domain(headers: Sequence[tuple[str, str]]) -> str | None:
    """The domain of the message's one From address: DMARC's subject. None when absent or ambiguous
    (two From fields, or a field with two addresses, cannot be authenticated)."""
    values = [value for name, value in headers if name.strip().lower() == "from"]
    if len(values) != 1:
        return None
    try:
        addresses = [addr for _, addr in email.utils.getaddresses(values) if addr]
    except Exception:
        return None
    if len(addresses) != 1 or addresses[0].count("@") != 1:
        return None
    domain = addresses[0].rsplit("@", 1)[1].strip().rstrip(".").lower()
    return domain if "." in domain and " " not in domain else None


def aligned(signing_domain: str, domain: str | None) -> bool:
    """Relaxed alignment, approximated without a public-suffix list: the same domain, or one a
    subdomain of the other, never a bare top-level domain."""
    d, f = signing_domain.strip().rstrip(".").lower(), (domain or "").lower()
    if not f or "." not in d:
        return False
    return d == f or f.endswith("." + d) or d.endswith("." + f)


def sender_trust(headers: Sequence[tuple[str, str]], trusted_authserv_ids: Iterable[str], *,
                 own_received_fields: int = 0, dkim: DkimCheck | None = None,
                 spam_headers: bool = False) -> SenderTrust:
    """What our own MTA (and our own DKIM check, when given) says about who sent the message, and
    with `spam_headers` what its spam filter says of the mail (parsers/spam_headers.py)."""
    domain = from_domain(headers)
    fields = trusted_fields(headers, trusted_authserv_ids, own_received_fields=own_received_fields)
    first: dict[str, MethodResult] = {}
    dkim_passes: list[str] = []
    for field in fields:
        for result in field.results:
            claimed = (result.prop("header.from") or "").strip().rstrip(".").lower()
            if result.method == "dmarc" and claimed and domain and claimed != domain:
                continue                  # about another From domain than this message's
            first.setdefault(result.method, result)
            if result.method == "dkim" and result.result == "pass":
                dkim_passes.append(_signing_domain(result))
    if dkim is not None:
        dkim_passes += list(dkim.domains)
    dkim_passes = [d for d in dict.fromkeys(dkim_passes) if d]
    dmarc = first.get("dmarc")
    dkim_result = "pass" if any(r.method == "dkim" and r.result == "pass" for f in fields for r in f.results) \
        else _result(first.get("dkim"))
    verified, reason = _verdict(domain, dmarc, dkim_passes, dkim, fields[0].authserv_id if fields else None)
    return SenderTrust(
        authserv_id=fields[0].authserv_id if fields else None, spf=_result(first.get("spf")), dkim=dkim_result,
        dmarc=_result(dmarc), dmarc_policy=_dmarc_policy(dmarc), from_domain=domain,
        dkim_domains=tuple(dkim_passes), dkim_checked=dkim.result if dkim is not None else None,
        verified=verified, reason=reason,
        relay_spam=relay_spam_verdict(headers, own_received_fields=own_received_fields) if spam_headers else None)


def _verdict(domain: str | None, dmarc: MethodResult | None, dkim_passes: list[str], dkim: DkimCheck | None,
             authserv_id: str | None) -> tuple[bool | None, str]:
    by = f" (reported by {authserv_id})" if authserv_id else ""
    if dmarc is not None and dmarc.result == "fail":
        return False, f"DMARC fail for {domain or 'the From domain'}{by}: the From address may be forged"
    if domain is None:
        return None, "no single From address to authenticate"
    if dmarc is not None and dmarc.result == "pass":
        return True, f"DMARC pass for {domain}{by}"
    signer = next((d for d in dkim_passes if aligned(d, domain)), None)
    if signer is not None:
        checked = " (checked by emergencyd)" if dkim is not None and signer in dkim.domains else by
        return True, f"DKIM pass for {domain}, signed by {signer}{checked}"
    if authserv_id is None and dkim is None:
        return None, "no Authentication-Results from a trusted authserv-id"
    summary = f"dmarc={dmarc.result}" if dmarc is not None else "no DMARC result"
    if dkim is not None:
        summary += f", own DKIM check {dkim.result}" + (f" ({dkim.detail})" if dkim.detail else "")
    return None, f"sender of {domain} not verified: {summary}{by}"


def _signing_domain(result: MethodResult) -> str:
    domain = result.prop("header.d")
    if not domain:
        identity = result.prop("header.i") or ""
        domain = identity.rpartition("@")[2]
    return domain.strip().rstrip(".").lower()


def _result(result: MethodResult | None) -> str | None:
    return result.result if result is not None else None


def _dmarc_policy(result: MethodResult | None) -> str | None:
    """The published policy, which OpenDMARC and Gmail put in a comment: '(p=reject dis=none)'."""
    if result is None:
        return None
    match = _DMARC_POLICY.search(result.comment) or (
        re.match(r"([a-z]+)$", result.prop("policy.dmarc") or ""))
    policy = match.group(1).lower() if match else None
    return policy if policy in ("none", "quarantine", "reject") else None
