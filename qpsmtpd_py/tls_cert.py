"""qpsmtpd-py-tls-cert: make a self-signed CA and a server certificate for the tls plugin.

Like qpsmtpd's `tls_cert` script: writes qpsmtpd-ca.crt/.key and
qpsmtpd-server.crt/.key into the output directory (default `ssl`, where the
tls plugin looks first). Keys are written with mode 0600. Clients will not
trust such a certificate; most MTAs deliver over it anyway (opportunistic
TLS), and it is the start before a real one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

import click


def _name(common_name: str, fields: dict[str, str | None]):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    oids = {"C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
            "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
            "email": NameOID.EMAIL_ADDRESS}
    attributes = [x509.NameAttribute(oids[key], value) for key, value in fields.items() if value]
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_name(host: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_certificates(out_dir: Path, common_name: str, days: int = 3650,
                      fields: dict[str, str | None] | None = None) -> dict[str, Path]:
    """Write a CA and a server certificate signed by it; returns the four paths by role."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    fields = fields or {}
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{common_name} CA", fields)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder().subject_name(_name(common_name, fields)).issuer_name(ca_name)
              .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=days))
              .add_extension(x509.SubjectAlternativeName([_alt_name(common_name)]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {role: out_dir / f"qpsmtpd-{role.replace('_', '-')}" for role in
             ("ca.crt", "ca.key", "server.crt", "server.key")}
    for role, key in (("ca.key", ca_key), ("server.key", server_key)):
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
        fd = os.open(paths[role], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    paths["ca.crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["server.crt"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    return paths


@click.command(context_settings={"help_option_names": ["--help", "-h"]})
@click.option("--dir", "out_dir", default="ssl", show_default=True, type=click.Path(file_okay=False),
              help="Where to write the files (the tls plugin looks in ssl/ and <config>/ssl/).")
@click.option("--CN", "common_name", default=None, help="Host name of the server (default: this host's FQDN).")
@click.option("--C", "country", help="Country (two letters).")
@click.option("--ST", "state", help="State or province.")
@click.option("--L", "locality", help="Locality (city).")
@click.option("--O", "organization", help="Organization.")
@click.option("--OU", "unit", help="Organizational unit.")
@click.option("--email", help="Contact address.")
@click.option("--days", default=3650, show_default=True, help="Validity in days.")
def main(out_dir: str, common_name: str | None, country: str | None, state: str | None, locality: str | None,
         organization: str | None, unit: str | None, email: str | None, days: int) -> None:
    """Make a self-signed CA and server certificate for qpsmtpd-py's tls plugin."""
    fields = {"C": country, "ST": state, "L": locality, "O": organization, "OU": unit, "email": email}
    paths = make_certificates(Path(out_dir), common_name or socket.getfqdn(), days, fields)
    for path in paths.values():
        click.echo(f"wrote {path}")
