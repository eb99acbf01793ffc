"""random_error - fail at random, to test how clients and other servers cope.

Hooks: connect, helo, ehlo, mail, rcpt, data and data_post. Each of them
fails with a small probability, chosen so that a message going through the
six stages of a session (connect, HELO or EHLO, MAIL, RCPT, DATA, end of
data) fails at one of them with about the configured percentage:

    P(one hook fails) = 1 - (1 - percent / 100) ** (1 / 6)

A failure is `random failure` with DENYSOFT_DISCONNECT two times in five
(the client gets the hook's 4xx reply and is disconnected) and DENYSOFT
otherwise (the hook's 4xx reply), for instance `450 random failure` at
connect, `450`/`421 random failure` at MAIL, `451` at DATA, `452` after the
message. Each draw is logged at LOGINFO as
`to fail, rand(1) must be more than <1 - P>`.

The percentage is stored in the connection note `random_fail_%` at connect;
a plugin that runs after this one at connect may change it for the rest of
the connection.

Argument: the percentage, one number (default 1; 0, as in qpsmtpd, also
means 1). A negative number never fails, 100 or more always does. More than
one argument, or one that is not a number, stops start-up.

Not for production servers.

Example config/plugins line:
    random_error 5
"""

import random

from qpsmtpd_py.constants import DECLINED, DENYSOFT, DENYSOFT_DISCONNECT, LOGINFO
from qpsmtpd_py.plugin import Plugin, PluginError

NOTE = "random_fail_%"
STAGES = 6


class RandomError(Plugin):
    def register(self, qp, *args):
        if len(args) > 1:
            raise PluginError(f"give one percentage or nothing, not `random_error {' '.join(args)}`")
        try:
            self.percent = float(args[0]) if args and args[0] else 0.0
        except ValueError:
            raise PluginError(f"the argument is a percentage, not {args[0]!r}") from None
        self.percent = self.percent or 1.0
        # The source of randomness: tests give a seeded random.Random.
        self.random = random.Random()

    def random_fail(self, *_):
        percent = self.connection.notes.get(NOTE, self.percent)
        try:
            success = 1 - float(percent) / 100
        except (TypeError, ValueError):
            success = 1.0
        threshold = success ** (1 / STAGES) if success > 0 else 0.0
        self.log(LOGINFO, f"to fail, rand(1) must be more than {threshold:.15g}")
        if self.random.random() < threshold:
            return DECLINED
        if self.random.random() * 5 < 2:
            return DENYSOFT_DISCONNECT, "random failure"
        return DENYSOFT, "random failure"

    def hook_connect(self, transaction):
        self.connection.notes[NOTE] = self.percent
        return self.random_fail()

    hook_helo = random_fail
    hook_ehlo = random_fail
    hook_mail = random_fail
    hook_rcpt = random_fail
    hook_data = random_fail
    hook_data_post = random_fail
