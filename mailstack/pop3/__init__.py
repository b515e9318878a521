"""POP3 (RFC 1939 + CAPA, RESP-CODES, SASL PLAIN, STLS) over the shared Maildirs.

``core`` is the protocol without I/O, ``replies`` its named replies, ``maildrop`` the
per-session lock and snapshot over ``mailstack.storage``, and ``server`` the thin asyncio
adapter (``mailstack.pop3.server:start``; logins go through ``mailstack.auth``).
"""
