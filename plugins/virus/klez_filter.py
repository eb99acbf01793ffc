"""virus/klez_filter - reject mail carrying the Klez worm, by a cheap heuristic.

Hook: data_post. Klez mails are big, so messages under 60,000 bytes are left
alone. In the first 41 lines of the body, a `Content-Type:` line naming an
audio or application type followed by a line starting with the base64 of a
Windows executable's header (`TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQA`) gives
`552 Klez Virus Detected`. Only those first lines are read from the spool.

No arguments besides the standard loglevel.

Example config/plugins line:
    virus/klez_filter

Same behaviour as qpsmtpd's plugin.
"""

import re

from qpsmtpd_py.constants import DECLINED, DENY, LOGINFO
from qpsmtpd_py.plugin import Plugin

_MIN_SIZE = 60_000
_LINES_LOOKED_AT = 41
_ATTACHMENT_TYPE = re.compile(rb"^Content-type:.*(?:audio|application)", re.IGNORECASE)
_EXECUTABLE = b"TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQA"


class KlezFilter(Plugin):
    def register(self, qp, *args):
        self.warn_unknown_arguments(("loglevel",))

    def hook_data_post(self, transaction):
        if transaction.data_size < _MIN_SIZE:
            return DECLINED
        if self.looks_like_klez(transaction):
            self.log(LOGINFO, "fail, Klez signature in the first lines")
            return DENY, "Klez Virus Detected"
        return DECLINED

    def looks_like_klez(self, transaction) -> bool:
        seen_attachment_type = False
        with transaction.body_file() as body:
            for _ in range(_LINES_LOOKED_AT):
                line = body.readline(8192)
                if not line:
                    return False
                if _ATTACHMENT_TYPE.match(line):
                    seen_attachment_type = True
                elif seen_attachment_type and line.startswith(_EXECUTABLE):
                    return True
        return False
