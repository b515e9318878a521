"""The IMAP a client reads (mailstack.migrate.wire), bytes in / values out, in the flat
form aioimaplib hands over: text lines without `* ` and literals as bytearrays."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.migrate.imapcopy import ImportOptions, _batches, local_folder_name
from mailstack.migrate.source import _uid_set
from mailstack.migrate.wire import (
    format_internaldate,
    message_id,
    parse_fetch,
    parse_internaldate,
    parse_list,
    parse_namespace,
    split_flags,
)


def test_list_forms() -> None:
    lines = [b'(\\HasNoChildren) "." &AMQ-rger', b'(\\Noselect \\HasChildren) "/" "Work"',
             b'LIST (\\HasNoChildren) "/" "Work/Say \\"hi\\""', b'(\\HasNoChildren) "/" {11}',
             bytearray(b"Lit (eral) "), b"", b'() NIL INBOX', b"List completed (0.001 + 0.000 secs)."]
    got = [(e.name, e.delimiter, e.selectable) for e in parse_list(lines)]
    assert got == [(b"&AMQ-rger", ".", True), (b"Work", "/", False), (b'Work/Say "hi"', "/", True),
                   (b"Lit (eral) ", "/", True), (b"INBOX", None, True)]


def test_namespace() -> None:
    assert parse_namespace([b'(("" ".")) NIL NIL', b"Namespace completed."]) == (b"", [])
    assert parse_namespace([b'NAMESPACE (("INBOX." ".")) (("#Users." ".")) (("#Public." ".")("#ftp/" "/"))']) == (
        b"INBOX.", [b"#Users.", b"#Public.", b"#ftp/"])
    assert parse_namespace([b"Namespace completed."]) == (b"", [])


def test_fetch_items_in_any_order_and_a_body_with_parentheses() -> None:
    body = b"Subject: (x\r\n\r\n) {5}\r\nFETCH (UID 9)\r\n"
    lines = [b'1 FETCH (UID 7 FLAGS (\\Seen $Label1 \\Recent) INTERNALDATE "14-Nov-2023 22:13:20 +0100" '
             b"RFC822.SIZE %d BODY[] {%d}" % (len(body), len(body)), bytearray(body), b")",
             b"2 FETCH (BODY[] {3}", bytearray(b"abc"), b" UID 8 FLAGS ())", b"3 FETCH (FLAGS (\\Deleted))",
             b"Fetch completed."]
    first, second, third = parse_fetch(lines)
    assert (first.uid, first.flags, first.size, first.body) == (7, ("\\Seen", "$Label1", "\\Recent"), len(body), body)
    assert first.internaldate == datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone(timedelta(hours=1)))
    assert (second.uid, second.flags, second.body) == (8, (), b"abc")
    assert (third.uid, third.body) == (None, None)  # an unsolicited flag update: not a message


def test_internaldate() -> None:
    when = parse_internaldate(" 1-Feb-1999 00:00:01 -0830")
    assert when == datetime(1999, 2, 1, 0, 0, 1, tzinfo=timezone(-timedelta(hours=8, minutes=30)))
    assert format_internaldate(when) == "01-Feb-1999 00:00:01 -0830"
    for bad in ("", "31-Feb-2020 00:00:00 +0000", "01-Foo-2020 00:00:00 +0000", "01-Jan-2020 25:00:00 +0000"):
        assert parse_internaldate(bad) is None


def test_flags_and_message_id() -> None:
    assert split_flags(["\\SEEN", "\\Recent", "\\answered", "$Fwd", "Work", "\\Seen", "$Fwd", "\\Unknown"]) == (
        ("\\Seen", "\\Answered"), ("$Fwd", "Work"))
    assert message_id(b"Subject: a\r\nMessage-ID:\r\n <a@b>\r\n\r\nMessage-ID: <body@x>\r\n") == "<a@b>"
    assert message_id(b"Subject: a\n\nMessage-ID: <body@x>\n") == ""


def test_folder_names() -> None:
    assert local_folder_name(b"inbox", "/") == "INBOX"
    assert local_folder_name(b"&AMQ-rger/Sub", "/") == "Ärger.Sub"
    assert local_folder_name(b"Work/v1.2", "/") == "Work.v1_2"  # Maildir++ cannot hold a dot in a name
    assert local_folder_name(b"INBOX.Sent", ".", "INBOX.") == "Sent"  # Courier's personal namespace
    assert local_folder_name(b"Archive.2024", ".") == "Archive.2024"


def test_batches_and_uid_sets() -> None:
    sizes = {1: 10, 2: 10, 3: 100, 4: 10, 5: 10}
    assert _batches([1, 2, 3, 4, 5], sizes, ImportOptions(batch_messages=2, batch_bytes=50)) == [
        [1, 2], [3], [4, 5]]  # a message bigger than a batch goes alone
    assert _uid_set([5, 1, 2, 3, 9, 10, 12]) == "1:3,5,9:10,12"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=200), st.binary(max_size=50).map(bytearray)), max_size=8))
def test_parsers_never_raise(lines: list[bytes | bytearray]) -> None:
    parse_fetch(lines)
    parse_list(lines)
    parse_namespace(lines)
    for part in lines:
        message_id(bytes(part))
