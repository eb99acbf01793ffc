"""TLS for sessions: the server context, and which listeners speak TLS from the start.

The `tls` plugin builds one ServerTLS from its certificate and the
`tls_ciphers` / `tls_protocols` config, and hangs it on the Qpsmtpd object;
sessions use it for STARTTLS (RFC 3207) and for implicit TLS (RFC 8314) on
port 465 and the `--tls-listen-address` listeners. The context is built once,
in the master, and shared by the children.

qpsmtpd's `tls_protocols` is an OpenSSL 1.0 string (`SSLv23:!SSLv2:!SSLv3`);
here it maps onto a minimum and maximum version: SSLv23 (or `all`) means
"every version we allow by default", which is TLS 1.2 and 1.3. TLS 1.0/1.1
are used only when named (`TLSv1`, `TLSv1_1`); SSLv2/SSLv3 never.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

DEFAULT_CIPHERS = "HIGH:!aNULL:!MD5:!RC4"
IMPLICIT_TLS_PORT = 465  # RFC 8314 submissions; qpsmtpd keys implicit TLS off this port too

# Name in tls_protocols -> (version rank, OpenSSL constant name)
_VERSIONS = {
    "tlsv1": (10, "TLS1_VERSION"),
    "tlsv1_1": (11, "TLS1_1_VERSION"),
    "tlsv1_2": (12, "TLS1_2_VERSION"),
    "tlsv1_3": (13, "TLS1_3_VERSION"),
}
_DEFAULT_VERSIONS = {"tlsv1_2", "tlsv1_3"}
_IGNORED = {"sslv2", "sslv3"}  # gone from OpenSSL; naming them (usually as !SSLv3) changes nothing


class TLSConfigError(ValueError):
    """A certificate, key or setting we cannot use; the message says which and how to fix it."""


def protocol_range(text: str) -> tuple[str, str]:
    """`tls_protocols` -> (minimum, maximum) OpenSSL version constant names."""
    enabled: set[str] = set()
    disabled: set[str] = set()
    for token in text.replace(",", ":").replace(" ", ":").split(":"):
        name = token.strip().lower().replace(".", "_")
        if not name:
            continue
        negate = name.startswith("!") or name.startswith("-")
        name = name.lstrip("!-+")
        if name in ("sslv23", "all", "tls"):
            (disabled if negate else enabled).update(_DEFAULT_VERSIONS)
        elif name in _VERSIONS:
            (disabled if negate else enabled).add(name)
        elif name not in _IGNORED:
            raise TLSConfigError(f"unknown protocol '{token}' in tls_protocols "
                                 "(use TLSv1_2, TLSv1_3, or SSLv23 for both)")
    versions = sorted((_VERSIONS[v] for v in enabled - disabled), key=lambda v: v[0])
    if not versions:
        raise TLSConfigError(f"tls_protocols '{text}' leaves no protocol enabled")
    # OpenSSL takes a range: a gap (TLSv1:TLSv1_3) is filled in.
    return versions[0][1], versions[-1][1]


@dataclass
class CertificateFiles:
    cert: Path
    key: Path
    ca: Path | None = None
    dhparam: Path | None = None


def default_certificate_files(config_dirs: list[Path]) -> CertificateFiles | None:
    """qpsmtpd's defaults: `ssl/` or `<config>/ssl/` holding qpsmtpd-server.crt and .key."""
    for base in [Path("ssl"), *(d / "ssl" for d in config_dirs)]:
        cert = base / "qpsmtpd-server.crt"
        if cert.is_file():
            key = base / "qpsmtpd-server.key"
            ca = base / "qpsmtpd-ca.crt"
            dhparam = base / "qpsmtpd-dhparam.pem"
            return CertificateFiles(cert, key, ca if ca.is_file() else None,
                                    dhparam if dhparam.is_file() else None)
    return None


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """A pyOpenSSL server context; Twisted's startTLS makes each session's connection from it."""

    def __init__(self, files: CertificateFiles, ciphers: str = DEFAULT_CIPHERS,
                 protocols: str = "SSLv23:!SSLv2:!SSLv3") -> None:
        from OpenSSL import SSL

        self.files = files
        low, high = protocol_range(protocols)
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(getattr(SSL, low))
        context.set_max_proto_version(getattr(SSL, high))
        # No compression (CRIME), our cipher order, no client-started renegotiation (a CPU DoS).
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                            | getattr(SSL, "OP_NO_RENEGOTIATION", 0))
        for path, what in ((files.cert, "certificate"), (files.key, "private key")):
            if not os.access(path, os.R_OK):
                raise TLSConfigError(f"cannot read the {what} {path} (missing, or not readable by the "
                                     "daemon's user)")
        try:
            context.use_certificate_chain_file(str(files.cert))
            context.use_privatekey_file(str(files.key))
            context.check_privatekey()
            if files.ca is not None:
                context.load_verify_locations(str(files.ca))  # lets OpenSSL complete the chain
            if files.dhparam is not None:
                context.load_tmp_dh(str(files.dhparam))
            context.set_cipher_list(ciphers.encode())
        except SSL.Error as exc:
            raise TLSConfigError(f"{files.cert} / {files.key}: {describe_error(exc)}") from None
        context.set_session_id(b"qpsmtpd-py")  # session resumption across a child's sessions
        self.context = context

    def serverConnectionForTLS(self, tls_protocol):  # noqa: N802 (Twisted's interface)
        from OpenSSL import SSL

        return SSL.Connection(self.context, None)


def describe_error(exc: Exception) -> str:
    """An OpenSSL error stack as one readable line (qpsmtpd #331: its TLS errors said nothing)."""
    parts = []
    for item in getattr(exc, "args", [[]])[0] or []:
        if isinstance(item, tuple) and len(item) == 3:
            parts.append(item[2])
    return "; ".join(p for p in parts if p) or str(exc) or exc.__class__.__name__


def cipher_description(connection) -> tuple[str, str]:
    """(protocol version, cipher name) of an established pyOpenSSL connection."""
    return connection.get_protocol_version_name(), connection.get_cipher_name() or "unknown"
