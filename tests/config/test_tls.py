"""`server.tls` checked at load: the files readable, a certificate, the key that matches it, a cipher
string that selects something; every problem a line naming its key, the same in `flowgate check-config`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from proxy.config import ConfigError, parse_config
from tests.conftest import base_config
from tests.front.tlskit import ROOT, make_certs, tls_settings


def problems(server: dict) -> list[str]:
    cfg = base_config("http://127.0.0.1:9")
    cfg["server"] = {**cfg["server"], **server}
    with pytest.raises(ConfigError) as info:
        parse_config(cfg)
    return info.value.problems


def test_a_served_config_loads(tmp_path):
    certs = make_certs(tmp_path)
    cfg = base_config("http://127.0.0.1:9")
    cfg["server"]["tls"] = tls_settings(certs, min_version="1.3", ciphers="ECDHE+AESGCM")
    assert parse_config(cfg).server.tls.min_version == "1.3"
    assert parse_config(base_config("http://127.0.0.1:9")).server.tls is None  # plain text stays the default


def test_a_key_of_another_certificate_is_refused_naming_the_key(tmp_path):
    certs = make_certs(tmp_path)
    other = certs.ca.issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    lines = problems({"tls": {"cert_file": str(certs.cert_file), "key_file": str(tmp_path / "other.key")}})
    assert lines == [f"server.tls.key_file: {tmp_path / 'other.key'} does not match the certificate in cert_file "
                     f"{certs.cert_file} (the key of another certificate?)"]


def test_the_same_line_in_check_config(tmp_path):
    certs = make_certs(tmp_path)
    cfg = base_config("http://127.0.0.1:9")
    cfg["server"]["tls"] = tls_settings(certs)
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "listening on https://127.0.0.1:8080" in out.stdout, out.stdout
    cfg["server"]["tls"] = {"cert_file": str(certs.cert_file), "key_file": str(certs.cert_file)}  # careless swap
    path = tmp_path / "fg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert f"  server.tls.key_file: {certs.cert_file} holds no PEM private key" in out.stdout


@pytest.mark.parametrize(("make", "field", "says"), [
    (lambda t, c: {"cert_file": str(t / "missing.pem"), "key_file": str(c.key_file)}, "cert_file",
     "cannot read"),
    (lambda t, c: {"cert_file": str(c.key_file), "key_file": str(c.key_file)}, "cert_file",
     "holds no PEM certificate"),
    (lambda t, c: {"cert_file": str(t / "bad.pem"), "key_file": str(c.key_file)}, "cert_file",
     "is not a valid PEM certificate chain"),
    (lambda t, c: {"cert_file": str(c.cert_file), "key_file": str(t)}, "key_file", "cannot read"),
    (lambda t, c: {"cert_file": str(c.cert_file), "key_file": str(t / "enc.key")}, "key_file", "is encrypted"),
    (lambda t, c: {"cert_file": str(c.cert_file), "key_file": str(c.key_file), "ciphers": "NOPE"}, "ciphers",
     "no cipher matches 'NOPE'"),
    (lambda t, c: {"cert_file": str(c.cert_file), "key_file": str(c.key_file), "min_version": "1.1"}, "min_version",
     "Input should be '1.2' or '1.3'"),
])
def test_careless_files_and_settings_are_named(tmp_path, make, field, says):
    certs = make_certs(tmp_path)
    (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (tmp_path / "enc.key").write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n"
                                      "-----END ENCRYPTED PRIVATE KEY-----\n")
    lines = problems({"tls": make(tmp_path, certs)})
    assert len(lines) == 1 and lines[0].startswith(f"server.tls.{field}: ") and says in lines[0], lines


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_key_is_named(tmp_path):
    certs = make_certs(tmp_path)
    certs.key_file.chmod(0)
    lines = problems({"tls": tls_settings(certs)})
    assert lines == [f"server.tls.key_file: cannot read {certs.key_file}: Permission denied"]


def test_metrics_tls_needs_its_listener(tmp_path):
    certs = make_certs(tmp_path)
    assert problems({"metrics_tls": tls_settings(certs)}) == [
        "server: metrics_tls is set but metrics_port is not (the listener it is for)"]
    cfg = base_config("http://127.0.0.1:9")
    cfg["server"].update(metrics_port=9100, metrics_tls=tls_settings(certs))
    assert parse_config(cfg).server.metrics_tls is not None
