"""virus/uvscan - scan messages with McAfee's command line scanner, uvscan.

Hook: data_post. Only multipart messages (those that can carry attachments)
up to max_size are scanned. The message (header, blank line, body) is copied
from the spool into a temporary file and the scanner runs on it, without a
shell: `<uvscan_location> --mime --unzip --secure --noboot <file>`.
- output mentioning `password-protected`: `552 We do not accept
  password-protected zip files!`;
- exit status 13 (virus found), 12 (cleaning failed), 19 (cleaned) or any
  other not listed below: the virus is the text after `Found ` in the output;
  with deny_viruses yes (the default) `552 Virus Found: <virus>`, else the
  message passes with `X-Virus-Found: Yes` and `X-Virus-Details: <virus>`;
- exit status 0: `X-Virus-Checked: Checked by McAfee uvscan on <me>`;
- exit status 2 (DAT file integrity), 6 (general problem), 8 (no DAT file),
  15 (self-check failed), a signal, a scanner that cannot run or does not
  finish within timeout: the message passes with a logged warning, or with
  defer_on_error it gets `451 Unable to scan for viruses (<reason>), try again later`.
Tested with a program written for the tests that prints uvscan's documented
output and exit codes; the real one is commercial.

Arguments (key value pairs):
- uvscan_location <path>: the scanner (default /usr/local/bin/uvscan).
- deny_viruses yes|no: reject infected messages (default yes).
- max_size <KB>: larger messages are not scanned (default: 250,000 bytes).
- defer_on_error yes|no: 451 when no verdict could be had (default no).
- timeout <seconds>: waiting for a scan slot plus the scan (default 60).
- max_scans <n>: scans at once per child, more wait (default 4).

Example config/plugins line:
    virus/uvscan uvscan_location /usr/local/bin/uvscan deny_viruses yes

Differences from qpsmtpd: qpsmtpd documents deny_viruses as defaulting to
yes but only rejects when it is set; we follow its documentation. qpsmtpd
has a fixed 250,000-byte limit; we add max_size.
"""

import re

from qpsmtpd_py.constants import DECLINED, DENY, LOGERROR
from qpsmtpd_py.virus_scan import ScanError, ScannerPlugin, is_yes, program_path, size_argument

_FOUND = re.compile(r".*\W+Found (.*)\n")
_FAILURES = {2: "integrity check of a DAT file failed", 6: "a general problem occurred",
             8: "no DAT file found", 15: "self-check failed"}
_VIRUS_NOTES = {12: "tried to clean a file but failed", 13: "virus(es) found", 19: "cleaned the file"}


class UVScan(ScannerPlugin):
    def register(self, qp, *args):
        values = self.key_value_arguments(args, ("uvscan_location", "deny_viruses", "max_size"))
        self.setup_limits(values)
        self.scanner = program_path("uvscan_location", values.get("uvscan_location", "/usr/local/bin/uvscan"))
        self.deny_viruses = is_yes(values.get("deny_viruses"), True)
        self.max_bytes = size_argument("max_size", values.get("max_size"), 0) * 1024 or 250_000

    async def hook_data_post(self, transaction):
        if self.not_to_scan(transaction, self.max_bytes):
            return DECLINED
        try:
            status, output = await self.limited_scan(lambda: self.scan(transaction))
        except ScanError as exc:
            return self.scan_failed(str(exc))
        if "password-protected" in output:
            return DENY, "We do not accept password-protected zip files!"
        if isinstance(status, str) or status in _FAILURES:
            return self.scan_failed(f"{self.scanner} failed ({status}, {_FAILURES.get(status, 'signal')})")
        if status == 0:
            transaction.header.add("X-Virus-Checked", f"Checked by McAfee uvscan on {self.qp.config('me')}")
            return DECLINED
        found = _FOUND.search(output)
        virus = found.group(1) if found else "unknown"
        self.log(LOGERROR, f"{_VIRUS_NOTES.get(status, 'virus found')} ({status}): {virus}")
        return self.virus_answer(transaction, virus, self.deny_viruses, f"Virus Found: {virus}")

    async def scan(self, transaction):
        path = await self.message_file(transaction)
        return await self.run_program(transaction, [self.scanner, "--mime", "--unzip", "--secure", "--noboot",
                                                    str(path)])
