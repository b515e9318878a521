"""The Sieve interpreter (RFC 5228 and extensions): a compiled script + a message + its
envelope -> the actions to take. No I/O: delivery carries the actions out.

Rules, as Pigeonhole applies them:
- implicit keep (RFC 5228 §2.10.2) unless keep, fileinto, redirect (without ``:copy``),
  discard, reject or ereject ran;
- any runtime error (RFC 5228 §2.10.6) throws every action away and leaves an implicit keep
  into INBOX: a broken script never loses a message;
- at most ``MAX_REDIRECTS`` redirects per message (Pigeonhole's ``sieve_max_redirects`` = 4),
  at most ``MAX_ACTIONS`` actions; more is a runtime error;
- reject/ereject together with keep/fileinto/redirect is a runtime error (RFC 5429 §2.1);
- ``:regex`` uses the ``regex`` module (``re`` has no time limit) over values cut to
  ``REGEX_MAX_INPUT`` characters, patterns of at most ``REGEX_MAX_PATTERN`` characters, and
  at most ``REGEX_BUDGET`` seconds of matching per run (a pathological pattern is a runtime
  error, so an implicit keep), so one script cannot stall a delivery worker;
- variables (RFC 5229): at most ``MAX_VARIABLES`` names, values cut to ``MAX_VARIABLE_SIZE``
  bytes (Pigeonhole's limits: 255 and 4 KiB);
- include (RFC 6609): scripts come from ``Context.load_include`` (the delivery side reads
  ``:personal`` / ``:global`` scripts), at most ``MAX_INCLUDE_DEPTH`` deep (Pigeonhole's 10);
  a loop or a missing script without ``:optional`` is a runtime error.
"""

from __future__ import annotations

import email.header
import email.utils
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.message import Message

import regex  # type: ignore[import-untyped]

from mailstack.sieve.check import compile_script
from mailstack.sieve.grammar import Argument, Command, Number, SieveSyntaxError, Strings, Tag, Test

MAX_REDIRECTS = 4
MAX_ACTIONS = 32
MAX_INCLUDE_DEPTH = 10
MAX_VARIABLES = 255
MAX_VARIABLE_SIZE = 4096
REGEX_MAX_INPUT = 8192
REGEX_MAX_PATTERN = 1024
REGEX_BUDGET = 2.0  # seconds of :regex matching per run
VACATION_DEFAULT_DAYS = 7  # RFC 5230 §4.1, Pigeonhole's sieve_vacation_default_period
VACATION_MIN_PERIOD = 86400  # Pigeonhole's sieve_vacation_min_period (1 day)
SUBADDRESS_SEPARATOR = "+"  # Dovecot's recipient_delimiter default
SYSTEM_FLAGS = {"\\seen": "\\Seen", "\\answered": "\\Answered", "\\flagged": "\\Flagged",
                "\\deleted": "\\Deleted", "\\draft": "\\Draft"}


class SieveRuntimeError(Exception):
    """Raised while running; the caller falls back to an implicit keep."""


@dataclass(frozen=True)
class Envelope:
    sender: str  # MAIL FROM ("" for the null sender)
    recipient: str  # the envelope recipient this run is for
    auth: str = ""


@dataclass(frozen=True)
class Action:
    """One thing to do with the message. ``kind``: keep, fileinto, redirect, reject, ereject, discard."""

    kind: str
    folder: str = "INBOX"
    create: bool = False
    flags: tuple[str, ...] = ()
    address: str = ""
    reason: str = ""
    copy: bool = False
    # vacation (RFC 5230): ``address`` is whom to answer, ``reason`` the text
    period: int = 0  # seconds between two replies to the same sender
    subject: str = ""
    from_addr: str = ""
    handle: str = ""
    mime: bool = False
    addresses: tuple[str, ...] = ()  # the user's other addresses (``:addresses``)


@dataclass(frozen=True)
class Result:
    actions: tuple[Action, ...]
    error: str | None = None  # the runtime error that forced the implicit keep
    stopped: bool = False  # the script ran ``stop``
    implicit_keep: bool = False  # ``actions[0]`` is the implicit keep (RFC 5228 §2.10.2), nothing cancelled it

    @property
    def stores(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind in ("keep", "fileinto"))


@dataclass
class Context:
    message: bytes
    envelope: Envelope
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    load_include: Callable[[str, bool], bytes | None] | None = None  # (name, global) -> script or None


class _Stop(Exception):
    pass


class _Return(Exception):
    pass


_ASCII_LOWER = {c: c + 32 for c in range(65, 91)}


def _casemap(s: str) -> str:
    return s.translate(_ASCII_LOWER)


def _decode_header(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def _numeric(s: str) -> float:
    m = re.match(r"[0-9]+", s)
    return float(int(m.group())) if m else float("inf")  # RFC 4790 §9.1: no digits = positive infinity


def _glob_regex(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append("(.*?)" if c == "*" else "(.)" if c == "?" else re.escape(c))
        i += 1
    return "".join(out)


@dataclass
class _State:
    ctx: Context
    msg: Message
    actions: list[Action] = field(default_factory=list)
    keep_cancelled: bool = False
    flags: list[str] = field(default_factory=list)  # the internal flag variable (RFC 5232 §3)
    variables: dict[str, str] = field(default_factory=dict)
    match_vars: list[str] = field(default_factory=list)
    required: set[str] = field(default_factory=set)
    includes: list[str] = field(default_factory=list)
    global_vars: set[str] = field(default_factory=set)
    regex_budget: float = REGEX_BUDGET


class Interpreter:
    """Runs one compiled script; ``run`` never raises."""

    def __init__(self, script: tuple[Command, ...]) -> None:
        self.script = script

    @classmethod
    def compile(cls, source: bytes | str) -> Interpreter:
        return cls(compile_script(source))

    def run(self, ctx: Context) -> Result:
        msg = message_from_bytes(ctx.message, policy=policy.compat32)
        st = _State(ctx, msg)
        stopped = False
        try:
            try:
                self._block(st, self.script)
            except _Stop:
                stopped = True
            except _Return:
                pass
        except SieveRuntimeError as e:
            return Result((Action("keep"),), str(e), implicit_keep=True)
        except Exception as e:  # noqa: BLE001 - RFC 5228 §2.10.6: whatever went wrong, the message is kept
            return Result((Action("keep"),), f"runtime error: {type(e).__name__}: {e}", implicit_keep=True)
        actions = list(st.actions)
        if not st.keep_cancelled:
            actions.insert(0, Action("keep", flags=tuple(st.flags)))
        return Result(tuple(_dedupe(actions)), stopped=stopped, implicit_keep=not st.keep_cancelled)

    # -- commands ---------------------------------------------------------------------

    def _block(self, st: _State, commands: Sequence[Command]) -> None:
        last_if: bool | None = None  # None: no if chain open; True: a branch ran
        for cmd in commands:
            name = cmd.name
            if name == "require":
                for a in cmd.args:
                    if isinstance(a, Strings):
                        st.required.update(v.lower() for v in a.values)
                continue
            if name == "if":
                last_if = self._test(st, cmd.tests[0])
                if last_if:
                    self._block(st, cmd.block or ())
                continue
            if name == "elsif":
                if not last_if:
                    last_if = self._test(st, cmd.tests[0])
                    if last_if:
                        self._block(st, cmd.block or ())
                continue
            if name == "else":
                if not last_if:
                    self._block(st, cmd.block or ())
                last_if = None
                continue
            last_if = None
            self._command(st, cmd)

    def _command(self, st: _State, cmd: Command) -> None:
        tags, strings, _numbers = self._split(st, cmd.args)
        name = cmd.name
        if name == "stop":
            raise _Stop()
        if name == "return":
            raise _Return()
        if name == "keep":
            self._add(st, Action("keep", flags=self._flags_arg(st, cmd.args)))
            st.keep_cancelled = True
        elif name == "discard":
            st.keep_cancelled = True
        elif name == "fileinto":
            folder = strings[-1][0]
            self._add(st, Action("fileinto", folder=folder, create="create" in tags,
                                 flags=self._flags_arg(st, cmd.args), copy="copy" in tags))
            if "copy" not in tags:
                st.keep_cancelled = True
        elif name == "redirect":
            address = strings[-1][0].strip()
            if sum(1 for a in st.actions if a.kind == "redirect") >= MAX_REDIRECTS:
                raise SieveRuntimeError(f"more than {MAX_REDIRECTS} redirect actions")
            try:
                _check_redirect(address)
            except ValueError as e:
                raise SieveRuntimeError(f"redirect: invalid address {address!r}: {e}") from None
            self._add(st, Action("redirect", address=address, copy="copy" in tags))
            if "copy" not in tags:
                st.keep_cancelled = True
        elif name in ("reject", "ereject"):
            self._add(st, Action(name, reason=strings[-1][0]))
            st.keep_cancelled = True
        elif name == "vacation":
            self._vacation(st, tags, strings)
        elif name in ("setflag", "addflag", "removeflag"):
            self._flag_command(st, name, strings)
        elif name == "set":
            self._set(st, tags, strings)
        elif name == "include":
            self._include(st, tags, strings[-1][0])
        elif name == "global":
            st.global_vars.update(v.lower() for v in strings[0]) if strings else None

    def _add(self, st: _State, action: Action) -> None:
        if len(st.actions) >= MAX_ACTIONS:
            raise SieveRuntimeError(f"more than {MAX_ACTIONS} actions")
        kinds = {a.kind for a in st.actions} | {action.kind}
        if kinds & {"reject", "ereject"} and kinds & {"keep", "fileinto", "redirect", "vacation"}:  # RFC 5429 §2.1
            raise SieveRuntimeError("reject cannot be combined with keep, fileinto, redirect or vacation")
        if action.kind == "vacation" and any(a.kind == "vacation" for a in st.actions):  # RFC 5230 §4.7
            raise SieveRuntimeError("more than one vacation action")
        st.actions.append(action)

    def _vacation(self, st: _State, tags: dict[str, Argument | None], strings: list[list[str]]) -> None:
        """RFC 5230 §4.5-4.6, 6131: decide whether to answer; the once-per-period check is delivery's."""
        days, seconds = tags.get("days"), tags.get("seconds")
        if isinstance(seconds, Number):
            period = seconds.value
        else:
            period = (days.value if isinstance(days, Number) else VACATION_DEFAULT_DAYS) * 86400
        period = max(VACATION_MIN_PERIOD, period)  # Pigeonhole's default: no maximum
        subject = self._tag_string(st, tags, "subject")
        from_addr = self._tag_string(st, tags, "from")
        handle = self._tag_string(st, tags, "handle")
        addresses = tags.get("addresses")
        mine = tuple(self._expand(st, a) for a in addresses.values) if isinstance(addresses, Strings) else ()
        reason = strings[-1][0]
        self._add(st, Action("vacation", address=st.ctx.envelope.sender, reason=reason, period=period,
                             subject=subject, from_addr=from_addr, mime="mime" in tags, addresses=mine,
                             handle=handle or f"{reason}\x00{subject}\x00{from_addr}\x00{'mime' in tags}"))

    def _tag_string(self, st: _State, tags: dict[str, Argument | None], name: str) -> str:
        value = tags.get(name)
        return self._expand(st, value.values[0]) if isinstance(value, Strings) else ""

    def _include(self, st: _State, tags: dict[str, Argument | None], name: str) -> None:
        is_global = "global" in tags
        key = ("global:" if is_global else "personal:") + name
        if key in st.includes:
            if "once" in tags:
                return
            raise SieveRuntimeError(f"include loop at {name!r}")
        if len(st.includes) >= MAX_INCLUDE_DEPTH:
            raise SieveRuntimeError(f"includes nested deeper than {MAX_INCLUDE_DEPTH}")
        source = st.ctx.load_include(name, is_global) if st.ctx.load_include else None
        if source is None:
            if "optional" in tags:
                return
            raise SieveRuntimeError(f"included script {name!r} not found")
        try:
            script = compile_script(source)
        except SieveSyntaxError as e:
            raise SieveRuntimeError(f"included script {name!r}: {e}") from None
        st.includes.append(key)
        saved = st.required
        st.required = set()
        try:
            self._block(st, script)
        except _Return:
            pass
        finally:
            st.required = saved
            st.includes.pop()

    # -- variables and strings -------------------------------------------------------

    def _expand(self, st: _State, s: str) -> str:
        if "${" not in s:
            return s
        enc = "encoded-character" in st.required
        use_vars = "variables" in st.required

        def sub(m: re.Match[str]) -> str:
            inner = m.group(1)
            low = inner.lower()
            if enc and (low.startswith("hex:") or low.startswith("unicode:")):  # RFC 5228 §2.4.2.4
                kind, _, rest = inner.partition(":")
                try:
                    codes = [int(x, 16) for x in rest.split()]
                    if kind.lower() == "hex":
                        return bytes(codes).decode("utf-8")
                    return "".join(chr(c) for c in codes)
                except (ValueError, UnicodeDecodeError, OverflowError):
                    return m.group(0)
            if use_vars:
                if inner.isdigit():
                    n = int(inner)
                    return st.match_vars[n] if n < len(st.match_vars) else ""
                if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", inner):
                    return st.variables.get(low, "")
            return m.group(0)

        return re.sub(r"\$\{([^{}]*)\}", sub, s)

    def _split(self, st: _State, args: Sequence[Argument]) -> tuple[dict[str, Argument | None], list[list[str]], list[int]]:
        tags: dict[str, Argument | None] = {}
        strings: list[list[str]] = []
        numbers: list[int] = []
        i = 0
        from mailstack.sieve.check import VALUE_TAGS
        while i < len(args):
            a = args[i]
            if isinstance(a, Tag):
                if a.name in VALUE_TAGS and i + 1 < len(args):
                    tags[a.name] = args[i + 1]
                    i += 2
                    continue
                tags[a.name] = None
            elif isinstance(a, Strings):
                strings.append([self._expand(st, v) for v in a.values])
            elif isinstance(a, Number):
                numbers.append(a.value)
            i += 1
        return tags, strings, numbers

    def _set(self, st: _State, tags: dict[str, Argument | None], strings: list[list[str]]) -> None:
        name, value = strings[0][0].lower(), strings[1][0]
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise SieveRuntimeError(f"invalid variable name {name!r}")
        # RFC 5229 §4.1: modifiers apply from highest precedence (40) to lowest (10)
        if "lower" in tags:
            value = value.lower()
        if "upper" in tags:
            value = value.upper()
        if "lowerfirst" in tags:
            value = value[:1].lower() + value[1:]
        if "upperfirst" in tags:
            value = value[:1].upper() + value[1:]
        if "quotewildcard" in tags:
            value = re.sub(r"([*?\\])", r"\\\1", value)
        if "quoteregex" in tags:
            value = re.sub(r"([\\^$.\[\]|()?*+{}])", r"\\\1", value)
        if "length" in tags:
            value = str(len(value))
        if name not in st.variables and len(st.variables) >= MAX_VARIABLES:
            raise SieveRuntimeError(f"more than {MAX_VARIABLES} variables")
        st.variables[name] = value.encode("utf-8")[:MAX_VARIABLE_SIZE].decode("utf-8", "ignore")

    # -- flags (RFC 5232) ------------------------------------------------------------------

    def _flag_command(self, st: _State, name: str, strings: list[list[str]]) -> None:
        target: str | None = None
        values = strings[-1]
        if len(strings) == 2:
            target = strings[0][0].lower()
        current = _split_flags(st.variables.get(target, "").split() if target else st.flags)
        given = _split_flags(values)
        if name == "setflag":
            new = given
        elif name == "addflag":
            new = current + [f for f in given if f.lower() not in {c.lower() for c in current}]
        else:
            drop = {f.lower() for f in given}
            new = [f for f in current if f.lower() not in drop]
        if target:
            st.variables[target] = " ".join(new)
        else:
            st.flags = new

    def _flags_arg(self, st: _State, args: Sequence[Argument]) -> tuple[str, ...]:
        for i, a in enumerate(args):
            if isinstance(a, Tag) and a.name == "flags" and i + 1 < len(args):
                value = args[i + 1]
                if isinstance(value, Strings):
                    return tuple(_split_flags(self._expand(st, v) for v in value.values))
        return tuple(st.flags) if "imap4flags" in st.required else ()

    # -- tests -------------------------------------------------------------------------

    def _test(self, st: _State, test: Test) -> bool:
        name = test.name
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self._test(st, test.tests[0])
        if name == "allof":
            return all(self._test(st, t) for t in test.tests)
        if name == "anyof":
            return any(self._test(st, t) for t in test.tests)
        tags, strings, numbers = self._split(st, test.args)
        if name == "size":
            size = len(st.ctx.message)
            limit = numbers[0] if numbers else 0
            return size > limit if "over" in tags else size < limit
        if name == "exists":
            return all(st.msg.get_all(h) is not None for h in strings[0])
        if name == "header":
            return self._match(st, tags, self._header_values(st, strings[0], tags), strings[1], count_all=True)
        if name == "address":
            addrs = self._address_values(st, strings[0], tags)
            return self._match(st, tags, [self._part(tags, a) for a in addrs], strings[1], count_all=True)
        if name == "envelope":
            env = st.ctx.envelope
            values: list[str] = []
            for part in strings[0]:
                low = part.lower()
                raw = env.sender if low == "from" else env.recipient if low == "to" else env.auth if low == "auth" else None
                if raw is None:
                    continue
                if raw == "" and low == "from":
                    values.append("")  # RFC 5228 §5.4: the null reverse-path matches ""
                    continue
                values.append(self._part(tags, raw))
            return self._match(st, tags, values, strings[1], count_all=True)
        if name == "string":
            return self._match(st, tags, [v for v in strings[0] if v != "" or "count" not in tags],
                               strings[1], count_all=True)
        if name == "hasflag":
            if len(strings) == 2:
                have = []
                for var in strings[0]:
                    have += st.variables.get(var.lower(), "").split()
            else:
                have = list(st.flags)
            return self._match(st, tags, have, strings[-1], count_all=True)
        if name == "body":
            return self._match(st, tags, self._body_values(st, tags), strings[0], count_all=True)
        if name == "date":
            dates = self._date_values(st, tags, strings[0], strings[1][0])
            return self._match(st, tags, dates, strings[2], count_all=True)
        if name == "currentdate":
            now = st.ctx.now
            zone = tags.get("zone")
            if isinstance(zone, Strings):
                now = now.astimezone(_zone(zone.values[0]) or timezone.utc)
            return self._match(st, tags, [_date_part(now, strings[0][0])], strings[1], count_all=True)
        raise SieveRuntimeError(f"unknown test {name}")

    def _indexed(self, tags: dict[str, Argument | None], values: list[str]) -> list[str]:
        index = tags.get("index")
        if isinstance(index, Number):  # RFC 5260 §6: 1-based, :last counts from the end
            n = index.value
            if n < 1 or n > len(values):
                return []
            return [values[-n] if "last" in tags else values[n - 1]]
        return values

    def _header_values(self, st: _State, names: list[str], tags: dict[str, Argument | None]) -> list[str]:
        out: list[str] = []
        for h in names:
            raw = [_unfold(v) for v in (st.msg.get_all(h) or [])]
            out += self._indexed(tags, [_decode_header(v).strip() for v in raw])
        return out

    def _address_values(self, st: _State, names: list[str], tags: dict[str, Argument | None]) -> list[str]:
        out: list[str] = []
        for h in names:
            raw = [_unfold(v) for v in (st.msg.get_all(h) or [])]
            for v in self._indexed(tags, raw):
                for _display, addr in email.utils.getaddresses([v]):
                    if addr:
                        out.append(addr)
        return out

    def _part(self, tags: dict[str, Argument | None], addr: str) -> str:
        local, at, domain = addr.rpartition("@")
        if not at:
            local, domain = addr, ""
        if "localpart" in tags:
            return local
        if "domain" in tags:
            return domain
        if "user" in tags:  # RFC 5233 §4
            return local.split(SUBADDRESS_SEPARATOR, 1)[0]
        if "detail" in tags:
            user, sep, detail = local.partition(SUBADDRESS_SEPARATOR)
            return detail if sep else "\x00nodetail"  # no detail: the test fails (RFC 5233 §4)
        return addr

    def _body_values(self, st: _State, tags: dict[str, Argument | None]) -> list[str]:
        if "raw" in tags:  # RFC 5173 §5.1: the undecoded body
            sep = st.ctx.message.find(b"\r\n\r\n")
            skip = 4
            if sep < 0:
                sep, skip = st.ctx.message.find(b"\n\n"), 2
            body = st.ctx.message[sep + skip:] if sep >= 0 else b""
            return [body.decode("utf-8", "replace")]
        content = tags.get("content")
        types = [t.lower() for t in content.values] if isinstance(content, Strings) else ["text"]
        out: list[str] = []
        for part in st.msg.walk():
            if part.is_multipart():
                continue
            ctype = part.get_content_type()
            main = ctype.split("/")[0]
            if not any(t == "" or t == ctype or t == main for t in types):
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            charset = part.get_content_charset() or "us-ascii"
            try:
                text = payload.decode(charset, "replace")
            except LookupError:
                text = payload.decode("utf-8", "replace")
            out.append(text)
        return out

    def _date_values(self, st: _State, tags: dict[str, Argument | None], headers: list[str], part: str) -> list[str]:
        out: list[str] = []
        for h in headers:
            fields = [_unfold(x) for x in (st.msg.get_all(h) or [])]
            if "index" not in tags:
                fields = fields[:1]  # as Pigeonhole: without :index only the first field counts
            for v in self._indexed(tags, fields):
                text = v.rsplit(";", 1)[-1].strip() if h.lower() == "received" else v.strip()
                try:
                    when = email.utils.parsedate_to_datetime(text)
                except (TypeError, ValueError, IndexError):
                    continue
                if when.tzinfo is None:
                    when = when.replace(tzinfo=timezone.utc)
                zone = tags.get("zone")
                if isinstance(zone, Strings):
                    tz = _zone(zone.values[0])
                    if tz is None:
                        continue
                    when = when.astimezone(tz)
                elif "originalzone" not in tags:
                    when = when.astimezone(st.ctx.now.tzinfo or timezone.utc)  # RFC 5260 §4.1: local zone
                out.append(_date_part(when, part))
        return out

    # -- matching ----------------------------------------------------------------------

    def _match(self, st: _State, tags: dict[str, Argument | None], values: list[str], keys: list[str],
               count_all: bool) -> bool:
        cmp_arg = tags.get("comparator")
        comparator = cmp_arg.values[0].lower() if isinstance(cmp_arg, Strings) else "i;ascii-casemap"
        rel_count = tags.get("count")
        rel_value = tags.get("value")
        if isinstance(rel_count, Strings):  # RFC 5231 §4.1
            n = str(len(values))
            return any(_relational(rel_count.values[0], n, k, comparator) for k in keys)
        if isinstance(rel_value, Strings):
            return any(_relational(rel_value.values[0], v, k, comparator) for v in values for k in keys)
        fold = _casemap if comparator == "i;ascii-casemap" else (lambda s: s)
        for v in values:
            for k in keys:
                if "contains" in tags:
                    if fold(k) in fold(v):
                        return True
                elif "matches" in tags:
                    m = re.fullmatch(_glob_regex(fold(k)), fold(v), re.S)
                    if m:
                        self._capture(st, v, m)
                        return True
                elif "regex" in tags:
                    if len(k) > REGEX_MAX_PATTERN:
                        raise SieveRuntimeError("regex pattern too long")
                    flags = regex.I if comparator == "i;ascii-casemap" else 0
                    started = time.monotonic()
                    try:
                        rm = regex.search(k, v[:REGEX_MAX_INPUT], flags | regex.S, timeout=max(st.regex_budget, 0.001))
                    except TimeoutError:
                        raise SieveRuntimeError("regex matching took too long") from None
                    except regex.error as e:
                        raise SieveRuntimeError(f"invalid regex {k!r}: {e}") from None
                    st.regex_budget -= time.monotonic() - started
                    if rm:
                        st.match_vars = [rm.group(0)] + [g or "" for g in rm.groups()][:9]
                        return True
                elif comparator == "i;ascii-numeric":
                    if _numeric(v) == _numeric(k):
                        return True
                elif fold(k) == fold(v):
                    return True
        return False

    def _capture(self, st: _State, original: str, m: re.Match[str]) -> None:
        if "variables" not in st.required:
            return
        # the groups were matched on the folded value; casemap keeps positions, so slice the original
        groups = [original[m.start(i):m.end(i)] for i in range(1, (m.lastindex or 0) + 1)]
        st.match_vars = [original] + groups[:9]


def vacation_refusal(message: bytes, envelope: Envelope, action: Action) -> str | None:
    """Why not to send this vacation reply (RFC 5230 §4.5-4.6, RFC 3834), or None to send it.

    Checked when the reply is to go out, as Pigeonhole does; the once-per-period check is the
    caller's (it needs the user's record of replies)."""
    msg = message_from_bytes(message, policy=policy.compat32)
    mine = {envelope.recipient.lower(), *(a.lower() for a in action.addresses)}
    user, sep, detail = envelope.recipient.lower().rpartition("@")[0].partition(SUBADDRESS_SEPARATOR)
    if sep:
        mine.add(f"{user}@{envelope.recipient.lower().rpartition('@')[2]}")
    sender = envelope.sender.lower()
    if not sender:
        return "null sender"  # RFC 5230 §4.6
    local = sender.rpartition("@")[0]
    if local in ("mailer-daemon", "listserv", "majordomo") or local.startswith("owner-") \
            or local.endswith("-request") or sender in mine:  # RFC 5230 §4.6
        return "sender looks automated or is the recipient"
    auto = (msg.get("Auto-Submitted") or "no").strip().lower()
    if not auto.startswith("no"):  # RFC 3834 §2
        return "auto-submitted"
    if any(msg.get(h) is not None for h in ("List-Id", "List-Help", "List-Subscribe", "List-Unsubscribe",
                                            "List-Post", "List-Owner", "List-Archive")):
        return "mailing list"
    if (msg.get("Precedence") or "").strip().lower() in ("bulk", "list", "junk"):
        return "bulk precedence"
    found: set[str] = set()
    for h in ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc"):  # RFC 5230 §4.5
        for _n, addr in email.utils.getaddresses([_unfold(v) for v in msg.get_all(h) or []]):
            found.add(addr.lower())
    if not found & mine:
        return "not addressed to the recipient"
    return None


def _relational(op: str, value: str, key: str, comparator: str) -> bool:
    if comparator == "i;ascii-numeric":
        a: float | str = _numeric(value)
        b: float | str = _numeric(key)
    elif comparator == "i;ascii-casemap":
        a, b = _casemap(value), _casemap(key)
    else:
        a, b = value, key
    ops: dict[str, Callable[[float | str, float | str], bool]] = {
        "gt": lambda x, y: x > y, "ge": lambda x, y: x >= y, "lt": lambda x, y: x < y,  # type: ignore[operator]
        "le": lambda x, y: x <= y, "eq": lambda x, y: x == y, "ne": lambda x, y: x != y,  # type: ignore[operator]
    }
    fn = ops.get(op.lower())
    if fn is None:
        raise SieveRuntimeError(f"unknown relational operator {op!r}")
    return fn(a, b)


def _unfold(v: str) -> str:
    return re.sub(r"\r?\n[ \t]", " ", str(v))


def _split_flags(values: Iterator[str] | list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        for f in v.split():
            f = SYSTEM_FLAGS.get(f.lower(), f)
            if f.lower() not in {o.lower() for o in out}:
                out.append(f)
    return out


def _zone(text: str) -> timezone | None:
    m = re.fullmatch(r"([+-])([0-9]{2})([0-9]{2})", text.strip())
    if not m:
        return None
    delta = timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    return timezone(-delta if m.group(1) == "-" else delta)


def _date_part(when: datetime, part: str) -> str:
    """RFC 5260 §4.2 date-parts."""
    off = when.utcoffset() or timedelta(0)
    sign = "-" if off < timedelta(0) else "+"
    mins = abs(int(off.total_seconds())) // 60
    zone = f"{sign}{mins // 60:02d}{mins % 60:02d}"
    p = part.lower()
    table = {
        "year": f"{when.year:04d}", "month": f"{when.month:02d}", "day": f"{when.day:02d}",
        "date": when.strftime("%Y-%m-%d"), "hour": f"{when.hour:02d}", "minute": f"{when.minute:02d}",
        "second": f"{when.second:02d}", "time": when.strftime("%H:%M:%S"), "zone": zone,
        "weekday": str((when.weekday() + 1) % 7),
        "julian": str((when.date() - datetime(1858, 11, 17).date()).days),
        "iso8601": when.strftime("%Y-%m-%dT%H:%M:%S") + (zone[:3] + ":" + zone[3:]),
        "std11": email.utils.format_datetime(when),
    }
    if p not in table:
        raise SieveRuntimeError(f"unknown date part {part!r}")
    return table[p]


def _check_redirect(address: str) -> None:
    _name, addr = email.utils.parseaddr(address)
    if not addr or "@" not in addr or addr != address.strip("<> ") or any(c in addr for c in " \r\n,"):
        raise ValueError("not a single mailbox address")


def dedupe(actions: Sequence[Action]) -> tuple[Action, ...]:
    """RFC 5228 §2.10.3 over actions gathered from several scripts (``sieve.multiscript``)."""
    return tuple(_dedupe(list(actions)))


def _dedupe(actions: list[Action]) -> Iterator[Action]:
    """RFC 5228 §2.10.3: keep/fileinto into the same folder twice stores once; same for redirect."""
    seen: set[tuple[str, str]] = set()
    for a in actions:
        if a.kind in ("keep", "fileinto"):
            key = ("store", "INBOX" if a.kind == "keep" else a.folder)
        elif a.kind == "redirect":
            key = ("redirect", a.address.lower())
        else:
            key = (a.kind, "")
        if key in seen:
            continue
        seen.add(key)
        yield a
