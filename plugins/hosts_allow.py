"""hosts_allow - decide before the greeting whether a client may connect.

Hook: pre-connection. Two checks, in this order; the first that decides ends
the hook:

1. Concurrency. A client may hold at most `max_conn_ip` sessions at once: the
   `--max-from-ip` option of qpsmtpd-py-prefork, counted over every child
   process. The new session counts, plus every session already in progress
   from the same address. IPv4 and IPv6 addresses are compared as addresses,
   not as text, and an IPv4 client reaching an IPv6 (`[::]`) listener counts
   as the same IPv4 address. Over the limit the client gets

       451 too many connections from <ip>, try again later

   and is disconnected (log `fail: too many connections from <ip> (<n> > <max>)`).
   A `max_conn_ip` of 0 means no limit.

   The limit follows the connection note `karma_history` when an earlier
   pre-connection plugin (qpsmtpd's karma) has set it: above 5 the client may
   hold 3 more sessions; 0 or less, only one.

2. The file `config/hosts_allow`: one rule per line,

       address[/length] RETURN_CODE [message]

   `address` is an IPv4 or IPv6 address; without `/length` it is the single
   address (/32 or /128), with it a network written with its first address
   (no host bits set). RETURN_CODE is the name of a return code, in any case:
   OK, DENY, DENYSOFT, DENY_DISCONNECT (or DENYHARD), DENYSOFT_DISCONNECT,
   DECLINED, DONE. The message is the rest of the line, spaces included.
   The first rule whose network holds the client decides:
   - DENY, DENY_DISCONNECT: `550 <message>` (default `Sorry, service not
     available to you`), then the connection is closed;
   - DENYSOFT, DENYSOFT_DISCONNECT: `451 <message>` (default `Sorry, try
     again later`), then the connection is closed;
   - OK (or DONE): the client is accepted, and the pre-connection hooks of
     the plugins listed after this one do not run;
   - DECLINED: the later rules are not looked at (an exception to a wider
     rule below it), and the next plugins decide as usual.
   A refusing rule is logged `fail, <message>` at LOGINFO, any other one
   `pass, <CODE>, <message>` at LOGDEBUG. No rule matches: `pass` at LOGDEBUG.

   A line that is none of this (no return code, an unknown one, an address
   that does not parse, host bits set, a length out of range) is logged once
   at LOGERROR and skipped. Blank lines and lines starting with `#` are
   ignored. The file is read through the config cache, so edits apply to the
   next connections without a restart.

Example config/hosts_allow:

    192.168.3.4        DECLINED
    192.168.3.0/24     DENY Sorry, known spam only source
    2001:db8:bad::/48  DENYSOFT not now
    198.51.100.7       OK

This refuses the network 192.168.3.0/24 except its host 192.168.3.4.

Arguments: none, except the standard `loglevel N` (an unknown key is logged
and ignored, an odd number of words stops start-up).

Differences from qpsmtpd:
- IPv6 works, in the concurrency count and in the rules (qpsmtpd compared
  packed IPv4 addresses only: behind an IPv6 listener the limit never held,
  and IPv6 rules never matched);
- with a karma of 0 or less the client may hold one session; qpsmtpd-prefork
  counted the new session twice and so refused such clients altogether;
- a malformed or unknown-code line is logged and skipped (qpsmtpd skipped a
  line without a code silently, read an unknown code as DECLINED, and never
  matched a network with host bits set or written short, like `10/8`);
- return code names may be written in any case;
- a refusing rule is logged as `fail, <message>` (qpsmtpd meant to, but
  compared the numeric code with /deny/ and so never did), and the pass line
  names the code instead of showing its number.

Example config/plugins line (load karma, if used, before it):
    hosts_allow
"""

import ipaddress
from functools import lru_cache

from qpsmtpd_py.constants import (
    CODE_BY_NAME,
    DECLINED,
    DENY_CODES,
    DENYSOFT,
    LOGDEBUG,
    LOGERROR,
    LOGINFO,
    LOGWARN,
)
from qpsmtpd_py.plugin import Plugin, PluginError

CODES = CODE_BY_NAME
CODE_NAMES = {code: name for name, code in CODES.items() if name != "DENYHARD"}
_KNOWN_ARGUMENTS = ("loglevel",)


def parse_address(text):
    """The address in `text`, IPv4-mapped IPv6 as IPv4, or None."""
    try:
        address = ipaddress.ip_address(str(text).strip().split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@lru_cache(maxsize=4096)
def same_client_key(text):
    """One key per client address, whatever the notation of `text`."""
    address = parse_address(text)
    return str(address) if address is not None else str(text)


def parse_network(text):
    """`192.0.2.0/24`, `2001:db8::/32`, `192.0.2.1` -> a network; ValueError if not one."""
    network = ipaddress.ip_network(text, strict=True)
    mapped = network.network_address.ipv4_mapped if network.version == 6 else None
    if mapped is not None and network.prefixlen >= 96:
        # ::ffff:192.0.2.0/120 names IPv4 clients, which are compared as IPv4.
        network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


class Rule:
    __slots__ = ("code", "message", "network")

    def __init__(self, network, code, message):
        self.network = network
        self.code = code
        self.message = message


def parse_rules(lines):
    """The rules of config/hosts_allow, and a description of each bad line."""
    rules, errors = [], []
    for line in lines:
        words = line.split(None, 2)
        if not words:
            continue
        if len(words) < 2:
            errors.append(f"{line.strip()!r}: no return code (expected `address[/length] CODE [message]`)")
            continue
        code = CODES.get(words[1].upper())
        if code is None:
            errors.append(f"{line.strip()!r}: unknown return code {words[1]!r} (one of {', '.join(CODES)})")
            continue
        try:
            network = parse_network(words[0])
        except ValueError as exc:
            errors.append(f"{line.strip()!r}: {exc}")
            continue
        message = words[2].strip() if len(words) > 2 else ""
        rules.append(Rule(network, code, message or None))
    return rules, errors


class HostsAllow(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("hosts_allow takes no arguments but `loglevel N`, "
                              f"not `hosts_allow {' '.join(args)}`")
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)
        self._rules = ((), [])
        self.rules()  # bad lines are logged once at start-up, not once per child

    # -- pre-connection ----------------------------------------------------------------
    def hook_pre_connection(self, transaction, info):
        remote = info.get("remote_ip") or self.connection.remote_ip
        limit = info.get("max_conn_ip") or 0
        if limit:
            key = same_client_key(remote)
            count = 1 + sum(1 for other in info.get("child_addrs") or ()
                            if other is not None and same_client_key(other) == key)
            karma = self.connection.notes.get("karma_history")
            if karma is not None:
                limit = self.karma_bump(karma, limit)
            if count > limit:
                message = f"too many connections from {remote}"
                self.log(LOGINFO, f"fail: {message} ({count} > {limit})")
                return DENYSOFT, f"{message}, try again later"

        decision = self.in_hosts_allow(parse_address(remote))
        if decision is not None:
            return decision
        self.log(LOGDEBUG, "pass")
        return DECLINED

    def karma_bump(self, karma, limit):
        try:
            value = float(karma)
        except (TypeError, ValueError):
            self.log(LOGWARN, f"ignoring connection note karma_history {karma!r}: not a number")
            return limit
        if value > 5:
            self.log(LOGDEBUG, "connect limit +3 for positive karma")
            return limit + 3
        if value <= 0:
            self.log(LOGINFO, f"connect limit 1, karma {karma}")
            return 1
        return limit

    # -- config/hosts_allow ------------------------------------------------------------
    def rules(self):
        """The parsed file, parsed again only when its lines change."""
        lines = tuple(self.qp.config_list("hosts_allow"))
        if lines != self._rules[0]:
            rules, errors = parse_rules(lines)
            for error in errors:
                self.log(LOGERROR, f"ignoring a line of hosts_allow: {error}")
            self._rules = (lines, rules)
        return self._rules[1]

    def in_hosts_allow(self, address):
        """The first matching rule's answer, or None."""
        if address is None:
            return None
        for rule in self.rules():
            if address not in rule.network:
                continue
            name = CODE_NAMES[rule.code]
            if rule.code in DENY_CODES:
                self.log(LOGINFO, f"fail, {rule.message or f'{name} by rule {rule.network}'}")
            else:
                self.log(LOGDEBUG, f"pass, {name}, {rule.message or f'rule {rule.network}'}")
            return (rule.code, rule.message) if rule.message else rule.code
        return None
