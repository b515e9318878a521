"""`mailstack dkim keygen DOMAIN [--selector S] [--algorithm rsa|ed25519]`.

Makes the key (RSA 2048 by default) under ``[queue] dkim_dir`` (``<domain>/<selector>.key``,
0600) and prints the TXT record to publish; mail from that domain is signed from then on.
"""

from __future__ import annotations

import argparse
from typing import Any

from mailstack.cli.common import EXIT_OK, CLIError, Context, print_json


def register(nouns: Any) -> None:
    p = nouns.add_parser("dkim", help="DKIM signing keys")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    kg = verbs.add_parser("keygen", help="make a signing key and print its DNS record")
    kg.add_argument("domain")
    kg.add_argument("--selector", default="mail", help="selector (default: mail)")
    kg.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa", help="rsa (2048 bits, default) or ed25519")
    kg.set_defaults(handler=_keygen)
    ls = verbs.add_parser("list", help="list the keys of a domain (or all) with their records")
    ls.add_argument("domain", nargs="?")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)


def _keygen(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack.mail import dkim
    from mailstack.mail.address import AddressError, normalize_domain

    try:
        domain = normalize_domain(args.domain)
    except AddressError as e:
        raise CLIError(f"{args.domain!r}: {e}") from None
    try:
        key = dkim.generate_key(dkim.keys_dir(ctx.config), domain, args.selector, args.algorithm)
    except dkim.DKIMError as e:
        raise CLIError(str(e)) from None
    print(dkim.zone_line(key))
    return EXIT_OK


def _list(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack.mail import dkim

    base = dkim.keys_dir(ctx.config)
    domains = [args.domain.lower()] if args.domain else sorted(p.name for p in base.iterdir() if p.is_dir()) \
        if base.is_dir() else []
    keys = [k for d in domains for k in dkim.load_keys(base, d)]
    if args.json:
        print_json([{"domain": k.domain, "selector": k.selector, "algorithm": k.algorithm,
                     "name": k.record_name, "txt": dkim.txt_record(k)} for k in keys])
    else:
        for k in keys:
            print(dkim.zone_line(k))
    return EXIT_OK
