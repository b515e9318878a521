"""OBJECTID (RFC 8474) and SAVEDATE (RFC 8514): the identities and the save date of
mailboxes and messages, derived from what the Maildir already keeps (no new state).

- MAILBOXID (§4) is the mailbox GUID in the ``dovecot-uidlist`` header (``G<32 hex>``), as
  Dovecot keeps it: it moves with the folder's directory on RENAME, a folder deleted and
  made again gets a new one, and a Dovecot serving the same Maildir sees the same GUID.
- EMAILID (§5.1) is ``M`` + 24 hex digits of the SHA-1 of the message GUID as Dovecot's
  Maildir defines it (``FolderState.message_guid``: the record's ``G`` field, else the
  file's base name). A COPY or MOVE writes the source's GUID into the new record's ``G``,
  so the copy keeps its EMAILID (§5.1: "the same EMAILID ... after COPY/MOVE") although
  its file has a new name; a message APPENDed again is a new email (new file, new GUID).
  Hashed because a base name holds ``.`` ``,`` ``=``, which an objectid may not (§7).
- THREADID (§5.2) is NIL: this server does not thread messages (as Dovecot 2.3 without
  threading); SEARCH THREADID then matches nothing.
- The save date (RFC 8514 §3) is when the message was stored in this mailbox: the time a
  Maildir file name starts with (``<seconds>.``: set by whoever wrote the file, a new one
  for every delivery, APPEND, COPY and MOVE, here and in Dovecot, and never changed by a
  flag change), else the file's ctime at the first time anyone asks, kept in the folder
  index (``FolderIndex.save_time``) so that a later rename (flag change) does not move it.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from datetime import datetime, timezone

from mailstack.storage import Folder, FolderState, MessageInfo
from mailstack.storage.errors import MessageNotFound

from .index import FolderIndex

__all__ = ["mailbox_id", "email_id", "save_date", "valid_objectid", "name_time"]

_OBJECTID = re.compile(r"[A-Za-z0-9_-]{1,255}")  # RFC 8474 §7 objectid
_NAME_TIME = re.compile(r"([0-9]{1,12})\.")


def valid_objectid(text: str) -> bool:
    return _OBJECTID.fullmatch(text) is not None


def mailbox_id(state: FolderState) -> str:
    """RFC 8474 §4: the folder's MAILBOXID."""
    return state.mailbox_guid


def email_id(state: FolderState, msg: MessageInfo) -> str:
    """RFC 8474 §5.1: the message's EMAILID (see the module docstring)."""
    guid = state.message_guid(msg)
    return "M" + hashlib.sha1(guid.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def name_time(base: str, now: float | None = None) -> float | None:
    """The creation time a Maildir base name starts with, if it has a plausible one."""
    m = _NAME_TIME.match(base)
    if m is None:
        return None
    t = float(m.group(1))
    limit = (time.time() if now is None else now) + 86400
    return t if 0 < t <= limit else None


def save_date(folder: Folder, msg: MessageInfo, idx: FolderIndex) -> datetime | None:
    """RFC 8514 §3: when ``msg`` was stored in ``folder`` (None: unknown, e.g. gone)."""
    t = name_time(msg.base)
    if t is None:
        def first_sight() -> float | None:
            try:
                return os.stat(folder.open_path(msg.uid)).st_ctime
            except (MessageNotFound, OSError):
                return None

        t = idx.save_time(msg.base, first_sight)
    return None if t is None else datetime.fromtimestamp(int(t), timezone.utc)
