"""`mailstack sieve ...` through the real console script: scripts land where Pigeonhole keeps
them, a bad script exits 1 naming its line and column and changes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.test_cli import cli, refused  # noqa: F401  (the fixture)

GOOD = 'require "fileinto";\nif header :contains "subject" "x" {\n  fileinto "X";\n}\n'
BAD = 'require "fileinto";\nif header :contains "subject" "x" {\n  fileinto "X"\n}\n'


def home(cli) -> Path:  # noqa: F811
    return cli.tmp / "mailboxes" / "example.test" / "alice"


def setup_user(cli) -> None:  # noqa: F811
    cli("domain", "add", "example.test")
    cli("user", "add", "alice@example.test", "--password-stdin", stdin="secret\n")


def test_put_list_get_activate_deactivate_delete(cli) -> None:  # noqa: F811
    setup_user(cli)
    cli("sieve", "put", "alice@example.test", "main", "-", stdin=GOOD)
    assert (home(cli) / "sieve" / "main.sieve").read_text() == GOOD
    assert json.loads(cli("sieve", "list", "alice@example.test", "--json").stdout) == [
        {"name": "main", "active": False}]
    assert cli("sieve", "get", "alice@example.test", "main").stdout == GOOD
    cli("sieve", "activate", "alice@example.test", "main")
    assert os.readlink(home(cli) / ".dovecot.sieve") == "sieve/main.sieve"
    assert json.loads(cli("sieve", "list", "alice@example.test", "--json").stdout) == [
        {"name": "main", "active": True}]
    refused(cli("sieve", "delete", "alice@example.test", "main", ok=None), "active")
    assert (home(cli) / "sieve" / "main.sieve").exists()
    cli("sieve", "deactivate", "alice@example.test")
    assert not os.path.lexists(home(cli) / ".dovecot.sieve")
    cli("sieve", "delete", "alice@example.test", "main")
    assert cli("sieve", "list", "alice@example.test", "--json").stdout.strip() == "[]"


def test_bad_script_names_line_and_column_and_changes_nothing(cli, tmp_path: Path) -> None:  # noqa: F811
    setup_user(cli)
    cli("sieve", "put", "alice@example.test", "main", "-", stdin=GOOD)
    cli("sieve", "activate", "alice@example.test", "main")
    bad = tmp_path / "bad.sieve"
    bad.write_text(BAD)
    r = cli("sieve", "put", "alice@example.test", "main", str(bad), ok=None)
    refused(r, "line 4, column 1")
    assert (home(cli) / "sieve" / "main.sieve").read_text() == GOOD  # the active one untouched
    r = cli("sieve", "check", str(bad), ok=None)
    refused(r, f"{bad}: line 4, column 1: error: expected ';'")
    good = tmp_path / "good.sieve"
    good.write_text(GOOD)
    assert "ok" in cli("sieve", "check", str(good)).stdout


def test_refusals_are_one_line(cli, tmp_path: Path) -> None:  # noqa: F811
    setup_user(cli)
    refused(cli("sieve", "list", "nobody@example.test", ok=None), "no such user")
    refused(cli("sieve", "get", "alice@example.test", "nope", ok=None), "no script")
    refused(cli("sieve", "activate", "alice@example.test", "nope", ok=None), "no script")
    refused(cli("sieve", "put", "alice@example.test", "../evil", "-", stdin=GOOD, ok=None), "invalid script name")
    refused(cli("sieve", "check", str(tmp_path / "missing.sieve"), ok=None), "cannot read")
    refused(cli("sieve", "put", "alice@example.test", "v", "-", stdin='require "editheader";', ok=None),
            "unsupported extension")
    big = tmp_path / "big.sieve"
    big.write_bytes(b"#" * (1024 * 1024 + 1))
    refused(cli("sieve", "check", str(big), ok=None), "larger than")
    deep = tmp_path / "deep.sieve"
    deep.write_text("if true {" * 33 + "keep;" + "}" * 33)
    refused(cli("sieve", "check", str(deep), ok=None), "nested deeper than 32")
    assert not (home(cli) / "sieve").exists() or not any((home(cli) / "sieve").iterdir())


def test_check_refuses_a_bad_regex_at_its_line_as_sieve_test(cli, tmp_path: Path) -> None:  # noqa: F811
    # Pigeonhole: "t: line 3: error: invalid regular expression '([a-z' for regex match: ..." (exit 89)
    bad = tmp_path / "re.sieve"
    bad.write_text('require "regex";\nif header :regex "subject"\n  "([a-z" { discard; }\n')
    refused(cli("sieve", "check", str(bad), ok=None), f"{bad}: line 3, column 4: error: invalid regular expression '([a-z'")
