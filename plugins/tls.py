"""tls - STARTTLS (RFC 3207) and implicit TLS (SMTPS, RFC 8314).

With a certificate, EHLO offers STARTTLS; after `220 Go ahead with TLS` the
client must greet again over TLS. Whatever a client sends after STARTTLS
before the handshake is thrown away, never executed (CVE-2011-0411). The
same certificate serves implicit TLS: connections to port 465 and to every
`--tls-listen-address` listener start with the handshake, before the greeting.
The Received header then says ESMTPS (ESMTPSA when authenticated) and the
cipher. Hook: ehlo (the STARTTLS verb itself is handled by the core).

Arguments (positional, as qpsmtpd's): `tls [cert [key [ca [dhparam]]]]`.
Defaults: `ssl/qpsmtpd-server.crt`, `ssl/qpsmtpd-server.key`,
`ssl/qpsmtpd-ca.crt` (optional: completes the chain), `ssl/qpsmtpd-dhparam.pem`
(optional: finite-field DHE; ECDHE needs nothing), where `ssl/` is looked for
in the working directory, then in each config directory as `<config>/ssl/`.
Make a self-signed set with `qpsmtpd-py-tls-cert`.

Config files:
- `tls_ciphers`: OpenSSL cipher list for TLS 1.2 (default `HIGH:!aNULL:!MD5:!RC4`;
  TLS 1.3 suites are OpenSSL's).
- `tls_protocols`: qpsmtpd's OpenSSL-style list, e.g. `SSLv23:!SSLv2:!SSLv3`
  (the default). Here `SSLv23` means TLS 1.2 and 1.3; TLS 1.0/1.1 only when
  named (`TLSv1`, `TLSv1_1`); SSLv2/3 are never spoken. `TLSv1_3` alone allows
  only TLS 1.3.
- `tls_before_auth`: see the auth plugins; here AUTH needs TLS unless it is 0.

Differences from qpsmtpd: without a certificate qpsmtpd failed at start; here
the plugin logs a warning and STARTTLS is simply not offered (explicit
arguments naming a missing file still stop start-up). STARTTLS with a
parameter gets 501 (RFC 3207), not 500; STARTTLS after AUTH gets 503. A failed
handshake is logged with OpenSSL's reason (qpsmtpd #331) and the connection
closed: a 500 sent in plaintext would reach no TLS client.

Example config/plugins line:
    tls config/ssl/mx.crt config/ssl/mx.key
"""

from pathlib import Path

from qpsmtpd_py.constants import DECLINED, LOGWARN
from qpsmtpd_py.plugin import Plugin, PluginError
from qpsmtpd_py.tls import (
    DEFAULT_CIPHERS,
    CertificateFiles,
    ServerTLS,
    TLSConfigError,
    default_certificate_files,
)


class Tls(Plugin):
    def register(self, qp, *args):
        if len(args) > 4:
            raise PluginError("arguments: [cert [key [ca [dhparam]]]]")
        files = self._certificate_files(qp, args)
        if files is None:
            self.log(LOGWARN, "no certificate (ssl/qpsmtpd-server.crt): STARTTLS is not offered; "
                              "make one with qpsmtpd-py-tls-cert")
            return
        try:
            qp.tls = ServerTLS(files, ciphers=qp.config("tls_ciphers") or DEFAULT_CIPHERS,
                               protocols=qp.config("tls_protocols") or "SSLv23:!SSLv2:!SSLv3")
        except TLSConfigError as exc:
            raise PluginError(str(exc)) from None

    def _certificate_files(self, qp, args):
        if not args:
            return default_certificate_files(qp.config_reader.search_dirs)
        cert = Path(args[0])
        key = Path(args[1]) if len(args) > 1 else cert.with_suffix(".key")
        optional = [Path(a) for a in args[2:4]]
        for path in optional:
            if not path.is_file():
                raise PluginError(f"{path}: no such file")
        ca, dhparam = (optional + [None, None])[:2]
        return CertificateFiles(cert, key, ca, dhparam)

    def hook_ehlo(self, transaction, host, *rest):
        session = self.session
        if self.qp.tls is not None and not session.tls_started and not self.connection.notes.get("auth_user"):
            transaction.notes.setdefault("capabilities", []).append("STARTTLS")
            transaction.notes["tls_enabled"] = 1  # qpsmtpd's note: STARTTLS was offered
        return DECLINED
