"""The IMAP command table: command name -> handler and the states it may run in (RFC 3501 §6).

One module per command family, each with a docstring citing its RFCs and a
``HANDLERS: dict[str, Handler]``:

- ``auth``: any state and not authenticated: CAPABILITY, NOOP, LOGOUT, ID, STARTTLS,
  LOGIN, AUTHENTICATE, ENABLE (RFC 3501 §6.1, §6.2; RFC 2971; RFC 4616; RFC 5161)
- ``mailbox``: SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE,
  NAMESPACE, CHECK, CLOSE, UNSELECT (RFC 3501 §6.3, §6.4.1-2; RFC 2342; RFC 3691;
  CREATE-SPECIAL-USE RFC 6154 §5.2)
- ``listing``: LIST, LSUB, STATUS (RFC 3501 §6.3.8-10; RFC 5258; RFC 5819; RFC 6154)
- ``quota``: GETQUOTAROOT, GETQUOTA, SETQUOTA (RFC 9208)
- ``store``: STORE, COPY, MOVE, EXPUNGE, APPEND (RFC 3501 §6.3.11, §6.4.3, §6.4.6-7;
  RFC 4315; RFC 6851; RFC 7162 §3.1.3; MULTIAPPEND RFC 3502; literal8 RFC 3516 §4.4;
  CATENATE RFC 4469)
- ``fetch``: FETCH, its items rendered from a table (RFC 3501 §6.4.5, §7.4.2; RFC 7162 §3.1.4;
  BINARY RFC 3516 §4.2)
- ``search``: SEARCH (RFC 3501 §6.4.4; RFC 7162 §3.1.5), SORT and THREAD (RFC 5256),
  CANCELUPDATE (RFC 5267 §4.3.5)
- ``idle``: IDLE (RFC 2177)
- ``compress``: COMPRESS (RFC 4978)

A handler is a generator ``handler(session, cmd)`` that yields response bytes and effects
(``effects``); it raises ``ImapError`` (or a ``StorageError``) for a failure, and
``Session.run`` turns that into the tagged response. Handlers do no I/O but storage.

Which command may run in which state is said once, in ``states.ALLOWED``; ``COMMANDS``
only joins each name to its handler and to the states that table gives it.

Invariants: every command the grammar knows has exactly one handler and at least one
state (``tests/imap/test_states.py``); no family names a command another one does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..effects import Output
from ..states import State, states_of
from ..types import Command
from . import auth, compress, fetch, idle, listing, mailbox, quota, search, store

if TYPE_CHECKING:
    from ..session import Session

__all__ = ["COMMANDS", "CommandSpec", "Handler"]

Handler = Callable[["Session", Command], Iterator[Output]]

_FAMILIES: tuple[Mapping[str, Handler], ...] = (
    auth.HANDLERS, mailbox.HANDLERS, listing.HANDLERS, quota.HANDLERS, fetch.HANDLERS, store.HANDLERS,
    search.HANDLERS, idle.HANDLERS, compress.HANDLERS,
)


@dataclass(frozen=True)
class CommandSpec:
    """One row of the command table."""

    name: str
    handler: Handler
    states: frozenset[State]


def _table() -> Mapping[str, CommandSpec]:
    out: dict[str, CommandSpec] = {}
    for family in _FAMILIES:
        for name, handler in family.items():
            if name in out:  # pragma: no cover - a programming error, caught by the tests
                raise RuntimeError(f"IMAP command {name} has two handlers")
            out[name] = CommandSpec(name, handler, states_of(name))
    return MappingProxyType(out)


COMMANDS: Mapping[str, CommandSpec] = _table()
