"""The interpreter's bounds: what a hostile script or message cannot do to a delivery worker."""

from __future__ import annotations

import time

import pytest

from mailstack.sieve import Context, Envelope, Interpreter, SieveSyntaxError, compile_script


def run(script: str, message: bytes = b"Subject: hi\r\n\r\nbody\r\n"):
    return Interpreter.compile(script).run(Context(message, Envelope("a@example.org", "b@example.test")))


def test_pathological_regex_is_an_implicit_keep_not_a_stuck_worker() -> None:
    message = b"Subject: " + b"x" * 3000 + b"\r\n\r\nbody\r\n"
    script = 'require "regex"; if header :regex "subject" "(x+x+)+y" { discard; }'
    started = time.monotonic()
    result = run(script, message)
    assert time.monotonic() - started < 15  # "did not hang" (the budget is 2 s)
    assert [a.kind for a in result.actions] == ["keep"] and "regex" in (result.error or "")


def test_invalid_regex_is_an_implicit_keep() -> None:
    # a literal bad key is refused when compiled (test_pigeonhole's err_bad_regex*); one built
    # from a variable can only fail at run time
    result = run('require ["regex", "variables"]; set "p" "("; discard; if header :regex "subject" "${p}" { discard; }')
    assert [a.kind for a in result.actions] == ["keep"] and result.error


@pytest.mark.parametrize("script, line, column", [
    ("if " + "not " * 33 + "true { keep; }", 1, None),
    ('keep;\n\n  "x";', 3, 3),
    ('if header :is "a" "b" {\n  keep;\n', 3, 1),
    ('fileinto "x";', 1, 1),
])
def test_compile_errors_name_line_and_column(script: str, line: int, column: int | None) -> None:
    with pytest.raises(SieveSyntaxError) as e:
        compile_script(script)
    assert e.value.line == line
    if column is not None:
        assert e.value.column == column


def test_nesting_limit_is_32() -> None:
    compile_script("if true {" * 32 + "keep;" + "}" * 32)
    with pytest.raises(SieveSyntaxError, match="nested deeper than 32"):
        compile_script("if true {" * 33 + "keep;" + "}" * 33)


def test_size_limit_is_one_mebibyte() -> None:
    compile_script(b"#" * (1024 * 1024))
    with pytest.raises(SieveSyntaxError, match="larger than"):
        compile_script(b"#" * (1024 * 1024 + 1))


def test_not_utf8_is_refused_with_its_line() -> None:
    with pytest.raises(SieveSyntaxError, match="UTF-8") as e:
        compile_script(b'keep;\n# \xff\n')
    assert e.value.line == 2


def test_many_headers_and_variables_stay_bounded() -> None:
    message = b"".join(b"X-A: %d\r\n" % i for i in range(5000)) + b"\r\nbody\r\n"
    script = ('require ["variables", "relational", "comparator-i;ascii-numeric"]; '
              'if header :count "eq" :comparator "i;ascii-numeric" "x-a" "5000" { set "v" "${1}"; discard; }')
    assert run(script, message).actions == ()
    big = 'require "variables"; ' + "".join(f'set "v{i}" "x";' for i in range(300))
    result = run(big)
    assert [a.kind for a in result.actions] == ["keep"] and "variables" in (result.error or "")
