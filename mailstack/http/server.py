"""The ``http`` service (``mailstack.http.server:start``): autoconfig, Autodiscover, MTA-STS, metrics.

An aiohttp application on the ``[http]`` listeners (``tls_listen`` with the ``[tls]``
certificate), opened through ``net.open_listeners`` like every other service. With ACME
on, ``tls_listen`` also answers tls-alpn-01 (RFC 8737, ``acme.alpn``) below HTTP, in the
TLS handshake.

Routes:

=========================================================  ======  ============================
``/mail/config-v1.1.xml?emailaddress=A``                   GET     Thunderbird autoconfig
``/.well-known/autoconfig/mail/config-v1.1.xml``           GET     the same (Thunderbird >= 45)
``/autodiscover/autodiscover.xml``                         POST    Outlook POX Autodiscover
``/Autodiscover/Autodiscover.xml``                         POST    the same (Outlook's casing)
``/.well-known/mta-sts.txt``                               GET     MTA-STS policy (RFC 8461 §3.3),
                                                                   only for Host ``mta-sts.<local domain>``
``/metrics``                                               GET     Prometheus text format, only for
                                                                   clients in ``[http] metrics_networks``
``/.well-known/acme-challenge/<token>``                    GET     ACME http-01 (RFC 8555 §8.3), from
                                                                   the challenge store under ``[acme] dir``
=========================================================  ======  ============================

Invariants:
- only our domains are described: an address or Host whose domain is not local is
  ``404``; nothing tells whether a *user* exists (no enumeration);
- anything else is ``404``; a wrong method ``405``; a malformed address, XML, or a body
  over ``[http] max_request_size`` is ``400``; oversized request lines/headers are
  refused by aiohttp's parser with ``400``;
- the MTA-STS policy is served only under ``mta-sts.<one of our domains>`` (RFC 8461
  §3.2: that is where it lives); any other Host gets ``404``;
- every response says ``Server: mailstack``, aiohttp's own error pages for requests it
  cannot parse included (they never reach the application, so its
  ``on_response_prepare`` signal does not see them: the header is set where each
  connection's writer sends the status line);
- ``/metrics`` answers only a client whose own address (the socket's peer: a proxy's
  ``X-Forwarded-For`` is not believed) is in ``[http] metrics_networks``, anyone else ``403``;
  one scrape is measured at a time, in a thread (it reads the queue and the disks), so
  scrapes cannot pile up on the event loop;
- no traceback ever reaches a client: an unexpected error is logged and answered with a
  bare ``500``; a directory that cannot be reached is ``503``;
- connections are bounded like every service's (``ctx.limits``: in total and per client
  IP; over the cap the connection is closed at once) and in time: idle keep-alive ends
  after ``KEEPALIVE_TIMEOUT``, and no connection lives longer than ``MAX_CONNECTION_AGE``
  (a client dribbling a request byte by byte cannot hold it forever).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import weakref
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web

from mailstack import metrics, net
from mailstack.acme import alpn as acme_alpn
from mailstack.acme import renewal as acme_renewal
from mailstack.acme import store as acme_store
from mailstack.http import documents as docs
from mailstack.ops.scrape import gauges
from mailstack.service import RunningService, ServiceContext

if TYPE_CHECKING:
    from mailstack.config import Config

__all__ = ["HTTPService", "make_app", "start"]

log = logging.getLogger(__name__)

XML = "text/xml"
SERVER_NAME = "mailstack"  # no library or Python versions to fingerprint
KEEPALIVE_TIMEOUT = 30.0
MAX_LINE = 8190
MAX_FIELD = 8190
MAX_CONNECTION_AGE = 120.0  # seconds; autoconfig clients make one or two requests

CONFIG_KEY: web.AppKey[Any] = web.AppKey("mailstack_config", object)
DOMAINS_KEY: web.AppKey[Any] = web.AppKey("mailstack_is_local_domain", object)
METRICS_NETWORKS_KEY: web.AppKey[Any] = web.AppKey("mailstack_metrics_networks", object)
SCRAPE_LOCK_KEY: web.AppKey[Any] = web.AppKey("mailstack_scrape_lock", object)


class _ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's protocol logger: a bad request is one INFO line, its traceback at DEBUG."""

    def exception(self, msg: object, *args: object, exc_info: object = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0] if exc is not None else ""
        self.logger.info("http: %s%s", str(msg) % args, f": {text[:200]}" if text else "")
        self.logger.debug("http: details", exc_info=exc_info)


class _Problem(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@web.middleware
async def _no_tracebacks(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except _Problem as p:
        resp = web.Response(status=p.status, text=p.text + "\n")
        if p.status == 400:
            resp.force_close()  # a body may be left unread: do not parse it as the next request
        return resp
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("http: %s %s failed", request.method, request.path)
        resp = web.Response(status=500, text="Internal server error\n")
        resp.force_close()
        return resp


async def _is_local(request: web.Request, domain: str) -> bool:
    from mailstack.directory.errors import DirectoryUnavailable

    check = request.app[DOMAINS_KEY]
    try:
        return bool(await asyncio.to_thread(check, domain))
    except DirectoryUnavailable:
        raise _Problem(503, "Directory unavailable, try again later") from None


def _address_domain(text: str) -> tuple[str, str]:
    from mailstack.mail.address import AddressError, parse_address

    try:
        addr = parse_address(text.strip())
    except AddressError as e:
        raise _Problem(400, f"Bad email address: {e}") from None
    return str(addr), addr.domain


def _host_name(request: web.Request) -> str | None:
    """The Host header without its port nor a final dot (an absolute FQDN), lower case;
    None for an IP literal or nothing."""
    host = (request.host or "").strip()
    if not host or host.startswith("["):
        return None
    host = host.rpartition(":")[0] if host.count(":") == 1 else host
    return host.removesuffix(".").lower() or None


def _host_domain(request: web.Request) -> str | None:
    from mailstack.mail.address import AddressError, normalize_domain

    host = _host_name(request)
    if host is None:
        return None
    for prefix in ("autoconfig.", "autodiscover.", "mta-sts."):
        if host.startswith(prefix):
            host = host[len(prefix):]
            break
    try:
        return normalize_domain(host)
    except AddressError:
        return None


async def autoconfig(request: web.Request) -> web.Response:
    """Thunderbird: ``emailaddress`` names the domain; without it, the Host does."""
    config: Config = request.app[CONFIG_KEY]
    raw = request.query.get("emailaddress")
    if raw is not None:
        _address, domain = _address_domain(raw)
    else:
        found = _host_domain(request)
        if found is None:
            raise _Problem(404, "Unknown domain")
        domain = found
    if not await _is_local(request, domain):
        raise _Problem(404, "Unknown domain")
    body = docs.thunderbird_config([domain], config.hostname, docs.endpoints(config))
    return web.Response(body=body, content_type=XML, charset="utf-8")


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _Problem(400, "Request body too large")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise _Problem(400, "Request body too large")
        chunks.append(chunk)
    return b"".join(chunks)


async def autodiscover(request: web.Request) -> web.Response:
    """Outlook POX Autodiscover ([MS-OXDSCLI])."""
    config: Config = request.app[CONFIG_KEY]
    body = await _read_body(request, config.http.max_request_size)
    try:
        req = docs.parse_autodiscover_request(body)
    except docs.AutodiscoverError as e:
        raise _Problem(400, f"Bad Autodiscover request: {e}") from None
    address, domain = _address_domain(req.email)
    if not await _is_local(request, domain):
        raise _Problem(404, "Unknown domain")
    return web.Response(body=docs.autodiscover_response(address, docs.endpoints(config)),
                        content_type=XML, charset="utf-8")


async def mta_sts(request: web.Request) -> web.Response:
    """RFC 8461 §3.3: ``text/plain``; the MX names are ours (``[http] mta_sts_mx`` or hostname).

    RFC 8461 §3.2: the policy of ``<domain>`` is fetched from
    ``https://mta-sts.<domain>/.well-known/mta-sts.txt``; under any other name (our bare
    hostname, an IP, a domain that is not ours) there is no policy: ``404``.
    """
    config: Config = request.app[CONFIG_KEY]
    host = _host_name(request)
    domain = _host_domain(request) if host is not None and host.startswith("mta-sts.") else None
    if domain is None or not await _is_local(request, domain):
        raise _Problem(404, "No MTA-STS policy here")
    mx = list(config.http.mta_sts_mx) or [config.hostname]
    body = docs.mta_sts_policy(config.http.mta_sts_mode, mx, config.http.mta_sts_max_age)
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def acme_challenge(request: web.Request) -> web.Response:
    """RFC 8555 §8.3: the key authorization as ``application/octet-stream``, under any Host
    (the CA connects to each name it validates); ``404`` for a token with no answer."""
    config: Config = request.app[CONFIG_KEY]
    body = await asyncio.to_thread(acme_store.read_challenge, acme_store.challenge_dir(config),
                                   request.match_info["token"])
    if body is None:
        raise _Problem(404, "No such challenge")
    return web.Response(body=body, content_type="application/octet-stream")


def _metrics_allowed(request: web.Request) -> bool:
    """Is the peer of this connection in ``[http] metrics_networks``? (A unix socket peer
    has no address: no, since a proxy in front of it would speak for anyone.)"""
    try:
        ip = ipaddress.ip_address((request.remote or "").partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener's ::ffff:192.0.2.1
    return any(ip in net for net in request.app[METRICS_NETWORKS_KEY])


async def metrics_page(request: web.Request) -> web.Response:
    """This process's counters and the scrape-time gauges, in Prometheus text format."""
    if not _metrics_allowed(request):
        raise _Problem(403, "Forbidden")
    config: Config = request.app[CONFIG_KEY]
    async with request.app[SCRAPE_LOCK_KEY]:
        body = await asyncio.to_thread(metrics.render, lambda: gauges(config))
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: metrics.CONTENT_TYPE})


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER_NAME


def _stamping_request_factory(factory: Any) -> Any:
    """Wrap a ``web.Server.request_factory`` so that every response on the request's
    writer says ``Server: mailstack``.

    aiohttp answers a request it cannot parse (bad request line, oversized header...)
    itself, with a ``BaseRequest`` that never reaches the application and the default
    ``Server: Python/3.x aiohttp/3.y`` (aiohttp issues #3287, #6463: no option for it).
    Every request object, those included, is made by the server's ``request_factory``
    with the writer its response will go through; the header is set on that writer's
    ``write_headers``, the one place every response passes.
    """

    def make(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> Any:
        write_headers = type(writer).write_headers
        ref = weakref.ref(writer)  # no writer -> stamped -> writer cycle: freed as before

        async def stamped(status_line: str, headers: Any) -> None:
            headers[hdrs.SERVER] = SERVER_NAME
            w = ref()
            if w is not None:
                await write_headers(w, status_line, headers)

        writer.write_headers = stamped
        return factory(message, payload, protocol, writer, task)

    return make


def make_app(config: Config, is_local_domain: Any) -> web.Application:
    """The application; ``is_local_domain(domain) -> bool`` is called in a thread."""
    app = web.Application(
        middlewares=[_no_tracebacks],
        client_max_size=config.http.max_request_size + 1,
        # never a traceback in an error page, even with asyncio debug on; protocol errors
        # (bad clients) logged in one line, not as tracebacks
        handler_args={"debug": False, "logger": _ProtocolLog(log, {})},
    )
    app.on_response_prepare.append(_server_header)
    app[CONFIG_KEY] = config
    app[DOMAINS_KEY] = is_local_domain
    app[METRICS_NETWORKS_KEY] = tuple(ipaddress.ip_network(n, strict=False) for n in config.http.metrics_networks)
    app[SCRAPE_LOCK_KEY] = asyncio.Lock()
    app.router.add_get("/mail/config-v1.1.xml", autoconfig)
    app.router.add_get("/.well-known/autoconfig/mail/config-v1.1.xml", autoconfig)
    app.router.add_post("/autodiscover/autodiscover.xml", autodiscover)
    app.router.add_post("/Autodiscover/Autodiscover.xml", autodiscover)
    app.router.add_get("/.well-known/mta-sts.txt", mta_sts)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/.well-known/acme-challenge/{token}", acme_challenge)
    return app


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's protocol: connection limits and a maximum age (see the docstring)."""

    def __init__(self, inner: asyncio.Protocol, limits: net.ConnectionLimits, max_age: float) -> None:
        self.inner = inner
        self.limits = limits
        self.max_age = max_age
        self.ip: str | None = None
        self.admitted = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.ip = net.peer_ip(transport)
        if not self.limits.acquire(self.ip):
            log.info("http: refused %s: too many connections", self.ip or "local")
            transport.abort()
            return
        self.admitted = True
        self.timer = asyncio.get_running_loop().call_later(self.max_age, transport.abort)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        self.admitted = False
        if self.timer is not None:
            self.timer.cancel()
        self.limits.release(self.ip)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class HTTPService:
    """A running http service. ``stop(grace)``: stop listening, finish requests, close."""

    name = "http"

    def __init__(self, runner: web.AppRunner, servers: list[asyncio.Server],
                 renewal: asyncio.Task[None] | None = None) -> None:
        self.runner = runner
        self.servers = servers
        self.renewal = renewal

    async def stop(self, grace: float) -> None:
        if self.renewal is not None:
            self.renewal.cancel()  # an order in flight is abandoned; an install under way finishes
            await asyncio.gather(self.renewal, return_exceptions=True)
        for s in self.servers:
            s.close()
        server = self.runner.server
        if server is not None:
            server.pre_shutdown()
            await server.shutdown(grace)
        await self.runner.cleanup()
        for s in self.servers:
            await s.wait_closed()


async def start(ctx: ServiceContext) -> RunningService:
    cfg = ctx.config
    app = make_app(cfg, ctx.directory.is_local_domain)
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("mailstack.http.access"),
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        max_line_size=MAX_LINE,
        max_field_size=MAX_FIELD,
        handler_cancellation=True,
    )
    await runner.setup()
    server = runner.server
    assert server is not None
    server.request_factory = _stamping_request_factory(server.request_factory)

    def factory_for(address: object, implicit_tls: bool) -> net.ProtocolFactory:
        return lambda: _Guard(server(), ctx.limits, MAX_CONNECTION_AGE)

    # With ACME on, the https listener answers tls-alpn-01 (RFC 8737): a handshake offering
    # ALPN acme-tls/1 for a name with a pending challenge gets the challenge certificate.
    tls_front = ctx.tls.hello_front(acme_alpn.Answerer(cfg)) if cfg.acme.directory_url else ctx.tls.server
    try:
        servers = await net.open_listeners("http", cfg.listeners("http"), factory_for, tls_front)
    except BaseException:
        await runner.cleanup()
        raise
    renewal = None
    if cfg.acme.directory_url:
        # The ACME renewal loop lives with the service that answers its http-01 challenges;
        # a renewed pair is swapped into this process's TLS contexts at once (other
        # processes take it at their next SIGHUP / systemctl reload).
        def installed() -> None:
            try:
                ctx.tls.reload(cfg.tls, cfg.hostname)
            except net.TLSError as e:
                log.error("acme: the renewed certificate could not be loaded, the old one stays: %s", e)

        renewal = asyncio.create_task(
            acme_renewal.run(cfg, lambda: [d.name for d in ctx.directory.list_domains()], installed),
            name="acme-renewal")
    return HTTPService(runner, servers, renewal)
