"""auth/auth_vpopmail_sql - check AUTH passwords against vpopmail's MySQL/MariaDB table.

Hooks: auth-plain, auth-login, auth-cram-md5. The plugin looks up
`pw_passwd` (a crypt() hash) and `pw_clear_passwd` (the clear-text password,
kept when vpopmail was built with --enable-clear-passwd) of the row of table
`vpopmail` whose `pw_name` and `pw_domain` are the user name's local part and
domain (lower-cased), and compares the password the client gave with them.
CRAM-MD5 works only for users with a clear-text password. The database
driver (PyMySQL, pure Python) blocks, so each lookup runs in a thread of the
reactor's pool; the daemon keeps serving other sessions meanwhile.

Config files, as qpsmtpd:
- vpopmail_mysql_dsn: a Perl DBI DSN, default
  `dbi:mysql:dbname=vpopmail;host=127.0.0.1`; understood: dbname (or
  database), host, port, mysql_socket.
- vpopmail_mysql_user: default vpopmailuser; vpopmail_mysql_pass: default vpoppasswd.
Argument: `timeout <seconds>` for connecting and for the query (default 5).

Answers: a matching password -> OK (235); a wrong one, or a row with no
password at all -> DENY (535, no later auth plugin is asked, as qpsmtpd). A
user name without a domain or with no row -> DECLINED, as qpsmtpd, so a later
auth plugin may know the user (535 if none does). The database unreachable,
failing, or slower than `timeout` -> DENYSOFT (454); qpsmtpd declined then,
and the client was told its password was wrong. A table without the
pw_clear_passwd column (vpopmail built without clear passwords) is read
for pw_passwd alone.

Example config/plugins line:
    auth/auth_vpopmail_sql
"""

import math

from twisted.internet import defer, threads

from qpsmtpd_py.auth import validate_password
from qpsmtpd_py.constants import DECLINED, DENY, DENYSOFT, LOGERROR, LOGINFO, OK
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_DSN = "dbi:mysql:dbname=vpopmail;host=127.0.0.1"
UNKNOWN_COLUMN = 1054  # MySQL's ER_BAD_FIELD_ERROR
QUERY = "SELECT {columns} FROM vpopmail WHERE pw_name = %s AND pw_domain = %s"


class DatabaseUnavailable(Exception):
    """The database could not be asked: unreachable, an error, or too slow."""


def parse_dsn(dsn: str) -> dict:
    """PyMySQL connection arguments from a DBI DSN `dbi:mysql:key=value;...`; ValueError if it is not one."""
    prefix, _, rest = dsn.partition(":mysql:")
    if prefix.lower() != "dbi" or not rest:
        raise ValueError(f"not a dbi:mysql: DSN: {dsn!r}")
    options = {}
    for part in rest.split(";"):
        key, sep, value = part.partition("=")
        if not sep:
            options.setdefault("database", key)  # `dbi:mysql:vpopmail` names the database
            continue
        key = {"dbname": "database", "db": "database", "mysql_socket": "unix_socket"}.get(key.strip(), key.strip())
        if key not in ("database", "host", "port", "unix_socket"):
            raise ValueError(f"unsupported DSN key {key!r} (use dbname, host, port, mysql_socket)")
        options[key] = int(value) if key == "port" else value
    return options


class AuthVpopmailSql(Plugin):

    def register(self, qp, *args):
        self.warn_unknown_arguments(("timeout", "loglevel"))
        dsn = qp.config("vpopmail_mysql_dsn") or DEFAULT_DSN
        try:
            self.connect_args = parse_dsn(dsn)
        except ValueError as exc:
            raise PluginError(f"config/vpopmail_mysql_dsn: {exc}") from None
        self.connect_args["user"] = qp.config("vpopmail_mysql_user") or "vpopmailuser"
        self.connect_args["password"] = qp.config("vpopmail_mysql_pass") or "vpoppasswd"
        self.timeout = self.seconds_argument("timeout", 5.0, non_positive="error")
        self.register_auth_hooks("plain", "login", "cram-md5")


    async def check(self, transaction, mechanism, user, clear, digest, ticket):
        name, _, domain = user.lower().partition("@")
        if not domain:
            self.log(LOGINFO, f"skip: missing domain: {user.lower()}")
            return DECLINED
        reactor = self.get_reactor()
        try:
            row = await threads.deferToThreadPool(reactor, reactor.getThreadPool(), self.lookup, name,
                                                  domain).addTimeout(self.timeout * 3, reactor)
        except (DatabaseUnavailable, defer.TimeoutError) as exc:
            self.log(LOGERROR, f"skip: db lookup failed: {exc or 'timed out'}")
            return DENYSOFT, "auth_vmysql - the password database is unavailable"
        if row is None:
            self.log(LOGINFO, f"skip: no row for {name}@{domain}")
            return DECLINED
        crypted, clear_stored = row
        if not crypted and not clear_stored:
            self.log(LOGINFO, "fail: no such user")
            return DENY, "auth_vmysql - no such user"
        if validate_password(stored_clear=clear_stored or None, stored_crypt=crypted or None, attempt_clear=clear,
                             attempt_hash=digest, ticket=ticket):
            self.log(LOGINFO, f"pass: {user} with {mechanism}")
            return OK, "auth_vmysql"
        self.log(LOGINFO, f"fail: wrong password for {user} ({mechanism})")
        return DENY, "auth_vmysql - wrong username or password"

    def lookup(self, name: str, domain: str) -> tuple[str, str | None] | None:
        """In a thread: (pw_passwd, pw_clear_passwd) of the user's row, or None. Raises DatabaseUnavailable."""
        import pymysql

        seconds = math.ceil(self.timeout)
        try:
            connection = pymysql.connect(**self.connect_args, connect_timeout=self.timeout, read_timeout=seconds,
                                         write_timeout=seconds, charset="utf8mb4")
        except pymysql.MySQLError as exc:
            raise DatabaseUnavailable(f"cannot connect: {exc}") from None
        try:
            with connection.cursor() as cursor:
                try:
                    cursor.execute(QUERY.format(columns="pw_passwd, pw_clear_passwd"), (name, domain))
                    row = cursor.fetchone()
                except pymysql.MySQLError as exc:
                    if not exc.args or exc.args[0] != UNKNOWN_COLUMN:
                        raise
                    cursor.execute(QUERY.format(columns="pw_passwd, NULL"), (name, domain))
                    row = cursor.fetchone()
        except pymysql.MySQLError as exc:
            raise DatabaseUnavailable(str(exc)) from None
        finally:
            connection.close()
        return None if row is None else (row[0] or "", row[1])
