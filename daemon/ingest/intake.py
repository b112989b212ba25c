"""What every intake (SMTP, IMAP) hands a mail to: the daemon's ingest, which answers only after the commit."""
from __future__ import annotations

from typing import Protocol

from emergencyd.daemon.store.core import IngestResult
from emergencyd.escalation.records import Envelope


class Ingest(Protocol):
    async def __call__(self, raw: bytes, envelope: Envelope, /) -> IngestResult: ...
