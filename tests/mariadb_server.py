"""A private MariaDB server for the auth/auth_vpopmail_sql tests (Debian package mariadb-server).

`mariadb_server()` initialises a data directory in a temporary directory
(mariadb-install-db, root with a normal password login), starts mariadbd on a
free loopback port and a private unix socket, creates vpopmail's `vpopmail`
table and a user `vpopmailuser` with a password allowed to read it over TCP
(grants are checked: no --skip-grant-tables), and yields a `MariaDB` handle.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from server_process import accepts, free_port, private_directory, read_log, stop_process, wait_until_ready

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
AVAILABLE = os.access(MARIADBD, os.X_OK) and os.access(INSTALL_DB, os.X_OK)
DB_USER, DB_PASSWORD = "vpopmailuser", "db pass 1"

TABLE = """CREATE TABLE vpopmail (
  pw_name char(32) NOT NULL, pw_domain char(96) NOT NULL, pw_passwd char(128), pw_uid int, pw_gid int,
  pw_gecos char(48), pw_dir char(160), pw_shell char(20), pw_clear_passwd char(128),
  PRIMARY KEY (pw_name, pw_domain))"""


class MariaDB:
    def __init__(self, port: int, socket_path: Path) -> None:
        self.port = port
        self.socket_path = socket_path

    def root(self):
        import pymysql

        return pymysql.connect(unix_socket=str(self.socket_path), user="root", autocommit=True)

    def add_user(self, name: str, domain: str, crypted: str | None, clear: str | None) -> None:
        with self.root() as connection, connection.cursor() as cursor:
            cursor.execute("INSERT INTO vpopmail.vpopmail (pw_name, pw_domain, pw_passwd, pw_clear_passwd)"
                           " VALUES (%s, %s, %s, %s)", (name, domain, crypted, clear))


@contextlib.contextmanager
def mariadb_server() -> Iterator[MariaDB]:
    directory = private_directory("mariadb-")
    data, socket_path = directory / "data", directory / "mysqld.sock"
    user = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run([INSTALL_DB, "--no-defaults", f"--datadir={data}", "--auth-root-authentication-method=normal",
                    "--skip-test-db", *user], check=True, capture_output=True)
    port = free_port()
    process = subprocess.Popen([MARIADBD, "--no-defaults", f"--datadir={data}", f"--socket={socket_path}",
                                f"--port={port}", "--bind-address=127.0.0.1", f"--pid-file={directory}/pid",
                                f"--log-error={directory}/error.log", "--skip-log-bin", *user],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(process, lambda: accepts(port) and socket_path.exists(), "mariadbd", 60,
                         lambda: read_log(directory / "error.log"), interval=0.1)
        server = MariaDB(port, socket_path)
        with server.root() as connection, connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE vpopmail")
            cursor.execute("USE vpopmail")
            cursor.execute(TABLE)
            cursor.execute(f"CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}'")
            cursor.execute(f"GRANT SELECT ON vpopmail.vpopmail TO '{DB_USER}'@'127.0.0.1'")
        yield server
    finally:
        stop_process(process, 30)
        shutil.rmtree(directory, ignore_errors=True)
