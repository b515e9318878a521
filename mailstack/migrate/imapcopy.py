"""Copy one account from another IMAP server into a local Maildir (`mailstack import imap`).

Per folder of the source (LIST "" "*", INBOX first): the folder is made locally under the
same name (modified UTF-7 decoded, the source's hierarchy delimiter turned into `.`,
Maildir++'s; a personal namespace prefix such as Courier's `INBOX.` dropped), subscribed
when it was subscribed there, then opened read-only (EXAMINE: the old server is never
changed) and its messages fetched in batches (`ImportOptions.batch_messages` /
`batch_bytes`) with `BODY.PEEK[]`, and stored through `Folder.append` with their flags,
keywords and INTERNALDATE, byte for byte (storage keeps LF on disk and gives CRLF back,
as Dovecot does).

Resumable and idempotent: `state.ImportState` remembers each copied source UID (per
source account, folder and UIDVALIDITY), so a second run fetches only what is new.
A message without its row (a crash between the append and the row, or a folder whose
UIDVALIDITY changed) is recognised by its fingerprint (Message-ID, INTERNALDATE, size)
among the local messages not already claimed by a row, and not copied again; identical
messages are counted, not merged.

A connection that drops or stalls is opened again and the copy goes on where it was,
after 1, 2, 4 ... up to 30 s, at most `retries` times in a row without progress.
Flags changed on the source after a message was copied are not carried over again
(like imapsync's default). The user's quota is honoured: over it, the copy stops with
`ImportStopped` and what is copied stays (raise the quota and run again).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from mailstack.migrate.source import SourceConnection, SourceDropped, SourceRefused, SourceSettings
from mailstack.migrate.progress import Progress
from mailstack.migrate.state import Fingerprint, ImportState
from mailstack.migrate.wire import FetchedMessage, ListEntry, message_id, parse_namespace, split_flags
from mailstack.storage import Folder, Maildir, StorageError, TooManyKeywords, UnsafeName, mutf7

__all__ = ["ImportOptions", "ImportReport", "ImportStopped", "Progress", "import_account", "local_folder_name"]

log = logging.getLogger(__name__)

MAX_RETRY_DELAY = 30.0


class ImportStopped(Exception):
    """The copy cannot go on (quota, a folder that cannot be made); `str()` is one line."""


@dataclass(frozen=True, slots=True)
class ImportOptions:
    batch_messages: int = 100  # messages per FETCH
    batch_bytes: int = 32 * 1024 * 1024  # and at most this much per FETCH (one bigger message goes alone)
    retries: int = 5  # reconnections in a row without progress before giving up
    retry_delay: float = 1.0  # first wait before reconnecting; doubles up to MAX_RETRY_DELAY


@dataclass
class ImportReport:
    """What one run did: filled in as the copy goes (not frozen: an accumulator)."""

    folders: int = 0
    copied: int = 0
    already: int = 0  # found copied by an earlier run (state or fingerprint)
    bytes: int = 0
    reconnects: int = 0
    notes: list[str] = field(default_factory=list)


async def import_account(settings: SourceSettings, maildir: Maildir, *, quota_bytes: int | None = None,
                         options: ImportOptions = ImportOptions(), progress: Progress | None = None,
                         sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> ImportReport:
    """Copy everything new from the source account into `maildir`; raises `SourceRefused`,
    `SourceDropped` (retries used up) or `ImportStopped`, each with a one-line `str()`."""
    progress = progress or Progress()
    report = ImportReport()
    state: ImportState | None = None
    try:
        failures = 0
        delay = options.retry_delay
        connected_once = False
        while True:
            before = report.copied + report.already
            conn = SourceConnection(settings)
            try:
                await conn.open()
                if state is None:  # nothing is written before the source let us in
                    await asyncio.to_thread(maildir.ensure)
                    state = ImportState(maildir.root)  # small local SQLite calls: on the loop
                    copier = _Copier(settings, maildir, quota_bytes, options, progress, report, state)
                connected_once = True
                await copier.run(conn)
                return report
            except SourceDropped as exc:
                reason = str(exc)
            except SourceRefused as exc:
                if not connected_once:
                    raise  # wrong host, port, TLS or password: the admin's to fix, at once
                reason = str(exc)  # e.g. the server restarting: refused for a moment
            finally:
                await conn.close()
            if report.copied + report.already > before:
                failures, delay = 0, options.retry_delay
            failures += 1
            if failures > options.retries:
                raise SourceDropped(f"{reason} (gave up after {options.retries} retries)")
            report.reconnects += 1
            progress.note(f"{reason}; reconnecting in {delay:g} s")
            await sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)
    finally:
        progress.finish()
        if state is not None:
            state.close()


def mutf7_or_text(raw: bytes) -> str:
    """A name off the wire: modified UTF-7 (RFC 3501 §5.1.3), else taken as UTF-8 (RFC 6855)."""
    text = raw.decode("utf-8", "replace")
    try:
        return mutf7.decode(text)
    except ValueError:
        return text


def local_folder_name(raw: bytes, delimiter: str | None, prefix: str = "") -> str:
    """The local (Unicode, `.`-separated) name of a source folder."""
    text = mutf7_or_text(raw)
    if prefix and text.upper().startswith(prefix.upper()) and len(text) > len(prefix):
        text = text[len(prefix):]
    if text.upper() == "INBOX":
        return "INBOX"
    if delimiter and delimiter != ".":
        parts = [p.replace(".", "_") for p in text.split(delimiter)]  # Maildir++ has no dot in a name
        text = ".".join(parts)
    return text


class _Copier:
    def __init__(self, settings: SourceSettings, maildir: Maildir, quota_bytes: int | None,
                 options: ImportOptions, progress: Progress, report: ImportReport, state: ImportState) -> None:
        self.settings = settings
        self.maildir = maildir
        self.quota_bytes = quota_bytes
        self.options = options
        self.progress = progress
        self.report = report
        self.state = state
        self.source = settings.label
        self.folders_done: set[bytes] = set()
        self.noted: set[str] = set()

    def note(self, text: str) -> None:
        if text not in self.noted:
            self.noted.add(text)
            self.report.notes.append(text)
            self.progress.note(text)

    async def run(self, conn: SourceConnection) -> None:
        prefix, foreign = await self._namespaces(conn)
        entries = [e for e in await conn.list_folders() if not any(e.name.startswith(p) for p in foreign)]
        subscribed = {e.name for e in await conn.subscriptions()}
        entries.sort(key=lambda e: (e.name.upper() != b"INBOX", e.name))
        for entry in entries:
            if entry.name in self.folders_done:
                continue
            name = local_folder_name(entry.name, entry.delimiter, prefix)
            folder = await self._local_folder(name, entry)
            if folder is not None and entry.name in subscribed and name != "INBOX":
                await asyncio.to_thread(self.maildir.subscribe, name)
            if folder is not None and entry.selectable:
                await self._copy_folder(conn, entry, name, folder)
            self.folders_done.add(entry.name)
            self.report.folders += 1

    async def _namespaces(self, conn: SourceConnection) -> tuple[str, list[bytes]]:
        """(the personal namespace prefix, e.g. `INBOX.` on Courier/Cyrus, "" if none; the raw
        prefixes of other users' and shared namespaces, whose folders are not this account's)."""
        if "NAMESPACE" not in conn.capabilities:
            return "", []
        response = await conn.command("NAMESPACE")
        personal, others = parse_namespace(response.lines)
        return mutf7_or_text(personal), others

    async def _local_folder(self, name: str, entry: ListEntry) -> Folder | None:
        def make() -> Folder | None:
            if name == "INBOX" or self.maildir.has_folder(name):
                return self.maildir.folder(name)
            if not entry.selectable:
                return None  # a pure parent (\Noselect): its children are made on their own
            return self.maildir.create_folder(name)

        try:
            return await asyncio.to_thread(make)
        except UnsafeName as exc:
            self.note(f"folder {name!r} skipped: {exc}")
            return None
        except StorageError as exc:
            raise ImportStopped(f"cannot make folder {name!r}: {exc}") from None

    async def _copy_folder(self, conn: SourceConnection, entry: ListEntry, name: str, folder: Folder) -> None:
        validity, exists = await conn.select(entry.name)
        sizes = await conn.sizes() if exists else {}
        done = self.state.copied_uids(self.source, entry.name, validity)
        todo = sorted(uid for uid in sizes if uid not in done)
        self.progress.folder(name, len(sizes), len(sizes) - len(todo))
        if not todo:
            return
        matcher = await asyncio.to_thread(_LocalMatcher.build, folder, {sizes[u] for u in todo},
                                          self.state.fingerprint_counts(self.source, entry.name, validity))
        for batch in _batches(todo, sizes, self.options):
            messages = await conn.messages(batch)
            for msg in messages:
                await self._store(entry.name, validity, folder, name, msg, matcher)
            self.progress.advance(len(batch))

    async def _store(self, raw_folder: bytes, validity: int, folder: Folder, name: str,
                     msg: FetchedMessage, matcher: _LocalMatcher) -> None:
        assert msg.uid is not None and msg.body is not None
        body = msg.body
        when = msg.internaldate
        fp = Fingerprint(message_id(body), int(when.timestamp()) if when else 0,
                         msg.size if msg.size is not None else len(body))
        if matcher.claim(fp):
            self.state.record(self.source, raw_folder, validity, msg.uid, fp, None)
            self.report.already += 1
            return
        flags, keywords = split_flags(msg.flags or ())
        if self.quota_bytes is not None:
            fits = await asyncio.to_thread(self.maildir.quota_check, len(body), self.quota_bytes)
            if not fits:
                raise ImportStopped(f"over quota after {self.report.copied} messages; raise it "
                                    f"(mailstack user quota) and run the import again")

        def append() -> int:
            try:
                return folder.append(body, flags, when or datetime.now(timezone.utc), keywords)
            except TooManyKeywords:
                self.note(f"{name}: more than 26 keywords, the extra ones are dropped")
                return folder.append(body, flags, when or datetime.now(timezone.utc), ())

        local_uid = await asyncio.to_thread(append)
        self.state.record(self.source, raw_folder, validity, msg.uid, fp, local_uid)
        self.report.copied += 1
        self.report.bytes += len(body)


class _LocalMatcher:
    """Local messages of a folder not yet claimed by a state row, by fingerprint."""

    def __init__(self, available: Counter[Fingerprint]) -> None:
        self.available = available

    @classmethod
    def build(cls, folder: Folder, sizes: set[int], recorded: Counter[Fingerprint]) -> _LocalMatcher:
        found: Counter[Fingerprint] = Counter()
        for info in folder.sync().messages:
            if info.vsize not in sizes:
                continue  # cannot be one of the messages still to copy
            try:
                with open(folder.open_path(info.uid), "rb") as f:
                    head = f.read(65536)
            except (OSError, StorageError):
                continue
            found[Fingerprint(message_id(head), int(info.internaldate.timestamp()), info.vsize)] += 1
        found.subtract(recorded)
        return cls(+found)

    def claim(self, fp: Fingerprint) -> bool:
        if self.available[fp] > 0:
            self.available[fp] -= 1
            return True
        return False


def _batches(uids: list[int], sizes: dict[int, int], options: ImportOptions) -> list[list[int]]:
    out: list[list[int]] = []
    batch: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if batch and (len(batch) >= options.batch_messages or total + size > options.batch_bytes):
            out.append(batch)
            batch, total = [], 0
        batch.append(uid)
        total += size
    if batch:
        out.append(batch)
    return out

