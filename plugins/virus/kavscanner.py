"""virus/kavscanner - scan messages with Kaspersky's command line scanner, kavscanner.

Hook: data_post. The message (header, blank line, body) is copied from the
spool into a temporary file and the scanner runs on it, without a shell:
`<kavscanner_bin> -Y -P -B -MP -MD -* <file>`. This plugin flags, it never
rejects (as in qpsmtpd, whose kav_deny list was never finished):
- exit status 2, 3, 4 or 8 (virus, suspicious object, corrupted virus):
  from the `... infected: <name>` and `... suspicion: <name>` lines,
  `X-Virus-Found: Yes` and `X-Virus-Details: infected by: <names>;
  suspicions: <names>` (cut to 60 characters), the notes `virus` and
  `virus_flag` (the spamassassin plugin can skip such a message), and the
  addresses of bcc_virusadmin become extra recipients;
- every message scanned gets `X-Virus-Checked: Checked by <me>`.
Another exit status, a signal, a scanner that cannot run or does not finish
within timeout: the message passes with a logged warning, or with
defer_on_error it gets `451 Unable to scan for viruses (<reason>), try again later`.
Tested with a program written for the tests that prints kavscanner's
documented output and exit codes; the real one is commercial.

Arguments (key value pairs):
- kavscanner_bin <path>: the scanner (default /opt/AVP/kavscanner).
- bcc_virusadmin <address>[,<address>...]: who also gets infected mail. Default: nobody.
- defer_on_error yes|no: 451 when no verdict could be had (default no).
- timeout <seconds>: waiting for a scan slot plus the scan (default 60).
- max_scans <n>: scans at once per child, more wait (default 4).

Example config/plugins line:
    virus/kavscanner kavscanner_bin /opt/AVP/kavscanner bcc_virusadmin virusadmin@example.com

Differences from qpsmtpd: a scanner failure is logged but the message gets
no X-Virus-Checked header (it was not checked); a bad argument refuses the
start instead of exiting the daemon.
"""

import re

from qpsmtpd_py.address import Address
from qpsmtpd_py.constants import DECLINED, LOGINFO, LOGWARN
from qpsmtpd_py.plugin import PluginError
from qpsmtpd_py.virus_scan import ScanError, ScannerPlugin, add_virus_headers, note_virus, program_path

_VIRUS_STATUSES = (2, 3, 4, 8)
_INFECTED = re.compile(r"^.* infected: (.*)$", re.MULTILINE)
_SUSPICION = re.compile(r"^\s*.* suspicion: (.*)$", re.MULTILINE)


class KavScanner(ScannerPlugin):
    def register(self, qp, *args):
        values = self.key_value_arguments(args, ("kavscanner_bin", "bcc_virusadmin"))
        self.setup_limits(values)
        self.scanner = program_path("kavscanner_bin", values.get("kavscanner_bin", "/opt/AVP/kavscanner"))
        self.bcc = []
        for text in filter(None, values.get("bcc_virusadmin", "").split(",")):
            address = Address.parse(f"<{text.strip()}>")
            if address is None or address.is_null or address.host is None:
                raise PluginError(f"bcc_virusadmin: {text!r} is not a mail address")
            self.bcc.append(address)

    async def hook_data_post(self, transaction):
        try:
            status, output = await self.limited_scan(lambda: self.scan(transaction))
        except ScanError as exc:
            return self.scan_failed(str(exc))
        if status in _VIRUS_STATUSES:
            self.flag(transaction, output)
        elif status != 0:
            return self.scan_failed(f"corrupt or unknown Kaspersky scanner, or resource problems ({status})")
        transaction.header.add("X-Virus-Checked", f"Checked by {self.qp.config('me')}")
        return DECLINED

    def flag(self, transaction, output):
        infected = ", ".join(_INFECTED.findall(output))
        suspicious = ", ".join(_SUSPICION.findall(output))
        description = f"infected by: {infected}; suspicions: {suspicious}"[:60]
        self.log(LOGWARN, f"virus found ({description})")
        add_virus_headers(transaction, description, at_top=False)
        note_virus(transaction, description)
        for address in self.bcc:
            self.log(LOGINFO, f"copy to {address.format()}")
            transaction.add_recipient(address)

    async def scan(self, transaction):
        path = await self.message_file(transaction)
        return await self.run_program(transaction, [self.scanner, "-Y", "-P", "-B", "-MP", "-MD", "-*", str(path)])
