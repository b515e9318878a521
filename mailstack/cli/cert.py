"""`mailstack cert status [--json]`, `mailstack cert renew [--force]`: the ACME certificates.

``status`` reads the installed ``[tls]`` certificate for every name this installation
certifies (``[acme] hostnames`` or the default list); exit 1 when one of them has an
``error`` (not named, expired, unreadable). ``renew`` orders a certificate now when it is
due (``--force``: even when not) from ``[acme] directory_url``, answering http-01 through
the challenge store that the running ``http`` service serves; on failure the installed
pair is left as it was (exit 1, one line). A running ``serve`` picks the new pair up
on its next start (or reload, where the running version has one).
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
    from mailstack.acme.client import ACMEError
    from mailstack.acme.renewal import renew

    if not ctx.config.acme.directory_url:
        raise CLIError("[acme] directory_url is not set: no CA to renew from")
    try:
        outcome = renew(ctx.config, _domains(ctx), force=args.force)
    except ACMEError as e:
        raise CLIError(f"renewal failed, the installed certificate stays: {e}") from None
    except OSError as e:
        raise CLIError(f"renewal failed, the installed certificate stays: {e.filename}: {e.strerror}") from None
    if outcome.renewed:
        print(f"renewed ({outcome.detail}); installed at {ctx.config.tls.cert_file}")
    else:
        print("not due: the certificate is good for more than a third of its lifetime (--force to renew)")
    return EXIT_OK
