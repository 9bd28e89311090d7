"""`make bench BENCH_ARGS=--tls`: the cost of TLS on the listener. nginx (``listen ... ssl``) and
flowgate (``server.tls``) serve the same workload over HTTPS beside their plain-text selves, with a
certificate for 127.0.0.1 from a local CA (trustme), TLS 1.3 (both sides' default), keep-alive
connections as the plain paths have them; the table quotes each proxy's TLS run against its plain run."""

from __future__ import annotations

import ssl
from pathlib import Path

NGINX_TLS = """
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;"""


def make_certs(tmp: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """(cert_file, key_file) for 127.0.0.1 and a client context that trusts them."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp / "fullchain.pem", tmp / "privkey.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return cert_file, key_file, client


def table(results: dict) -> str:
    """Each proxy's TLS run against its plain run (the same scenarios, same rounds)."""

    def get(name: str, scenario: str, key: str):
        return results.get(name, {}).get(scenario, {}).get(key)

    rows = [("CPU µs per forwarded line", "streams", "cpu_us_per_line"),
            ("CPU µs per short run", "short", "cpu_us_per_run"),
            ("short runs/s", "short", "runs_per_s"),
            ("line latency p99, long streams (ms)", "streams", "p99_ms"),
            ("line latency p99, many streams (ms)", "latency", "p99_ms"),
            ("bulk (MB/s)", "bulk", "mb_per_s")]

    def fmt(v):
        return "-" if v is None else f"{v:.2f}"

    def ratio(a, b):
        return f"{a / b:.2f}×" if a and b else "-"

    out = ["| metric | nginx | nginx TLS | flowgate token | flowgate TLS (token) | nginx TLS / plain | "
           "flowgate TLS / plain |",
           "|---|---|---|---|---|---|---|"]
    for label, scenario, key in rows:
        n, nt, f, ft = (get(p, scenario, key) for p in ("nginx", "nginx-tls", "flowgate token", "flowgate-tls"))
        out.append(f"| {label} | {fmt(n)} | {fmt(nt)} | {fmt(f)} | {fmt(ft)} | {ratio(nt, n)} | {ratio(ft, f)} |")
    return "\n".join(out)
