"""``flowgate serve``, ``reload``, ``check-config``, ``healthcheck``, ``demo`` and ``demo-backend``:
the commands that run or probe a gateway."""

from __future__ import annotations

import argparse
import ssl
import sys
import urllib.error
import urllib.request

from ..config import ConfigError, load_config
from .common import DEFAULT_CONFIG_ENV, load

LOG_LEVELS = ("debug", "info", "warning", "error")


def cmd_serve(args: argparse.Namespace) -> int:
    from ..front.pidfile import PidFileError
    from ..front.serve import CannotListen
    from ..front.supervisor import serve
    from ..logging import configure_logging

    config = load(args.config)
    configure_logging(args.log_level)
    try:
        return serve(config, args.config)
    except (CannotListen, PidFileError) as exc:
        print(exc, file=sys.stderr)
        return 1


def cmd_reload(args: argparse.Namespace) -> int:
    from ..front.reload import send

    if not args.config:
        sys.exit(f"flowgate: no config given: pass --config FILE or set {DEFAULT_CONFIG_ENV}")
    return send(args.config, args.pid)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(exc.report(args.file))
        return 2
    server = cfg.server
    print(f"{args.file}: ok ({len(cfg.flows)} flows, {len(cfg.keys)} keys, {len(cfg.backends)} backends, "
          f"store {cfg.store.split('://')[0]}, "
          f"dialects: {', '.join(f'{n} at {m.prefix}' for n, m in cfg.dialects.items())}; "
          f"listening on {'https' if server.tls else 'http'}://{server.host}:{server.port})")
    return 0


def health_target(args: argparse.Namespace) -> tuple[str, ssl.SSLContext | None]:
    """The URL to probe and, for the configured listener with ``server.tls``, the TLS context to
    probe it with (``--url``: as given, an https URL checked against the system's CAs)."""
    if args.url:
        return args.url, None
    config = load(args.config)
    host = config.server.host
    if host in ("0.0.0.0", "", "::"):  # listening everywhere: ask over loopback
        host = "127.0.0.1" if host != "::" else "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    tls = config.server.tls
    url = f"{'https' if tls else 'http'}://{host}:{config.server.port}/{'readyz' if args.ready else 'healthz'}"
    return url, probe_context(tls.cert_file) if tls else None


def probe_context(cert_file: str) -> ssl.SSLContext:
    """A client context that trusts exactly the listener's configured certificate chain, whatever the
    names in it: the probe asks over loopback, so it cannot check the public host name, and a
    self-signed or private-CA certificate would fail against the system's CAs. What is checked is
    that the listener shows the configured certificate (or one issued by a CA in its chain)."""
    ctx = ssl.create_default_context(cafile=cert_file)  # (only this file: no system CAs)
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself may be the trust anchor
    return ctx


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when the gateway answers 200 (for container healthchecks: the image has no curl)."""
    try:
        url, context = health_target(args)
    except (OSError, ssl.SSLError) as exc:
        print(f"flowgate: cannot read the TLS certificate to probe with: {exc}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=args.timeout, context=context) as resp:  # noqa: S310 - ours
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        print(f"flowgate: {url}: unreachable ({getattr(exc, 'reason', exc)})", file=sys.stderr)
        return 1
    if status != 200:
        print(f"flowgate: {url}: {status}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{url}: ok")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(port=args.port, backend_port=args.backend_port, workdir=args.dir)


def cmd_demo_backend(args: argparse.Namespace) -> int:
    from ..demo import run_demo_backend

    return run_demo_backend(args.host, args.port)


def add_parsers(sub, config_arg) -> None:
    s = sub.add_parser("serve", help="run the gateway")
    config_arg(s)
    s.add_argument("--log-level", default="info", choices=LOG_LEVELS, type=str.lower)
    s.set_defaults(func=cmd_serve)

    rl = sub.add_parser("reload", help="validate the config, then have the running server take it (SIGHUP)")
    config_arg(rl)
    rl.add_argument("--pid", type=int, help="the server's process id (default: read from server.pid_file)")
    rl.set_defaults(func=cmd_reload)

    c = sub.add_parser("check-config", help="validate a config file; non-zero exit on problems")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)

    h = sub.add_parser("healthcheck", help="exit 0 when a running gateway answers /healthz (or /readyz); over https "
                       "when server.tls is set, trusting its configured certificate")
    config_arg(h)
    h.add_argument("--url", help="probe this URL instead of the configured listener's /healthz")
    h.add_argument("--ready", action="store_true", help="probe /readyz (the store reachable) instead")
    h.add_argument("--timeout", type=float, default=3.0)
    h.add_argument("--quiet", "-q", action="store_true")
    h.set_defaults(func=cmd_healthcheck)

    d = sub.add_parser("demo", help="gateway + built-in demo backend + curl lines that work")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument("--backend-port", type=int, default=9001)
    d.add_argument("--dir", default=".flowgate-demo", help="where the demo keeps its config and SQLite store")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("demo-backend", help="only the demo backend (text on POST /stream, Langflow events on "
                       "POST /api/v1/run/{flow}), e.g. for the compose kit")
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, default=9001)
    b.set_defaults(func=cmd_demo_backend)
