"""Coverage-guided fuzzing of the parse and classify path with atheris (libFuzzer).

Each input is a raw message. It goes through the same pipeline and the same
checks as the Hypothesis property tests (tests/unit/test_properties.py): message
identity, parse_message, classify with the shipped policy, grouping and the
ticket and page texts, all within their bounds. Any exception or failed check
is a finding: libFuzzer stops and writes the input to a crash file.

    python -m tests.fuzz_parser [libFuzzer flags] [CORPUS_DIR ...]

The project's own fixtures (tests/fixtures) always seed the run, and are never
written to. libFuzzer keeps the new inputs it finds in the first corpus
directory given, if any (`make fuzz` gives var/fuzz/corpus).

Besides libFuzzer's byte mutations, a custom mutator works on the shape of
mail: it mutates the header block or the body alone, adds, drops, repeats or
swaps lines, and inserts MIME and header tokens, so mutations stay mail-like
enough to reach the deeper MIME paths.
"""
from __future__ import annotations

import random
import sys
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["parsers", "escalation", "mailparser"]):
    import emergencyd.escalation.policy  # noqa: F401
    import emergencyd.parsers.identity  # noqa: F401
    import emergencyd.parsers.message  # noqa: F401
    import emergencyd.parsers.noise  # noqa: F401
    import emergencyd.parsers.subject  # noqa: F401
    import emergencyd.parsers.text  # noqa: F401

# Imported after the instrumented modules, so the checks themselves stay uninstrumented.
from tests.unit.test_properties import run_pipeline  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Envelopes as the daemon sees them: None for IMAP or inject, "" and "<>" the null reverse path.
MAIL_FROMS = (None, "", "<>", "dev@tenant.gov.example", "MAILER-DAEMON@mx.example.net", "emergency@example.org")
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def envelope_of(data: bytes) -> tuple[str | None, datetime]:
    """The envelope follows from the input itself, so a run replays exactly from its crash file."""
    digest = zlib.crc32(data)
    received_at = EPOCH + timedelta(minutes=digest % (2 * 366 * 24 * 60))   # any window, two years
    return MAIL_FROMS[digest % len(MAIL_FROMS)], received_at


def test_one_input(data: bytes) -> None:
    mail_from, received_at = envelope_of(data)
    run_pipeline(data, mail_from, received_at)


# ---------------------------------------------------------------------------
# A mail-shaped mutator
# ---------------------------------------------------------------------------

TOKENS = (
    b"Content-Type: multipart/mixed; boundary=\"b1\"", b"Content-Type: multipart/alternative; boundary=b2",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=r",
    b"Content-Type: message/rfc822", b"Content-Type: text/html; charset=iso-8859-1",
    b"Content-Type: message/delivery-status", b"Content-Type: message/disposition-notification",
    b"Content-Type: message/feedback-report", b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable", b"Content-Disposition: attachment; filename*0*=utf-8''%E2%82",
    b"--b1", b"--b1--", b"--b2", b"--r--", b"=?utf-8?B?w6k=?=", b"=?iso-2022-jp?B?GyRCJUYlOSVIGyhC?=",
    b"=?utf-8?Q?=E2=82?=", b"Auto-Submitted: auto-replied", b"Precedence: bulk", b"X-Failed-Recipients: a@b",
    b"X-Loop: emergency@example.org", b"From: MAILER-DAEMON@mx.example.net", b"Subject: Re: [#1234] urgent",
    b"Subject: Automatic reply: all our apps are down", b"In-Reply-To: <a@b>", b"References: <a@b> <c@d>",
    b"Message-ID: <m1@example.net>", b"Date: Wed, 25 Nov 2026 02:14:07 +0000", b"MIME-Version: 1.0",
    b"Received: from x by y; Wed, 25 Nov 2026 02:14:07 +0000", b"<html><body><p>", b"</p><br>&nbsp;&#0;",
    b"<!--[if mso]>", b"> quoted", b"On Mon, tenant wrote:", b"\r\n\r\n", b"\n\n", b"\r", b"\x00", b"\xff\xfe",
)


def split_headers(data: bytes) -> tuple[bytes, bytes]:
    """Header block and body, at the first blank line (either line ending)."""
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    cut = min(ends) if ends else len(data)
    return data[:cut], data[cut:]


def mutate_lines(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    action = rng.randrange(4)
    if action == 0:
        lines.insert(i, rng.choice(TOKENS) + b"\r")
    elif action == 1 and len(lines) > 1:
        del lines[i]
    elif action == 2:
        lines[i:i] = lines[j:j + rng.randint(1, 8)] * rng.randint(1, 3)
    else:
        lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    choice = rng.randrange(10)
    if choice < 4:
        return atheris.Mutate(data, max_size)
    if choice < 7:
        data = mutate_lines(data, rng)
    elif choice < 9:
        headers, body = split_headers(data)
        if choice == 7:
            headers = atheris.Mutate(headers, max(len(headers) * 2, 64))
        else:
            body = atheris.Mutate(body, max(len(body) * 2, 64))
        data = headers + body
    else:
        at = rng.randint(0, len(data))
        data = data[:at] + rng.choice(TOKENS) + data[at:]
    return data[:max_size]


def with_fixture_seeds(argv: list[str]) -> list[str]:
    """The fixtures as seed inputs: read, never written to (libFuzzer writes only to corpus directories)."""
    if any(arg.startswith("-seed_inputs=") for arg in argv):
        return argv
    seeds = ",".join(str(p) for p in sorted(FIXTURES.rglob("*.eml")))
    return [*argv, f"-seed_inputs={seeds}"]


def main() -> None:
    atheris.Setup(with_fixture_seeds(sys.argv), test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
