"""queue/exim-bsmtp - hand accepted mail to Exim as batched SMTP (`exim -bS`).

Hook: queue. Runs the Exim BSMTP receiver once per message, without a shell,
in its own process (the child serving the session keeps serving its other
sessions meanwhile), and writes the whole SMTP dialogue to its standard
input: `HELO <this host's name>`, `MAIL FROM:<sender>`, one `RCPT
TO:<recipient>` per recipient, `DATA`, the message (header and body, LF line
endings, a dot doubled at the start of a line), `.` and `QUIT`. The message
is streamed to the program as it reads, not copied to a temporary file first
(qpsmtpd wrote one into spool_dir).

The user the daemon runs as must be among Exim's `trusted_users`, or Exim
takes the mail but replaces the sender with that user.

Arguments (name/value pairs, as qpsmtpd):
    queue/exim-bsmtp [exim_path <path>]
- exim_path <path>: the program, run with the `-bS` switch (redundant with
  rsmtp, harmless). Default /usr/sbin/rsmtp; Debian's is /usr/sbin/exim4. A
  program that is missing at start-up is only logged (it may be installed
  later; until then messages get 451).

Replies, as qpsmtpd decides them: Exim in BSMTP mode prints nothing when all
goes well; every line it prints (on its standard output or error) is logged
at LOGERROR, and the last one that looks like an SMTP reply (`550 ...`) is
kept:
- exit status 0 and no such reply: `250 Queued!`;
- a 5xx reply: `552 <its text>`, a permanent refusal the client bounces;
- a 4xx reply: `451 <its text>`, the client retries (qpsmtpd answered 552
  to those too, which turned a temporary problem into a bounce);
- any other exit status, death by a signal, or a program that cannot be run:
  `451 Internal error enqueuing mail`. With 451 a following queue plugin may
  still take the message (the hook answers DECLINED).

Tested with a BSMTP-speaking test program, not with Exim: Debian's exim4 and
Postfix cannot be installed side by side (both are the mail-transport-agent).

Example config/plugins line:
    queue/exim-bsmtp exim_path /usr/sbin/exim4
"""

import os
import re
import socket

from qpsmtpd_py.constants import DECLINED, DENY, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN, OK
from qpsmtpd_py.plugin import Plugin, PluginError
from qpsmtpd_py.spawn import ProgramProcess

DEFAULT_PATH = "/usr/sbin/rsmtp"
_OUTPUT_LIMIT = 16384
_REPLY = re.compile(r"(\d\d\d)\s(\S.*)")


def bsmtp_lines(chunk, at_line_start):
    """One chunk of an LF message for BSMTP: a dot doubled at line starts (LF kept)."""
    data = chunk.replace(b"\n.", b"\n..")
    if at_line_start and data.startswith(b"."):
        data = b"." + data
    return data, chunk.endswith(b"\n")


def bsmtp_answer(status, output):
    """The hook's answer from the exit status (int, or text for a signal) and the printed lines."""
    code = text = None
    for line in output:
        match = _REPLY.search(line)
        if match:
            code, text = int(match.group(1)), match.group(2)
    if code is not None and 400 <= code < 600:
        return (DENY if code >= 500 else DECLINED), text
    if status != 0 or code is not None:
        return DECLINED, "Internal error enqueuing mail"
    return OK, "Queued!"


class EximBSMTP(Plugin):

    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("arguments are name/value pairs: queue/exim-bsmtp [exim_path /usr/sbin/rsmtp]")
        options = dict(zip(args[::2], args[1::2], strict=True))
        unknown = set(options) - {"exim_path", "loglevel"}
        if unknown:
            raise PluginError(f"unknown argument {sorted(unknown)[0]!r} (known: exim_path, loglevel)")
        if "loglevel" in options and not re.fullmatch(r"[0-7]|[+-]\d", options["loglevel"]):
            raise PluginError(f"loglevel must be 0-7, +N or -N, not {options['loglevel']!r}")
        self.args = options
        path = options.get("exim_path") or DEFAULT_PATH
        if not path.startswith("/"):
            raise PluginError(f"exim_path must be an absolute path, not {path!r}")
        if not os.access(path, os.X_OK):
            self.log(LOGERROR, f"Could not find exim at {path}; please set exim_path in config/plugins "
                               "(messages get 451 meanwhile)")
        self.exim_path = path


    def hook_queue(self, transaction):
        def address(a):
            return a.address().encode("utf-8", "surrogateescape")

        envelope = b"HELO " + socket.gethostname().encode() + b"\n"
        envelope += b"MAIL FROM:<" + address(transaction.sender) + b">\n"
        envelope += b"".join(b"RCPT TO:<" + address(r) + b">\n" for r in transaction.recipients)
        envelope += b"DATA\n"
        child = BSMTPProcess(self, transaction, envelope, self.get_reactor())
        command = [self.exim_path, "-bS"]
        self.log(LOGDEBUG, f"executing {' '.join(command)}")
        try:
            child.start(self.get_reactor(), command, {0: "w", 1: "r", 2: "r"})
        except OSError as exc:
            self.log(LOGERROR, f"Could not execute {self.exim_path}: {exc.strerror}")
            return DECLINED, "Internal error enqueuing mail"
        return child.ended.addCallback(self.answer)

    def answer(self, result):
        status, output = result
        for line in output:
            self.log(LOGERROR, f"exim: {line}")
        code, text = bsmtp_answer(status, output)
        if code == OK:
            self.log(LOGINFO, "Enqueued to exim via BSMTP")
        elif text == "Internal error enqueuing mail":
            self.log(LOGERROR, f"BSMTP enqueue failed; {status} from {self.exim_path} -bS")
        else:
            self.log(LOGERROR, f"BSMTP enqueue failed; response {text}")
        return code, text


class BSMTPProcess(ProgramProcess):
    """One run of the BSMTP receiver: feeds stdin, collects what it prints and its exit status."""

    collected_fds = (1, 2)
    output_limit = _OUTPUT_LIMIT

    def __init__(self, plugin, transaction, envelope, clock):
        super().__init__(plugin, transaction, clock)
        self.envelope = envelope

    def connectionMade(self):
        pipe = self.transport.pipes[0]
        data, at_line_start = bsmtp_lines(self.transaction.header_bytes() + b"\n", True)
        pipe.write(self.envelope + data)
        stuffer = _Stuffer(pipe, at_line_start)

        def body_done(sent):
            # Not sent: the program stopped reading, its output and exit status say why.
            if sent and 0 in self.transport.pipes:
                pipe.write((b"" if stuffer.at_line_start else b"\n") + b".\nQUIT\n")
            self.transport.closeChildFD(0)

        self.stream_body(stuffer, body_done)

    def outcome(self, status):
        lines = [line.strip() for line in self.output.decode("utf-8", "replace").splitlines() if line.strip()]
        return status, lines

    def already_ended(self):
        self.plugin.log(LOGWARN, f"{self.plugin.exim_path} had already ended")


class _Stuffer:
    """A consumer between FileSender and the pipe: dot-stuffs each chunk on its way."""

    def __init__(self, pipe, at_line_start):
        self.pipe = pipe
        self.at_line_start = at_line_start

    def registerProducer(self, producer, streaming):
        self.pipe.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self.pipe.unregisterProducer()

    def write(self, chunk):
        data, self.at_line_start = bsmtp_lines(chunk, self.at_line_start)
        self.pipe.write(data)
