"""The ingest benchmarks' mail sizes and senders: alerts padded with a log dump, from one sender or many."""
from __future__ import annotations

LOG_LINE = "  02:10:{second:02d} upstream timed out (110: Connection timed out) while connecting to upstream, " \
           "client: 203.0.113.{client}, server: {host}.tenant-acme.example.net\r\n"


def log_dump(size: int, host: str) -> str:
    """About `size` bytes of proxy log lines (none if size <= 0), after a line that says what they are."""
    lines = ["\r\nFull proxy log of the last minutes:\r\n"]
    total = len(lines[0])
    number = 0
    while total < size:
        line = LOG_LINE.format(second=number % 60, client=number % 250 + 1, host=host)
        lines.append(line)
        total += len(line)
        number += 1
    return "".join(lines) if size > 0 else ""


def mail_for(run: str, index: int, *, body_kb: float | None, senders: str) -> tuple[str, bytes, str]:
    """(dedup_key, bytes, envelope sender): from one address throughout (`one`, a looping monitoring
    system) or from an address of its own per mail (`many`), in the envelope and in From: alike."""
    from bench.smtp_ingest import (  # it pads with log_dump from here
        SENDER,
        build_message,
    )
    sender = SENDER if senders == "one" else f"noc{index}@tenant{index % 1000:03d}.example.net"
    key, raw = build_message(run, index, body_kb=body_kb, sender=sender)
    return key, raw, sender


SENDERS_TEXT = {"one": "every mail from one envelope sender and From: (a looping monitoring system)",
                "many": "every mail from an envelope sender and From: of its own"}
