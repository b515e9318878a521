"""Carries out the core's script requests on one user's ``ScriptStore`` (synchronous: the
adapter runs it in a thread) and names the outcome as a ManageSieve response.

Invariants:
- Every store error becomes its RFC 5804 response code (§1.3): a missing script
  NONEXISTENT, deleting the active one ACTIVE, renaming onto an existing one
  ALREADYEXISTS, a quota QUOTA/MAXSIZE, QUOTA/MAXSCRIPTS or QUOTA; a failing disk TRYLATER.
- Scripts are compiled here, off the event loop (PUTSCRIPT, CHECKSCRIPT, SETACTIVE): a
  script that does not compile gets ``NO "line N: error: ..."`` (Pigeonhole's wording)
  and nothing is written. Nothing here parses protocol; the core has checked names and sizes.
"""

from __future__ import annotations

import logging

from mailstack.sieve import SieveSyntaxError, compile_script
from mailstack.sieve.store import (
    NoSuchScript,
    QuotaExceeded,
    ScriptActive,
    ScriptError,
    ScriptExists,
    ScriptStore,
)

from . import responses as R
from .core import CheckScript, CheckSpace, DeleteScript, GetScript, ListScripts, PutScript, RenameScript, ScriptRequest, SetActive
from .responses import Response

__all__ = ["execute"]

log = logging.getLogger(__name__)

_QUOTA = {"size": R.QUOTA_MAXSIZE, "scripts": R.QUOTA_MAXSCRIPTS, "storage": R.QUOTA}


def execute(store: ScriptStore, request: ScriptRequest) -> Response:
    """Run ``request``; the response to send. Never raises for a refused request."""
    try:
        return _run(store, request)
    except NoSuchScript:
        return R.NONEXISTENT
    except ScriptActive:
        return R.ACTIVE
    except ScriptExists:
        return R.ALREADYEXISTS
    except QuotaExceeded as e:
        return _QUOTA[e.what]
    except ScriptError:
        return R.no("Invalid script name.")
    except SieveSyntaxError as e:
        return R.no(f"line {e.line}: error: {e.message} (column {e.column}).")
    except OSError as e:
        log.error("managesieve: scripts of %s: %s", store.home, e)
        return R.TRYLATER


def _run(store: ScriptStore, request: ScriptRequest) -> Response:
    if isinstance(request, ListScripts):
        # RFC 5804 §2.7: one line per script, the active one marked
        lines = tuple(R.string(s.name) + (b" ACTIVE" if s.active else b"") for s in store.list())
        return R.ok("Listscripts completed.", lines=lines)
    if isinstance(request, GetScript):
        # RFC 5804 §2.9: the script as a literal, then OK
        data = store.get(request.name)
        return R.ok("Getscript completed.", lines=(b"{%d}\r\n" % len(data) + data,))
    if isinstance(request, PutScript):
        store.put(request.name, request.text)  # RFC 5804 §2.6; compiles, checks the quota, then writes
        return R.ok("Putscript completed.")
    if isinstance(request, CheckScript):
        compile_script(request.text)  # RFC 5804 §2.12
        return R.ok("Script is valid.")
    if isinstance(request, CheckSpace):
        store.check_space(request.name, request.size)  # RFC 5804 §2.5
        return R.ok("Putscript would succeed.")
    if isinstance(request, SetActive):
        if not request.name:
            store.deactivate()  # RFC 5804 §2.8: "" = no active script
            return R.ok("Setactive completed.")
        compile_script(store.get(request.name))  # never activate what would not run
        store.activate(request.name)
        return R.ok("Setactive completed.")
    if isinstance(request, DeleteScript):
        store.delete(request.name)  # RFC 5804 §2.10: not the active one
        return R.ok("Deletescript completed.")
    if isinstance(request, RenameScript):
        store.rename(request.old, request.new)  # RFC 5804 §2.11.1
        return R.ok("Renamescript completed.")
    raise AssertionError(f"unknown request {request!r}")  # pragma: no cover
