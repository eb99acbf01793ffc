"""virus/aveclient - scan messages with Kaspersky's aveclient, a client of the aveserver daemon.

Hook: data_post. The message (header, blank line, body) is copied from the
spool into a temporary file and Kaspersky's client runs on it, without a
shell: `<avclient_bin> -p <avdaemon_sock> -s <file>`; the client hands the
file to the aveserver daemon on that unix socket and exits with its verdict
(aveclient(8)):
- 0: clean; `X-Virus-Checked: Checked by Kaspersky on <me>` is added;
- 2 (unknown virus code), 3 (suspicious), 4 (infected), 6 (encrypted or
  password protected), 8 (corrupted file): `552 Virus found: REPORT: <the
  report lines after the first, joined with ", ">`;
- 1 (cannot reach aveserver), 5, 7 (system error), 9 (missing parameters),
  a signal, a client that cannot run or does not finish within timeout: the
  message passes with a logged warning, or with blockonerror 1 it gets
  `451 Unable to scan for viruses (<reason>), try again later`.
Tested with a program written for the tests that behaves as aveclient
documents (exit codes and report lines); the real one is commercial.

Arguments (key value pairs):
- avclient_bin <path>: the client (default /opt/kav/bin/aveclient).
- avdaemon_sock <path>: aveserver's socket (default /var/run/aveserver).
- blockonerror 1|0: 451 when no verdict could be had (default 0);
  defer_on_error is the same switch.
- timeout <seconds>: waiting for a scan slot plus the scan (default 60).
- max_scans <n>: scans at once per child, more wait (default 4).

Example config/plugins line:
    virus/aveclient avclient_bin /opt/kav/bin/aveclient avdaemon_sock /var/run/aveserver blockonerror 1

Differences from qpsmtpd: with blockonerror, qpsmtpd answers a permanent 5xx
(the sender's mail bounces because of a local scanner problem); we answer
451 so it is retried. qpsmtpd adds X-Virus-Checked even when the scan failed;
we add it only to messages found clean. qpsmtpd exits the whole daemon on a
bad avclient_bin; we refuse to start with a message.
"""

from qpsmtpd_py.constants import DECLINED, DENY, LOGWARN
from qpsmtpd_py.virus_scan import ScanError, ScannerPlugin, is_yes, note_virus, program_path

_VIRUS_STATUSES = (2, 3, 4, 6, 8)


class AveClient(ScannerPlugin):
    def register(self, qp, *args):
        values = dict(self.key_value_arguments(args, ("avclient_bin", "avdaemon_sock", "blockonerror")))
        if "defer_on_error" not in values:
            values["defer_on_error"] = "1" if is_yes(values.get("blockonerror"), False) else "0"
        self.setup_limits(values)
        self.client = program_path("avclient_bin", values.get("avclient_bin", "/opt/kav/bin/aveclient"))
        self.socket = program_path("avdaemon_sock", values.get("avdaemon_sock", "/var/run/aveserver"))

    async def hook_data_post(self, transaction):
        try:
            status, output = await self.limited_scan(lambda: self.scan(transaction))
        except ScanError as exc:
            return self.scan_failed(str(exc))
        if status in _VIRUS_STATUSES:
            description = "REPORT: " + ", ".join(output.splitlines()[1:])
            self.log(LOGWARN, f"virus found ({description})")
            note_virus(transaction, description)
            return DENY, f"Virus found: {description}"
        if status != 0:
            return self.scan_failed(f"aveclient failed ({status}): {output.strip()[:200]}")
        transaction.header.add("X-Virus-Checked", f"Checked by Kaspersky on {self.qp.config('me')}")
        return DECLINED

    async def scan(self, transaction):
        path = await self.message_file(transaction)
        return await self.run_program(transaction, [self.client, "-p", self.socket, "-s", str(path)])
