"""user_config - per-user settings, read from a directory for each recipient.

Hook: user_config. It answers when a plugin asks for a per-recipient setting
(`self.qp.user_config(address, name)`, qpsmtpd's `$rcpt->config(name)`):
the address is turned into a directory by the pattern, and if that directory
holds a regular file called `name`, its values are the answer (OK). Otherwise
the plugin declines and the setting is looked up as usual (the `config` hook,
then the global config files).

In the pattern
    %u  is replaced by the local part of the address   (jane)
    %h  is replaced by its domain, in lower case       (example.org)
    %a  is replaced by the whole address               (jane@example.org)
Anything else is kept as written. The default pattern is `/home/%u/.qpsmtpd`
(a trailing slash does not matter).

A user's file has the format of the global config files: one value per line,
surrounding whitespace trimmed, blank lines and lines starting with `#`
skipped, `$include` lines honoured (a relative name is looked up in the same
user directory). A file that yields no value counts as absent (DECLINED),
except that `me` and `timeout` get their built-in defaults, as globally.
Parsed files are cached per directory and re-read when they change, so a
user's edit applies to the next lookup; the cache holds the 256 directories
used most recently. Files are read with the daemon's permissions: make the
directories readable by the user it runs as.

Addresses come from the client, so they must not steer the lookup out of the
pattern's place: a local part or domain that contains `/` or a control
character, or a part of the path that would come out empty, `.` or `..`
(the recipients `<".."@example.org>` and `<a/../../etc@example.org>` with the
default pattern), makes the plugin decline without touching the file system
(logged at LOGINFO). So do the null sender `<>`, an address without a domain
(`<postmaster>`) under a pattern using %h (%a is then the local part alone),
and a setting name that is absolute or has `.` or `..` parts.

Arguments:
    pattern      the directory pattern above, default /home/%u/.qpsmtpd
    loglevel N   the standard per-plugin log level adjustment.
Anything else stops start-up.

Differences from qpsmtpd, all deliberate:
- files are parsed like the global config files (qpsmtpd returned every raw
  line, comments and blank lines included);
- placeholders are replaced in one pass, so a local part containing `%h` is
  not expanded a second time, and the domain is lower-cased (domains are
  case-insensitive, file names are not);
- addresses that would leave the pattern's directory are refused (qpsmtpd
  read `/home/../.qpsmtpd/<name>` for the recipient `".."@host`).

Example config/plugins lines:
    user_config
    user_config /var/lib/qpsmtpd/users/%h/%u
"""

import os
import re
from collections import OrderedDict
from pathlib import Path

from qpsmtpd_py.address import Address
from qpsmtpd_py.config import ConfigError, ConfigReader
from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGINFO, LOGNOTICE, LOGWARN, OK
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_PATTERN = "/home/%u/.qpsmtpd"
CACHED_DIRECTORIES = 256
_PLACEHOLDER = re.compile(r"%([uha])")
_UNSAFE = re.compile(r"[/\x00-\x1f\x7f]")
_LOGLEVEL = re.compile(r"^(?:[0-7]|[+-]\d)$")
_KNOWN_ARGUMENTS = ("loglevel",)


class Refused(Exception):
    """The address or setting name would lead outside the pattern's directory."""


def address_parts(address):
    """(local part, domain or None) of an Address or a string; None for `<>`."""
    if isinstance(address, Address):
        user, host = address.user, address.host
    elif isinstance(address, str):
        text = address.strip()
        if text.startswith("<"):
            parsed = Address.parse(text)
            user, host = (parsed.user, parsed.host) if parsed is not None else (None, None)
        else:
            user, at, host = text.rpartition("@")
            if not at:
                user, host = text, None
    else:
        user, host = getattr(address, "user", None), getattr(address, "host", None)
    if user is None or (not user and not host):
        return None
    return user, (host.lower() if host else None)


def expand(pattern, user, host):
    """The directory `pattern` names for (user, host); raises Refused on a path trick."""
    values = {"u": user, "h": host, "a": user if host is None else f"{user}@{host}"}
    for key, value in values.items():
        if value is not None and _UNSAFE.search(value):
            raise Refused(f"{'user' if key == 'u' else 'host' if key == 'h' else 'address'} {value!r} "
                          "contains '/' or a control character")
    parts = []
    for part in pattern.split("/"):
        if not _PLACEHOLDER.search(part):
            parts.append(part)
            continue

        def value_of(match):
            value = values[match.group(1)]
            if value is None:
                raise Refused(f"the address has no domain for %{match.group(1)}")
            return value

        expanded = _PLACEHOLDER.sub(value_of, part)
        if expanded in ("", ".", ".."):
            raise Refused(f"the path part {part!r} would be {expanded!r}")
        parts.append(expanded)
    return "/".join(parts)


def check_name(name):
    """Refuse a setting name that would leave the user's directory."""
    if not name or name.startswith("/") or "\x00" in name:
        raise Refused(f"setting name {name!r} is not a relative file name")
    if any(part in (".", "..") for part in name.split("/")):
        raise Refused(f"setting name {name!r} contains '.' or '..'")


class UserConfig(Plugin):
    def init(self, qp, *args):
        rest = list(args)
        self.pattern = DEFAULT_PATTERN
        if len(rest) % 2:
            self.pattern = rest.pop(0)
        if not self.pattern:
            raise PluginError("the pattern must not be empty")
        pairs = dict(zip(rest[::2], rest[1::2], strict=True))
        for key in pairs:
            if key not in _KNOWN_ARGUMENTS:
                raise PluginError(f"unknown argument {key!r}: give a directory pattern such as "
                                  f"{DEFAULT_PATTERN} and optionally `loglevel N`")
        loglevel = pairs.get("loglevel")
        if loglevel is not None and not _LOGLEVEL.match(loglevel):
            raise PluginError(f"loglevel must be 0-7, +N or -N, not {loglevel!r}")
        self.args = pairs
        self._readers = OrderedDict()

    def register(self, qp, *args):
        if not _PLACEHOLDER.search(self.pattern):
            self.log(LOGWARN, f"pattern {self.pattern!r} has no %u, %h or %a: every user shares one directory")

    def hook_user_config(self, transaction, address, key):
        parts = address_parts(address)
        if parts is None:
            self.log(LOGDEBUG, f"skip, no user in {address!s}")
            return DECLINED
        try:
            check_name(key)
            directory = expand(self.pattern, *parts)
        except Refused as refused:
            self.log(LOGINFO, f"skip, {refused}")
            return DECLINED
        path = os.path.join(directory, key)
        if not os.path.isfile(path):
            self.log(LOGDEBUG, f"no {path}")
            return DECLINED
        try:
            values = self.reader(directory).get(key)
        except ConfigError as error:
            self.log(LOGNOTICE, f"cannot use {path}: {error}")
            return DECLINED
        if not values:
            self.log(LOGDEBUG, f"{path} has no value")
            return DECLINED
        self.log(LOGDEBUG, f"{key} from {path}")
        return (OK, *values)

    def reader(self, directory):
        """The cached ConfigReader of one user directory (the least recently used goes first)."""
        reader = self._readers.get(directory)
        if reader is None:
            reader = ConfigReader([Path(directory)])
            self._readers[directory] = reader
            if len(self._readers) > CACHED_DIRECTORIES:
                self._readers.popitem(last=False)
        else:
            self._readers.move_to_end(directory)
        return reader
