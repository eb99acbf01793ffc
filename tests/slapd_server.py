"""A private OpenLDAP slapd for the auth/auth_ldap_bind tests (Debian packages slapd, ldap-utils not needed).

`slapd_server(users)` writes a slapd.conf (mdb database `dc=example,dc=com`,
the Debian schema files) in a temporary directory, loads one inetOrgPerson
per user ({uid: password}) under `ou=people` with slapadd, and runs slapd on
a free loopback port; it yields the port and stops slapd afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

from server_process import accepts, free_port, private_directory, stop_process, wait_until_ready

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"
AVAILABLE = os.access(SLAPD, os.X_OK) and os.access(SLAPADD, os.X_OK)
BASE = "dc=example,dc=com"


def ldif(users: dict[str, str]) -> str:
    entries = [f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
               f"dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n"]
    entries += [f"dn: cn={uid} person,ou=people,{BASE}\nobjectClass: inetOrgPerson\ncn: {uid} person\n"
                f"sn: {uid}\nuid: {uid}\nuserPassword: {password}\n" for uid, password in users.items()]
    return "\n".join(entries)


@contextlib.contextmanager
def slapd_server(users: dict[str, str]) -> Iterator[int]:
    directory = private_directory("slapd-")
    (directory / "db").mkdir()
    schema = "\n".join(f"include /etc/ldap/schema/{name}.schema" for name in ("core", "cosine", "inetorgperson"))
    (directory / "slapd.conf").write_text(f"""{schema}
pidfile {directory}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix "{BASE}"
rootdn "cn=admin,{BASE}"
directory {directory}/db
access to attrs=userPassword by anonymous auth by self read by * none
access to * by * read
""")
    (directory / "data.ldif").write_text(ldif(users))
    subprocess.run([SLAPADD, "-f", str(directory / "slapd.conf"), "-l", str(directory / "data.ldif")],
                   check=True, capture_output=True)
    port = free_port()
    process = subprocess.Popen([SLAPD, "-d", "0", "-f", str(directory / "slapd.conf"),
                                "-h", f"ldap://127.0.0.1:{port}/"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(process, lambda: accepts(port), "slapd")
        yield port
    finally:
        stop_process(process)
        shutil.rmtree(directory, ignore_errors=True)
