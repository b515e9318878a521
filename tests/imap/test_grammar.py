"""The command grammar: every command of RFC 3501 and the extensions, as typed values."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from mailstack.imap.grammar import GrammarError, parse_command
from mailstack.imap.types import (
    FETCH_MACROS, AppendArgs, AppendMessage, AuthenticateArgs, Command, CopyArgs, CreateArgs, EnableArgs, ExpungeArgs,
    FetchArgs, FetchAttribute, IdArgs, ListArgs, LoginArgs, MailboxArgs, QresyncParams, QuotaRootArgs,
    RenameArgs, SearchArgs, SearchKey, Section, SelectArgs, SequenceSet, SetQuotaArgs, StatusArgs,
    StoreArgs,
)


def p(line: bytes) -> Command:
    return parse_command(line + b"\r\n")


def seq(*ranges: tuple[int | None, int | None]) -> SequenceSet:
    return SequenceSet(tuple(ranges))


COMMANDS: list[tuple[bytes, Command]] = [
    (b"a capability", Command("a", "CAPABILITY")),
    (b"a.1 NOOP", Command("a.1", "NOOP")),
    (b"A]1 LOGOUT", Command("A]1", "LOGOUT")),
    (b"t STARTTLS", Command("t", "STARTTLS")),
    (b"t LOGIN joe@example.test secret", Command("t", "LOGIN", LoginArgs("joe@example.test", "secret"))),
    (b't LOGIN "joe" "se\\"c\\\\ret"', Command("t", "LOGIN", LoginArgs("joe", 'se"c\\ret'))),
    (b"t AUTHENTICATE plain", Command("t", "AUTHENTICATE", AuthenticateArgs("PLAIN"))),
    (b"t AUTHENTICATE PLAIN =", Command("t", "AUTHENTICATE", AuthenticateArgs("PLAIN", b""))),
    (b"t AUTHENTICATE PLAIN AGEAYg==", Command("t", "AUTHENTICATE", AuthenticateArgs("PLAIN", b"\0a\0b"))),
    (b"t SELECT inbox", Command("t", "SELECT", SelectArgs("INBOX"))),
    (b"t SELECT InBoX.sub", Command("t", "SELECT", SelectArgs("InBoX.sub"))),
    (b"t EXAMINE Archive (CONDSTORE)", Command("t", "EXAMINE", SelectArgs("Archive", True))),
    (b"t SELECT &ZeVnLIqe-", Command("t", "SELECT", SelectArgs("日本語"))),
    # RFC 7162 §3.2.5 QRESYNC (uidvalidity modseq [known-uids] [(seq-set uid-set)])
    (b"t SELECT INBOX (QRESYNC (67890007 20050715194045000))",
     Command("t", "SELECT", SelectArgs("INBOX", qresync=QresyncParams(67890007, 20050715194045000)))),
    (b"t SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541))",
     Command("t", "SELECT", SelectArgs("INBOX", qresync=QresyncParams(
         67890007, 90060115194045000, seq((41, 211), (214, 541)))))),
    (b"t EXAMINE INBOX (CONDSTORE qresync (67890007 0 1:9 (1:3,5 1,3,5,7)))",
     Command("t", "EXAMINE", SelectArgs("INBOX", True, QresyncParams(
         67890007, 0, seq((1, 9)), (seq((1, 3), (5, 5)), seq((1, 1), (3, 3), (5, 5), (7, 7))))))),
    (b"t SELECT INBOX (QRESYNC (5 7 (1:2 4,9)))",
     Command("t", "SELECT", SelectArgs("INBOX", qresync=QresyncParams(5, 7, None, (seq((1, 2)), seq((4, 4), (9, 9))))))),
    (b"t SELECT INBOX (QRESYNC (5 7 1:*))", None),  # type: ignore[list-item]  # no * in known-uids
    (b"t SELECT INBOX (QRESYNC (5 7 1:9 (1:* 1,3)))", None),  # type: ignore[list-item]
    (b"t SELECT INBOX (QRESYNC (5 7 1:9 (1:3 1:4)))", None),  # type: ignore[list-item]  # 3 vs 4 numbers
    (b"t SELECT INBOX (QRESYNC (5 7 1:9 (0:2 1,3)))", None),  # type: ignore[list-item]
    (b"t SELECT INBOX (QRESYNC (5))", None),  # type: ignore[list-item]
    (b"t SELECT INBOX (QRESYNC (0 5))", None),  # type: ignore[list-item]  # uidvalidity is nz-number
    (b"t SELECT INBOX (QRESYNC)", None),  # type: ignore[list-item]
    (b"t SELECT INBOX (CONDSTORE CONDSTORE)", None),  # type: ignore[list-item]
    (b'T SELECT "A & B"', None),  # type: ignore[list-item]  # raw "&" is bad modified UTF-7
    (b"t CREATE Archive.2024", Command("t", "CREATE", CreateArgs("Archive.2024"))),
    (b'"t" DELETE x', None),  # type: ignore[list-item]  # a quoted tag is not a tag
    (b"t DELETE {5}\r\nTrash", Command("t", "DELETE", MailboxArgs("Trash"))),
    (b"t RENAME a b", Command("t", "RENAME", RenameArgs("a", "b"))),
    (b"t SUBSCRIBE a", Command("t", "SUBSCRIBE", MailboxArgs("a"))),
    (b"t UNSUBSCRIBE a", Command("t", "UNSUBSCRIBE", MailboxArgs("a"))),
    (b't LIST "" *', Command("t", "LIST", ListArgs("", ("*",)))),
    (b"t LIST ~ %.x]", Command("t", "LIST", ListArgs("~", ("%.x]",)))),
    (b't LSUB "" "*"', Command("t", "LSUB", ListArgs("", ("*",)))),
    (
        b'T LIST (SUBSCRIBED RECURSIVEMATCH) "" (INBOX "Sent*") RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UIDNEXT))',
        Command("T", "LIST", ListArgs(
            "", ("INBOX", "Sent*"), frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}),
            frozenset({"CHILDREN", "SPECIAL-USE", "STATUS"}), ("MESSAGES", "UIDNEXT"), True,
        )),
    ),
    (b't LIST () "" % RETURN ()', Command("t", "LIST", ListArgs("", ("%",), extended=True))),
    (
        b"t STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE)",
        Command("t", "STATUS", StatusArgs("INBOX", (
            "MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE",
        ))),
    ),
    (b"t APPEND Sent {3+}\r\nabc", Command("t", "APPEND", AppendArgs("Sent", (), None, b"abc"))),
    (
        b't APPEND Sent (\\seen $Forwarded) " 5-Mar-2024 09:08:07 -0130" {3+}\r\nabc',
        Command("t", "APPEND", AppendArgs(
            "Sent", ("\\Seen", "$Forwarded"),
            datetime(2024, 3, 5, 9, 8, 7, tzinfo=timezone(-timedelta(hours=1, minutes=30))), b"abc",
        )),
    ),
    (b"t APPEND Sent () {0}\r\n", Command("t", "APPEND", AppendArgs("Sent", (), None, b""))),
    # RFC 3502 §6.3.11 MULTIAPPEND; RFC 3516 §4.4 literal8 (NUL allowed there only)
    (b't APPEND Sent {1+}\r\na (\\Seen) " 5-Mar-2024 09:08:07 +0000" ~{2+}\r\n\x00b',
     Command("t", "APPEND", AppendArgs("Sent", (), None, b"a", False, (AppendMessage(
         ("\\Seen",), datetime(2024, 3, 5, 9, 8, 7, tzinfo=timezone.utc), b"\x00b", True),)))),
    (b"t APPEND Sent {1+}\r\na ", None),
    (b"t APPEND Sent {1+}\r\na {1+}\r\n\x00", None),
    # RFC 6154 §6 / RFC 4466 §2.2 create-params
    (b"t CREATE a (USE (\\Sent \\Drafts))", Command("t", "CREATE", CreateArgs("a", ("\\Sent", "\\Drafts")))),
    (b"t CREATE a (USE ())", Command("t", "CREATE", CreateArgs("a"))),
    (b"t CREATE a (USE (\\Sent) USE (\\Sent))", Command("t", "CREATE", CreateArgs("a", ("\\Sent",)))),
    (b"t CREATE a (USE (Sent))", None),
    (b"t CREATE a (FOO (\\Sent))", None),
    (b"t CREATE a (USE (\\Sent)", None),
    # RFC 3516 §4.4 BINARY fetch items
    (b"t FETCH 1 (BINARY[1.2]<0.5> BINARY.PEEK[] BINARY.SIZE[3])", Command("t", "FETCH", FetchArgs(
        SequenceSet(((1, 1),)), (FetchAttribute("BINARY", Section((1, 2)), (0, 5)),
                                 FetchAttribute("BINARY", Section(), None, peek=True),
                                 FetchAttribute("BINARY.SIZE", Section((3,)), None, peek=True))))),
    (b"t FETCH 1 BINARY[TEXT]", None),
    (b"t FETCH 1 BINARY.SIZE[1]<0.5>", None),
    (b"t CHECK", Command("t", "CHECK")),
    (b"t CLOSE", Command("t", "CLOSE")),
    (b"t EXPUNGE", Command("t", "EXPUNGE")),
    (b"t UNSELECT", Command("t", "UNSELECT")),
    (b"t IDLE", Command("t", "IDLE")),
    (b"t NAMESPACE", Command("t", "NAMESPACE")),
    (b"t UID EXPUNGE 3:5,9", Command("t", "EXPUNGE", ExpungeArgs(seq((3, 5), (9, 9))), uid=True)),
    (b"t COPY 1:* Trash", Command("t", "COPY", CopyArgs(seq((1, None)), "Trash"))),
    (b"t UID MOVE $ Trash", Command("t", "MOVE", CopyArgs(SequenceSet((), saved=True), "Trash"), uid=True)),
    (b"t MOVE *:4 Trash", Command("t", "MOVE", CopyArgs(seq((None, 4)), "Trash"))),
    (
        b"t STORE 2:4 +FLAGS (\\Deleted)",
        Command("t", "STORE", StoreArgs(seq((2, 4)), "+", False, ("\\Deleted",))),
    ),
    (
        b"t UID STORE 1 -FLAGS.SILENT \\Seen \\Flagged",
        Command("t", "STORE", StoreArgs(seq((1, 1)), "-", True, ("\\Seen", "\\Flagged")), uid=True),
    ),
    (
        b"t STORE 1 (UNCHANGEDSINCE 12345678901) FLAGS ()",
        Command("t", "STORE", StoreArgs(seq((1, 1)), "", False, (), 12345678901)),
    ),
    (b"t FETCH 1 ALL", Command("t", "FETCH", FetchArgs(seq((1, 1)), FETCH_MACROS["ALL"]))),
    (b"t FETCH 1 fast", Command("t", "FETCH", FetchArgs(seq((1, 1)), FETCH_MACROS["FAST"]))),
    (b"t FETCH 1 FULL", Command("t", "FETCH", FetchArgs(seq((1, 1)), FETCH_MACROS["FULL"]))),
    (b"t FETCH 1 ALLX", None),  # type: ignore[list-item]
    (b"t FETCH * uid", Command("t", "FETCH", FetchArgs(seq((None, None)), (FetchAttribute("UID"),)))),
    (
        b"t UID FETCH 1:* (FLAGS) (CHANGEDSINCE 7)",
        Command("t", "FETCH", FetchArgs(seq((1, None)), (FetchAttribute("FLAGS"),), 7), uid=True),
    ),
    (  # RFC 7162 §3.2.6, either order
        b"t UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)",
        Command("t", "FETCH", FetchArgs(seq((300, 500)), (FetchAttribute("FLAGS"),), 12345, True), uid=True),
    ),
    (
        b"t UID FETCH 1 FLAGS (vanished changedsince 3)",
        Command("t", "FETCH", FetchArgs(seq((1, 1)), (FetchAttribute("FLAGS"),), 3, True), uid=True),
    ),
    (b"t UID FETCH 1 FLAGS (CHANGEDSINCE 3 FROB)", None),  # type: ignore[list-item]
    (b"t UID FETCH 1 FLAGS ()", None),  # type: ignore[list-item]
    (
        b"t FETCH 1 (BODY BODYSTRUCTURE ENVELOPE INTERNALDATE RFC822 RFC822.HEADER RFC822.SIZE RFC822.TEXT MODSEQ)",
        Command("t", "FETCH", FetchArgs(seq((1, 1)), tuple(FetchAttribute(n) for n in (
            "BODY", "BODYSTRUCTURE", "ENVELOPE", "INTERNALDATE", "RFC822", "RFC822.HEADER",
            "RFC822.SIZE", "RFC822.TEXT", "MODSEQ",
        )))),
    ),
    (
        b"t FETCH 1 (BODY[] BODY.PEEK[HEADER.FIELDS (From \"To\")]<0.100> body[1.2.MIME] BODY[3.TEXT] BODY[4.HEADER.FIELDS.NOT (X)])",
        Command("t", "FETCH", FetchArgs(seq((1, 1)), (
            FetchAttribute("BODY", Section()),
            FetchAttribute("BODY", Section((), "HEADER.FIELDS", ("From", "To")), (0, 100), peek=True),
            FetchAttribute("BODY", Section((1, 2), "MIME")),
            FetchAttribute("BODY", Section((3,), "TEXT")),
            FetchAttribute("BODY", Section((4,), "HEADER.FIELDS.NOT", ("X",))),
        ))),
    ),
    (b"t ID NIL", Command("t", "ID", IdArgs(None))),
    (
        b't ID ("name" "Thunderbird" "version" NIL)',
        Command("t", "ID", IdArgs((("name", "Thunderbird"), ("version", None)))),
    ),
    (b"t ENABLE CONDSTORE utf8=accept", Command("t", "ENABLE", EnableArgs(("CONDSTORE", "UTF8=ACCEPT")))),
    (b'T GETQUOTA ""', Command("T", "GETQUOTA", QuotaRootArgs(""))),
    (b"t GETQUOTAROOT INBOX", Command("t", "GETQUOTAROOT", MailboxArgs("INBOX"))),
    (
        b'T SETQUOTA "" (STORAGE 512 MESSAGE 1000)',
        Command("T", "SETQUOTA", SetQuotaArgs("", (("STORAGE", 512), ("MESSAGE", 1000)))),
    ),
]


@pytest.mark.parametrize(("line", "expected"), COMMANDS, ids=[c[0].decode("latin-1")[:50] for c in COMMANDS])
def test_command(line: bytes, expected: Command | None) -> None:
    if expected is None:
        with pytest.raises(GrammarError):
            p(line)
    else:
        assert p(line) == expected


def search(line: bytes) -> SearchArgs:
    args = p(b"s SEARCH " + line).args
    assert isinstance(args, SearchArgs)
    return args


def K(kind: str, value: object = None, *children: SearchKey) -> SearchKey:
    return SearchKey(kind, value, tuple(children))  # type: ignore[arg-type]


def test_search_every_key() -> None:
    args = search(
        b"ALL ANSWERED BCC b BEFORE 1-Feb-1994 BODY \"x y\" CC c DELETED DRAFT FLAGGED FROM f "
        b"HEADER X-Spam yes KEYWORD $Junk LARGER 10 NEW NOT SEEN OLD ON \"02-Feb-1994\" "
        b"OR SEEN UNSEEN RECENT SENTBEFORE 1-Jan-2000 SENTON 1-Jan-2000 SENTSINCE 1-Jan-2000 "
        b"SINCE 1-Jan-2000 SMALLER 99 SUBJECT s TEXT t TO o UID 1:* UNANSWERED UNDELETED "
        b"UNDRAFT UNFLAGGED UNKEYWORD k 2,4:* MODSEQ 5"
    )
    kinds = [k.kind for k in args.key.children]
    assert kinds == [
        "ALL", "ANSWERED", "BCC", "BEFORE", "BODY", "CC", "DELETED", "DRAFT", "FLAGGED", "FROM",
        "HEADER", "KEYWORD", "LARGER", "NEW", "NOT", "OLD", "ON", "OR", "RECENT", "SENTBEFORE",
        "SENTON", "SENTSINCE", "SINCE", "SMALLER", "SUBJECT", "TEXT", "TO", "UID", "UNANSWERED",
        "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNKEYWORD", "SEQ", "MODSEQ",
    ]
    by_kind = {k.kind: k for k in args.key.children}
    assert by_kind["BODY"].value == "x y"
    assert by_kind["HEADER"].value == ("X-Spam", "yes")
    assert by_kind["ON"].value == date(1994, 2, 2)
    assert by_kind["SEQ"].value == seq((2, 2), (4, None))
    assert by_kind["OR"].children == (K("SEEN"), K("UNSEEN"))


def test_search_nested_groups() -> None:
    args = search(b"OR (FROM a (TO b NOT (CC c))) NOT OR 1 2")
    assert args.key == K("OR", None,
        K("AND", None, K("FROM", "a"), K("AND", None, K("TO", "b"), K("NOT", None, K("AND", None, K("CC", "c"))))),
        K("NOT", None, K("OR", None, K("SEQ", seq((1, 1))), K("SEQ", seq((2, 2))))),
    )


def test_search_charset_and_literal_utf8() -> None:
    args = search(b"CHARSET UTF-8 SUBJECT {5+}\r\n\xc3\xa9t\xc3\xa9")
    assert args.charset == "UTF-8" and args.key == K("SUBJECT", "été")


def test_search_modseq_with_entry() -> None:
    args = search(b'MODSEQ "/flags/\\\\draft" all 620162338')
    assert args.key == K("MODSEQ", 620162338)


def test_uid_search() -> None:
    cmd = p(b"u UID SEARCH UID 5:*")
    assert cmd.uid and cmd.name == "SEARCH"


def test_sequence_set_resolution() -> None:
    s = seq((1, 3), (None, None), (7, 5))
    assert s.resolve(10) == [1, 2, 3, 5, 6, 7, 10]
    assert s.contains(10, 10) and s.contains(6, 10) and not s.contains(4, 10)
    assert seq((1, None)).resolve(0) == []
    assert str(s) == "1:3,*,7:5"
    assert seq((5, 9)).max_number() == 9


def test_response_names() -> None:
    att = FetchAttribute("BODY", Section((1,), "HEADER.FIELDS", ("From", "X Y")), (0, 10), peek=True)
    assert att.response_name() == 'BODY[1.HEADER.FIELDS (From "X Y")]<0>'
    assert not att.sets_seen
    assert FetchAttribute("BODY", Section()).sets_seen
    assert FetchAttribute("RFC822").sets_seen and not FetchAttribute("RFC822.HEADER").sets_seen
