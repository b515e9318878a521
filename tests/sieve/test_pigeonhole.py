"""The interpreter against Dovecot's Pigeonhole: the same script and message must give the
same decision as ``sieve-test`` (Debian's dovecot-sieve), run here for every row.

A decision is compared as a set: stores (folder, flags, ``:create``), redirects, rejects, or
a compile error (compared by its line). "Discarded" is the empty set. Debian's Pigeonhole
has no ``ereject``, so that one is tested at delivery only (tests/smtp/test_sieve_delivery.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack.sieve import Context, Envelope, Interpreter, SieveSyntaxError
from tests.helpers import require_tool

SENDER = "alice+lists@example.org"
RECIPIENT = "bob+work@example.com"

M_PLAIN = (
    "From: Alice Example <alice+lists@example.org>\r\n"
    "To: bob@example.com, Carol <carol@example.net>\r\n"
    "Cc: dave@Example.COM\r\n"
    "Subject: Hello World [ticket 42]\r\n"
    "Date: Tue, 1 Dec 2026 10:15:30 +0100\r\n"
    "Received: from a by b; Tue, 1 Dec 2026 09:15:30 +0000\r\n"
    "Received: from c by d; Mon, 30 Nov 2026 08:00:00 +0000\r\n"
    "X-Spam-Score: 7\r\n"
    "List-Id: <dev.lists.example.org>\r\n"
    "\r\n"
    "Hello Bob,\r\nthe build is broken again.\r\n"
).encode()
M_MIME = (
    "From: =?utf-8?q?J=C3=BCrgen?= <juergen@example.de>\r\n"
    "To: bob@example.com\r\n"
    "Subject: =?utf-8?b?R3LDvMOfZSBhdXMgQmVybGlu?=\r\n"
    "Date: Wed, 2 Dec 2026 23:59:59 -0500\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="xx"\r\n'
    "\r\n"
    "--xx\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    "Die Rechnung ist f=C3=A4llig.\r\n"
    "--xx\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    "c2VjcmV0IGludm9pY2U=\r\n"
    "--xx--\r\n"
).encode()

SCRIPTS: dict[str, str] = {
    "empty": "",
    "keep": "keep;",
    "discard": "discard;",
    "stop_first": "stop; discard;",
    "header_contains": 'require "fileinto"; if header :contains "subject" "WORLD" { fileinto "Hello"; }',
    "header_is_octet": 'if header :is :comparator "i;octet" "subject" "hello world [ticket 42]" { discard; }',
    "header_matches": 'require "fileinto"; if header :matches "subject" "*[ticket ?2]" { fileinto "T"; }',
    "header_decoded": 'require "fileinto"; if header :contains "subject" "Größe" { fileinto "DE"; }',
    "address_domain": 'require "fileinto"; if address :domain :is "cc" "example.com" { fileinto "CC"; }',
    "address_localpart": 'if address :localpart :is ["to","cc"] "carol" { discard; }',
    "address_all_from": 'require "fileinto"; if address :all :is "from" "alice+lists@example.org" { fileinto "A"; }',
    "address_decoded_name": 'require "fileinto"; if address :is "from" "juergen@example.de" { fileinto "J"; }',
    "envelope_from": 'require ["envelope","fileinto"]; if envelope :is "from" "alice+lists@example.org" { fileinto "E"; }',
    "envelope_to_detail": 'require ["envelope","subaddress","fileinto"]; '
                          'if envelope :detail "to" "work" { fileinto "Work"; }',
    "subaddress_user": 'require ["subaddress","fileinto"]; if address :user "from" "alice" { fileinto "U"; }',
    "exists": 'require "fileinto"; if exists ["list-id","x-spam-score"] { fileinto "Lists"; }',
    "exists_missing": 'if exists "x-nope" { discard; }',
    "size_over": 'if size :over 100 { discard; }',
    "size_under": 'if size :under 1K { discard; }',
    "allof_anyof_not": 'require "fileinto"; if allof (not exists "x-nope", anyof (false, header :contains "to" "carol"))'
                       ' { fileinto "Both"; }',
    "elsif_chain": 'require "fileinto"; if header :is "subject" "x" { discard; } '
                   'elsif header :contains "from" "alice" { fileinto "Alice"; } else { keep; }',
    "else_branch": 'require "fileinto"; if false { discard; } elsif false { discard; } else { fileinto "Else"; }',
    "imap4flags": 'require ["imap4flags","fileinto"]; setflag "\\\\Seen"; addflag ["\\\\Flagged","$Work"]; '
                  'removeflag "\\\\Seen"; fileinto "F";',
    "imap4flags_implicit": 'require "imap4flags"; addflag "\\\\Seen";',
    "imap4flags_flags_tag": 'require ["imap4flags","fileinto"]; fileinto :flags "\\\\Answered" "F"; keep;',
    "hasflag": 'require ["imap4flags"]; addflag "urgent"; if hasflag :is "URGENT" { discard; }',
    "copy": 'require ["fileinto","copy"]; fileinto :copy "Archive";',
    "fileinto_twice": 'require "fileinto"; fileinto "A"; fileinto "A"; fileinto "B";',
    "create": 'require ["fileinto","mailbox"]; fileinto :create "New/Sub";',
    "redirect": 'redirect "someone@example.net";',
    "redirect_copy": 'require "copy"; redirect :copy "someone@example.net";',
    "redirect_too_many": 'redirect "a@example.net"; redirect "b@example.net"; redirect "c@example.net"; '
                         'redirect "d@example.net"; redirect "e@example.net";',
    "reject": 'require "reject"; if header :contains "subject" "hello" { reject "Not wanted"; }',
    "reject_conflict": 'require ["reject","fileinto"]; fileinto "X"; reject "no";',
    "body_text": 'require ["body","fileinto"]; if body :text :contains "fällig" { fileinto "Bills"; }',
    "body_raw": 'require "body"; if body :raw :contains "c2VjcmV0" { discard; }',
    "body_content": 'require "body"; if body :content "application" :contains "secret" { discard; }',
    "body_plain": 'require "body"; if body :contains "broken" { discard; }',
    "variables_match": 'require ["variables","fileinto"]; if header :matches "list-id" "<*.lists.*>" '
                       '{ fileinto "L/${1}"; }',
    "variables_set": 'require ["variables","fileinto"]; set :upperfirst :lower "f" "WORK"; fileinto "${f}";',
    "variables_length": 'require ["variables","fileinto"]; set :length "n" "abcd"; fileinto "n${n}";',
    "string_test": 'require ["variables"]; set "a" "x"; if string :is "${a}" "x" { discard; }',
    "relational_count": 'require ["relational","comparator-i;ascii-numeric","fileinto"]; '
                        'if address :count "ge" :comparator "i;ascii-numeric" ["to","cc"] "3" { fileinto "Many"; }',
    "relational_value": 'require ["relational","comparator-i;ascii-numeric"]; '
                        'if header :value "gt" :comparator "i;ascii-numeric" "x-spam-score" "5" { discard; }',
    "numeric_is": 'require ["comparator-i;ascii-numeric"]; if header :is :comparator "i;ascii-numeric" '
                  '"x-spam-score" "007" { discard; }',
    "regex": 'require ["regex","variables","fileinto"]; if header :regex "subject" "ticket ([0-9]+)" '
             '{ fileinto "T${1}"; }',
    "date_originalzone": 'require ["date","fileinto"]; if date :originalzone :is "date" "hour" "10" { fileinto "D"; }',
    "date_zone": 'require ["date","fileinto"]; if date :zone "+0000" :is "date" "time" "09:15:30" { fileinto "Z"; }',
    "date_weekday": 'require ["date","fileinto"]; if date :zone "-0500" "date" "weekday" "3" { fileinto "W"; }',
    # (Pigeonhole drops :index when :zone follows it; without :zone they agree)
    "index": 'require ["date","index","fileinto"]; if date :index 2 "received" "day" "30" { fileinto "I"; }',
    "index_header": 'require ["index","fileinto"]; if header :index 2 :contains "received" "from c" { fileinto "I"; }',
    "date_first_only": 'require ["date","fileinto"]; if date :zone "+0000" "received" "day" "30" { fileinto "R"; }',
    "index_last": 'require ["index","fileinto"]; if header :index 1 :last :contains "received" "from c" '
                  '{ fileinto "Last"; }',
    "encoded_character": 'require ["encoded-character","fileinto"]; fileinto "${hex:42 6f}x${unicode:263a}";',
    "vacation": 'require "vacation"; vacation "I am away";',
    "vacation_days": 'require "vacation"; vacation :days 3 :subject "Away" "I am away";',
    "vacation_days_clamped": 'require "vacation"; vacation :days 365 "Long trip";',
    "vacation_seconds": 'require ["vacation", "vacation-seconds"]; vacation :seconds 172800 "Back soon";',
    "vacation_seconds_min": 'require ["vacation", "vacation-seconds"]; vacation :seconds 60 "Back soon";',
    "vacation_and_fileinto": 'require ["vacation", "fileinto"]; vacation :addresses "bob@example.com" "Away"; '
                             'fileinto "Later";',
    "vacation_twice": 'require "vacation"; vacation "a"; vacation :handle "x" "b";',
    "vacation_and_reject": 'require ["vacation", "reject"]; vacation "a"; reject "no";',
    "multiline": 'require "variables";\nset "x" text:\nLine\n..dot\n.\n;\nif string :matches "${x}" "Line*.dot*" { discard; }',
    # compile errors: both must refuse, at the same line
    "err_unknown_command": 'require "fileinto";\n\nfrobnicate;',
    "err_missing_require": 'if true {\n  fileinto "x";\n}',
    "err_missing_semicolon": 'keep\ndiscard;',
    "err_unterminated": 'if true {\n keep;\n',
    "err_bad_tag": 'if header :bogus "a" "b" {\n keep; }',
    "err_require_late": 'keep;\nrequire "fileinto";',
    "err_unknown_extension": 'require "nonexistent-ext";',
    "err_else_alone": 'keep;\nelse { keep; }',
    "err_copy_not_required": 'redirect :copy "a@example.net";',
    # a bad :regex key is a compile error at the key's line (sieve-test exits 89), not a run-time keep
    "err_bad_regex": 'require "regex";\nif header :regex "subject"\n  "([a-z" {\n discard; }',
    "err_bad_regex_in_list": 'require "regex";\nif header :regex "subject" ["ok",\n "*abc"] {\n discard; }',
    "err_bad_regex_bounds": 'require ["regex", "fileinto"];\nif address :regex :all "from" "a{2,1}" { fileinto "x"; }',
    "err_bad_regex_perl_group": 'require "regex";\n\nif header :regex "subject" "(?i)hello" { discard; }',
    "regex_posix_class": 'require "regex";\nif address :regex :all "from" "^[[:alpha:]+]+@" { discard; }',
}

MESSAGES = {"plain": M_PLAIN, "mime": M_MIME}

DOVECOT_CONF = """\
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:{home}/mail
protocols =
plugin {{
  sieve_extensions = +vacation-seconds
}}
"""


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    require_tool("sieve-test")
    # sieve-test refuses root; as root it runs as nobody, which must be able to read the files
    d = Path(tempfile.mkdtemp(prefix="sieve-pigeonhole-"))
    os.chmod(d, 0o777)
    uid, gid = ("nobody", "nogroup") if os.getuid() == 0 else (str(os.getuid()), str(os.getgid()))
    (d / "dovecot.conf").write_text(DOVECOT_CONF.format(uid=uid, gid=gid, home=d))
    for name, data in MESSAGES.items():
        (d / f"{name}.eml").write_bytes(data)
    for p in d.iterdir():
        os.chmod(p, 0o666)
    yield d
    shutil.rmtree(d, ignore_errors=True)


Verdict = frozenset[tuple[str, ...]]


def pigeonhole(workdir: Path, script: str, message: str) -> Verdict:
    path = workdir / "t.sieve"
    path.write_text(script + "\n")
    os.chmod(path, 0o666)
    r = subprocess.run(["sieve-test", "-c", str(workdir / "dovecot.conf"), "-f", SENDER, "-a", RECIPIENT,
                        "-r", RECIPIENT, str(path), str(workdir / f"{message}.eml")],
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    m = re.search(r"^t: line (\d+): error:", out, re.M)
    if "failed to compile" in out:
        assert m, out
        return frozenset({("error", m.group(1))})
    if "resolved with successful implicit keep" in out:
        return frozenset({("store", "INBOX", "")})
    verdict: set[tuple[str, ...]] = set()
    current: list[str] | None = None
    items: list[list[str]] = []
    for line in out.splitlines():
        s = line.strip()
        if s.startswith("* store message in folder: "):
            current = ["store", s.split(": ", 1)[1], ""]
            items.append(current)
        elif s.startswith("* redirect message to: "):
            current = ["redirect", s.split(": ", 1)[1].strip("<>")]
            items.append(current)
        elif s.startswith("* reject message with reason: "):
            current = ["reject", s.split(": ", 1)[1]]
            items.append(current)
        elif s.startswith("* ereject message") or s.startswith("* reject message"):
            current = ["reject", s.split(": ", 1)[-1]]
            items.append(current)
        elif s.startswith("* send vacation message"):
            current = ["vacation", ""]
            items.append(current)
        elif s.startswith("=> seconds :") and current is not None and current[0] == "vacation":
            current[1] = s.split(":", 1)[1].strip()
        elif s.startswith("+ add IMAP flags: ") and current is not None and current[0] == "store":
            current[2] = " ".join(sorted(s.split(": ", 1)[1].lower().split()))
        elif s.startswith("+ create mailbox") and current is not None:
            current.append("create")
    assert r.returncode == 0, out
    for item in items:
        verdict.add(tuple(item))
    return frozenset(verdict)


def ours(script: str, message: str) -> Verdict:
    try:
        interp = Interpreter.compile(script + "\n")
    except SieveSyntaxError as e:
        return frozenset({("error", str(e.line))})
    result = interp.run(Context(MESSAGES[message], Envelope(SENDER, RECIPIENT)))
    verdict: set[tuple[str, ...]] = set()
    for a in result.actions:
        if a.kind in ("keep", "fileinto"):
            item = ["store", a.folder, " ".join(sorted(f.lower() for f in a.flags))]
            if a.create:
                item.append("create")
            verdict.add(tuple(item))
        elif a.kind == "redirect":
            verdict.add(("redirect", a.address))
        elif a.kind in ("reject", "ereject"):
            verdict.add(("reject", a.reason))
        elif a.kind == "vacation":
            verdict.add(("vacation", str(a.period)))
    return frozenset(verdict)


@pytest.mark.parametrize("message", sorted(MESSAGES))
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_same_decision_as_pigeonhole(workdir: Path, name: str, message: str) -> None:
    script = SCRIPTS[name]
    expected = pigeonhole(workdir, script, message)
    assert ours(script, message) == expected, (name, message)


def test_table_exercises_every_kind_of_decision(workdir: Path) -> None:
    """The table is worth something only if Pigeonhole's answers differ across it."""
    kinds = {item[0] for name in SCRIPTS for item in pigeonhole(workdir, SCRIPTS[name], "plain")}
    assert kinds == {"store", "redirect", "reject", "error", "vacation"}
