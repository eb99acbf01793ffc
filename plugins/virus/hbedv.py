"""virus/hbedv - scan messages with the H+BEDV (Avira) AntiVir command line scanner.

Hook: data_post. The message (header, blank line, body) is copied from the
spool into a temporary file and the scanner runs on it, without a shell:
    <hbedvscanner> --archive-max-recursion=50 --alltypes -z -noboot -nombr -rs <file>
Its `ALERT: [<name> virus] ...` lines name the viruses (each once, joined with
", ", cut to 60 characters). Every scanned message gets
`X-H+BEDV-Virus-Checked: Checked`; on exit status 1 or 3 (virus found)
`X-H+BEDV-Virus-Found: Yes` and `X-H+BEDV-Virus-Details: <names>` too, and
`552 Virus found: <names>` when a name matches a line of config/hbedv_deny
(Perl regular expressions, whole name, any case), or always when that file
is empty or missing. Other exit statuses (200 out of memory, 211 self check
failed, 214 no licence key, ...), a signal, a scanner that cannot run or does
not finish within timeout: the message passes with a logged warning, or with
defer_on_error it gets `451 Unable to scan for viruses (<reason>), try again later`.
Tested with a program written for the tests that prints AntiVir's documented
output and exit codes; the real one is commercial.

Arguments (key value pairs):
- hbedvscanner <path>: the scanner (default /usr/bin/antivir).
- defer_on_error yes|no: 451 when no verdict could be had (default no).
- timeout <seconds>: waiting for a scan slot plus the scan (default 60).
- max_scans <n>: scans at once per child, more wait (default 4).

Config: config/hbedv_deny, e.g. the lines `Worm/Sober\\..*` and `Worm/NetSky\\..*`.

Example config/plugins line:
    virus/hbedv hbedvscanner /usr/lib/AntiVir/antivir

Differences from qpsmtpd: a bad config/hbedv_deny pattern stops the start
with its line instead of failing at the first virus; a bad argument refuses
the start instead of exiting the daemon.
"""

import re

from qpsmtpd_py.constants import DECLINED, DENY, LOGWARN
from qpsmtpd_py.perl_regex import perl_regex
from qpsmtpd_py.plugin import PluginError
from qpsmtpd_py.virus_scan import ScanError, ScannerPlugin, add_virus_headers, note_virus, program_path

_ALERT = re.compile(r"^ALERT: \[([^\]]+)\s+(\w+)?\]", re.MULTILINE)
_FAILURES = {200: "out of memory", 211: "self check failed", 214: "licence key not found"}


class HBEDV(ScannerPlugin):
    def register(self, qp, *args):
        values = self.key_value_arguments(args, ("hbedvscanner",))
        self.setup_limits(values)
        self.scanner = program_path("hbedvscanner", values.get("hbedvscanner", "/usr/bin/antivir"))
        self.deny_patterns = []
        for line in qp.config_list("hbedv_deny"):
            try:
                self.deny_patterns.append(perl_regex(f"^(?:{line})$", re.IGNORECASE))
            except re.error as exc:
                raise PluginError(f"config/hbedv_deny: bad pattern {line!r}: {exc}") from None

    async def hook_data_post(self, transaction):
        try:
            status, output = await self.limited_scan(lambda: self.scan(transaction))
        except ScanError as exc:
            return self.scan_failed(str(exc))
        if isinstance(status, str) or status not in (0, 1, 3):
            reason = _FAILURES.get(status, "see its --help for the exit codes")
            return self.scan_failed(f"{self.scanner} failed ({status}, {reason})")
        viruses = list(dict.fromkeys(_ALERT.findall(output)))
        names = [name for name, _ in viruses]
        details = ", ".join(names)[:60]
        if status:
            self.log(LOGWARN, f"virus(es) found: {details}")
            add_virus_headers(transaction, details, prefix="X-H+BEDV-Virus")
            note_virus(transaction, details)
        transaction.header.add("X-H+BEDV-Virus-Checked", "Checked", 0)
        if status and names and self.denied(names):
            return DENY, f"Virus found: {details}"
        return DECLINED

    def denied(self, names):
        if not self.deny_patterns:
            return True
        for name in names:
            if any(pattern.match(name) for pattern in self.deny_patterns):
                self.log(LOGWARN, f"denying mail with virus {name!r}")
                return True
        return False

    async def scan(self, transaction):
        path = await self.message_file(transaction)
        return await self.run_program(transaction, [
            self.scanner, "--archive-max-recursion=50", "--alltypes", "-z", "-noboot", "-nombr", "-rs", str(path)])
