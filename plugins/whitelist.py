"""whitelist - exempt listed hosts, HELO names, senders and recipients from later checks.

Load it before the plugins it should exempt clients from. Each list applies
to one stage of the session: a match answers OK for that hook, so the later
plugins of the same hook do not run, and sets a note that plugins of later
hooks can test (`is_immune()` honours `whitelisthost` and `whitelistsender`).
A whitelisted host does not by itself exempt the later stages, except through
plugins that look at the notes.

Hooks and files (one entry per line, compared without regard to case; blank
lines and `#` comments are ignored; edits apply to the next session):

connect, file `whitelisthosts`
    The client's IP address is whitelisted when a line is
    - the address itself (IPv4 or IPv6, in any notation), or
    - a CIDR block holding it (`192.0.2.0/24`, `2001:db8::/32`), or
    - the start of the address as the client's IP is written (`192.168.`,
      `10.1`, `2001:db8:`): a fragment matches every address that starts
      with it, so `10.1` also matches 10.100.0.1; end IPv4 fragments with a dot.
    On a match: connection note `whitelisthost` = 1, +5 karma, log
    `pass, <ip> is a whitelisted host` (or `... is in a whitelisted block`).
    If the environment variable `WHITELISTCLIENT` is set at all (tcpserver's
    rules can set it), every client is whitelisted instead: connection note
    `whitelistclient` = 1 (not `whitelisthost`), +5 karma, log
    `pass, <ip> is whitelisted client`.
helo and ehlo, file `whitelisthelo`
    The name given with HELO or EHLO: connection note `whitelisthelo` = 1,
    log `helo host <name> in whitelisthelo`. A HELO name proves nothing; this
    only spares it the HELO checks.
mail, file `whitelistsenders`
    A line equal to the sender's address (`user@example.com`) or to its
    domain (`example.com`): transaction note `whitelistsender` = 1, log
    `envelope sender <address> in whitelistsenders`. The null sender `<>`
    and an address without a domain are never whitelisted.
rcpt, file `whitelistrcpt`
    The same for each recipient: the recipient is accepted (OK, whatever
    the later rcpt plugins would say, so a listed address at a foreign domain
    may be relayed to), and the transaction note `whitelistrcpt` counts the
    recipients accepted so, log `recipient <address> in whitelistrcpt`.

Arguments (key/value pairs):
    per_recipient 1   do every check at RCPT, for each recipient, with that
                      recipient's own lists: the `user_config` hook (a
                      per-user configuration plugin) is asked for each file
                      with the recipient's address, and the global file is
                      used when it does not answer. The checks run in the
                      order host, HELO, sender, recipient; the first match
                      ends them for that recipient. A matching host, sender
                      or recipient accepts the recipient (OK); a matching HELO
                      name only sets its note. Default 0.
    merge 0           with per_recipient: use a recipient's own list instead
                      of adding it to the global one. Default 1 (the global
                      list and the recipient's are both used).
    loglevel N        the usual per-plugin log level adjustment.
An odd number of arguments stops start-up; an unknown key is logged and
ignored.

Differences from qpsmtpd, all deliberate:
- a line of `whitelisthosts` that is a whole IP address matches that address
  only (qpsmtpd compared it as a text prefix, so `10.0.0.1` also whitelisted
  10.0.0.10 to 10.0.0.199); fragments keep their prefix meaning, and IPv6
  addresses match in any notation;
- with per_recipient the recipient's own lists are read (qpsmtpd passed the
  recipient to config() in a form it ignores, so only the global files were
  ever read, and `merge` changed nothing);
- with per_recipient a matching HELO name no longer accepts the recipient
  (qpsmtpd answered OK at RCPT, so anyone saying a listed HELO name could
  relay anywhere; without per_recipient it never could);
- the HELO name used at RCPT is the session's (qpsmtpd kept the last one
  seen by the process, which is another client's when sessions overlap);
- matches are logged at LOGINFO (qpsmtpd logged them at level 2, LOGCRIT).

Example config/plugins lines:
    whitelist
    whitelist per_recipient 1 merge 0
"""

import ipaddress
import os

from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGINFO, OK
from qpsmtpd_py.plugin import Plugin, PluginError

_KNOWN_ARGUMENTS = ("per_recipient", "merge", "loglevel")


def perl_true(value):
    return value not in (None, "", "0")


def parse_address(text):
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_match(ip, line):
    """How `line` of whitelisthosts matches the client `ip`: 'host', 'block' or None."""
    entry = line.strip().lower()
    if not entry:
        return None
    address = parse_address(ip)
    if "/" in entry:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return None
        return "block" if address is not None and address in network else None
    listed = parse_address(entry)
    if listed is not None:
        return "host" if listed == address else None
    return "host" if ip.lower().startswith(entry) else None


class Whitelist(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("arguments come in pairs (per_recipient 1 merge 0), "
                              f"not `whitelist {' '.join(args)}`")
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)
        self.per_recipient = perl_true(self.args.get("per_recipient"))
        self.merge = perl_true(self.args.get("merge", "1"))
        if not self.per_recipient:
            self.register_hook("connect", self.check_host)
            self.register_hook("helo", self.check_helo)
            self.register_hook("ehlo", self.check_helo)
            self.register_hook("mail", self.check_sender)
            self.register_hook("rcpt", self.check_rcpt)
        else:
            self.register_hook("rcpt", self.check_host)
            self.register_hook("rcpt", self.check_helo)
            self.register_hook("rcpt", self.check_sender)
            self.register_hook("rcpt", self.check_rcpt)

    def entries(self, name, recipient=None):
        """The lines of list `name`; with per_recipient, the recipient's too."""
        if recipient is None or not self.per_recipient:
            return self.qp.config_list(name)
        own = self.qp.user_config(recipient, name)
        if not self.merge:
            return own
        merged = self.qp.config_list(name)
        return merged + [line for line in own if line not in merged]

    # -- connect (or rcpt) -----------------------------------------------------------
    def check_host(self, transaction, recipient=None, params=None):
        ip = self.connection.remote_ip
        if not ip:
            return DECLINED
        if "WHITELISTCLIENT" in os.environ:
            self.connection.notes["whitelistclient"] = 1
            self.log(LOGINFO, f"pass, {ip} is whitelisted client")
            self.adjust_karma(5)
            return OK
        for line in self.entries("whitelisthosts", recipient):
            how = host_match(ip, line)
            if how is None:
                continue
            self.connection.notes["whitelisthost"] = 1
            where = "a whitelisted host" if how == "host" else "in a whitelisted block"
            self.log(LOGINFO, f"pass, {ip} is {where}")
            self.adjust_karma(5)
            return OK
        self.log(LOGDEBUG, f"skip: {ip} is not whitelisted")
        return DECLINED

    # -- helo/ehlo (or rcpt) ------------------------------------------------------------
    def check_helo(self, transaction, host=None, *rest):
        recipient = None
        if self.per_recipient:
            recipient, host = host, self.connection.hello_host
        if not host:
            return DECLINED
        wanted = host.lower()
        for line in self.entries("whitelisthelo", recipient):
            if line.lower() == wanted:
                self.connection.notes["whitelisthelo"] = 1
                self.log(LOGINFO, f"helo host {host} in whitelisthelo")
                return DECLINED if self.per_recipient else OK
        return DECLINED

    # -- mail (or rcpt) -------------------------------------------------------------------
    def check_sender(self, transaction, sender, params=None):
        recipient = None
        if self.per_recipient:
            recipient, sender = sender, transaction.sender
        if sender is None or sender.is_null:
            return DECLINED
        address, host = sender.address().lower(), (sender.host or "").lower()
        if not address or not host:
            return DECLINED
        for line in self.entries("whitelistsenders", recipient):
            entry = line.lower()
            if entry and entry in (address, host):
                transaction.notes["whitelistsender"] = 1
                self.log(LOGINFO, f"envelope sender {address} in whitelistsenders")
                return OK
        return DECLINED

    # -- rcpt ----------------------------------------------------------------------------
    def check_rcpt(self, transaction, recipient, params=None):
        address, host = recipient.address().lower(), (recipient.host or "").lower()
        if not address or not host:
            return DECLINED
        for line in self.entries("whitelistrcpt", recipient):
            entry = line.lower()
            if entry and entry in (address, host):
                transaction.notes["whitelistrcpt"] = transaction.notes.get("whitelistrcpt", 0) + 1
                self.log(LOGINFO, f"recipient {address} in whitelistrcpt")
                return OK
        return DECLINED
