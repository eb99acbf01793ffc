"""queue/maildir - deliver accepted mail into a Maildir, durably.

Hook: queue. A `250` is sent only after the message file is written, fsynced,
moved from tmp/ into new/ and the directory entry fsynced: a crash or power loss
after the 250 cannot lose the message (qpsmtpd's plugin does not fsync).

Arguments (positional, as qpsmtpd):
    queue/maildir <dir> [<subdir pattern>] [<octal mode>]
- <dir>: the Maildir (tmp/, new/ and cur/ are created). A relative path is
  taken from the daemon's working directory. Required.
- <subdir pattern>: deliver one copy per recipient into <dir>/<pattern>, where
  %l is the recipient's local part, %d its domain and %u the whole address
  (characters other than `-A-Za-z0-9+_.,@=` become `_`). Example: `%d/%l`.
- <octal mode>: permissions of new directories, e.g. `770` (files get the
  same without execute bits). Default 700.

Each copy starts with `Return-Path: <sender>`; without a pattern one
`Delivered-To:` line per recipient is added on top of the header, with one, the
copy of each recipient gets its own. With a pattern, every copy is written and
fsynced before any is moved into new/, so a failure leaves no partial delivery.

Reply: `250 Queued! <maildir file name> <Message-Id>`; a disk error gives 451.

Example config/plugins line:
    queue/maildir /home/mail/Maildir %d/%l
"""

import itertools
import os
import re
import socket
import threading
import time
from pathlib import Path

from twisted.internet import threads

from qpsmtpd_py.constants import DECLINED, LOGERROR, OK
from qpsmtpd_py.plugin import Plugin, PluginError

_UNSAFE = re.compile(r"[^-A-Za-z0-9+_.,@=]")
_counter = itertools.count()


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """fsync a directory for many deliveries at once (group commit).

    Threads call `sync()` after their rename. While one fsync runs, later
    callers wait; the next fsync then covers every rename made before it
    began. Each caller returns only once an fsync that started after its own
    rename has finished, so the 250 still means the entry is on disk.
    """

    def __init__(self):
        self.condition = threading.Condition()
        self.requested = 0  # renames announced so far
        self.synced = 0  # renames covered by a finished fsync
        self.running = False

    def sync(self, path):
        with self.condition:
            self.requested += 1
            mine = self.requested
            while self.synced < mine:
                if self.running:
                    self.condition.wait()
                    continue
                self.running, covering = True, self.requested
                self.condition.release()
                try:
                    fsync_dir(path)
                finally:
                    self.condition.acquire()
                    self.running = False
                    self.condition.notify_all()
                self.synced = max(self.synced, covering)


def make_maildir(path, mode):
    for sub in ("tmp", "new", "cur"):
        directory = path / sub
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            # Explicit chmod: the process umask is shared with other threads.
            for made in (directory, path):
                os.chmod(made, mode)


class Maildir(Plugin):
    def register(self, qp, *args):
        if not args:
            raise PluginError("the Maildir directory is required: queue/maildir /path/to/Maildir")
        self.maildir = Path(args[0]).absolute()
        self.subdirs = None
        if len(args) > 1:
            if not re.search(r"%[ldu]", args[1]):
                raise PluginError(f"sub directory {args[1]!r} contains no %l, %d or %u")
            self.subdirs = args[1]
        self.mode = 0o700
        if len(args) > 2:
            if not re.fullmatch(r"[0-7]{3}", args[2]):
                raise PluginError(f"mode {args[2]!r} is not an octal number like 770")
            self.mode = int(args[2], 8)
        self.hostname = re.sub(r"[^\w.\-]", "_", socket.gethostname())
        self.syncers = {}  # new/ directory -> its DirectorySync
        self.syncers_lock = threading.Lock()
        if self.subdirs is None:
            try:
                make_maildir(self.maildir, self.mode)
            except OSError as exc:
                raise PluginError(f"cannot create Maildir {self.maildir}: {exc.strerror}") from exc

    def hook_queue(self, transaction):
        # Header changes happen here, in the reactor thread; only file I/O goes to a thread.
        if self.subdirs is None:
            for recipient in transaction.recipients:
                transaction.header.add("Delivered-To", recipient.address(), 0)
            targets = [(self.maildir, None)]
        else:
            targets = [(self.maildir / self.subdir_for(r), r) for r in transaction.recipients]
        d = threads.deferToThread(self.deliver, transaction, targets)
        d.addErrback(self.failed)
        return d

    def directory_sync(self, directory):
        with self.syncers_lock:
            return self.syncers.setdefault(directory, DirectorySync())

    def subdir_for(self, recipient):
        user = _UNSAFE.sub("_", recipient.user or "")
        host = _UNSAFE.sub("_", recipient.host or "")
        return self.subdirs.replace("%l", user).replace("%d", host).replace("%u", f"{user}@{host}")

    def deliver(self, transaction, targets):
        """Runs in a thread: write every copy to tmp/, fsync, then move all into new/."""
        written = []
        try:
            for maildir, recipient in targets:
                make_maildir(maildir, self.mode)
                name = self.unique_name()
                written.append((maildir, name))
                self.write_copy(maildir / "tmp" / name, transaction, recipient)
            for maildir, name in written:
                os.rename(maildir / "tmp" / name, maildir / "new" / name)
            for maildir in {maildir for maildir, _ in written}:
                self.directory_sync(maildir / "new").sync(maildir / "new")
        except BaseException:
            for maildir, name in written:
                (maildir / "tmp" / name).unlink(missing_ok=True)
            raise
        message_id = (transaction.header.get("Message-Id") or "").split("\n")[0].strip()
        return OK, f"Queued! {written[-1][1]} {message_id}".rstrip()

    def unique_name(self):
        now = time.time()
        return f"{int(now)}.P{os.getpid()}M{int(now % 1 * 1e6)}Q{next(_counter)}.{self.hostname}"

    def write_copy(self, path, transaction, recipient):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.mode & 0o666)
        os.fchmod(fd, self.mode & 0o666)
        with os.fdopen(fd, "wb") as out:
            # 8-bit addresses arrive as surrogate-escaped bytes: written back byte-exact.
            out.write(f"Return-Path: {transaction.sender.format()}\n".encode("utf-8", "surrogateescape"))
            if recipient is not None:
                out.write(f"Delivered-To: {recipient.address()}\n".encode("utf-8", "surrogateescape"))
            transaction.write_message(out)
            out.flush()
            os.fsync(out.fileno())

    def failed(self, failure):
        self.log(LOGERROR, f"queue error: {failure.getErrorMessage()}")
        return DECLINED, "queue error, try again later"
