"""badmailfromto - refuse mail from given senders to given recipients.

Hooks: mail, rcpt. Each line of `config/badmailfromto` is a pair

    sender recipient

separated by white space (anything after the second word is ignored).
`sender` is an address or `@host` (every sender at that host), `recipient` an
address; both are compared without regard to case. Mail from a listed sender
to the recipient paired with it is refused at RCPT as if that recipient did
not exist, so the sender is not told that it is the one blocked (meant for
harassment):

    550 mail to <recipient> not accepted here

with the recipient written `user@host` in lower case. The sender's other
recipients, and other senders, are not affected.

At MAIL the sender is looked up: a match is kept in the transaction note
`badmailfromto` (the matching sender entry, lower-cased). Senders are not
looked up when the file is empty, for the null sender `<>` and for an address
without user or host. A sender entry without `@` is logged at LOGWARN and
skipped. Unlike most policy plugins this one also applies to relay clients.

Arguments: none, except the standard `loglevel N`.

The file is read through the config cache: edits apply without a restart.

Example config/badmailfromto:
    stalker@example.net   victim@example.org
    @example.net          ceo@example.org

Differences from qpsmtpd:
- a sender listed both by address and by `@host` is checked against the
  recipients of every line it matches (qpsmtpd kept only the last matching
  line's sender, so the pairs of the other lines were not refused);
- an odd number of arguments stops start-up; an unknown one is logged.

Example config/plugins line (before rcpt_ok, which would accept first):
    badmailfromto
"""

from qpsmtpd_py.constants import DECLINED, DENY, LOGDEBUG, LOGINFO, LOGWARN
from qpsmtpd_py.plugin import Plugin, PluginError

_KNOWN_ARGUMENTS = ("loglevel",)


def sender_matches(entry, address, host):
    """`entry` (lower-cased) names this sender: the same address, or `@host`."""
    return entry == address or (entry.startswith("@") and entry == f"@{host}")


class Badmailfromto(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("badmailfromto takes no arguments but `loglevel N`, "
                              f"not `badmailfromto {' '.join(args)}`")
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)

    def hook_mail(self, transaction, sender, params):
        lines = self.qp.config_list("badmailfromto")
        if self.is_sender_immune(sender, lines):
            return DECLINED
        host = sender.host.lower()
        address = f"{sender.user.lower()}@{host}"
        for line in lines:
            words = line.split()
            if not words:
                continue
            bad = words[0].lower()
            if "@" not in bad:
                self.log(LOGWARN, f"bad config, no @ sign in {bad}")
                continue
            if sender_matches(bad, address, host):
                transaction.notes["badmailfromto"] = bad
        return DECLINED

    def hook_rcpt(self, transaction, recipient, params):
        # A string: the core also keeps this plugin's hook results under its name, as a dict.
        if not isinstance(transaction.notes.get("badmailfromto"), str):
            self.log(LOGDEBUG, "pass, sender not listed")
            return DECLINED
        sender = transaction.sender
        host = (sender.host or "").lower()
        address = f"{(sender.user or '').lower()}@{host}"
        wanted = f"{(recipient.user or '').lower()}@{(recipient.host or '').lower()}"
        for line in self.qp.config_list("badmailfromto"):
            words = line.split()
            if len(words) < 2:
                continue
            if words[1].lower() == wanted and sender_matches(words[0].lower(), address, host):
                self.log(LOGINFO, f"fail, {words[0]} may not send to {wanted}")
                return DENY, f"mail to {wanted} not accepted here"
        self.log(LOGDEBUG, "pass, recipient not listed")
        return DECLINED

    def is_sender_immune(self, sender, lines):
        if not lines:
            self.log(LOGDEBUG, "skip, empty list")
            return True
        if sender is None or sender.is_null:
            self.log(LOGDEBUG, "skip, null sender")
            return True
        if not sender.host or not sender.user:
            self.log(LOGDEBUG, "skip, missing user or host")
            return True
        return False
