"""The TLS files emergencyd uses, and when the first certificate in each expires.

An expired certificate fails quietly from the daemon's side: Zendesk or PagerDuty calls
start failing (a CA bundle), or senders fall back to plain text or give up (the SMTP
certificate). A gauge of each file's soonest notAfter lets an alert fire weeks before.
"""
from __future__ import annotations

import logging
from pathlib import Path

from cryptography import x509

from emergencyd.daemon.config.model import Config

log = logging.getLogger("emergencyd.certificates")


def tls_files(config: Config) -> dict[str, Path]:
    """{role: path} of every certificate file in use."""
    files = {
        "smtp_certificate": config.smtp.tls_cert_file,
        "zendesk_ca": config.zendesk.ca_file,
        "pagerduty_ca": config.pagerduty.ca_file,
        "imap_ca": config.imap.ca_file if config.imap.enabled else None,
        "fallback_ca": config.fallback.ca_file if config.fallback.enabled else None,
    }
    return {role: path for role, path in files.items() if path is not None}


def soonest_expiry(path: Path) -> float | None:
    """Unix time of the earliest notAfter among the PEM certificates in the file, None if unreadable."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        log.error("cannot read certificates", extra={"file": str(path), "error": str(exc)})
        return None
    return min(c.not_valid_after_utc.timestamp() for c in certificates)
