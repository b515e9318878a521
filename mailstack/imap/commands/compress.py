"""IMAP COMPRESS (RFC 4978): deflate the rest of the connection.

The handler only decides; the adapter (``server``) switches the transport over when it
meets the ``Compress`` effect, after the tagged OK went out uncompressed (§3).

Invariants:
- Only after authentication (the state table), only ``DEFLATE`` (others: NO, as Dovecot
  says it), and only once: a second COMPRESS is ``NO [COMPRESSIONACTIVE]`` (RFC 4978 §3,
  RFC 5530 §3), whatever the mechanism named.
- Over TLS or not: TLS compression is not offered by our TLS contexts, so the two never stack.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from ..effects import Compress, Output
from ..responses import ImapError, ok
from ..types import Command, CompressArgs

if TYPE_CHECKING:
    from . import Handler
    from ..session import Session

__all__ = ["HANDLERS", "MECHANISMS"]

MECHANISMS = frozenset({"DEFLATE"})


def compress(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, CompressArgs)
    if s.compressed:  # RFC 4978 §3
        raise ImapError("NO", "Compression is already active", "COMPRESSIONACTIVE")
    if args.mechanism not in MECHANISMS:
        raise ImapError("NO", "Unknown compression mechanism")
    s.compressed = True
    yield ok(cmd.tag, "Begin compression").to_bytes()  # no untagged news now: they would go out uncompressed
    yield Compress()


HANDLERS: Mapping[str, Handler] = {"COMPRESS": compress}
