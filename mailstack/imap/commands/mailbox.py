"""IMAP mailbox commands: choosing and managing mailboxes (RFC 3501 §6.3, §6.4.1-6.4.2).

SELECT / EXAMINE (§6.3.1-2, CONDSTORE parameter RFC 7162 §3.2.5), CREATE (§6.3.3, with
USE (...) from RFC 6154 §5.2, kept by ``Maildir.create_special_folder``),
DELETE (§6.3.4), RENAME (§6.3.5), SUBSCRIBE / UNSUBSCRIBE (§6.3.6-7), NAMESPACE
(RFC 2342), CHECK (§6.4.1), CLOSE (§6.4.2) and UNSELECT (RFC 3691). LIST, LSUB and
STATUS are in ``listing``.

Invariants:
- A SELECT that fails leaves no mailbox selected (RFC 3501 §6.3.1); SELECT claims the
  folder's unclaimed messages as its ``\\Recent``, EXAMINE only looks (§2.3.2).
- INBOX can be neither created nor deleted (§6.3.3, §6.3.4); deleting or renaming the
  selected mailbox unselects it.
- CLOSE expunges silently, and only when the mailbox is read-write (§6.4.2).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from mailstack.storage import Folder
from mailstack.storage.errors import FolderNotFound

from ..effects import Output
from ..mailbox import MailboxView, folder_stamp
from ..objectid import mailbox_id
from ..responses import ImapError, ok, render_mailbox
from ..states import State
from ..types import Command, CreateArgs, MailboxArgs, RenameArgs, SelectArgs

if TYPE_CHECKING:
    from . import Handler
    from ..session import Session

__all__ = ["HANDLERS"]


def namespace(s: Session, cmd: Command) -> Iterator[Output]:
    yield b'* NAMESPACE (("" ".")) NIL NIL\r\n'  # RFC 2342: one personal namespace
    yield from s.done(cmd, "NAMESPACE completed")


def select(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, SelectArgs)
    readonly = cmd.name == "EXAMINE"
    # RFC 9051 §6.3.2, §7.1: in rev2, a SELECT that replaces a selected mailbox says so first
    closed = b"* OK [CLOSED] Previous mailbox closed\r\n" if s.rev2 and s.view is not None else b""
    s.view = None  # RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected
    s.state = State.AUTHENTICATED
    try:
        folder = s.md.folder(args.mailbox)
        stamp = folder_stamp(folder)
        st = folder.sync()
    except FolderNotFound:
        raise ImapError("NO", "Mailbox does not exist", "NONEXISTENT") from None
    view = MailboxView(folder, st, readonly=readonly)
    view.stamp = stamp
    view.rev2 = s.rev2
    idx = s.index.get(folder.path)
    # RFC 3501 §2.3.2: SELECT takes the unclaimed messages as its \Recent; EXAMINE only looks
    floor = idx.claim_recent(view.uidvalidity, view.max_uid, not readonly)
    view.recent = set(view.uids[bisect_right(view.uids, floor):])
    if args.condstore:  # RFC 7162 §3.2.5
        s.enabled.add("CONDSTORE")
    first_unseen = next((i + 1 for i, m in enumerate(st.messages) if "\\Seen" not in m.flags), None)
    out = [
        closed.decode("ascii"),
        view.flags_response().decode("ascii"),
        f"* {view.exists} EXISTS\r\n",
    ]
    if s.rev2:  # RFC 9051 §6.3.2: a LIST response with the mailbox name is REQUIRED
        out.append("* LIST () \".\" " + render_mailbox(folder.name, True).decode("utf-8") + "\r\n")
    else:  # RFC 9051 Appendix E: rev2 has neither RECENT nor the UNSEEN response code
        out.append(f"* {len(view.recent)} RECENT\r\n")
    if first_unseen is not None and not s.rev2:
        out.append(f"* OK [UNSEEN {first_unseen}] First unseen\r\n")
    out.append(f"* OK [UIDVALIDITY {view.uidvalidity}] UIDs valid\r\n")
    out.append(f"* OK [UIDNEXT {view.uidnext}] Predicted next UID\r\n")
    out.append(f"* OK [MAILBOXID ({mailbox_id(st)})] Ok\r\n")  # RFC 8474 §4.2
    if s.condstore:  # RFC 7162 §3.1.2.1 (NOMODSEQ never: every folder has modseqs)
        out.append(f"* OK [HIGHESTMODSEQ {idx.reconcile(st)}] Highest\r\n")
    s.view = view
    s.state = State.SELECTED
    yield "".join(out).encode("utf-8")
    yield ok(cmd.tag, f"{cmd.name} completed", "READ-ONLY" if readonly else "READ-WRITE").to_bytes()


# RFC 6154 §2: the special uses a CREATE may give a folder of ours. \All and \Flagged
# name virtual mailboxes (every message, every flagged one), which a Maildir folder
# cannot be: CREATE ... USE (\All) is NO [USEATTR] (§5.2), the case its example shows.
CREATE_USES: dict[str, str] = {u.lower(): u for u in ("\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash")}


def create(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, CreateArgs)
    name = args.mailbox.rstrip(".")  # RFC 3501 §6.3.3: a trailing delimiter is dropped
    if name.upper() == "INBOX":
        raise ImapError("NO", "INBOX always exists", "ALREADYEXISTS")
    if not args.uses:
        folder = s.md.create_folder(name)
        yield from s.done(cmd, "CREATE completed", _mailbox_id_code(folder))
        return
    uses = []
    for use in args.uses:  # RFC 6154 §5.2: an unsupported use creates nothing
        canonical = CREATE_USES.get(use.lower())
        if canonical is None:
            raise ImapError("NO", f"Special use {use} is not supported here", "USEATTR")
        uses.append(canonical)
    folder = s.md.create_special_folder(name, tuple(dict.fromkeys(uses)))
    yield from s.done(cmd, "CREATE completed", _mailbox_id_code(folder))


def _mailbox_id_code(folder: Folder) -> str:
    """RFC 8474 §4.1: CREATE answers with the new mailbox's MAILBOXID (its uidlist is made now)."""
    return f"MAILBOXID ({mailbox_id(folder.sync())})"


def delete(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, MailboxArgs)
    if args.mailbox.upper() == "INBOX":
        raise ImapError("NO", "INBOX cannot be deleted", "CANNOT")  # RFC 3501 §6.3.4
    if s.view is not None and s.view.folder.name == args.mailbox:
        s.view = None
        s.state = State.AUTHENTICATED
    # RFC 3501 §6.3.6: the subscription stays (the server MUST NOT remove a name from the
    # subscription list because its mailbox no longer exists); LIST (SUBSCRIBED) shows it
    # \NonExistent (RFC 5258 §3.1), as Dovecot does.
    s.md.delete_folder(args.mailbox)
    yield from s.done(cmd, "DELETE completed")


def rename(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, RenameArgs)
    s.md.rename_folder(args.old, args.new.rstrip("."))
    if s.view is not None and s.view.folder.name == args.old and args.old != "INBOX":
        s.view = None
        s.state = State.AUTHENTICATED
    yield from s.done(cmd, "RENAME completed")


def subscribe(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, MailboxArgs)
    s.md.subscribe(args.mailbox)
    yield from s.done(cmd, "SUBSCRIBE completed")


def unsubscribe(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, MailboxArgs)
    s.md.unsubscribe(args.mailbox)
    yield from s.done(cmd, "UNSUBSCRIBE completed")


def check(s: Session, cmd: Command) -> Iterator[Output]:
    yield from s.done(cmd, "CHECK completed")


def close(s: Session, cmd: Command) -> Iterator[Output]:
    view = s.selected
    if not view.readonly:  # RFC 3501 §6.4.2: expunge silently
        deleted = [m.uid for m in view.folder.sync().messages if "\\Deleted" in m.flags]
        if deleted:
            view.folder.expunge(deleted)
            s.changed(view.folder)
    s.view = None
    s.state = State.AUTHENTICATED
    yield ok(cmd.tag, "CLOSE completed").to_bytes()


def unselect(s: Session, cmd: Command) -> Iterator[Output]:
    s.view = None
    s.state = State.AUTHENTICATED
    yield ok(cmd.tag, "UNSELECT completed").to_bytes()


HANDLERS: Mapping[str, Handler] = {
    "SELECT": select, "EXAMINE": select, "CREATE": create, "DELETE": delete, "RENAME": rename,
    "SUBSCRIBE": subscribe, "UNSUBSCRIBE": unsubscribe, "NAMESPACE": namespace,
    "CHECK": check, "CLOSE": close, "UNSELECT": unselect,
}
