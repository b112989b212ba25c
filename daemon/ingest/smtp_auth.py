"""SMTP AUTH for a relay in front: a users file of scrypt hashes, checked off the event loop.

The users file has one `user:hash` line per account; `#` starts a comment. Make a line with
`emergencyd hash-password USER`. A hash reads `$scrypt$ln=14,r=8,p=1$SALT$KEY` (base64, per-entry
random salt): scrypt is memory-hard, so a stolen file is slow to brute-force on GPUs.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
from pathlib import Path

from emergencyd.daemon.ingest.smtp_limits import RateLimit

SCRYPT_LN, SCRYPT_R, SCRYPT_P = 14, 8, 1   # 16 MiB and some 50 ms a check, as Django hashes with scrypt
SALT_BYTES, KEY_BYTES = 16, 32
_HASH = re.compile(r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")


class UsersFileError(ValueError):
    """A line of the users file that cannot be used; the message never shows a hash."""


def hash_password(password: str) -> str:
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(password.encode("utf-8"), salt, SCRYPT_LN, SCRYPT_R, SCRYPT_P)
    return f"$scrypt$ln={SCRYPT_LN},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(stored: str, password: bytes) -> bool:
    match = _HASH.fullmatch(stored)
    if match is None:
        return False
    ln, r, p = (int(match.group(i)) for i in (1, 2, 3))
    expected = _unb64(match.group(5))
    return hmac.compare_digest(_scrypt(password, _unb64(match.group(4)), ln, r, p, len(expected)), expected)


def load_users(path: Path) -> dict[str, str]:
    """user -> hash, from the users file; UsersFileError names the line."""
    users: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, _, stored = line.partition(":")
        if not user or not _well_formed(stored):
            raise UsersFileError(f"{path} line {number}: expected USER:$scrypt$ln=..,r=..,p=..$SALT$KEY "
                                 "(make one with `emergencyd hash-password USER`)")
        if user in users:
            raise UsersFileError(f"{path} line {number}: user {user!r} appears twice")
        users[user] = stored
    if not users:
        raise UsersFileError(f"{path}: no users")
    return users


class Authenticator:
    """Checks credentials in a worker thread (scrypt would stall every session on the loop), and
    counts failures per client address so that a password cannot be guessed at line speed."""

    def __init__(self, users: dict[str, str], failures_per_hour: int):
        self._users = dict(users)
        self._failures = RateLimit(failures_per_hour, 3600.0)
        # A wrong user costs as much as a wrong password: the time taken does not tell which users exist.
        self._decoy = hash_password("decoy")

    def throttled(self, client: str) -> bool:
        return not self._failures.allow(client, count=False)

    async def check(self, client: str, login: bytes, password: bytes) -> bool:
        stored = self._users.get(login.decode("utf-8", "replace"))
        matched = await asyncio.to_thread(verify_password, stored or self._decoy, password)
        if not (matched and stored):
            self._failures.allow(client)
            return False
        return True


def _well_formed(stored: str) -> bool:
    match = _HASH.fullmatch(stored)
    if match is None:
        return False
    ln, r, p = (int(match.group(i)) for i in (1, 2, 3))
    return 10 <= ln <= 17 and 1 <= r <= 16 and 1 <= p <= 16     # bounded: one check must stay affordable


def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int, length: int = KEY_BYTES) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=129 * r * (n + p + 2))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))
