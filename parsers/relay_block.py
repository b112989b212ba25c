"""The header fields our relay wrote: the block on top, above the Received field of the hop that
took the mail from outside. Header fields are prepended hop by hop, so what a sender wrote sits
below that line; Authentication-Results and a spam filter's verdict count only above it."""
from __future__ import annotations

from collections.abc import Iterator, Sequence


def relay_block(headers: Sequence[tuple[str, str]], own_received_fields: int = 0) -> Iterator[tuple[str, str]]:
    """(lower-case name, value) of each field above the first Received field, or above the
    (own_received_fields + 1)-th for a relay that writes its own Received line first."""
    received = 0
    for name, value in headers:
        key = name.strip().lower()
        if key == "received":
            received += 1
            if received > own_received_fields:
                return
        else:
            yield key, value
