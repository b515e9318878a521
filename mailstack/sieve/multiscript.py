"""Several Sieve scripts for one delivery: the "before" scripts (the admin's, e.g. the
``mailstack vacation`` auto-reply), then the user's active script. No I/O.

The sequence, as Pigeonhole runs ``sieve_before`` scripts ahead of the personal one
(RFC 5228 §2.10.2 applies to the whole sequence, not to each script):

- each before-script runs in turn; its implicit keep is *not* carried out when a later
  script runs (the implicit keep belongs to the last script that ran), and neither is an
  explicit ``keep`` a reason to stop, so a user's filters keep working while the auto-reply
  is on; what it did explicitly (``keep``, ``fileinto``, ``vacation``, flags...) stays;
- a before-script that runs ``stop``, or that cancels the implicit keep without an explicit
  ``keep`` (``discard``, ``fileinto``, ``redirect``, ``reject``), ends the sequence: later
  scripts do not run and its own result stands;
- a before-script that fails (runtime error) counts as having done nothing: the next script
  runs (a broken auto-reply never breaks the user's filters; the message is kept in the end);
- across scripts, one ``vacation`` at most (the first: RFC 5230 §4.7 for one script), and
  none when a later script rejects (RFC 5429 §2.1: a rejection already answers the sender);
- stores into the same folder and redirects to the same address happen once (RFC 5228 §2.10.3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mailstack.sieve.interp import Action, Result, dedupe

__all__ = ["run_sequence"]


def run_sequence(runs: Sequence[Callable[[], Result]]) -> Result:
    """Run the scripts in order (each a thunk giving its ``Result``) and combine what they did.

    ``runs`` holds the before-scripts first and the personal script (when there is one) last;
    the last one is carried out whole, implicit keep included."""
    gathered: list[Action] = []
    errors: list[str] = []
    for i, run in enumerate(runs):
        result = run()
        if result.error is not None:
            errors.append(result.error)
        if i == len(runs) - 1:
            gathered.extend(result.actions)
            break
        if result.error is not None:
            continue  # a broken before-script: as if it were not there
        own = result.actions[1:] if result.implicit_keep else result.actions
        ends = result.stopped or not (result.implicit_keep or any(a.kind == "keep" for a in own))
        gathered.extend(result.actions if ends else own)
        if ends:
            break
    if not runs:
        gathered.append(Action("keep"))
    if any(a.kind in ("reject", "ereject") for a in gathered):
        gathered = [a for a in gathered if a.kind != "vacation"]
    first_vacation = next((a for a in gathered if a.kind == "vacation"), None)
    gathered = [a for a in gathered if a.kind != "vacation" or a is first_vacation]
    return Result(dedupe(gathered), "; ".join(errors) or None)
