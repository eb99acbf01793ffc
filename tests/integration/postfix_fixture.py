"""A private, real Postfix instance for tests: its own config, queue and mailboxes.

`PostfixInstance(...).start()` writes main.cf and master.cf into a fresh
directory, runs `postfix -c <dir> check` and `postfix -c <dir> start` (Postfix
starts only as root), and `stop()` runs `postfix -c <dir> stop` and removes the
directory. The instance:
- listens with smtpd on 127.0.0.1:<port> only (a free port), mynetworks 127.0.0.0/8;
- has the cleanup service at `<queue_directory>/public/cleanup`, and on
  127.0.0.1:<cleanup_port> too;
- delivers mail for `<mailbox>@DOMAIN` with its virtual(8) agent into one
  Maildir per mailbox, `<base>/mail/<mailbox>/new/` (`maildir_files("user")`);
  other addresses of DOMAIN are unknown users, other domains are refused
  (relaying) and nothing is ever sent off the machine;
- refuses at RCPT the addresses of `refused` (`REJECT <text>`);
- with the cleanup flag FILTER, applies `header_checks` (regexp lines).
Everything Postfix logs goes to `<base>/maillog` (`log()`), so a failing test can show it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from server_process import free_port

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
DOMAIN = "test.example.org"
HOSTNAME = "mx.postfix.example.net"

# The services a small instance needs, none chrooted (there is no chroot jail here).
_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
127.0.0.1:{cleanup_port} inet n - n - 0 cleanup
"""


def postfix_available() -> str | None:
    """None when a private instance can run here, else why not (for pytest's skip)."""
    if not os.access(POSTFIX, os.X_OK):
        return "Postfix (Debian package postfix) is not installed"
    if os.geteuid() != 0:
        return "a private Postfix instance starts only as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "there is no postfix user"
    return None


class PostfixInstance:
    def __init__(self, mailboxes: list[str] = ("user",), refused: dict[str, str] | None = None,
                 header_checks: list[str] = (), main_cf: dict[str, str] | None = None) -> None:
        # Not under pytest's tmp_path: Postfix's daemons run as the postfix user and
        # must reach the mailboxes, which a 0700 directory of root's would forbid.
        self.base = Path(tempfile.mkdtemp(prefix="postfix-test-"))
        os.chmod(self.base, 0o755)
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "spool"
        self.data_dir = self.base / "data"
        self.mail_dir = self.base / "mail"
        self.maillog = self.base / "maillog"
        self.port = free_port()
        self.cleanup_port = free_port()  # cleanup published on TCP as well
        self.mailboxes = list(mailboxes)
        self.refused = dict(refused or {})
        self.header_checks = list(header_checks)
        self.main_cf = dict(main_cf or {})
        self.started = False

    @property
    def cleanup_socket(self) -> Path:
        return self.queue_dir / "public" / "cleanup"

    def _postfix(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([POSTFIX, "-c", str(self.config_dir), *args], capture_output=True, text=True,
                              timeout=60, check=False)

    def _write_config(self) -> None:
        user = pwd.getpwnam("postfix")
        for directory in (self.config_dir, self.queue_dir, self.data_dir, self.mail_dir):
            directory.mkdir()
        os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        os.chown(self.mail_dir, user.pw_uid, user.pw_gid)
        access = self.config_dir / "recipient_access"
        access.write_text("".join(f"{address} REJECT {text}\n" for address, text in self.refused.items()))
        checks = self.config_dir / "header_checks"
        checks.write_text("".join(line + "\n" for line in self.header_checks))
        boxes = self.config_dir / "virtual_mailboxes"
        boxes.write_text("".join(f"{box}@{DOMAIN} {box}/\n" for box in self.mailboxes))
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "myhostname": HOSTNAME,
            "mydomain": HOSTNAME.split(".", 1)[1],
            "myorigin": "$myhostname",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "relay_domains": "",
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_mailbox_maps": f"texthash:{boxes}",  # $1 substitution is not allowed here
            "virtual_uid_maps": f"static:{user.pw_uid}",
            "virtual_gid_maps": f"static:{user.pw_gid}",
            "smtpd_recipient_restrictions": f"check_recipient_access texthash:{access}, permit_mynetworks, "
                                            "reject_unauth_destination",
            "header_checks": f"regexp:{checks}",
            # Nothing leaves the machine: mail (bounces included) to other domains fails at once.
            "default_transport": "error:mail to other domains is disabled in tests",
            "relay_transport": "error:mail to other domains is disabled in tests",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.base),
            "biff": "no",
            "smtputf8_enable": "no",
            **self.main_cf,
        }
        (self.config_dir / "main.cf").write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        (self.config_dir / "master.cf").write_text(_MASTER_CF.format(port=self.port, cleanup_port=self.cleanup_port))

    def start(self) -> PostfixInstance:
        try:
            self._write_config()
            for command in ("check", "start"):
                result = self._postfix(command)
                if result.returncode != 0:
                    raise RuntimeError(f"postfix {command} failed ({result.returncode}): "
                                       f"{result.stdout}{result.stderr}{self.log()}")
                self.started = command == "start" or self.started
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    sock.settimeout(max(0.5, deadline - time.monotonic()))
                    if sock.recv(512).startswith(b"220"):
                        sock.sendall(b"QUIT\r\n")
                        if self.cleanup_socket.exists():
                            return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix did not start within {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.started:
            result = self._postfix("stop")
            if result.returncode != 0:  # the master left running would keep the port: be firm
                self._postfix("abort")
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def maildir_files(self, local_part: str) -> list[Path]:
        new = self.mail_dir / local_part / "new"
        return sorted(new.iterdir()) if new.is_dir() else []

    def wait_for_mail(self, local_part: str, count: int = 1, timeout: float = 20.0) -> list[bytes]:
        """The messages delivered to `local_part`, once there are `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            files = self.maildir_files(local_part)
            if len(files) >= count:
                return [path.read_bytes() for path in files]
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} message(s) for {local_part} not delivered within {timeout}s:\n"
                                     f"{self.log()}")
            time.sleep(0.05)

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if text in log:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in Postfix's log within {timeout}s:\n{log}")
            time.sleep(0.05)
