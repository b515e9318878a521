"""``mailstack.replies.Reply``: the one reply value, and ``Reply.parse`` for what a remote
server answered (the outbound client's replies, kept in the queue and quoted in bounces)."""

from __future__ import annotations

import pytest

from mailstack.replies import Reply


@pytest.mark.parametrize(("code", "text", "enhanced", "rest", "status", "line"), [
    # RFC 2034 §4: the enhanced code is the first word, of the reply's class
    (550, "5.1.1 <nobody@remote.test>: no such user", "5.1.1", "<nobody@remote.test>: no such user", "5.1.1",
     "550 5.1.1 <nobody@remote.test>: no such user"),
    (250, "2.0.0", "2.0.0", "", "2.0.0", "250 2.0.0"),
    (421, "Service not available", "", "Service not available", "4.0.0", "421 Service not available"),
    # another class than the basic code: not an enhanced code of this reply, kept as text
    (550, "4.1.1 confused", "", "4.1.1 confused", "5.0.0", "550 4.1.1 confused"),
    # glued to the text: not a word of its own (RFC 2034 §4 wants a space after it)
    (550, "5.1.1, no", "", "5.1.1, no", "5.0.0", "550 5.1.1, no"),
    (554, "", "", "", "5.0.0", "554"),
    # a CR or LF from a remote never makes a second line
    (451, "4.4.2 lost\r\nX-Injected: yes", "4.4.2", "lost X-Injected: yes", "4.4.2", "451 4.4.2 lost X-Injected: yes"),
])
def test_parse(code: int, text: str, enhanced: str, rest: str, status: str, line: str) -> None:
    r = Reply.parse(code, text)
    assert (r.code, r.enhanced, r.text, r.status, str(r)) == (code, enhanced, rest, status, line)


def test_outcome_classes() -> None:
    assert Reply.parse(250, "ok").is_ok and Reply.parse(451, "later").is_temporary
    assert Reply.parse(550, "no").is_permanent and not Reply.parse(550, "no").is_temporary


@pytest.mark.parametrize(("code", "enhanced", "text"), [
    (199, "", "x"), (600, "", "x"), (550, "4.1.1", "x"), (550, "5.1", "x"), (550, "5.1.1", "a\r\nb"),
])
def test_bad_values_are_refused(code: int, enhanced: str, text: str) -> None:
    with pytest.raises(ValueError):
        Reply(code, enhanced, text)
