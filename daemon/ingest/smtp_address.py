"""The address of a MAIL or RCPT command, read without the cost of aiosmtpd's general parser.

aiosmtpd's SMTP._getaddr defines a typing.Protocol class on every call and runs the
standard library's header parser: about 165 us, twice per mail, on the event loop (15% of
it at 470 mails a second, bench/smtp_ingest.py). Nearly every client writes the plain form
`<local@domain>` with dot-atoms and an optional space before the parameters; for that form
this gives exactly what aiosmtpd's parser gives (property-tested against it in
tests/e2e/test_smtp.py), and everything else still goes to aiosmtpd's parser.

That parser also fails on some inputs with an IndexError (`MAIL FROM:"`), which aiosmtpd
answered "500 Error: (IndexError) list index out of range": such an address is malformed,
answered as aiosmtpd answers any other (553 5.1.3).
"""
from __future__ import annotations

import re
from typing import Callable, Optional, Tuple

# RFC 5322 atext, ASCII only: a non-ASCII (SMTPUTF8) address takes the general path.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ANGLE_ADDRESS = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*)>")

Address = Tuple[Optional[str], Optional[str]]


def plain_address(arg: str, local_part_limit: int, general: Callable[[str], Address]) -> Address:
    """(address, the rest of the command), as aiosmtpd's _getaddr; `general` is that parser."""
    match = _PLAIN_ANGLE_ADDRESS.match(arg)
    if match is None:
        return _general(arg, general)
    rest = arg[match.end():]
    if rest[:1] in (" ", "\t", "("):   # the header parser skips folding white space after the '>' ...
        rest = rest.lstrip() if rest[0] != "(" else rest
        if rest.startswith("("):       # ... and comments, which are left to it
            return _general(arg, general)
    address = match.group(1)
    if local_part_limit and len(address.rpartition("@")[0]) > local_part_limit:
        return None, None
    return address, rest


def _general(arg: str, general: Callable[[str], Address]) -> Address:
    try:
        return general(arg)
    except Exception:   # the standard library's parser tripping over its own tokens: malformed all the same
        return None, None
