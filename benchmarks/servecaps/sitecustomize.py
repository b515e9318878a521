"""Benchmark-only: the IMAP/POP3 connection cap of ``mailstack serve``, raised for a load.

``mailstack.service.limits_for`` gives IMAP and POP3 a cap fixed in code
(``DEFAULT_MAX_CONNECTIONS``, 1000 per process; there is no config key for it), and the
IDLE-memory row holds 10,000 connections. ``mail_loads.MailServer`` puts this folder on
``PYTHONPATH`` of the server it starts, so Python imports this file at the start of the
supervisor *and* of every worker (they inherit the environment), and sets that number
from ``$MAILSTACK_BENCH_MAX_CONNECTIONS``. Nothing else of the product changes; without
the variable this file does nothing. The per-address caps are config keys
(``[imap] max_unauthenticated_per_ip``, ``max_userip_connections``) and are set in the
benchmark's config instead.
"""

import os

_cap = os.environ.get("MAILSTACK_BENCH_MAX_CONNECTIONS", "")
if _cap.isdigit():
    import mailstack.service

    mailstack.service.DEFAULT_MAX_CONNECTIONS = int(_cap)
