"""naughty - carry out the rejections other plugins deferred.

A plugin given `reject naughty` (dnsbl, headers, earlytalker, ...) does not
refuse the client itself when its check fails: it appends its reply text to
the connection note `naughty` (see `store_deferred_reject()` in
qpsmtpd-py-plugins(7)) and lets the session go on. This plugin refuses the
client later, at one chosen point of the session, with every stored text as
one line of the reply. Deferring lets a roaming user authenticate before
being refused, and lets later plugins see that the connection is naughty and
skip their work (`is_naughty()`).

Hooks: the one named by `reject`, and data_post as well (for a session that
got past that point anyway, for instance because another plugin of the same
hook answered first). When the note is empty the hook logs `pass` and lets
the session go on; otherwise it logs `disconnecting` and refuses with the
stored text, or with the core's text for that hook if the note holds no text
(a plain flag such as True).

Arguments (key/value pairs):
    reject HOOK   where to refuse: connect, mail, rcpt, data or data_post, in
                  any case. Default: rcpt. The refusal happens when that hook
                  runs for naughty's line of config/plugins, so put naughty
                  before plugins that accept (a rcpt plugin answering OK,
                  such as rcpt_ok, ends the hook before naughty runs), or
                  choose a later hook such as data.
    reject_type TYPE  the kind of refusal when the plugin that stored the
                  first text did not say (the note `naughty_reject_type`
                  holds what it said): perm, temp, disconnect or
                  temp_disconnect. Default: disconnect (DENY_DISCONNECT: a
                  5xx reply, then the connection is closed).
    loglevel N    the usual per-plugin log level adjustment.

The replies are the core's for each hook (see qpsmtpd-py-plugins(7)):
at connect `550 <text>`, at mail and rcpt `550 <text>`, at data
`554 <text>`, at data_post `552 <text>`, with 4xx codes for temp, and the
connection is closed for disconnect and temp_disconnect.

Differences from qpsmtpd:
- qpsmtpd's manual gives no default for `reject`; its code uses rcpt, which is
  kept;
- an unknown `reject` value stops start-up (qpsmtpd logged `fail, invalid
  hook` and hooked data_post only), as do an odd number of arguments;
- several stored texts give a proper multi-line reply (qpsmtpd sent them
  joined by CRLF after one code, so every line after the first had none).

Example config/plugins lines:
    naughty
    naughty reject data reject_type temp
"""

import re

from qpsmtpd_py.constants import DECLINED, DENY_DISCONNECT, LOGDEBUG, LOGINFO
from qpsmtpd_py.plugin import Plugin, PluginError

HOOKS = ("connect", "mail", "rcpt", "data", "data_post")
_KNOWN_ARGUMENTS = ("reject", "reject_type", "loglevel")


class Naughty(Plugin):
    reject_values = re.compile(rf"^(?i:{'|'.join(HOOKS)})$")
    reject_help = ", ".join(HOOKS)

    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("arguments come in pairs (reject data reject_type temp), "
                              f"not `naughty {' '.join(args)}`")
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)
        self.args["reject"] = (self.args.get("reject") or "rcpt").lower()
        self.args["reject_type"] = self.args.get("reject_type") or "disconnect"
        hook = self.args["reject"]
        if hook != "data_post":
            self.register_hook("data_post", self.naughty)
        self.log(LOGDEBUG, f"registering hook {hook}")
        self.register_hook(hook, self.naughty)

    def naughty(self, transaction, *args):
        message = self.connection.notes.get("naughty")
        if not message:
            self.log(LOGINFO, "pass")
            return DECLINED
        self.log(LOGINFO, "disconnecting")
        code = self.get_reject_type(DENY_DISCONNECT, self.connection.notes.get("naughty_reject_type"))
        if not isinstance(message, str):
            return code
        return code, message.replace("\r\n", "\n")
