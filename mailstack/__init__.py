"""mailstack: a self-hosted mail server stack (SMTP, LMTP, IMAP, POP3 over Maildir++)."""

__version__ = "0.1.0"
