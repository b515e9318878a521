"""IMAP4rev1 (RFC 3501) protocol core, without I/O.

The modules here take bytes in and give typed events and bytes out, in the style of h11:

- ``parser``: ``CommandReader`` frames lines and literals and yields ``Command`` /
  ``NeedContinuation`` / ``NeedData`` / ``ParseError`` / ``ContinuationLine`` events.
- ``grammar``: the RFC 3501 §9 grammar of one complete command (used by ``parser``).
- ``types``: frozen values carried by commands (sequence sets, fetch attributes, search keys...).
- ``states``: the protocol states and the table of commands allowed in each.
- ``responses``: rendering of responses, strings (quoted vs literal), FETCH items.
- ``message``: MIME structure of a message, ENVELOPE, BODY/BODYSTRUCTURE, BODY[section].
- ``search``: evaluation of a parsed SEARCH program against a message model.

- ``session``: one connection's state; ``run(cmd)`` dispatches through ``commands`` (the
  command table and one module per command family) over ``mailstack.storage``, yielding
  bytes and ``effects`` (password check, STARTTLS, IDLE, LOGOUT) for the adapter.

Nothing here touches a socket or the clock; only ``session`` and ``commands`` touch
files (through ``mailstack.storage``, ``index`` and ``fts``). ``server`` is the thin asyncio
adapter that reads and writes the socket.
"""
