"""What the MX does with rspamd's verdict: pure functions, no I/O.

The table (the contract's "On disk" and ``[spam]`` in docs/configuration.md):

=====================================  ===================================================
``reject``                             ``550 5.7.1`` with rspamd's ``smtp_message``
``soft reject``, ``greylist``          ``451 4.7.1`` (the sender retries)
``add header``, ``rewrite subject``    the recipients' Junk folder, spam headers added
(``quarantine``, ``discard``)          (the Subject rewritten when rspamd gives one);
                                       nothing accepted is ever thrown away, so these two
                                       are handled as Junk too
``no action`` (or an unknown action)   INBOX, with the score headers
rspamd down, slow, answering garbage   ``[spam] fail_mode``: ``accept`` = INBOX with
                                       ``X-Spam-Scanned: no (<why>)``; ``defer`` = ``451 4.7.1``
=====================================  ===================================================

The headers are those of rspamd's ``milter_headers`` module: when rspamd returns them
(``milter.add_headers``) they are used as given; otherwise (``milter_headers`` off, as
Debian ships it) we write the same ones ourselves: ``X-Spam: Yes`` (junk only),
``X-Spam-Status: Yes|No, score=S required=R``, ``X-Spam-Score``, ``X-Rspamd-Action``,
``X-Rspamd-Symbols`` and ``X-Rspamd-Queue-Id``.

Invariant: on a scanned message every ``X-Spam*``/``X-Rspamd-*`` field that came from
outside is removed first (``strip_forged``), so a Sieve rule or a mail reader that trusts
``X-Spam: Yes`` or ``X-Spam-Status`` sees only ours.
"""

from __future__ import annotations

import email.header
import enum
from dataclasses import dataclass

from mailstack.mail import headers as H
from mailstack.spam.rspamd import ScanResult

__all__ = ["Disposition", "Decision", "decide", "unscanned", "strip_forged", "MAX_SYMBOLS"]

MAX_SYMBOLS = 50  # symbols named in X-Rspamd-Symbols (by score); a verdict rarely has 30
MAX_TEXT = 200  # characters of rspamd's smtp_message in our reply


class Disposition(enum.Enum):
    INBOX = "inbox"
    JUNK = "junk"
    REJECT = "reject"  # 550 5.7.1
    DEFER = "defer"  # 451 4.7.1


@dataclass(frozen=True)
class Decision:
    disposition: Disposition
    fields: bytes = b""  # whole CRLF-terminated header fields to put on top of the message
    code: int = 250
    status: str = "2.0.0"
    text: str = ""
    subject: str | None = None  # replace the Subject field with this (rewrite subject)
    remove: tuple[str, ...] = ()  # more field names to remove (milter.remove_headers)
    summary: str = ""  # for the mail log: 'add header/8.00'

    def apply(self, message: bytes) -> bytes:
        """``message`` without forged spam fields (and those rspamd asked to remove), with
        the rewritten Subject, and our fields on top."""
        drop = {n.lower() for n in self.remove}
        message, _ = H.remove_fields(message, lambda f: _is_spam_field(f.key) or f.key in drop)
        if self.subject is not None:
            message = _rewrite_subject(message, self.subject)
        return self.fields + message


JUNK_ACTIONS = frozenset({"add header", "rewrite subject", "quarantine", "discard"})
DEFER_ACTIONS = frozenset({"soft reject", "greylist"})


def decide(result: ScanResult, queue_id: str | None = None) -> Decision:
    """rspamd's verdict -> what the MX does (the table in the module docstring)."""
    summary = f"{result.action}/{result.score:.2f}"
    if result.action == "reject":  # RFC 3463 §3.8: X.7.1 delivery not authorized, message refused
        return Decision(Disposition.REJECT, code=550, status="5.7.1",
                        text=_text(result.message, "Spam message rejected"), summary=summary)
    if result.action in DEFER_ACTIONS:
        return Decision(Disposition.DEFER, code=451, status="4.7.1",
                        text=_text(result.message, "Try again later"), summary=summary)
    junk = result.action in JUNK_ACTIONS
    return Decision(
        Disposition.JUNK if junk else Disposition.INBOX,
        fields=_fields(result, junk, queue_id),
        subject=result.subject if result.action == "rewrite subject" and result.subject else None,
        remove=result.remove_headers,
        summary=summary,
    )


def unscanned(reason: str, defer: bool) -> Decision:
    """rspamd gave no verdict: ``defer`` -> 451 4.7.1, else INBOX with a header saying why."""
    if defer:
        return Decision(Disposition.DEFER, code=451, status="4.7.1",
                        text="Spam filter unavailable, try again later", summary="unscanned")
    return Decision(Disposition.INBOX, fields=H.field("X-Spam-Scanned", f"no ({reason})"), summary="unscanned")


def strip_forged(message: bytes) -> bytes:
    """``message`` without any ``X-Spam*`` or ``X-Rspamd-*`` field (they are ours to write)."""
    out, _ = H.remove_fields(message, lambda f: _is_spam_field(f.key))
    return out


def _is_spam_field(key: str) -> bool:
    # X-Spam, X-Spam-Status/-Score/-Flag/-Level/-Scanned, X-Spamd-Result/-Bar, X-Rspamd-*
    return key.startswith("x-spam") or key.startswith("x-rspamd-")


def _fields(result: ScanResult, junk: bool, queue_id: str | None) -> bytes:
    given = {name.lower() for name, _ in result.add_headers}
    out = [_fold(name, value) for name, value in result.add_headers]
    ours: list[tuple[str, str]] = []
    if junk:
        ours.append(("X-Spam", "Yes"))
    ours.append(("X-Spam-Status", f"{'Yes' if junk else 'No'}, score={result.score:.2f} "
                                  f"required={result.required_score:.2f}"))
    ours.append(("X-Spam-Score", f"{result.score:.2f}"))
    ours.append(("X-Rspamd-Action", result.action))
    symbols = sorted(result.symbols, key=lambda s: -abs(s[1]))[:MAX_SYMBOLS]
    if symbols:
        ours.append(("X-Rspamd-Symbols", ", ".join(f"{n}({s:.2f})" for n, s in symbols)))
    if queue_id:
        ours.append(("X-Rspamd-Queue-Id", queue_id))
    out += [_fold(name, value) for name, value in ours if name.lower() not in given]
    return b"".join(out)


def _fold(name: str, value: str) -> bytes:
    """One field, folded at ", " so that lines stay under 78 characters (RFC 5322 §2.1.1)."""
    value = H.safe_text(value)
    if len(name) + 2 + len(value) <= 76 or ", " not in value:
        return H.field(name, value)
    parts = value.split(", ")
    lines: list[str] = []
    line = f"{name}: {parts[0]}"
    for part in parts[1:]:
        if len(line) + 2 + len(part) > 76:
            lines.append(line + ",")
            line = "\t" + part
        else:
            line += ", " + part
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _rewrite_subject(message: bytes, subject: str) -> bytes:
    """The Subject field(s) replaced by one with ``subject`` (RFC 2047-encoded when not ASCII)."""
    subject = H.safe_text(subject)[:900]
    try:
        subject.encode("ascii")
        value = subject
    except UnicodeEncodeError:
        value = email.header.Header(subject, "utf-8").encode()
    stripped, _ = H.remove_fields(message, lambda f: f.key == "subject")
    return H.insert_fields(stripped, H.field("Subject", value))


def _text(message: str, default: str) -> str:
    """rspamd's text for our reply: printable ASCII only, bounded; a default when empty."""
    clean = "".join(ch for ch in message if " " <= ch < "\x7f").strip()[:MAX_TEXT]
    return clean or default
