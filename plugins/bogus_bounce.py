"""bogus_bounce - catch bounces that cannot be real ones.

Hook: data_post. A bounce (a message from the null sender `<>`) goes to one
recipient, the sender of the message that bounced, and carries no return path
(RFC 3834). A null-sender message that breaks either rule is bogus:

- more than one recipient: `fail, this bounce message does not have 1 recipient`;
- a `Return-Path` header other than `<>` (or empty):
  `a bounce return path must be empty (RFC 3834)`.

What happens to a bogus bounce depends on the arguments: it is only logged
(LOGINFO `fail, ...`), or refused after DATA with `552 <text above>`
(`452` for a temporary refusal). Mail from any other sender is not checked.

Arguments, either one word
    bogus_bounce log|deny|denysoft
        log (the default) logs only; deny refuses (552); denysoft refuses
        temporarily (452);
or key/value pairs
    action log|deny|denysoft   as above;
    reject 0|1|naughty         0 only logs (default with `log` or without an
                               action), 1 refuses (default with deny and
                               denysoft), naughty stores the refusal for the
                               naughty plugin;
    reject_type TYPE           perm (default), temp, disconnect...;
                               `denysoft` always means temp;
    loglevel N                 the usual per-plugin log level adjustment.

Differences from qpsmtpd:
- `deny` and `denysoft` refuse (in qpsmtpd the default `reject 0` applied
  whatever the action, so they only logged unless `reject 1` was added);
- a bounce to several recipients is caught (qpsmtpd counted its recipient
  list in scalar context, so it always saw one);
- `Return-Path: <>` passes (qpsmtpd compared the header with its line end
  still attached, so every Return-Path header failed);
- an unknown action, or more words after a one-word action, stops start-up
  (qpsmtpd read an unknown action as `log` and dropped the other words).

Example config/plugins line:
    bogus_bounce deny
"""

from qpsmtpd_py.constants import DECLINED, LOGINFO
from qpsmtpd_py.plugin import Plugin, PluginError

ACTIONS = ("log", "deny", "denysoft")
_KNOWN_ARGUMENTS = ("action", "reject", "reject_type", "loglevel")


class BogusBounce(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            if len(args) > 1:
                raise PluginError("give one action (`bogus_bounce deny`) or key/value pairs "
                                  f"(`bogus_bounce action deny loglevel 6`), not `bogus_bounce {' '.join(args)}`")
            self.args = {"action": args[0]}
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)
        action = self.args.get("action", "log").lower()
        if action not in ACTIONS:
            raise PluginError(f"the action must be one of {', '.join(ACTIONS)}, not {self.args['action']!r}")
        self.args.setdefault("reject", "0" if action == "log" else "1")
        if action == "denysoft":
            self.args["reject_type"] = "temp"

    def hook_data_post(self, transaction):
        sender = transaction.sender
        if sender is not None and not sender.is_null:
            self.log(LOGINFO, "pass, not a null sender")
            return DECLINED

        recipients = transaction.recipients
        if len(recipients) != 1:
            self.log(LOGINFO, "fail, bogus bounce to: " + ",".join(r.format() for r in recipients))
            return self.get_reject("fail, this bounce message does not have 1 recipient")

        return_path = (transaction.header.get("Return-Path") or "").strip()
        if return_path not in ("", "<>"):
            self.log(LOGINFO, "fail, bounce messages must not have a Return-Path")
            return self.get_reject("a bounce return path must be empty (RFC 3834)")

        self.log(LOGINFO, "pass, single recipient, empty Return-Path")
        return DECLINED
