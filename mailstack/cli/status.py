"""`mailstack status [--json]`: the health of a running installation, Nagios style.

Exit status (the contract; Nagios plugin convention): 0 ok, 1 degraded, 2 down. The
first line of the text output is a plugin's status line (``MAILSTACK DEGRADED - imap:
127.0.0.1:143: connection refused``), so the command works as an NRPE/Icinga check as it is;
``--json`` prints the contract's object instead. What is checked and how it is judged:
``mailstack.ops.status``. Run it as the ``mailstack`` user (or root): the queue and the
database are private to it.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from mailstack.cli.common import CLIError, Context, print_json
from mailstack.ops.health import CertificateInfo, DiskInfo
from mailstack.ops.status import Report, Thresholds, check, format_age

_DEFAULTS = Thresholds()


def register(nouns: Any) -> None:
    p = nouns.add_parser("status", help="health of the running installation (exit 0 ok, 1 degraded, 2 down)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument("--cert-warn-days", type=_non_negative(int), default=_DEFAULTS.cert_warn_days, metavar="N",
                   help=f"degraded when the certificate has fewer days left (default {_DEFAULTS.cert_warn_days})")
    p.add_argument("--disk-warn", type=_percent, default=_DEFAULTS.disk_warn, metavar="PERCENT",
                   help=f"degraded below this much free space (default {_DEFAULTS.disk_warn:g})")
    p.add_argument("--disk-crit", type=_percent, default=_DEFAULTS.disk_crit, metavar="PERCENT",
                   help=f"down below this much free space (default {_DEFAULTS.disk_crit:g})")
    p.add_argument("--queue-warn-age", type=_non_negative(float), default=_DEFAULTS.queue_warn_age,
                   metavar="SECONDS", help="degraded when the oldest queued message is older "
                   f"(default {_DEFAULTS.queue_warn_age:g})")
    p.set_defaults(handler=_status)


def _non_negative(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} is negative")
        return value
    return parse


def _percent(text: str) -> float:
    value = float(_non_negative(float)(text))
    if value > 100:
        raise argparse.ArgumentTypeError(f"{text!r} is more than 100")
    return value


def _status(args: argparse.Namespace, ctx: Context) -> int:
    thresholds = Thresholds(args.cert_warn_days, args.disk_warn, args.disk_crit, args.queue_warn_age)
    if thresholds.disk_crit > thresholds.disk_warn:
        raise CLIError("--disk-crit must not be above --disk-warn", 2)
    report = asyncio.run(check(ctx.config, thresholds))
    if args.json:
        print_json(report.as_json())
    else:
        print_text(report)
    return report.exit_status


def print_text(report: Report) -> None:
    summary = "; ".join(report.problems[:3]) + (f" (+{len(report.problems) - 3} more)"
                                                if len(report.problems) > 3 else "")
    print(f"MAILSTACK {report.status.upper()} - {summary or 'all checks passed'}")
    rows: list[tuple[str, str, str]] = []
    for name, checks in report.services.items():
        for c in checks:
            took = f" ({c.seconds:.3f}s)" if c.seconds is not None else ""
            where = "" if c.name == name else f"{c.name}: "
            rows.append((name, "up" if c.up else "DOWN", f"{where}{c.detail}{took}"))
    q = report.queue
    queue_text = q.error or (f"{q.size} message(s)" + (f", oldest {format_age(q.oldest_seconds)}" if q.oldest_seconds
                                                          is not None else "")
                             + f", {q.deferred} deferred, {q.overdue} overdue" + (" (partial)" if q.partial else ""))
    rows.append(("queued", "ok" if not q.error else "ERROR", queue_text))
    rows.append(("database", "up" if report.database.up else "DOWN", report.database.detail))
    rows.append(("certificate", _cert_state(report.certificate), _cert_text(report.certificate)))
    for name, d in report.disk.items():
        rows.append((f"disk {name}", "ok" if d.error is None else "ERROR", _disk_text(d)))
    rows.append(("spam scanner", "-" if report.spam is None else "up" if report.spam.up else "DOWN",
                 "not configured (no rspamd support yet)" if report.spam is None else report.spam.detail))
    width = max(len(r[0]) for r in rows)
    for name, state, text in rows:
        print(f"{name.ljust(width)}  {state.ljust(5)} {text}")


def _cert_state(c: CertificateInfo) -> str:
    if c.error is not None:
        return "ERROR"
    return "ok" if (c.days_left or 0) >= 0 else "EXPIRED"


def _cert_text(c: CertificateInfo) -> str:
    if c.error is not None:
        return f"{c.file}: {c.error}"
    assert c.not_after is not None
    return f"{c.hostname or '-'}: {c.days_left} day(s) left (until {c.not_after:%Y-%m-%d}), issuer {c.issuer} ({c.file})"


def _disk_text(d: DiskInfo) -> str:
    if d.error is not None or d.free_bytes is None:
        return f"{d.path}: {d.error}"
    return f"{d.path}: {d.free_bytes / 1024**3:.1f} GiB free ({d.free_percent}%)"
