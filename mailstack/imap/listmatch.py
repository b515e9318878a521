"""LIST / LSUB mailbox patterns (RFC 3501 §6.3.8) matched in linear time, without regexes.

``*`` matches any run of characters, ``%`` any run without the hierarchy delimiter ``.``.
A pattern used to become a regular expression (``[^.]*`` per ``%``); fifty ``%`` in a row
made the backtracking engine take seconds per name, holding the interpreter lock, so one
client stalled every other connection. Here a pattern is matched by simulating its
automaton on bit sets (shift-and): one pass over the name, each step a handful of
integer operations on ``len(pattern)`` bits, so the cost is O(len(pattern) * len(name) / 64)
whatever the pattern, and no input can make it backtrack.

Invariants:
- Runs of wildcards are collapsed first (``%%`` = ``%``, ``**`` = ``%*`` = ``*%`` = ``*``),
  which changes no match and keeps one wildcard between literals.
- A pattern with more literal characters than the name has cannot match: that is
  answered before any matching, so long patterns cost nothing against short names.
- ``INBOX`` at the start of reference+pattern is case-insensitive (RFC 3501 §5.1),
  as the names it is matched against spell it ``INBOX``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DELIMITER = "."


def _collapse(pattern: str) -> str:
    """Runs of wildcards reduced to one: any run with a ``*`` is ``*``, else ``%``."""
    out: list[str] = []
    for c in pattern:
        if c in "*%" and out and out[-1] in "*%":
            if c == "*":
                out[-1] = "*"
            continue
        out.append(c)
    return "".join(out)


@dataclass(frozen=True)
class ListPattern:
    """A compiled LIST pattern: ``match(name)`` says whether ``name`` is selected."""

    pattern: str
    literals: int = field(init=False)  # how many characters a match needs at least
    _star: int = field(init=False, repr=False)  # bit k: token k is "*"
    _pct: int = field(init=False, repr=False)  # bit k: token k is "%"
    _positions: dict[str, list[int]] = field(init=False, repr=False)  # char -> its token indexes
    _masks: dict[str, int] = field(init=False, repr=False, compare=False)  # char -> bits, filled on demand
    _accept: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        positions: dict[str, list[int]] = {}
        for k, c in enumerate(self.pattern):
            positions.setdefault(c, []).append(k)
        object.__setattr__(self, "_positions", positions)
        object.__setattr__(self, "_masks", {})
        object.__setattr__(self, "_star", self._mask("*"))
        object.__setattr__(self, "_pct", self._mask("%"))
        object.__setattr__(self, "_accept", 1 << len(self.pattern))
        object.__setattr__(self, "literals",
                           len(self.pattern) - len(positions.get("*", ())) - len(positions.get("%", ())))

    def _mask(self, c: str) -> int:
        """Bits of the tokens that are ``c``, built once per character in O(len(pattern) / 8)."""
        mask = self._masks.get(c)
        if mask is None:
            bitmap = bytearray(len(self.pattern) // 8 + 1)
            for k in self._positions.get(c, ()):
                bitmap[k >> 3] |= 1 << (k & 7)
            mask = self._masks[c] = int.from_bytes(bitmap, "little")
        return mask

    def _closure(self, states: int) -> int:
        # a wildcard may match nothing: being before it is being after it (runs are collapsed,
        # so one step is enough)
        return states | ((states & (self._star | self._pct)) << 1)

    def match(self, name: str) -> bool:
        if self.literals > len(name):
            return False
        star, pct = self._star, self._pct
        states = self._closure(1)
        for c in name:
            # literal tokens equal to c advance; "*" stays; "%" stays unless c is the delimiter
            nxt = (states & (self._mask(c) if c not in "*%" else 0)) << 1
            nxt |= states & (star if c == DELIMITER else star | pct)
            if not nxt:
                return False
            states = self._closure(nxt)
        return bool(states & self._accept)


def compile_pattern(reference: str, pattern: str) -> ListPattern:
    """RFC 3501 §6.3.8: the reference is prefixed to the pattern; INBOX is case-insensitive."""
    full = pattern if not reference else reference + pattern
    if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] in ".*%"):
        full = "INBOX" + full[5:]
    return ListPattern(_collapse(full))
