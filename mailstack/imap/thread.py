"""THREAD (RFC 5256 §4): the ORDEREDSUBJECT and REFERENCES algorithms and the
``thread-list`` rendering of §5; no I/O.

Input is what the folder index keeps per message (``sort.SortItem``: decoded top-level
header fields, INTERNALDATE), so threading never opens a message file. The sent date and
the base subject are those of SORT (``sort.sort_key("DATE")``, ``sort.base_subject_info``).

Invariants:
- Message IDs are read as Dovecot 2.3 reads them (``msg_ids``): the text between a "<"
  and the next ">", kept when it holds an "@", whitespace removed; compared exactly
  (case-sensitive). A message without a valid Message-ID, or with one already seen,
  gets an ID of its own (RFC 5256 §4 step 1.A).
- References are the valid IDs of the first References field, else the first valid ID
  of In-Reply-To (§4 step 1.B). Only the last ``MAX_REFERENCES`` of them are used: the
  immediate parent is the last one, and a longer list is a hostile one (RFC 5322 §3.6.4
  lets a writer trim it). Reading a field is linear in its length.
- Linking follows Dovecot 2.3 (index-thread-links.c): a link that would make a loop is
  not made, a container keeps the first parent it got from a References list, and a
  message's own parent (its last reference) replaces any earlier one (§4 step 1.C).
- Bounded work: the loop check walks up the parent chain only for a child that has
  children (a leaf cannot be an ancestor); the walking one message may cause is capped at
  ``WALK_BASE + WALK_PER_REFERENCE`` times its references (a link whose check would walk
  further is treated as a loop and not made; only a thread thousands deep seen out of
  order could notice). So the whole run is linear in the references read, plus the
  sorts (n log n). No recursion: trees thousands deep are walked with explicit stacks.
- Siblings are ordered by sent date, ties by sequence number (§2.2); a dummy sorts as
  its first child (§4 steps 5 and 7).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from .sort import SortItem, base_subject_info, sort_key

__all__ = ["ALGORITHMS", "MAX_REFERENCES", "ThreadNode", "msg_ids", "render_threads", "thread_orderedsubject",
           "thread_references"]

MAX_REFERENCES = 1000  # IDs of one References field used (its last ones)
WALK_BASE = 256  # loop-check steps every message may take...
WALK_PER_REFERENCE = 4  # ...plus these per reference it has

_MSG_ID = re.compile(r"<([^>]*)>")  # "<" to the next ">" (Dovecot's message_id_get_next)
_DATE = sort_key("DATE")


def msg_ids(value: str | None, limit: int | None = None) -> list[str]:
    """The message IDs in a Message-ID / In-Reply-To / References value, in order (the
    last ``limit`` of them when given). Linear in ``len(value)``: the search stops at the
    last ">", so every "<" it starts from has a ">" after it and no attempt fails."""
    if not value:
        return []
    end = value.rfind(">")
    out = ["".join(x.split()) for x in _MSG_ID.findall(value, 0, end + 1) if "@" in x]
    if limit is not None and len(out) > limit:
        out = out[-limit:]
    return out


def _first(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for n, v in headers:
        if n == name:
            return v
    return None


class ThreadNode:
    """A thread tree node: a message (``item``) or a dummy (``item`` None, only at the top
    level once threading is done), and its children in order."""

    __slots__ = ("item", "children", "parent", "nkids", "key", "subject", "reply")

    def __init__(self, item: SortItem | None) -> None:
        self.item = item
        self.children: list[ThreadNode] = []
        self.parent: ThreadNode | None = None
        self.nkids = 0  # while linking: how many children point here
        self.key: tuple[float, int] = (0.0, 0)  # (sent date, sequence number)
        self.subject = ""
        self.reply = False


def _set_message(node: ThreadNode, item: SortItem) -> None:
    node.item = item
    node.key = (float(_DATE(item)), item.seq)  # type: ignore[arg-type]
    node.subject, node.reply = base_subject_info(_first(item.headers, "subject") or "")


class _Walk:
    """The loop-check budget of one message."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left


def _would_loop(parent: ThreadNode, child: ThreadNode, walk: _Walk) -> bool:
    """Whether ``child`` is ``parent`` or one of its ancestors (then a link would loop).
    A check that would pass the budget answers True: the link is not made."""
    if parent is child:
        return True
    if child.nkids == 0:  # a leaf is nobody's ancestor
        return False
    node: ThreadNode | None = parent.parent
    while node is not None:
        if node is child:
            return True
        walk.left -= 1
        if walk.left < 0:
            return True
        node = node.parent
    return False


def _link(parent: ThreadNode, child: ThreadNode) -> None:
    child.parent = parent
    parent.nkids += 1


def _unlink(child: ThreadNode) -> None:
    if child.parent is not None:
        child.parent.nkids -= 1
        child.parent = None


def _sort_level(nodes: list[ThreadNode]) -> None:
    """Sort siblings by (sent date, sequence); a dummy by its first child (§2.2, §4)."""
    for n in nodes:
        if n.item is None and n.children:
            n.key = n.children[0].key
    nodes.sort(key=lambda n: n.key)


def _preorder(roots: Sequence[ThreadNode]) -> list[ThreadNode]:
    order: list[ThreadNode] = []
    stack = list(roots)
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.children)
    return order


def _prune(roots: list[ThreadNode]) -> list[ThreadNode]:
    """§4 step 4: dummies without children go; a dummy's children take its place, but at
    the top level only when it has one child. Children first (post-order)."""

    def level(nodes: list[ThreadNode], top: bool) -> list[ThreadNode]:
        out: list[ThreadNode] = []
        for c in nodes:
            if c.item is None:
                if not c.children:
                    continue
                if not top or len(c.children) == 1:
                    out.extend(c.children)
                    continue
            out.append(c)
        return out

    for n in reversed(_preorder(roots)):
        n.children = level(n.children, False)
    return level(roots, True)


def _thread_subject(n: ThreadNode) -> tuple[str, bool]:
    src = n.children[0] if n.item is None and n.children else n
    return src.subject, src.reply


def _merge_subjects(roots: list[ThreadNode]) -> list[ThreadNode]:
    """§4 step 6: top-level threads with the same base subject are gathered."""
    table: dict[str, ThreadNode] = {}
    for n in roots:  # step 6.B
        subject, reply = _thread_subject(n)
        if not subject:
            continue
        old = table.get(subject)
        if old is None:
            table[subject] = n
        elif old.item is not None and (n.item is None or (_thread_subject(old)[1] and not reply)):
            table[subject] = n
    out: list[ThreadNode] = []
    gone: set[int] = set()
    for n in roots:  # step 6.C
        subject, reply = _thread_subject(n)
        old = table.get(subject) if subject else None
        if old is None or old is n:
            out.append(n)
            continue
        if old.item is None and n.item is None:
            old.children.extend(n.children)
            gone.add(id(n))
        elif old.item is None:
            old.children.append(n)
            gone.add(id(n))
        elif reply and not _thread_subject(old)[1]:
            old.children.append(n)
            gone.add(id(n))
        else:
            dummy = ThreadNode(None)
            dummy.children = [old, n]
            table[subject] = dummy
            out.append(dummy)
            gone.add(id(old))
            gone.add(id(n))
    return [n for n in out if id(n) not in gone]


def thread_references(items: Sequence[SortItem]) -> list[ThreadNode]:
    """RFC 5256 §4 REFERENCES over ``items`` (in sequence order): the top-level threads."""
    by_id: dict[str, ThreadNode] = {}
    nodes: list[ThreadNode] = []  # every container, in creation order

    def container(msgid: str) -> ThreadNode:
        node = by_id.get(msgid)
        if node is None:
            node = by_id[msgid] = ThreadNode(None)
            nodes.append(node)
        return node

    for item in items:
        headers = item.headers
        own = msg_ids(_first(headers, "message-id"))
        node = by_id.get(own[0]) if own else None
        if node is None and own:
            node = container(own[0])
        elif node is not None and node.item is not None:
            node = None  # a duplicate Message-ID: a container of its own (step 1.A)
        if node is None:
            node = ThreadNode(None)
            nodes.append(node)
        _set_message(node, item)
        refs = msg_ids(_first(headers, "references"), MAX_REFERENCES)
        if not refs:
            refs = msg_ids(_first(headers, "in-reply-to"))[:1]
        walk = _Walk(WALK_BASE + WALK_PER_REFERENCE * len(refs))
        # step 1.B: each reference the parent of the next; a container keeps the parent it has
        parent: ThreadNode | None = None
        for ref in refs:
            child = container(ref)
            if parent is not None and child.parent is None and not _would_loop(parent, child, walk):
                _link(parent, child)
            parent = child
        # step 1.C: the last reference is this message's parent (replacing an earlier one)
        if node.parent is not None and node.parent is not parent:
            _unlink(node)
        if parent is not None and node.parent is None and not _would_loop(parent, node, walk):
            _link(parent, node)

    # step 2: children lists from the parent links; the parentless are the root set
    roots: list[ThreadNode] = []
    for n in nodes:
        (n.parent.children if n.parent is not None else roots).append(n)
    roots = _prune(roots)  # step 4
    for n in roots:  # step 5: a dummy sorts as its first child
        if n.item is None:
            _sort_level(n.children)
    _sort_level(roots)
    roots = _merge_subjects(roots)  # step 6
    for n in reversed(_preorder(roots)):  # step 7, children before their parent
        _sort_level(n.children)
    _sort_level(roots)
    return roots


def thread_orderedsubject(items: Sequence[SortItem]) -> list[ThreadNode]:
    """RFC 5256 §4 ORDEREDSUBJECT: messages sorted by base subject, then sent date;
    one thread per base subject, its first message the parent of the others (siblings);
    threads in the order of their first message's sent date."""
    nodes: list[ThreadNode] = []
    for item in items:
        n = ThreadNode(None)
        _set_message(n, item)
        nodes.append(n)
    nodes.sort(key=lambda n: (n.subject, n.key))
    roots: list[ThreadNode] = []
    for n in nodes:
        if roots and roots[-1].subject == n.subject:
            roots[-1].children.append(n)
        else:
            roots.append(n)
    roots.sort(key=lambda n: n.key)
    return roots


ALGORITHMS: dict[str, Callable[[Sequence[SortItem]], list[ThreadNode]]] = {
    "ORDEREDSUBJECT": thread_orderedsubject,
    "REFERENCES": thread_references,
}


def render_threads(roots: Sequence[ThreadNode], number: Callable[[SortItem], int]) -> str:
    """The ``1*thread-list`` of RFC 5256 §5 (empty for no threads): a message with one
    child continues its list, with more each child is a nested list; a top-level dummy
    is a list of its children's lists. ``number`` gives a message's sequence number or UID."""
    out: list[str] = []
    stack: list[tuple[int, ThreadNode | str]] = [(1, r) for r in reversed(roots)]
    while stack:
        mode, x = stack.pop()
        if isinstance(x, str):
            out.append(x)
            continue
        if mode == 1:  # a thread-list of its own
            out.append("(")
            stack.append((0, ")"))
        kids = x.children
        if x.item is None:
            if len(kids) == 1:
                stack.append((0, kids[0]))
            else:
                stack.extend((1, c) for c in reversed(kids))
            continue
        out.append(str(number(x.item)))
        if len(kids) == 1:
            out.append(" ")
            stack.append((0, kids[0]))
        elif kids:
            out.append(" ")
            stack.extend((1, c) for c in reversed(kids))
    return "".join(out)
