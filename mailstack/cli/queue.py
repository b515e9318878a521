"""`mailstack queue list|show|flush|delete`: the outbound queue (``[queue] dir``).

Works beside a running ``serve``: ``flush`` rewrites every ``next_attempt`` to now under
the runner's per-message claim (``queue.claim``) and touches ``<dir>/.wake``,
which the runner watches; ``delete`` takes the same claim, so a message being
delivered at that moment is refused ("busy, try again") rather than half-deleted.
``delete --bounce`` bounces through ``queue.bounce`` like the MX and the runner do: an
RFC 3464 DSN, DKIM-signed, queued from ``<>``, one ``event=bounced ... service=cli``
mail-log line (on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from mailstack.cli.common import EXIT_OK, CLIError, Context, print_json, print_table


def register(nouns: Any) -> None:
    p = nouns.add_parser("queue", help="the outbound queue")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="list queued messages")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)
    show = verbs.add_parser("show", help="show one message (envelope, state and header)")
    show.add_argument("id")
    show.add_argument("--body", action="store_true", help="print the whole message")
    show.set_defaults(handler=_show)
    fl = verbs.add_parser("flush", help="retry every queued message now")
    fl.set_defaults(handler=_flush)
    rm = verbs.add_parser("delete", help="remove a message from the queue")
    rm.add_argument("id")
    rm.add_argument("--bounce", action="store_true", help="send the sender a bounce for it")
    rm.set_defaults(handler=_delete)


def _store(ctx: Context) -> Any:
    from mailstack.queue import QueueStore

    return QueueStore(ctx.config.queue.dir)


def _ts(t: float | None) -> str | None:
    if not t:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _row(env: Any, size: int | None) -> dict[str, Any]:
    return {
        "id": env.id,
        "sender": env.sender,
        "recipients": list(env.recipients),
        "attempts": env.attempts,
        "created": _ts(env.created),
        "next_try": _ts(env.next_attempt),
        "last_error": env.extra.get("last_error"),
        "size": size,
    }


def _entries(ctx: Context) -> list[dict[str, Any]]:
    store = _store(ctx)
    rows = []
    for qid in store.list():
        try:
            env = store.envelope(qid)
        except (OSError, ValueError):
            continue  # delivered meanwhile
        try:
            size = (store.dir / f"{qid}.msg").stat().st_size
        except OSError:
            size = None
        rows.append(_row(env, size))
    return rows


def _list(args: argparse.Namespace, ctx: Context) -> int:
    rows = _entries(ctx)
    if args.json:
        print_json(rows)
    else:
        print_table(["ID", "SENDER", "RECIPIENTS", "ATTEMPTS", "NEXT TRY", "LAST ERROR"],
                    [(r["id"], f"<{r['sender']}>", ",".join(r["recipients"]), r["attempts"], r["next_try"],
                      r["last_error"]) for r in rows])
    return EXIT_OK


def _load(ctx: Context, qid: str) -> tuple[Any, bytes]:
    from mailstack.queue import QueueIdError

    try:
        return _store(ctx).load(qid.upper())  # type: ignore[no-any-return]
    except QueueIdError:
        raise CLIError(f"{qid!r} is not a queue id") from None
    except FileNotFoundError:
        raise CLIError(f"no message {qid} in the queue") from None


def _show(args: argparse.Namespace, ctx: Context) -> int:
    env, data = _load(ctx, args.id)
    row = _row(env, len(data))
    for k in ("id", "sender", "recipients", "attempts", "created", "next_try", "last_error", "size"):
        v = row[k]
        print(f"{k}: {', '.join(v) if isinstance(v, list) else ('<' + v + '>' if k == 'sender' else v)}")
    for rcpt, err in (env.extra.get("errors") or {}).items():
        print(f"error: <{rcpt}>: {err}")
    if env.extra.get("done"):
        print(f"done: {', '.join(env.extra['done'])}")
    print()
    text = data.decode("utf-8", "replace")
    if not args.body:
        text = text.split("\r\n\r\n", 1)[0] + "\r\n"
    print(text.replace("\r\n", "\n"), end="")
    return EXIT_OK


def _flush(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack.queue import claim, touch_wake
    from mailstack.queue import QueueStore

    store = _store(ctx)
    n = 0
    now = time.time()
    for qid in store.list():
        with claim(store.dir, qid) as held:
            if not held:
                continue  # being delivered right now
            try:
                env = store.envelope(qid)
                if env.next_attempt > now:
                    store.save(QueueStore.updated(env, next_attempt=now))
            except (OSError, ValueError):
                continue
            n += 1
    if store.dir.is_dir():
        touch_wake(store.dir)
    print(f"{n} message(s) due now")
    return EXIT_OK


def _delete(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack.mail import dkim
    from mailstack.queue import claim, release_claim
    from mailstack.queue.bounce import DSNRecipient, DSNRequest, bounce

    env, data = _load(ctx, args.id)
    store = _store(ctx)
    dsn_id = None
    with claim(store.dir, env.id) as held:
        if not held:
            raise CLIError(f"message {env.id} is being delivered right now; try again")
        if args.bounce:
            # The one bounce path (signed, logged, queued, runners woken); the log line
            # goes to stderr, as the services' do, so the admin and the journal see it.
            with _mail_log_to_stderr():
                dsn_id = bounce(store, hostname=ctx.config.hostname, keys_dir=dkim.keys_dir(ctx.config),
                                queue_id=env.id, sender=env.sender, original=data, service="cli",
                                arrival=env.created, request=DSNRequest.from_extra(env.extra), recipients=[
                                    DSNRecipient(r, "5.0.0", "failed", "deleted from the queue by the administrator")
                                    for r in env.recipients])
        store.remove(env.id)
        release_claim(store.dir, env.id)
    print(f"message {env.id} deleted" + (f" (bounced to the sender as {dsn_id})" if dsn_id else ""))
    return EXIT_OK


@contextlib.contextmanager
def _mail_log_to_stderr() -> Iterator[None]:
    """The mail log (``mailstack.maillog``, INFO) on stderr while the block runs, unless
    logging is set up already; ``INFO mailstack.maillog: event=...`` as under ``serve``."""
    from mailstack.maillog import LOGGER_NAME

    logger = logging.getLogger(LOGGER_NAME)
    if logging.getLogger().handlers or logger.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
