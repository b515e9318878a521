"""IMAP mailbox commands: choosing and managing mailboxes (RFC 3501 §6.3, §6.4.1-6.4.2).

SELECT / EXAMINE (§6.3.1-2, CONDSTORE parameter RFC 7162 §3.1.8, QRESYNC parameter
§3.2.5, the CLOSED response code §3.2.11), CREATE (§6.3.3, with
USE (...) from RFC 6154 §5.2, kept by ``Maildir.create_special_folder``),
DELETE (§6.3.4), RENAME (§6.3.5), SUBSCRIBE / UNSUBSCRIBE (§6.3.6-7), NAMESPACE
(RFC 2342), CHECK (§6.4.1), CLOSE (§6.4.2) and UNSELECT (RFC 3691). LIST, LSUB and
STATUS are in ``listing``.

Invariants:
- A SELECT that fails leaves no mailbox selected (RFC 3501 §6.3.1); SELECT claims the
  folder's unclaimed messages as its ``\\Recent``, EXAMINE only looks (§2.3.2).
- SELECT / EXAMINE with a mailbox selected first sends ``* OK [CLOSED]`` (RFC 7162
  §3.2.11), whether it then succeeds or not, and whether QRESYNC is on or not (as
  Dovecot 2.3 does). A QRESYNC parameter without ENABLE QRESYNC is BAD and changes
  nothing: the selected mailbox stays (Dovecot closes it first; a BAD command should
  not have effects).
- QRESYNC (§3.2.5.1): with the client's UIDVALIDITY (another one: the parameter is
  ignored), after HIGHESTMODSEQ come ``VANISHED (EARLIER)`` (``qresync``) and then
  ``FETCH (UID FLAGS MODSEQ)`` of each message changed since the client's modseq, only
  those in known-uids when given (Dovecot's order and choice).
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

from .. import uidranges
from ..effects import Output
from ..expunged import KEPT
from ..index import FolderIndex
from ..mailbox import MailboxView, folder_stamp
from ..objectid import mailbox_id
from ..qresync import vanished_earlier
from ..responses import ImapError, ok, render_flags, render_mailbox
from ..states import State
from ..types import Command, CreateArgs, MailboxArgs, QresyncParams, RenameArgs, SelectArgs

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
    if args.qresync is not None and not s.qresync:  # RFC 7162 §3.2.5
        raise ImapError("BAD", "QRESYNC not enabled")
    # RFC 7162 §3.2.11, RFC 9051 §7.1: a SELECT that replaces a selected mailbox says so first
    # (sent whatever the session enabled, as Dovecot does)
    if s.view is not None:
        s.view = None
        yield b"* OK [CLOSED] Previous mailbox closed.\r\n"
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
    q = args.qresync
    if q is not None and q.uidvalidity == view.uidvalidity:  # RFC 7162 §3.2.5.1
        yield from _resync(view, idx, q)
    yield ok(cmd.tag, f"{cmd.name} completed", "READ-ONLY" if readonly else "READ-WRITE").to_bytes()


def _resync(view: MailboxView, idx: FolderIndex, q: QresyncParams) -> Iterator[bytes]:
    """RFC 7162 §3.2.5.1: what went and what changed since the client's modseq."""
    known = uidranges.normalize(q.known_uids.spans(0)) if q.known_uids is not None else [(1, uidranges.MAX_UID)]
    yield from uidranges.vanished_responses(vanished_earlier(idx, view, q.modseq, known, q.seq_match), earlier=True)
    buf: list[bytes] = []
    for seq, uid in enumerate(view.uids, 1):
        m = idx.modseq(uid)
        if m > q.modseq and (q.known_uids is None or q.known_uids.contains(uid, 0)):
            buf.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (seq, uid, render_flags(view.flags_for(uid)), m))
            if len(buf) >= 1000:
                yield b"".join(buf)
                buf = []
    if buf:
        yield b"".join(buf)


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
            with KEPT.expunging(view, deleted):  # other sessions may still fetch them (RFC 2180 §4.1)
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
