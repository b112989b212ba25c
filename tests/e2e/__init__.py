"""Tests through real processes: the daemon, the HTTPS fakes, Dovecot, rspamd, Postfix, a browser."""
