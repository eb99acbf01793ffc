"""loop - refuse a message that has passed through too many hosts (a mail loop).

Hook: data_post. Counts the message's `Received` and `Delivered-To` header
lines, as qmail-smtpd does; the Received line this server has just added
counts too. At `max_hops` or more the message is refused with

    552 Too many hops (#5.4.6)

Arguments:
    loop [max_hops]     a positive whole number; default 100, as in
                        qmail-smtpd.

Difference from qpsmtpd: a `max_hops` that is not a positive whole number
stops start-up (qpsmtpd logged `Invalid max_hops value -- using default` and
used 100); more than one argument is logged and the others ignored, as there.

Example config/plugins line:
    loop 50
"""

from qpsmtpd_py.constants import DECLINED, DENY, LOGINFO, LOGWARN
from qpsmtpd_py.plugin import Plugin, PluginError, standard_args

DEFAULT_MAX_HOPS = 100


class Loop(Plugin):
    def register(self, qp, *args):
        self.args = standard_args(args)  # a positional argument, then loglevel etc.
        self.max_hops = DEFAULT_MAX_HOPS
        if args:
            if not args[0].isdigit() or int(args[0]) < 1:
                raise PluginError(f"max_hops must be a positive whole number, not {args[0]!r}")
            self.max_hops = int(args[0])
        if len(args) > 1:
            self.log(LOGWARN, "Ignoring additional arguments")

    def hook_data_post(self, transaction):
        header = transaction.header
        hops = header.count("Received") + header.count("Delivered-To")
        if hops >= self.max_hops:
            self.log(LOGINFO, f"fail, {hops} hops (max {self.max_hops})")
            return DENY, "Too many hops (#5.4.6)"
        return DECLINED
