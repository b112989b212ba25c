"""Ingest: mail in over SMTP (aiosmtpd) and IMAP (aioimaplib); a 250 or a move only after the store's commit."""
