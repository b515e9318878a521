"""IMAP QUOTA (RFC 9208): one quota root, ``""``, the user's whole Maildir, in STORAGE.

GETQUOTAROOT (§4.3.2), GETQUOTA (§4.3.1); SETQUOTA (§4.3.3) is refused: quotas are the
administrator's (``mailstack user``). ``check_quota`` is what APPEND and COPY ask before
they add bytes: over the limit they fail with ``NO [OVERQUOTA]`` (RFC 9208 §4.3.1,
RFC 5530) and change nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from ..effects import Output
from ..responses import ImapError, render_mailbox
from ..types import Command, MailboxArgs, QuotaRootArgs

if TYPE_CHECKING:
    from . import Handler
    from ..session import Session

__all__ = ["HANDLERS", "check_quota", "quota_line"]


def check_quota(s: Session, extra: int) -> None:
    user = s.user
    if user is not None and user.quota_bytes and not s.md.quota_check(extra, user.quota_bytes):
        raise ImapError("NO", "Quota exceeded", "OVERQUOTA")  # RFC 9208 §4.3.1 / RFC 5530


def quota_line(s: Session) -> bytes:
    assert s.user is not None
    used, _count = s.md.quota_usage()
    limit = s.user.quota_bytes
    res = f"STORAGE {used // 1024} {limit // 1024}" if limit else ""
    return f'* QUOTA "" ({res})\r\n'.encode("ascii")


def getquotaroot(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, MailboxArgs)
    if not s.md.has_folder(args.mailbox):
        raise ImapError("NO", "Mailbox does not exist", "NONEXISTENT")
    yield b"* QUOTAROOT " + render_mailbox(args.mailbox, s.rev2) + b' ""\r\n' + quota_line(s)
    yield from s.done(cmd, "GETQUOTAROOT completed")


def getquota(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, QuotaRootArgs)
    if args.root != "":
        raise ImapError("NO", "No such quota root", "NONEXISTENT")
    yield quota_line(s)
    yield from s.done(cmd, "GETQUOTA completed")


def setquota(s: Session, cmd: Command) -> Iterator[Output]:
    raise ImapError("NO", "Quotas are set by the administrator", "NOPERM")
    yield b""  # pragma: no cover


HANDLERS: Mapping[str, Handler] = {"GETQUOTAROOT": getquotaroot, "GETQUOTA": getquota, "SETQUOTA": setquota}
