"""A throwaway certificate authority for the HTTPS fakes.

Real clients (requests, httpx2) verify certificates, and the pagerduty client refuses
plain http base URLs, so every fake speaks TLS with a certificate from this CA.
Clients trust it either through the PEM bundle (`write_ca_pem`) or an SSLContext
(`client_ssl_context`).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

SERVER_NAMES = ("127.0.0.1", "localhost")


class TestCA:
    """One CA plus one server certificate valid for 127.0.0.1 and localhost."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self) -> None:
        self._ca = trustme.CA(organization_name="emergencyd test CA")
        self._server_cert = self._ca.issue_cert(*SERVER_NAMES)

    def write_ca_pem(self, directory: str | Path) -> Path:
        """Write the CA certificate (the trust bundle clients need) and return its path."""
        path = Path(directory) / "test-ca.pem"
        self._ca.cert_pem.write_to_path(str(path))
        return path

    def write_server_pem(self, cert_path: str | Path, key_path: str | Path) -> None:
        """The server certificate chain and its key as PEM files, for servers that read files (Dovecot)."""
        self._server_cert.private_key_pem.write_to_path(str(key_path))
        with open(cert_path, "wb") as f:
            f.writelines(blob.bytes() for blob in self._server_cert.cert_chain_pems)

    def server_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_cert.configure_cert(ctx)
        return ctx

    def client_ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this CA (for httpx2 `verify=`)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies and checks hostnames
        self._ca.configure_trust(ctx)
        return ctx
