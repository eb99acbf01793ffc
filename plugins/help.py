"""help - answer the HELP command from text files.

Hook: help. `HELP` alone gets `214 Try 'HELP COMMAND' for getting help on
COMMAND`. `HELP <command>` (one word of letters, digits and `_`; case does
not matter) gets the file configured for that command, or else the file
named after the command (in lower case) in the help directory, one `214`
line per line of the file (empty lines are left out). A command without a
file, or with an empty or unreadable file (logged at LOGERROR), gets
`214 No help available for SMTP command: <command>`. Anything else after
HELP, such as `HELP ../etc/passwd` or `HELP MAIL FROM`, gets
`502 Invalid command name`.

Arguments (key/value pairs, in any order):
    not_implemented 1   answer every HELP with `502 Not implemented.`
                        (0 or absent: answer as above).
    help_dir DIR        the help directory. Default: `./help/` (relative to
                        the daemon's working directory) when the plugin is
                        given no arguments at all (`loglevel` aside), none
                        otherwise, as in qpsmtpd.
    COMMAND FILE        any other pair: the file for HELP COMMAND. A FILE
                        with a `/` in it is used as it is; a bare file name
                        is looked for in the help directory (`./help/`
                        without help_dir).
    loglevel N          the usual per-plugin log level adjustment.
File names may only contain letters, digits, `_`, `.`, `-` and `/`. A pair
whose file name has other characters is logged at LOGERROR and ignored; one
whose file does not exist when the plugin is loaded is logged at LOGWARN and
ignored; a key that is not one word is logged at LOGWARN and ignored. An odd
number of arguments stops start-up.

Differences from qpsmtpd: a bare file name for a COMMAND is looked up in the
help directory (qpsmtpd looked for `help/help/FILE`, a bug its code marks);
each instance of the plugin has its own settings (qpsmtpd shared them between
all instances); an empty line no longer cuts a help text short.

Example config/plugins lines:
    help
    help help_dir /etc/qpsmtpd/help ehlo ehlo.txt
    help not_implemented 1
"""

import os
import re

from qpsmtpd_py.constants import DONE, LOGERROR, LOGWARN, OK
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_HELP_DIR = "./help/"
_WORD = re.compile(r"^\w+$", re.ASCII)
_FILE_NAME = re.compile(r"^[\w.\-/]+$", re.ASCII)


class Help(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("arguments come in pairs (help_dir DIR, not_implemented 1, COMMAND FILE), "
                              f"not `help {' '.join(args)}`")
        settings = {key: value for key, value in self.args.items() if key != "loglevel"}
        self.not_implemented = False
        self.help_dir = None if settings else DEFAULT_HELP_DIR
        self.files = {}
        commands = {}
        for key, value in settings.items():
            if not _WORD.match(key):
                self.log(LOGWARN, f"Invalid argument for the 'help' plugin {key}")
                continue
            if key == "not_implemented":
                self.not_implemented = value not in ("", "0")
            elif not _FILE_NAME.match(value):
                self.log(LOGERROR, f"Invalid characters in filename for command {key}")
            elif key == "help_dir":
                self.help_dir = value
            else:
                commands[key.lower()] = value
        for command, name in commands.items():
            path = name if "/" in name else os.path.join(self.help_dir or "help", name)
            if not os.path.exists(path):
                self.log(LOGWARN, f"No help file for command '{command}'")
                continue
            self.files[command] = path

    def hook_help(self, transaction, rest=""):
        if self.not_implemented:
            self.session.respond(502, "Not implemented.")
            return DONE
        if not rest:
            return OK, "Try 'HELP COMMAND' for getting help on COMMAND"
        command = rest.lower()
        if not _WORD.match(command):
            self.session.respond(502, "Invalid command name")
            return DONE
        path = self.files.get(command)
        if path is None and self.help_dir is not None:
            candidate = os.path.join(self.help_dir, command)
            if os.path.exists(candidate):
                path = candidate
        none = f"No help available for SMTP command: {command}"
        if path is None:
            return OK, none
        try:
            with open(path, "rb") as handle:
                text = handle.read().decode("utf-8", "replace")
        except OSError as exc:
            self.log(LOGERROR, f"failed to open help file for {command}: {exc.strerror}")
            return OK, none
        lines = [line for line in text.replace("\r", "").split("\n") if line]
        return (OK, *lines) if lines else (OK, none)
