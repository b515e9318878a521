"""`mailstack cert status [--json]`, `mailstack cert renew [--force] [HOST ...]`: the ACME certificates.

``status`` reads, for every name this installation certifies (``[acme] hostnames`` or the
default list), the certificate SNI serves it (its own, else the default); exit 1 when
one of them has an ``error`` (not named, expired, unreadable). ``renew`` orders each
name's certificate now when it is due (``--force``: even when not), one order per name,
from ``[acme] directory_url``, answering http-01 or tls-alpn-01 through the stores the
running ``http`` service serves; ``HOST ...`` limits it to those names (each must be one
of the certified names). One line per name on stdout; the names that failed are one
line on stderr (exit 1), and their installed pairs are left as they were. A running
``serve`` picks the new pairs up at its next reload (SIGHUP) or start.
"""

from __future__ import annotations

import argparse
from typing import Any

from mailstack.cli.common import EXIT_FAILED, EXIT_OK, CLIError, Context, print_json, print_table


def register(nouns: Any) -> None:
    p = nouns.add_parser("cert", help="TLS certificates from ACME (status, renew)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    st = verbs.add_parser("status", help="the certificate serving each host name, days left")
    st.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    st.set_defaults(handler=_status)
    rn = verbs.add_parser("renew", help="order a certificate now when it is due")
    rn.add_argument("--force", action="store_true", help="order even when the certificate is good")
    rn.add_argument("hosts", nargs="*", metavar="HOST", help="only these certified names (default: every one)")
    rn.set_defaults(handler=_renew)


def _domains(ctx: Context) -> list[str]:
    if ctx.config.acme.hostnames:
        return []  # not needed: the names are configured
    return [d.name for d in ctx.directory.list_domains()]


def _status(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack.acme.renewal import hostnames
    from mailstack.acme.status import cert_status

    rows = cert_status(ctx.config, hostnames(ctx.config, _domains(ctx)))
    if args.json:
        print_json([r.as_json() for r in rows])
    else:
        print_table(("HOSTNAME", "ISSUER", "NOT AFTER", "DAYS LEFT", "ERROR"),
                    [(r.hostname, r.issuer, r.not_after, r.days_left, r.error) for r in rows])
    return EXIT_FAILED if any(r.error for r in rows) else EXIT_OK


def _renew(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack.acme.renewal import hostnames, renew

    if not ctx.config.acme.directory_url:
        raise CLIError("[acme] directory_url is not set: no CA to renew from")
    names = hostnames(ctx.config, _domains(ctx))
    unknown = [h for h in args.hosts if h.rstrip(".").lower() not in names]
    if unknown:
        raise CLIError(f"{', '.join(unknown)}: not certified here (the names are: {', '.join(names)})")
    outcomes = renew(ctx.config, _domains(ctx), force=args.force, only=args.hosts)
    for o in outcomes:
        if o.renewed:
            print(f"{o.host}: renewed ({o.detail})")
        elif not o.failed:
            print(f"{o.host}: not due, good for more than a third of its lifetime (--force to renew)")
    failed = [o for o in outcomes if o.failed]
    if failed:
        raise CLIError("renewal failed, the installed certificate stays: "
                       + "; ".join(f"{o.host}: {o.detail}" for o in failed))
    return EXIT_OK
