"""The private parts of aiosmtpd that daemon/ingest/smtp.py relies on, each with why. aiosmtpd offers no public
hook for them; pyproject.toml bounds it below 1.5, and this fails first, with the name, if a release
moves one of them, before any end-to-end test meets the change as a hang or a wrong reply code."""
from __future__ import annotations

import inspect

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP

SOURCE = inspect.getsource(aiosmtpd.smtp)


def test_the_methods_daemon_smtp_overrides_exist_and_are_called_by_aiosmtpd():
    # _getaddr: MAIL and RCPT addresses, read by daemon/ingest/smtp_address.py's fast path.
    assert callable(SMTP._getaddr) and "self._getaddr(arg)" in SOURCE
    assert list(inspect.signature(SMTP._getaddr).parameters) == ["self", "arg"]
    # _timeout_cb: an idle client is told 421 and closed by our override.
    assert callable(SMTP._timeout_cb) and "self._timeout_cb" in SOURCE


def test_the_attributes_daemon_smtp_sets_are_read_by_aiosmtpd():
    # line_length_limit: set before __init__, which sizes the stream reader by it.
    assert isinstance(SMTP.line_length_limit, int)
    assert "self.line_length_limit" in inspect.getsource(SMTP.__init__)
    # _auth_require_tls: cleared for loopback clients after the connection is made.
    server = SMTP(handler=object(), auth_require_tls=True)
    assert server._auth_require_tls is True and "self._auth_require_tls" in inspect.getsource(SMTP.smtp_AUTH)
    # local_part_limit: our address reader applies it as aiosmtpd's does.
    assert hasattr(server, "local_part_limit")


def test_what_our_data_command_takes_from_aiosmtpd_is_still_there():
    # Smtp.smtp_DATA replaces aiosmtpd's (daemon/ingest/smtp_data.py says why) and keeps its checks and answers:
    # it reads the body from _reader, closes _writer if the client goes, and resets the envelope as aiosmtpd does.
    original = inspect.getsource(SMTP.smtp_DATA)
    for name in ("check_helo_needed()", 'check_auth_needed("DATA")', "self._reader.readuntil",
                 "self._writer.close()", "self._set_post_data_state()", "503 Error: need RCPT command",
                 "501 Syntax: DATA", "354 End data with <CR><LF>.<CR><LF>", "552 Error: Too much mail data"):
        assert name in original, name
    assert "self._reader = reader" in SOURCE and "def _set_post_data_state(self)" in SOURCE
    # Commands are looked up by name on the instance, so the override is the one called.
    assert "getattr(self, m)" in SOURCE and 'm.startswith("smtp_")' in SOURCE
