"""Noise rules, auto-replies (RFC 3834): Auto-Submitted, the X-Autoreply
family, Precedence, and auto-responder subjects in many languages."""

from __future__ import annotations

from emergencyd.parsers.noise_facts import (
    COMMENT,
    Facts,
    quote,
    subject_evidence,
    subject_pattern,
)


def auto_submitted_header(facts: Facts) -> str | None:
    if facts.auto_submitted:
        return f"Auto-Submitted: {facts.auto_submitted}"
    return None


_NEGATIVE_VALUES = {"no", "false", "0", "off"}


def x_autoreply_header(facts: Facts) -> str | None:
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponse", "X-Autoresponder", "X-Auto-Reply"):
        value = facts.header(name)
        if value is not None and value.strip().lower() not in _NEGATIVE_VALUES:
            return f"{name}: {quote(value)}" if value.strip() else f"{name} header"
    return None


def precedence_header(facts: Facts) -> str | None:
    value = facts.header("Precedence") or facts.parsed.precedence
    if value is None:
        return None
    keyword = COMMENT.sub(" ", value).strip().lower()
    if keyword == "list":
        list_id = facts.header("List-Id")
        if list_id:
            return f"mailing list: Precedence: list with List-Id: {quote(list_id)}"
        return "mailing list: Precedence: list"
    if keyword in ("bulk", "junk", "auto_reply", "auto-reply"):
        return f"Precedence: {keyword}"
    return None


# Phrases that only an auto-responder puts at the start of a subject. Words
# a human might start a subject with ("Absence", "Out of office") must be
# followed by a colon, a dash, a parenthesis or the end of the subject.
_END = r"\s*(?:[-:(]|$)"
_AUTO_REPLY_SUBJECT = subject_pattern(
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


def auto_reply_subject(facts: Facts) -> str | None:
    if not _AUTO_REPLY_SUBJECT.match(facts.subject):
        return None
    return subject_evidence(facts)
