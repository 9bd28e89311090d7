"""serve, check-config, healthcheck, --version: clear one-line errors, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import yaml

from proxy import __version__
from tests.cli.test_credits import ROOT, flowgate
from tests.conftest import base_config, free_port


def test_version():
    done = flowgate("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"flowgate {__version__}"


def test_check_config_refuses_an_empty_file(tmp_path):
    for text in ("", "# only a comment\n", "\n\n"):
        path = tmp_path / "empty.yaml"
        path.write_text(text)
        done = flowgate("check-config", str(path))
        assert done.returncode == 2 and "empty" in done.stdout and "ok" not in done.stdout


def test_a_yaml_error_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("server:\n  port: 8080\n bad: indent\n")
    done = flowgate("check-config", str(path))
    assert done.returncode == 2
    assert str(path) in done.stdout and "line 3" in done.stdout and "<unicode string>" not in done.stdout


def test_an_unknown_log_level_is_a_usage_error():
    done = flowgate("serve", "--log-level", "verbose", "--config", "config/flowgate.example.yaml")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--log-level" in done.stderr and "debug" in done.stderr


def test_a_taken_port_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        raw = base_config("http://127.0.0.1:9", server={"port": port})
        cfg = tmp_path / "fg.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        done = flowgate("serve", "--config", str(cfg))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in done.stderr


def test_demo_with_a_taken_backend_port_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = flowgate("demo", "--port", str(free_port()), "--backend-port", str(port), "--dir", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "the demo backend cannot listen" in done.stderr and "BACKEND_PORT" in done.stderr


def test_healthcheck(tmp_path):
    port = free_port()
    raw = base_config("http://127.0.0.1:9", server={"port": port, "host": "0.0.0.0"})
    cfg = tmp_path / "fg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    down = flowgate("healthcheck", "--config", str(cfg))
    assert down.returncode == 1 and "unreachable" in down.stderr
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while (up := flowgate("healthcheck", "--config", str(cfg), "--ready")).returncode != 0:
            assert time.monotonic() < deadline, up.stderr
            time.sleep(0.2)
        assert "readyz: ok" in up.stdout
        assert flowgate("healthcheck", "--url", f"http://127.0.0.1:{port}/nope").returncode == 1
    finally:
        proc.terminate()
        proc.wait(15)


def test_healthcheck_over_tls_with_workers(tmp_path):
    """server.tls set (and two workers): the probe speaks https to the listener and trusts the
    configured certificate, whatever its names (the image's HEALTHCHECK has no other option)."""
    from tests.front.tlskit import make_certs, tls_settings

    certs = make_certs(tmp_path)
    port = free_port()
    raw = base_config("http://127.0.0.1:9", store=f"sqlite:///{tmp_path / 'fg.db'}",
                      server={"port": port, "host": "0.0.0.0", "workers": 2, "tls": tls_settings(certs)})
    cfg = tmp_path / "fg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while (up := flowgate("healthcheck", "--config", str(cfg))).returncode != 0:
            assert time.monotonic() < deadline, up.stderr
            time.sleep(0.2)
        assert up.stdout.strip() == f"https://127.0.0.1:{port}/healthz: ok"
        # another certificate than the configured one is not this gateway
        (tmp_path / "other").mkdir()
        other = make_certs(tmp_path / "other")
        raw["server"]["tls"] = tls_settings(other)
        cfg2 = tmp_path / "other.yaml"
        cfg2.write_text(yaml.safe_dump(raw))
        wrong = flowgate("healthcheck", "--config", str(cfg2))
        assert wrong.returncode == 1 and "unreachable" in wrong.stderr and "CERTIFICATE_VERIFY_FAILED" in wrong.stderr
    finally:
        proc.terminate()
        proc.wait(15)
