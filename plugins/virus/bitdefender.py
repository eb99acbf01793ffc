"""virus/bitdefender - scan messages with BitDefender's command line scanner, bdc.

Hook: data_post. Only multipart messages (those that can carry attachments)
up to max_size are scanned. The message (header, blank line, body) is copied
from the spool into a temporary file and the scanner runs on it, without a
shell: `<bitdefender_location> --mail --all --arc <file>`. The first output
line ending in `infected: <name>` names the virus:
- deny_viruses yes (the default): `552 Virus Found: <name>`;
- deny_viruses no: the message passes with `X-Virus-Found: Yes` and
  `X-Virus-Details: <name>`.
bdc's exit status is not looked at (as in qpsmtpd). A scanner that cannot run,
is killed by a signal, or does not finish within timeout: the message passes
with a logged warning, or with defer_on_error it gets `451 Unable to scan for
viruses (<reason>), try again later`.
Tested with a program written for the tests that prints bdc's documented
output; the real one is commercial.

Arguments (key value pairs):
- bitdefender_location <path>: the scanner (default /opt/bdc/bdc).
- deny_viruses yes|no: reject infected messages (default yes).
- max_size <KB>: larger messages are not scanned (default 128).
- defer_on_error yes|no: 451 when no verdict could be had (default no).
- timeout <seconds>: waiting for a scan slot plus the scan (default 60).
- max_scans <n>: scans at once per child, more wait (default 4).

Example config/plugins line:
    virus/bitdefender bitdefender_location /opt/bdc/bdc deny_viruses yes max_size 512

Differences from qpsmtpd: with deny_viruses no, qpsmtpd does nothing with an
infected message; we add the X-Virus headers the other scanner plugins add.
"""

import re

from qpsmtpd_py.constants import DECLINED, LOGINFO
from qpsmtpd_py.virus_scan import ScanError, ScannerPlugin, is_yes, program_path, size_argument

_INFECTED = re.compile(r"infected: (.+)$", re.MULTILINE)


class BitDefender(ScannerPlugin):
    def register(self, qp, *args):
        values = self.key_value_arguments(args, ("bitdefender_location", "deny_viruses", "max_size"))
        self.setup_limits(values)
        self.scanner = program_path("bitdefender_location", values.get("bitdefender_location", "/opt/bdc/bdc"))
        self.deny_viruses = is_yes(values.get("deny_viruses"), True)
        self.max_bytes = size_argument("max_size", values.get("max_size"), 128) * 1024

    async def hook_data_post(self, transaction):
        if self.not_to_scan(transaction, self.max_bytes):
            return DECLINED
        try:
            status, output = await self.limited_scan(lambda: self.scan(transaction))
        except ScanError as exc:
            return self.scan_failed(str(exc))
        if isinstance(status, str):  # killed by a signal
            return self.scan_failed(f"{self.scanner} {status}")
        found = _INFECTED.search(output)
        if found is None:
            return DECLINED
        virus = found.group(1).strip()
        self.log(LOGINFO, f"virus found: {virus}")
        return self.virus_answer(transaction, virus, self.deny_viruses, f"Virus Found: {virus}")

    async def scan(self, transaction):
        path = await self.message_file(transaction)
        return await self.run_program(transaction, [self.scanner, "--mail", "--all", "--arc", str(path)])
