"""The spam verdict the MTA in front wrote into the mail. Pure: headers in, data out.

Debian's rspamd milter writes `X-Spam: Yes` and `X-Spamd-Result: default: True [8.40 / 15.00];
SYMBOL(score)[options]; ...`; SpamAssassin (spamass-milter, amavis) writes `X-Spam-Flag: YES` and
`X-Spam-Status: Yes, score=7.1 required=5.0 tests=A,B autolearn=no`. A sender can write any of
them too. So a field counts only where Authentication-Results would (parsers/auth_results.py):
in the topmost block, above the first Received field, or above the (own_received_fields + 1)-th
for an MTA that writes its own Received line first. A sender's fields sit below the Received line
of the hop that took the mail from outside. Within the block any field that says spam makes the
mail suspected spam (a field below it cannot say otherwise), and the verdict keeps the one with a
score. Whether the block counts at all (the SMTP client is our relay) is the caller's decision.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from emergencyd.parsers.relay_block import relay_block

__all__ = ["SpamVerdict", "relay_spam_verdict"]

SPAM_FIELDS = ("x-spam-status", "x-spam-flag", "x-spamd-result", "x-spam")
MAX_SYMBOLS = 10                     # the verdict keeps the highest scoring ones, for the ticket's note
_SCORE = re.compile(r"\bscore=(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_REQUIRED = re.compile(r"\brequired=(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_TESTS = re.compile(r"\btests=([^\s,]+(?:\s*,\s*[^\s,]+)*)", re.IGNORECASE)   # folded lines leave ", " between
_SPAMD_HEAD = re.compile(r"^\s*[\w-]+\s*:\s*(true|false)\s*\[\s*(-?\d+(?:\.\d+)?)\s*/\s*(-?\d+(?:\.\d+)?)\s*\]",
                         re.IGNORECASE)
_SPAMD_SYMBOL = re.compile(r"^\s*([A-Z0-9_]+)\s*\(\s*(-?\d+(?:\.\d+)?)\s*\)")


@dataclass(frozen=True, slots=True)
class SpamVerdict:
    field: str                        # the field that decided, as its name is usually written
    spam: bool
    score: float | None = None
    required: float | None = None
    symbols: tuple[str, ...] = ()     # rspamd's symbols or SpamAssassin's tests, highest first when scored
    action: str | None = None         # rspamd's action, when rspamd was asked directly

    @property
    def reason(self) -> str:
        said = "spam" if self.spam else "not spam"
        if self.action is not None:
            said = f"{self.action!r}"
        score = "" if self.score is None else f", score {self.score:g}" + (
            "" if self.required is None else f" of {self.required:g}")
        symbols = f" ({', '.join(self.symbols[:5])})" if self.symbols else ""
        if self.action is not None:
            return f"rspamd says {said}{score}{symbols}"
        return f"the relay's spam filter says {said} in {self.field}{score}{symbols}"

    def as_dict(self) -> dict[str, object]:
        return {"field": self.field, "spam": self.spam, "score": self.score, "required": self.required,
                "symbols": list(self.symbols), "action": self.action, "reason": self.reason}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> "SpamVerdict":
        """As as_dict() wrote it (its reason is derived, not read)."""
        return cls(field=stored.get("field") or "", spam=bool(stored.get("spam")), score=stored.get("score"),
                   required=stored.get("required"), symbols=tuple(stored.get("symbols") or ()),
                   action=stored.get("action"))


def relay_spam_verdict(headers: Sequence[tuple[str, str]], *, own_received_fields: int = 0) -> SpamVerdict | None:
    """The verdict of the fields in the relay's block (see the module docstring); None without any."""
    verdicts: list[SpamVerdict] = []
    for key, value in relay_block(headers, own_received_fields):
        if key in SPAM_FIELDS:
            verdict = _PARSERS[key](value)
            if verdict is not None:
                verdicts.append(verdict)
    if not verdicts:
        return None
    said_spam = [v for v in verdicts if v.spam] or verdicts
    return next((v for v in said_spam if v.score is not None), said_spam[0])   # the one with details


def _yes_no(value: str) -> bool | None:
    word = value.strip().split(",", 1)[0].split(None, 1)[0].lower() if value.strip() else ""
    return {"yes": True, "no": False, "true": True, "false": False}.get(word)


def _x_spam_flag(value: str) -> SpamVerdict | None:
    spam = _yes_no(value)
    return None if spam is None else SpamVerdict("X-Spam-Flag", spam)


def _x_spam(value: str) -> SpamVerdict | None:
    spam = _yes_no(value)
    return None if spam is None else SpamVerdict("X-Spam", spam)


def _x_spam_status(value: str) -> SpamVerdict | None:
    spam = _yes_no(value)
    if spam is None:
        return None
    tests = _TESTS.search(value)
    symbols = tuple(t.strip() for t in tests.group(1).split(",") if t.strip())[:MAX_SYMBOLS] if tests else ()
    return SpamVerdict("X-Spam-Status", spam, _number(_SCORE.search(value)), _number(_REQUIRED.search(value)),
                       tuple(s for s in symbols if s.lower() != "none"))


def _x_spamd_result(value: str) -> SpamVerdict | None:
    head = _SPAMD_HEAD.match(value)
    if head is None:
        return None
    scored = []
    for part in value[head.end():].split(";"):
        symbol = _SPAMD_SYMBOL.match(part)
        if symbol:
            scored.append((float(symbol.group(2)), symbol.group(1)))
    scored.sort(key=lambda item: -item[0])
    return SpamVerdict("X-Spamd-Result", head.group(1).lower() == "true", float(head.group(2)),
                       float(head.group(3)), tuple(name for _, name in scored[:MAX_SYMBOLS]))


def _number(match: re.Match[str] | None) -> float | None:
    return float(match.group(1)) if match else None


_PARSERS = {"x-spam-flag": _x_spam_flag, "x-spam": _x_spam, "x-spam-status": _x_spam_status,
            "x-spamd-result": _x_spamd_result}
