"""TLS as the config describes it: :class:`TlsConfig` (a listener's ``tls`` option, declared here
for the model of :mod:`.model`), the checks its certificate and key pass at load, and the server
``ssl.SSLContext`` they make (what :mod:`proxy.front.tls` serves and reloads).

Each check raises :class:`TlsFileError` naming the field it is about (``cert_file``, ``key_file``,
``ciphers``), so that a config problem reads ``server.tls.key_file: ... does not match the
certificate in cert_file ...`` and a failed reload logs the same sentence. Only the standard
library's ``ssl`` (OpenSSL) reads the files: the context is built exactly as it will be served.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import stat
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
MAX_PEM_BYTES = 1 << 20  # a chain is a few KiB; a bigger file is a mistake (and would be parsed on the event loop)
ALPN = ["http/1.1"]  # the only protocol the listeners speak; a client offering h2 alone agrees on none
# (Python's ssl cannot send no_application_protocol as nginx does): its HTTP/2 preface is refused, closed
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")
_PEM_KEY = re.compile(rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----")


class TlsFileError(ValueError):
    """A TLS setting that cannot be served; ``field`` is the config key it is about."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)

    def line(self) -> str:
        return f"{self.field}: {self}"


def _read(field: str, path: str) -> bytes:
    """The file's bytes, when it is a regular file of at most :data:`MAX_PEM_BYTES`. Opened without
    blocking and checked before it is read: a FIFO, a device (/dev/zero) or a huge file at that path
    would otherwise hold the reload (the supervisor's loop, or a single process's event loop) for
    good or for long. (OpenSSL then opens the path again; it was checked a moment before.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise TlsFileError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise TlsFileError(field, f"cannot read {path}: it is {kind} (a PEM file is expected)")
        if info.st_size > MAX_PEM_BYTES:
            raise TlsFileError(field, f"{path} is {info.st_size} bytes: larger than a PEM file can be "
                               f"({MAX_PEM_BYTES} bytes at most)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_PEM_BYTES + 1)
        if len(data) > MAX_PEM_BYTES:  # (grown since it was looked at)
            raise TlsFileError(field, f"{path} is larger than a PEM file can be ({MAX_PEM_BYTES} bytes at most)")
        return data
    except OSError as exc:
        raise TlsFileError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def cert_fingerprint(cert_file: str) -> str:
    """``cert_file``'s first (leaf) certificate, checked to parse, as its SHA-256 fingerprint (hex)."""
    return _leaf(cert_file)[0]


def _leaf(cert_file: str) -> tuple[str, int]:
    """:func:`cert_fingerprint`, and how many certificates the file holds."""
    data = _read("cert_file", cert_file)
    blocks = _PEM_CERT.findall(data)
    if not blocks:
        raise TlsFileError("cert_file", f"{cert_file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        ssl.create_default_context(cadata=data.decode("ascii", "replace"))  # every block parses as X.509
    except (ssl.SSLError, ValueError) as exc:
        raise TlsFileError("cert_file", f"{cert_file} is not a valid PEM certificate chain ({_reason(exc)})") from None
    pem = b"-----BEGIN CERTIFICATE-----\n" + blocks[0] + b"-----END CERTIFICATE-----\n"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))).hexdigest(), len(blocks)


def check_key_file(key_file: str) -> None:
    data = _read("key_file", key_file)
    found = _PEM_KEY.search(data)
    if found is None:
        raise TlsFileError("key_file", f"{key_file} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    if found.group(1).startswith(b"ENCRYPTED") or b"Proc-Type: 4,ENCRYPTED" in data:
        raise TlsFileError("key_file", f"{key_file} is encrypted: flowgate reads unencrypted keys (protect the file "
                           "with its mode, e.g. 0600, as nginx and certbot do)")


def check_ciphers(ciphers: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
    except ssl.SSLError:
        raise TlsFileError("ciphers", f"no cipher matches {ciphers!r} (an OpenSSL cipher string, e.g. "
                           "'ECDHE+AESGCM:ECDHE+CHACHA20')") from None


def _no_password() -> bytes:
    raise TlsFileError("key_file", "is encrypted")  # never prompt on a terminal


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or str(exc)


def server_context(cert_file: str, key_file: str, min_version: str = "1.2", ciphers: str | None = None
                   ) -> tuple[ssl.SSLContext, str]:
    """The server context (ALPN ``http/1.1``, TLS >= ``min_version``, no renegotiation) and the
    leaf certificate's SHA-256 fingerprint. Raises :class:`TlsFileError`."""
    fingerprint, count = _leaf(cert_file)
    check_key_file(key_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[min_version]
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if ciphers:
        check_ciphers(ciphers)
        ctx.set_ciphers(ciphers)
    ctx.set_alpn_protocols(ALPN)
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH" and count > 1:  # OpenSSL serves the first one as the server's
            raise TlsFileError("key_file", f"{key_file} does not match the first certificate in cert_file "
                               f"{cert_file} (the server's certificate must come first, then its chain, as in "
                               "fullchain.pem; or the key of another certificate?)") from None
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsFileError("key_file", f"{key_file} does not match the certificate in cert_file {cert_file} "
                               "(the key of another certificate?)") from None
        raise TlsFileError("key_file", f"{key_file} cannot be used with cert_file {cert_file} ({_reason(exc)})"
                           ) from None
    except OSError as exc:  # replaced or removed since it was read
        raise TlsFileError("key_file", f"cannot read {key_file} or {cert_file}: {exc.strerror or exc}") from None
    return ctx, fingerprint


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)  # (as every section of the model)

    cert_file: str = Field(description="PEM certificate chain, the server's certificate first (Let's Encrypt: "
                           "fullchain.pem). Read at start and on every SIGHUP.")
    key_file: str = Field(description="PEM private key of that certificate, unencrypted (Let's Encrypt: privkey.pem).")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Oldest TLS version accepted; older clients are "
                                               "refused in the handshake.")
    ciphers: str | None = Field(None, description="OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's "
                                "defaults); unset: Python's defaults (forward-secret AEAD ciphers).")

    @field_validator("cert_file", "key_file", "ciphers")
    @classmethod
    def _servable(cls, v: str | None, info: ValidationInfo) -> str | None:
        """cert_file parses; key_file is readable and matches it; ciphers select at least one."""
        cert = info.data.get("cert_file")
        try:
            if info.field_name == "cert_file":
                cert_fingerprint(v)
            elif info.field_name == "key_file" and cert is not None:  # (else cert_file's problem is reported)
                server_context(cert, v)
            elif info.field_name == "ciphers" and v is not None:
                check_ciphers(v)
        except TlsFileError as exc:
            raise ValueError(str(exc)) from None
        return v
