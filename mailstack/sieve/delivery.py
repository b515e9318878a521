"""Carrying out a Sieve result at local delivery (MX, LMTP, local submission: all go through
``mailstack.delivery.LocalDelivery``, which calls ``execute`` for a mailbox with an active script
or a before-script: the ``mailstack vacation`` auto-reply, ``sieve.vacation``).

The before-scripts run first, then the user's active script, as Pigeonhole's ``sieve_before``
(``sieve.multiscript`` says how their results combine); a script that does not compile
counts as a failed one (RFC 5228 §2.10.6: implicit keep).

What happens, as Dovecot's LMTP with Pigeonhole does it:
- the script is compiled at each delivery; a script that does not compile, or fails while
  running, gives an implicit keep (RFC 5228 §2.10.6) and a log line: never a lost message;
- keep / implicit keep -> INBOX (or the existing ``+tag`` folder); ``fileinto`` a missing folder
  -> INBOX, unless ``:create`` (RFC 5490 §3.2) makes it; a folder that cannot be used -> INBOX;
- imap4flags: the message is stored with its flags (system flags and keywords);
- redirect -> the queue, as a forward (``Delivered-To:`` on top for loop detection);
  a failure to queue falls back to a keep;
- reject -> a rejection message (RFC 5429 §2.1.1, null return path) to the envelope sender
  through the queue, the message is not stored; never a refusal, even on the MX (Pigeonhole's
  LMTP behaviour, and what keeps the MX and LMTP alike); a null sender gets nothing;
- ereject -> ``550 5.7.1`` for this mailbox (RFC 5429 §2.1: in protocol when possible);
- discard -> nothing stored, ``250``;
- vacation -> a reply (RFC 5230 §5: null return path, ``Auto-Submitted: auto-replied``,
  ``In-Reply-To``/``References``) through the queue, unless ``vacation_refusal`` says no or
  this sender got one within the period: one file per (sender, handle) under
  ``<maildir>/.mailstack-vacation/``, its mtime the time the next reply may go; at most
  ``MAX_VACATION_ENTRIES`` per user (expired ones are pruned; when still full, no reply
  rather than an unbounded store).
If any store fails after another succeeded, the message is already safe and the reply is 250;
if every store fails, a keep into INBOX is tried last, then a temporary error.
"""

from __future__ import annotations

import email.header
import email.utils
import hashlib
import logging
import os
import time
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mailstack import replies as R
from mailstack.mail import dkim, headers
from mailstack.replies import Reply
from mailstack.sieve.grammar import SieveSyntaxError
from mailstack.sieve.interp import Action, Context, Envelope, Interpreter, Result, vacation_refusal
from mailstack.sieve.multiscript import run_sequence
from mailstack.sieve.store import ScriptError, ScriptStore, check_name
from mailstack.sieve.vacation import before_scripts
from mailstack.storage import StorageError
from mailstack.storage.filename import normalize_flag

log = logging.getLogger(__name__)

EREJECTED = Reply(550, "5.7.1", "Rejected by the recipient's Sieve filter")
VACATION_DIR = ".mailstack-vacation"
MAX_VACATION_ENTRIES = 10000
SYSTEM = {"\\seen", "\\answered", "\\flagged", "\\deleted", "\\draft"}


class _Delivery(Protocol):
    hostname: str

    @property
    def queue(self) -> Any: ...


def active_script(home: Path) -> bytes | None:
    return ScriptStore(home).active_script()


@dataclass(frozen=True, slots=True)
class Scripts:
    """What runs for one mailbox: the before-scripts (``sieve.vacation``), then the user's."""

    before: tuple[bytes, ...]
    personal: bytes | None


def scripts_for(home: Path) -> Scripts | None:
    """The scripts to run for the user whose Maildir++ is ``home``; None when there is none."""
    before = tuple(before_scripts(home))
    personal = active_script(home)
    if not before and personal is None:
        return None
    return Scripts(before, personal)


def _loader(home: Path, global_dir: Path | None) -> Any:
    """include (RFC 6609): ``:personal`` from the user's scripts, ``:global`` from ``global_dir``."""
    def load(name: str, is_global: bool) -> bytes | None:
        try:
            if is_global:
                if global_dir is None:
                    return None
                return (global_dir / (check_name(name) + ".sieve")).read_bytes()
            return ScriptStore(home).get(name)
        except (ScriptError, OSError):
            return None
    return load


def execute(delivery: _Delivery, md: Any, mb: Any, script: bytes | Scripts, body: bytes, keep_folder: str | None,
            *, sender: str, rcpt: str) -> Reply:
    """Run ``script`` (one script, or the before-scripts then the user's: ``sieve.multiscript``)
    on ``body`` (our Return-Path/Delivered-To on top) for mailbox ``mb``.

    Never raises: an unexpected failure while carrying out the actions ends in a keep (a
    possible duplicate is better than a lost message)."""
    try:
        return _execute(delivery, md, mb, script, body, keep_folder, sender=sender, rcpt=rcpt)
    except Exception:  # noqa: BLE001
        log.exception("sieve for %s failed unexpectedly: keeping the message", mb.address)
        return _store(md, body, keep_folder, (), create=False)


def _execute(delivery: _Delivery, md: Any, mb: Any, script: bytes | Scripts, body: bytes, keep_folder: str | None,
             *, sender: str, rcpt: str) -> Reply:
    ctx = Context(body, Envelope(sender, rcpt), load_include=_loader(md.root, getattr(delivery, "sieve_global_dir", None)))
    texts = [script] if isinstance(script, bytes) else [*script.before, *(
        [script.personal] if script.personal is not None else [])]

    def runner(text: bytes) -> Callable[[], Result]:
        def run() -> Result:
            try:
                interp = Interpreter.compile(text)
            except SieveSyntaxError as e:  # RFC 5228 §2.10.6: as a runtime error, an implicit keep
                return Result((Action("keep"),), f"does not compile: {e}", implicit_keep=True)
            return interp.run(ctx)
        return run

    result = run_sequence([runner(t) for t in texts])
    if result.error:
        log.warning("sieve script of %s failed (%s): implicit keep", mb.address, result.error)
    stored: list[Reply] = []
    for action in result.actions:
        if action.kind in ("keep", "fileinto"):
            folder = keep_folder if action.kind == "keep" else action.folder
            stored.append(_store(md, body, folder, action.flags, create=action.create))
        elif action.kind == "redirect":
            if not _redirect(delivery, action, body, mb.address, sender):
                stored.append(_store(md, body, keep_folder, (), create=False))
        elif action.kind == "reject":
            _reject(delivery, action, body, sender, rcpt)
        elif action.kind == "ereject":
            return EREJECTED
        elif action.kind == "vacation":
            _vacation(delivery, md.root, action, body, Envelope(sender, rcpt))
    if not stored or any(r.is_ok for r in stored):
        return R.OK
    return stored[0]


def _split_flags(flags: tuple[str, ...]) -> tuple[list[str], list[str]]:
    system = [normalize_flag(f) for f in flags if f.lower() in SYSTEM]
    keywords = [f for f in flags if f.lower() not in SYSTEM and not f.startswith("\\")]
    return system, keywords


def _store(md: Any, body: bytes, folder: str | None, flags: tuple[str, ...], *, create: bool) -> Reply:
    name = None if folder is None or folder.upper() == "INBOX" else folder
    try:
        if name is not None and not md.has_folder(name):
            if create:  # RFC 5490 §3.2
                md.create_folder(name)
            else:
                log.info("sieve fileinto %r: no such folder, kept in INBOX", name)
                name = None
    except (StorageError, OSError, ValueError) as e:
        log.warning("sieve fileinto %r: %s; kept in INBOX", name, e)
        name = None
    targets: tuple[str | None, ...] = (name, None) if name is not None else (None,)
    for target in targets:
        try:
            if flags:  # RFC 5232 §5: stored with the flags
                system, keywords = _split_flags(flags)
                md.folder(target or "INBOX").append(body, system, None, keywords)
            else:
                md.deliver(body, target)
            return R.OK
        except (StorageError, OSError, ValueError) as e:
            log.warning("sieve store into %r failed: %s", target or "INBOX", e)
    return R.LOCAL_ERROR.with_text("Local delivery failed, try again later")


def _redirect(delivery: _Delivery, action: Action, body: bytes, mailbox: str, sender: str) -> bool:
    queue = delivery.queue
    if queue is None:
        log.warning("sieve redirect to %s for %s: no queue, kept instead", action.address, mailbox)
        return False
    if body.startswith(b"Return-Path:"):  # ours, for the Maildir copy; the queue's delivery adds its own
        body = body[body.index(b"\n") + 1:]
    envelope_sender = sender
    extra: dict[str, Any] = {"orig_rcpt": mailbox}
    forwarder = getattr(delivery, "forwarder", None)
    if forwarder is not None:  # a forward like an alias's: SRS sender and ARC seal of the user's domain
        domain = mailbox.rpartition("@")[2]
        envelope_sender = forwarder.envelope_sender(sender, domain)
        body = forwarder.seal(body, domain)
        if envelope_sender != sender:
            extra["orig_sender"] = sender
    try:
        queue.enqueue(envelope_sender, [action.address], body, reason="sieve redirect", extra=extra)
    except (OSError, ValueError) as e:
        log.warning("sieve redirect to %s for %s: %s, kept instead", action.address, mailbox, e)
        return False
    return True


def _reject(delivery: _Delivery, action: Action, body: bytes, sender: str, rcpt: str) -> None:
    """RFC 5429 §2.1.1: a rejection (an MDN, RFC 8098, disposition "deleted") to the sender."""
    if not sender or delivery.queue is None:
        log.info("sieve reject for %s: no sender to tell", rcpt)
        return
    boundary = f"=_sieve_reject_{int(time.time() * 1000)}"
    original_headers = headers.header_block(body)
    reason = headers.safe_text(action.reason)
    text = (
        headers.field("From", f"Mail Delivery Subsystem <MAILER-DAEMON@{delivery.hostname}>")
        + headers.field("To", f"<{sender}>")
        + headers.field("Subject", "Automatically rejected mail")
        + headers.field("Date", email.utils.formatdate(localtime=False))
        + headers.field("Message-ID", email.utils.make_msgid(domain=delivery.hostname))
        + headers.field("Auto-Submitted", "auto-replied (rejected)")
        + b"MIME-Version: 1.0\r\n"
        + f'Content-Type: multipart/report; report-type=disposition-notification;\r\n boundary="{boundary}"\r\n'
          .encode()
        + b"\r\n"
        + f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n".encode()
        + f"Your message to <{rcpt}> was automatically rejected:\r\n{reason}\r\n".encode("utf-8")
        + f"\r\n--{boundary}\r\nContent-Type: message/disposition-notification\r\n\r\n".encode()
        + f"Reporting-UA: {delivery.hostname}; mailstack Sieve\r\nFinal-Recipient: rfc822; {rcpt}\r\n".encode()
        + b"Disposition: automatic-action/MDN-sent-automatically; deleted\r\n"
        + f"\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n".encode()
        + original_headers
        + f"\r\n--{boundary}--\r\n".encode()
    )
    try:  # RFC 5429 §2.1.1: sent with a null return path
        delivery.queue.enqueue("", [sender], _signed(delivery, text), reason="sieve reject", extra={"orig_rcpt": rcpt})
    except (OSError, ValueError) as e:
        log.error("sieve reject for %s: cannot queue the rejection to %s: %s", rcpt, sender, e)


def _vacation(delivery: _Delivery, home: Path, action: Action, body: bytes, envelope: Envelope) -> None:
    why = vacation_refusal(body, envelope, action)
    if why is not None:
        log.info("sieve vacation for %s: no reply to %s (%s)", envelope.recipient, envelope.sender or "<>", why)
        return
    if delivery.queue is None:
        return
    if not _vacation_due(home, action, envelope.sender):
        log.info("sieve vacation for %s: %s already answered", envelope.recipient, envelope.sender)
        return
    msg = email.message_from_bytes(headers.header_block(body) + b"\r\n")
    orig_subject = _decoded(msg.get("Subject", ""))
    subject = action.subject or (f"Auto: {orig_subject}" if orig_subject else "Automated reply")
    message_id = (msg.get("Message-ID") or "").strip()
    from_addr = action.from_addr or envelope.recipient
    out = (
        headers.field("From", from_addr)
        + headers.field("To", f"<{envelope.sender}>")
        + headers.field("Subject", _encoded(subject))
        + headers.field("Date", email.utils.formatdate(localtime=False))
        + headers.field("Message-ID", email.utils.make_msgid(domain=delivery.hostname))
        + (headers.field("In-Reply-To", message_id) + headers.field("References", message_id) if message_id else b"")
        + headers.field("Auto-Submitted", "auto-replied (vacation)")  # RFC 5230 §5.6, RFC 3834 §5
        + b"Precedence: bulk\r\nMIME-Version: 1.0\r\n"
    )
    if action.mime:  # RFC 5230 §4.4: the reason is a MIME entity, its own headers first
        out += action.reason.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    else:
        out += (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                + action.reason.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8"))
    if not out.endswith(b"\r\n"):
        out += b"\r\n"
    try:  # RFC 5230 §5.1 leaves the return path open; null, as Pigeonhole's default
        delivery.queue.enqueue("", [envelope.sender], _signed(delivery, out), reason="sieve vacation",
                               extra={"orig_rcpt": envelope.recipient})
    except (OSError, ValueError) as e:
        log.error("sieve vacation for %s: cannot queue the reply: %s", envelope.recipient, e)


def _signed(delivery: _Delivery, message: bytes) -> bytes:
    """DKIM-signed with the keys of its From: domain, like every message we send (the
    keys folder is the forwarder's: ``[queue] dkim_dir``); unsigned when there is none."""
    forwarder = getattr(delivery, "forwarder", None)
    if forwarder is None:
        return message
    try:
        return dkim.sign_for_from(message, forwarder.keys_dir)
    except dkim.DKIMError as e:
        log.error("sieve: cannot DKIM-sign an automatic reply: %s", e)
        return message


def _encoded(text: str) -> str:
    text = headers.safe_text(text)
    return text if text.isascii() else email.header.Header(text, "utf-8").encode(linesep=" ")  # RFC 2047


def _decoded(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value))).strip()
    except (ValueError, LookupError, UnicodeError):
        return value.strip()


def _vacation_due(home: Path, action: Action, sender: str) -> bool:
    """True (and recorded) when ``sender`` has had no reply with this handle within the period."""
    store = home / VACATION_DIR
    key = hashlib.sha256(f"{sender.lower()}\x00{action.handle}".encode("utf-8", "surrogatepass")).hexdigest()
    path = store / key
    now = time.time()
    until = now + action.period
    try:
        st = os.stat(path)
    except FileNotFoundError:
        pass
    else:
        if now < st.st_mtime:
            return False
        os.utime(path, (until, until))
        return True
    try:
        store.mkdir(mode=0o700, exist_ok=True)
        names = os.listdir(store)
        if len(names) >= MAX_VACATION_ENTRIES:
            for name in names:  # prune what no period can still cover
                try:
                    if os.stat(store / name).st_mtime <= now:
                        os.unlink(store / name)
                except OSError:
                    pass
            if len(os.listdir(store)) >= MAX_VACATION_ENTRIES:
                log.warning("sieve vacation store %s is full: no reply", store)
                return False
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.utime(path, (until, until))
    except FileExistsError:
        return False  # another delivery answered this sender a moment ago
    except OSError as e:
        log.warning("sieve vacation store %s: %s; no reply", store, e)
        return False
    return True
