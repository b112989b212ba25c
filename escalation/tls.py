"""`ca_file` means "also trust this PEM bundle", on top of the public CAs."""
from __future__ import annotations

import atexit
import os
import ssl
import tempfile
from functools import lru_cache
from pathlib import Path

import certifi
import requests


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


@lru_cache(maxsize=None)
def trust_bundle(ca_file: Path | None) -> str:
    """A PEM file for clients that take only a path (requests): public CAs plus ca_file."""
    if ca_file is None:
        return certifi.where()
    fd, path = tempfile.mkstemp(prefix="emergencyd-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as out:
        out.write(Path(certifi.where()).read_bytes())
        out.write(b"\n")
        out.write(ca_file.read_bytes())
    atexit.register(_remove_quietly, path)
    return path


def verifying_session(ca_file: Path | None) -> requests.Session:
    """A requests session that trusts the public CAs plus ca_file, whatever the environment says."""
    session = requests.Session()
    session.trust_env = False   # REQUESTS_CA_BUNDLE in the environment would override verify
    session.verify = trust_bundle(ca_file)
    return session


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
