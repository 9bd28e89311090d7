"""`server.tls` checked at load: the files readable, a certificate, the key that matches it, a cipher
string that selects something; every problem a line naming its key, the same in `flowgate check-config`."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

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


def test_an_unreadable_key_is_named(tmp_path):
    """A key of mode 0600 that the server's user does not own. Root reads every file, so as root (CI)
    the check runs with the effective user and group of nobody (65534), root's own given back after."""
    home = Path(tempfile.mkdtemp(prefix="fg-tls-"))  # (tmp_path's parents are 0700: nobody could not pass)
    try:
        home.chmod(0o711)
        certs = make_certs(home)
        certs.cert_file.chmod(0o644)
        certs.key_file.chmod(0o600 if os.geteuid() == 0 else 0)
        if os.geteuid() == 0:
            os.setegid(65534)
            os.seteuid(65534)
        try:
            lines = problems({"tls": tls_settings(certs)})
        finally:
            if os.geteuid() != os.getuid():
                os.seteuid(0)
                os.setegid(0)
    finally:
        shutil.rmtree(home)
    assert lines == [f"server.tls.key_file: cannot read {certs.key_file}: Permission denied"]


def _unix_socket(path: Path) -> Path:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    return path


def _loop(path: Path) -> Path:
    os.symlink(path.name + ".b", path)
    os.symlink(path.name, path.with_name(path.name + ".b"))
    return path


def _sparse(path: Path) -> Path:
    with path.open("wb") as f:
        f.truncate(100 << 20)  # 100 MB (sparse: nothing written)
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


NOT_REGULAR = "cannot read {}: it is not a regular file (a PEM file is expected)"


@pytest.mark.parametrize(("field", "make", "says"), [
    ("cert_file", _fifo, NOT_REGULAR),  # open() would wait for a writer
    ("key_file", _fifo, NOT_REGULAR),
    ("cert_file", lambda _: Path("/dev/zero"), NOT_REGULAR),  # an endless file
    ("key_file", _unix_socket, "cannot read {}: No such device or address"),
    ("cert_file", _loop, "cannot read {}: Too many levels of symbolic links"),
    ("cert_file", _directory, "cannot read {}: it is a directory (a PEM file is expected)"),
    ("cert_file", _empty, "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
    ("key_file", _empty, "{} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"),
    ("cert_file", _sparse, "{} is 104857600 bytes: larger than a PEM file can be (1048576 bytes at most)"),
    ("key_file", _sparse, "{} is 104857600 bytes: larger than a PEM file can be (1048576 bytes at most)"),
])
def test_files_that_are_not_pem_files_are_refused_at_once(tmp_path, field, make, says):
    """What a careless renewal may leave at the path, refused without a wait: a reload reads these
    files on the supervisor's loop (or a single process's event loop), where a FIFO would block
    for good and /dev/zero or a huge file for long."""
    certs = make_certs(tmp_path)
    path = make(tmp_path / "odd.pem")
    settings = {**tls_settings(certs), field: str(path)}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        checked = pool.submit(problems, {"tls": settings})
        try:
            lines = checked.result(timeout=5)
        except concurrent.futures.TimeoutError:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # (the FIFO's reader let go)
            raise AssertionError(f"reading a {make.__name__} {field} still blocked after 5 s") from None
    assert lines == [f"server.tls.{field}: " + says.format(path)]


@pytest.mark.parametrize("form", ["pkcs8", "traditional"])
def test_an_encrypted_key_is_refused_without_a_prompt(tmp_path, form):
    from cryptography.hazmat.primitives import serialization

    certs = make_certs(tmp_path)
    key = serialization.load_pem_private_key(certs.key_file.read_bytes(), None)
    fmt = serialization.PrivateFormat.PKCS8 if form == "pkcs8" else serialization.PrivateFormat.TraditionalOpenSSL
    certs.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt,
                                                 serialization.BestAvailableEncryption(b"secret")))
    lines = problems({"tls": tls_settings(certs)})
    assert len(lines) == 1 and lines[0].startswith(f"server.tls.key_file: {certs.key_file} is encrypted"), lines


def test_a_chain_with_the_servers_certificate_not_first_says_so(tmp_path):
    """chain.pem + cert.pem concatenated the wrong way round: OpenSSL serves the first as the
    server's, whose key is not key_file."""
    certs = make_certs(tmp_path)
    certs.cert_file.write_bytes(certs.ca_file.read_bytes() + certs.cert_file.read_bytes())
    lines = problems({"tls": tls_settings(certs)})
    assert lines == [f"server.tls.key_file: {certs.key_file} does not match the first certificate in cert_file "
                     f"{certs.cert_file} (the server's certificate must come first, then its chain, as in "
                     "fullchain.pem; or the key of another certificate?)"]


def test_metrics_tls_needs_its_listener(tmp_path):
    certs = make_certs(tmp_path)
    assert problems({"metrics_tls": tls_settings(certs)}) == [
        "server: metrics_tls is set but metrics_port is not (the listener it is for)"]
    cfg = base_config("http://127.0.0.1:9")
    cfg["server"].update(metrics_port=9100, metrics_tls=tls_settings(certs))
    assert parse_config(cfg).server.metrics_tls is not None
