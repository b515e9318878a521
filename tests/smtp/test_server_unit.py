"""The guard on our use of aiosmtpd (and asyncio) internals (issue 17 #5).

``smtp/server.py`` uses aiosmtpd through its public extension points (subclassing
``SMTP`` and calling its constructor, ``smtp_<VERB>`` methods found by name, ``push``,
``check_helo_needed``, ``Session``/``Envelope``, ``@syntax``). A few private names remain,
listed in ``AIOSMTPD_PRIVATE`` and ``STREAMREADER_PRIVATE``; these tests hold the
installed versions to the shape we rely on, so an upgrade that moves them fails here,
loudly, instead of breaking sessions in production:

- every private name our SMTP modules touch is one of those listed (a new one must be
  added here, with a check), and none of our own private names collides with one of
  aiosmtpd's (a collision would silently change aiosmtpd's behaviour, or ours);
- each listed name exists with the shape we use, checked on real connections over
  loopback sockets (a plain aiosmtpd server and ours) and, for the timer, by its effect;
- the installed aiosmtpd is inside the range pinned in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosmtpd
import pytest
from aiosmtpd.smtp import SMTP
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from mailstack.smtp import lmtp, mx, server, submission
from mailstack.smtp.server import BaseSMTP, ServerSettings

ROOT = Path(__file__).resolve().parents[2]
OUR_MODULES = [Path(m.__file__ or "") for m in (server, submission, lmtp)]  # the SMTP subclasses
HANDLER_BASE = Path(mx.__file__ or "")  # mx.MXHandler, which submission's handler extends

# aiosmtpd names we use, and how:
AIOSMTPD_PRIVATE = {
    "_reader",  # the connection's asyncio.StreamReader (DATA and SASL lines are read from it)
    "_writer",  # its StreamWriter (STARTTLS: StreamWriter.start_tls)
    "_reset_timeout",  # re-arm the idle timer, optionally for a given duration (DATA deadline)
    "_timeout_cb",  # what the timer calls: overridden to say 421 4.4.2 before closing
}
# asyncio.StreamReader names we use (no public way to drop buffered bytes or to point the
# reader's flow control at the TLS transport after StreamWriter.start_tls):
STREAMREADER_PRIVATE = {"_buffer", "_transport"}


def _source(path: Path) -> str:
    return path.read_text()


def _defined(text: str) -> set[str]:
    """Private names a module defines: ``self._x = ...`` (or annotated) and ``def _x(``."""
    return (set(re.findall(r"\bself\.(_[A-Za-z]\w*)\s*(?::[^=\n]+)?=(?!=)", text))
            | set(re.findall(r"^\s*(?:async\s+)?def\s+(_[A-Za-z]\w*)\s*\(", text, re.M)))


def _used_private_names() -> tuple[set[str], set[str], set[str], set[str]]:
    """(private names used on ``self`` in our SMTP modules, those they define, those the
    handler base defines, those used on ``self._reader``)."""
    used: set[str] = set()
    own: set[str] = set()
    reader: set[str] = set()
    for path in OUR_MODULES:
        text = _source(path)
        used |= set(re.findall(r"\bself\.(_[A-Za-z]\w*)", text))
        own |= _defined(text)
        reader |= set(re.findall(r"\._reader\.(_[A-Za-z]\w*)", text))
        reader |= set(re.findall(r'getattr\(self\._reader,\s*"(_\w+)"', text))
    return used, own, _defined(_source(HANDLER_BASE)), reader


async def _connect(factory: Callable[[], asyncio.Protocol],
                   talk: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(factory, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await talk(reader, writer)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
        srv.close()
        await srv.wait_closed()


def _live(cls: str, check: Callable[[Any], None] = lambda proto: None) -> dict[str, Any]:
    """A real connection to a plain aiosmtpd server or to ours: ``check(protocol)`` runs
    after the greeting and an EHLO, while the connection is up; returns the instance's
    attributes of that moment."""
    seen: dict[str, Any] = {}

    async def main() -> None:
        instances: list[SMTP] = []

        def factory() -> SMTP:
            proto: SMTP
            if cls == "aiosmtpd":
                proto = SMTP(object(), hostname="mx.example.test", loop=asyncio.get_running_loop())
            else:
                proto = BaseSMTP(None, ServerSettings(service="smtp", hostname="mx.example.test",  # type: ignore[arg-type]
                                                      max_message_size=1000))
            instances.append(proto)
            return proto

        async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert (await reader.readline()).startswith(b"220 ")
            writer.write(b"EHLO client.example\r\n")
            while not (line := await reader.readline()).startswith(b"250 "):
                assert line.startswith(b"250-")
            (proto,) = instances
            seen.update(vars(proto))
            check(proto)

        await _connect(factory, talk)

    asyncio.run(main())
    return seen


def test_aiosmtpd_version_is_the_pinned_one() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if re.match(r"aiosmtpd\b", d)]
    spec = SpecifierSet(pin[len("aiosmtpd"):])
    assert Version("1.5") not in spec, "pin an upper bound: the private names below change between releases"
    assert Version(aiosmtpd.__version__) in spec, f"aiosmtpd {aiosmtpd.__version__} is outside {pin}"


def test_every_private_name_we_touch_is_guarded() -> None:
    used, own, handler_base, reader = _used_private_names()
    plain = _live("aiosmtpd")
    theirs = set(dir(SMTP)) | {n for n in plain if n.startswith("_")}
    # a private name we use but do not define must be aiosmtpd's, and guarded here
    foreign = used - own - handler_base
    assert foreign <= AIOSMTPD_PRIVATE, f"unguarded aiosmtpd internals: {sorted(foreign - AIOSMTPD_PRIVATE)}"
    # a private name we define must not be one of aiosmtpd's, unless it is a guarded override
    clash = (own & theirs) - AIOSMTPD_PRIVATE
    assert not clash, f"our names collide with aiosmtpd's: {sorted(clash)}"
    assert reader <= STREAMREADER_PRIVATE, f"unguarded StreamReader internals: {sorted(reader - STREAMREADER_PRIVATE)}"
    assert AIOSMTPD_PRIVATE <= theirs, f"aiosmtpd no longer has {sorted(AIOSMTPD_PRIVATE - theirs)}"


@pytest.mark.parametrize("kind", ["aiosmtpd", "mailstack"])
def test_streams_on_a_live_connection(kind: str) -> None:
    checked = []

    def check(proto: Any) -> None:
        reader: Any = proto._reader
        assert isinstance(reader, asyncio.StreamReader)
        assert isinstance(proto._writer, asyncio.StreamWriter)
        assert proto._writer.transport is proto.transport is not None
        for name in STREAMREADER_PRIVATE:
            assert hasattr(reader, name), f"asyncio.StreamReader has no {name}"
        assert isinstance(reader._buffer, bytearray)  # type: ignore[attr-defined]  # .clear() drops pipelined bytes
        assert reader._transport is proto.transport  # type: ignore[attr-defined]  # what STARTTLS re-points
        checked.append(proto)

    _live(kind, check)
    assert checked


def test_reader_is_not_repointed_by_start_tls() -> None:
    """Why server.smtp_STARTTLS sets ``_reader._transport``: StreamWriter.start_tls
    replaces the writer's and the protocol's transport only. Should asyncio start doing
    it, the assignment can go."""
    src = inspect.getsource(asyncio.StreamWriter.start_tls)
    assert "_reader" not in src and "_stream_reader" not in src


def test_timer_names_have_the_shape_we_call() -> None:
    sig = inspect.signature(SMTP._reset_timeout)
    assert list(sig.parameters) == ["self", "duration"] and sig.parameters["duration"].default is None
    assert list(inspect.signature(SMTP._timeout_cb).parameters) == ["self"]
    # the timer calls _timeout_cb (our override) and is re-armed per complete command only
    assert "self._timeout_cb" in inspect.getsource(SMTP._reset_timeout)
    assert "self._reset_timeout()" in inspect.getsource(SMTP._handle_client)


def test_idle_timeout_goes_through_our_timeout_cb() -> None:
    """The effect of the override, over a real socket: 421 4.4.2, then the close."""

    async def main() -> bytes:
        got = b""

        def factory() -> BaseSMTP:
            return BaseSMTP(None, ServerSettings(service="smtp", hostname="mx.example.test",  # type: ignore[arg-type]
                                                 max_message_size=1000, timeout=0.3))

        async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal got
            assert (await reader.readline()).startswith(b"220 ")
            got = await asyncio.wait_for(reader.read(), 10)

        await _connect(factory, talk)
        return got

    assert asyncio.run(main()) == b"421 4.4.2 Timeout exceeded, closing connection\r\n"


def test_command_size_limits_are_per_connection() -> None:
    """aiosmtpd keeps one dict on the class and clears it in every __init__: ours is our own."""
    live = _live("mailstack")
    assert live["command_size_limits"] is not SMTP.command_size_limits
    assert live["command_size_limits"]["MAIL"] > SMTP.command_size_limit  # raised by EHLO (RFC 1870...)
    assert SMTP.command_size_limits.get("MAIL", SMTP.command_size_limit) == SMTP.command_size_limit
