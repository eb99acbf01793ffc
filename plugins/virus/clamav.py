"""virus/clamav - scan messages with ClamAV's command line scanner, clamscan (or clamdscan).

Hook: data_post. The message (header, blank line, body) is copied from the
spool into a temporary file and the scanner runs on it, without a shell:
    <clamscan_path> --stdout [back_compat options] [--config-file=<clamd_conf>]
        [--database=<database>] --no-summary <file>
Exit status 1 means a virus: the names from its `<file>: <name> FOUND` lines
are the details.
- action=add-header (the default): the message passes with `X-Virus-Found:
  Yes` and `X-Virus-Details: <names>`; action=reject: `552 Virus Found: <names>`;
- exit status 0: `X-Virus-Checked: Checked by ClamAV on <me>` is added;
- any other status, a signal, a scanner that cannot run or that does not
  finish within timeout: `451 Unable to scan for viruses (<reason>), try again
  later`, or with declined_on_fail the message passes (logged).
Tested with the real clamscan (Debian clamav) and a signature database the tests write.

Arguments, name=value words:
- clamscan_path=<path>: the scanner (default /usr/bin/clamscan). A first
  argument that is just an absolute path is taken as clamscan_path too.
- clamd_conf=<path>: passed as --config-file=<path>, for clamdscan.
  Default: not passed (clamscan refuses that option).
- database=<path>: passed as --database=<path>, a signature file or
  directory for clamscan. Default: not passed (the scanner's own).
- action=add-header|reject: what to do with an infected message (default add-header).
- max_size=<bytes>: larger messages are not scanned (default 524288).
- tmp_dir=<path>: accepted for compatibility; the message file always goes
  into the spool dir, where the transaction removes it.
- back_compat: add `-i --max-recursion=50` for ClamAV before 0.80.
- declined_on_fail: let a message pass when the scan fails (default: 451).
- timeout=<seconds>: waiting for a scan slot plus the scan (default 60).
- max_scans=<n>: scans at once per child, more wait (default 4).

Example config/plugins line:
    virus/clamav clamscan_path=/usr/bin/clamdscan clamd_conf=/etc/clamav/clamd.conf action=reject

Differences from qpsmtpd: qpsmtpd runs the scanner through a shell and waits
for it, blocking the process; it always passes --config-file=/etc/clamd.conf,
which clamscan refuses, and has no default scanner path. It answers 451
without a text. We add database=, timeout= and max_scans=.
"""

import re

from qpsmtpd_py.constants import DECLINED, LOGINFO, LOGWARN
from qpsmtpd_py.plugin import PluginError
from qpsmtpd_py.virus_scan import (
    ScanError,
    ScannerPlugin,
    program_path,
    size_argument,
)

_PATH_ARGUMENTS = ("clamscan_path", "clamd_conf", "database", "tmp_dir")
_FLAGS = ("back_compat", "declined_on_fail")


class ClamAV(ScannerPlugin):
    def register(self, qp, *args):
        values = self.parse_words(list(args))
        self.setup_limits(values, defer_default="declined_on_fail" not in values)
        self.clamscan = values.get("clamscan_path", "/usr/bin/clamscan")
        self.action = values.get("action", "add-header")
        if self.action not in ("add-header", "reject"):
            raise PluginError(f"action must be add-header or reject, not {self.action!r}")
        self.max_bytes = size_argument("max_size", values.get("max_size"), 512 * 1024)
        self.options = ["--stdout"]
        if "back_compat" in values:
            self.options += ["-i", "--max-recursion=50"]
        if "clamd_conf" in values:
            self.options.append(f"--config-file={values['clamd_conf']}")
        if "database" in values:
            self.options.append(f"--database={values['database']}")
        self.options.append("--no-summary")

    def parse_words(self, words):
        """The name=value words (and flags) into a dict; PluginError for anything else."""
        if words and "=" not in words[0] and words[0].startswith("/"):
            words[0] = f"clamscan_path={words[0]}"
        values = {}
        while words:
            word = words.pop(0)
            if word == "loglevel" and words:  # the standard argument
                level = words.pop(0)
                if not re.fullmatch(r"[0-7]|[+-]\d", level):
                    raise PluginError(f"loglevel must be 0-7, +N or -N, not {level!r}")
                self.args = {"loglevel": level}
                continue
            name, has_value, value = word.partition("=")
            if name in _FLAGS and not has_value:
                values[name] = "1"
            elif name in _PATH_ARGUMENTS and has_value:
                values[name] = program_path(name, value)
            elif name in ("action", "max_size", "timeout", "max_scans") and has_value:
                values[name] = value
            else:
                raise PluginError(f"unknown argument {word!r}: use name=value words such as "
                                  "clamscan_path=/usr/bin/clamscan action=reject max_size=1048576")
        return values

    async def hook_data_post(self, transaction):
        if self.too_big(transaction, self.max_bytes):
            return DECLINED
        try:
            status, output = await self.limited_scan(lambda: self.scan(transaction))
        except ScanError as exc:
            return self.scan_failed(str(exc))
        if status == 0:
            transaction.header.add("X-Virus-Checked", f"Checked by ClamAV on {self.qp.config('me')}")
            return DECLINED
        if status != 1:
            return self.scan_failed(f"{self.clamscan} failed ({status}): {output.strip()[:200]}")
        found = " ".join(line.rsplit(" ", 2)[-2] for line in output.splitlines() if line.endswith(" FOUND"))
        self.log(LOGWARN, f"virus(es) found: {found}")
        if self.action != "reject":
            self.log(LOGINFO, "message passes with X-Virus-Found (action=add-header)")
        return self.virus_answer(transaction, found, self.action == "reject", f"Virus Found: {found}")

    async def scan(self, transaction):
        path = await self.message_file(transaction)
        return await self.run_program(transaction, [self.clamscan, *self.options, str(path)])
