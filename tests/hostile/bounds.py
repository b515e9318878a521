"""The bounds every hostile-input property holds a parser to: time and size.

``bounded(fn, *args)`` runs ``fn`` under a SIGALRM watchdog, so a parser that loops
forever (the ``To: bob@example.test)`` fault) fails its test in ``SECONDS`` instead of
hanging the suite and eating memory; the Hypothesis ``deadline`` of ``SETTINGS`` then
holds each example to a second. ``assert_size`` checks an output against a small multiple
of its input. Timings here are generous "did not hang" bounds for 2 shared cores, never
performance figures.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from hypothesis import HealthCheck, settings

T = TypeVar("T")

SECONDS = 5.0  # one call, wall clock: a hang, not slowness, is what this catches
# Each example < 1 s (Hypothesis deadline); few examples so that tests/hostile/ runs well
# under a minute on a loaded machine.
SETTINGS = settings(
    max_examples=150,
    deadline=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


class Hung(AssertionError):
    """The parser did not return within the bound."""


def bounded(fn: Callable[..., T], *args: object, seconds: float = SECONDS) -> T:
    """``fn(*args)``, failing with ``Hung`` if it takes longer than ``seconds``."""

    def alarm(_signum: int, _frame: FrameType | None) -> None:
        raise Hung(f"{getattr(fn, '__name__', fn)} did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)  # pytest-timeout's, if armed
    start = time.monotonic()
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 0.001))


def assert_size(output: int, given: int, factor: int, slack: int = 256) -> None:
    """Output no bigger than ``factor`` times the input, plus a constant."""
    assert output <= factor * given + slack, f"{output} bytes out for {given} in (> {factor}x + {slack})"
