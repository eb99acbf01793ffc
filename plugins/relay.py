"""relay - decide when a client connects whether it may relay mail through us.

Hook: connect (and rcpt with `only`). Load it before the rcpt plugins: it only
sets the connection's `relay_client` flag, and `rcpt_ok` (like every plugin
that calls `is_immune()`) lets a relay client send to any domain.

At connect the client's address is looked up in this order; the first step
that decides ends the search:

1. `config/norelayclients`: a match means the client is never a relay client,
   whatever the later steps would say (log `fail, disabled by norelayclients`).
2. The `RELAYCLIENT` environment variable: if it is set at all, even empty
   (as tcpserver's rules set it for qmail-smtpd), every client is a relay
   client (log `pass, enabled by env`).
3. `config/relayclients`, then the IPv6 loopback `::1` (always allowed,
   as in qpsmtpd; 127.0.0.1 is not, list it), then qmail's compiled
   `config/morerelayclients.cdb` (log `pass, ...` naming the match).
Nobody matched: log `skip, no match`; the client is not a relay client.

Lines of `relayclients` and `norelayclients` (one per line, surrounding
whitespace ignored, case does not matter) are one of:

    192.0.2.17                  one address, IPv4 or IPv6 in any notation
    2001:db8::25
    192.0.2.                    an IPv4 prefix: whole octets ending in a dot
    192.168.
    2001:db8:e431:ae06:         an IPv6 prefix: whole groups ending in a colon
    2001:0db8:e4                an IPv6 prefix of the fully written-out address
                                (every group four digits), ending on any digit
    10.1.0.0/24                 a CIDR block, IPv4 or IPv6; the address must be
    2001:db8:e431:ae06::/64     the network's first one (no host bits set);
    10/8                        missing IPv4 octets count as zeros

A line that is none of these (for example `10.1.2.3/24`, whose host bits are
set) is logged at LOGERROR and ignored: it grants nothing and excludes nothing.
The keys of `morerelayclients.cdb` (build it with cdbmake) are looked up in the
same forms except CIDR blocks: the client's address as it arrived, in short
and in fully written-out form, and every prefix above of it. The values are
not used.

Files are read through the config cache, so edits apply to the next
connection without a restart.

Arguments (key/value pairs):
    only N      N other than 0: also hook rcpt and accept (OK) every recipient
                of a relay client, refusing everyone else's with
                `550 relaying denied`. For a smart host that must not act as
                a public MX. A client that authenticates later counts as a
                relay client too. Default 0 (off).
    loglevel N  the usual per-plugin log level adjustment.

Differences from qpsmtpd, all deliberate:
- a CIDR block includes its first and last addresses (qpsmtpd left them out,
  so a /32 or /128 block never matched);
- IPv6 addresses match whatever notation and case the line and the client
  use, prefixes ending in a colon work in every file, and `norelayclients`
  accepts CIDR blocks too (qpsmtpd compared text, so such lines silently
  never matched);
- an odd number of arguments stops start-up (qpsmtpd logged
  `Bad arguments` and carried on); an unknown one is logged and ignored;
- a `norelayclients` match does not unset `RELAYCLIENT` in the environment:
  the daemon's environment is shared by every connection it serves, and
  norelayclients is checked first anyway.

Example config/plugins lines:
    relay
    relay only 1
"""

import ipaddress
import os
import re

from qpsmtpd_py.config import ConfigError
from qpsmtpd_py.constants import (
    DECLINED,
    DENY,
    LOGDEBUG,
    LOGERROR,
    LOGINFO,
    OK,
)
from qpsmtpd_py.plugin import Plugin, PluginError

_IPV4_PREFIX = re.compile(r"(?:[0-9]{1,3}\.){1,3}")
_IPV6_PREFIX = re.compile(r"[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,7}:?")
_SHORT_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){0,2}")
_LOOPBACK6 = ipaddress.IPv6Address("::1")
_KNOWN_ARGUMENTS = ("only", "loglevel")


def parse_address(text):
    """The address in `text` (an IPv6 zone is dropped), or None if it is none."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _pad_ipv4_network(entry):
    """`10/8` -> `10.0.0.0/8`: qpsmtpd read missing IPv4 octets as zeros."""
    network, _, length = entry.partition("/")
    if _SHORT_IPV4.fullmatch(network):
        network += ".0" * (3 - network.count("."))
    return f"{network}/{length}"


def lookup_keys(text, address):
    """The strings a client is looked up as, the whole address first.

    qpsmtpd strips the address one octet (IPv4) or one hex digit of the
    written-out form (IPv6) at a time; the IPv6 group prefixes ending in a
    colon, written out and short, are added for lines written that way.
    """
    if address is None:
        return [text] if text else []
    if address.version == 4:
        octets = str(address).split(".")
        return [str(address)] + [".".join(octets[:n]) + "." for n in (3, 2, 1)]
    exploded = address.exploded
    keys = [text, address.compressed, exploded]
    keys += [exploded[:n] for n in range(len(exploded) - 1, 0, -1) if exploded[n - 1] != ":"]
    groups = exploded.split(":")
    short = [group.lstrip("0") or "0" for group in groups]
    for n in range(7, 0, -1):
        keys.append(":".join(groups[:n]) + ":")
        keys.append(":".join(short[:n]) + ":")
    return list(dict.fromkeys(keys))  # without repeats, longest first


class ClientList:
    """One parsed relayclients/norelayclients file."""

    __slots__ = ("errors", "keys", "networks")

    def __init__(self, lines):
        self.keys = set()
        self.networks = []
        self.errors = []
        for line in lines:
            entry = line.strip().lower()
            if not entry:
                continue
            if "/" in entry:
                try:
                    self.networks.append(ipaddress.ip_network(_pad_ipv4_network(entry)))
                except ValueError as exc:
                    self.errors.append(f"{line.strip()!r}: {exc}")
                continue
            address = parse_address(entry)
            if address is not None:
                self.keys.add(str(address))
            elif _IPV4_PREFIX.fullmatch(entry) or _IPV6_PREFIX.fullmatch(entry):
                self.keys.add(entry)
            else:
                self.errors.append(f"{line.strip()!r}: not an address, a prefix or a CIDR block")

    def key_match(self, keys):
        return next((key for key in keys if key in self.keys), None)

    def network_match(self, address):
        if address is None:
            return None
        return next((network for network in self.networks if address in network), None)


class Relay(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("arguments come in pairs: `relay only 1` or just `relay`, "
                              f"not `relay {' '.join(args)}`")
        self.warn_unknown_arguments(_KNOWN_ARGUMENTS)
        # Perl truth: anything but an empty string or 0 turns it on.
        self.only = self.args.get("only", "") not in ("", "0")
        if self.only:
            self.register_hook("rcpt", "relay_only")
        self._lists = {}

    # -- connect ----------------------------------------------------------------------
    def hook_connect(self, transaction):
        connection = self.connection
        text = (connection.remote_ip or "").strip().lower()
        address = parse_address(text)
        keys = lookup_keys(text, address)

        if self.is_in_norelayclients(address, keys):
            connection.relay_client = False
            self.log(LOGINFO, "fail, disabled by norelayclients")
            return DECLINED

        if "RELAYCLIENT" in os.environ:
            connection.relay_client = True
            self.log(LOGINFO, "pass, enabled by env")
            return DECLINED

        if not text:
            self.log(LOGINFO, "err, no remote_ip?")
        elif self.is_in_cidr_block(address) or self.is_octet_match(address, keys):
            connection.relay_client = True
            return DECLINED

        self.log(LOGINFO, "skip, no match")
        return DECLINED

    def client_list(self, name):
        """The parsed file `name`, parsed again only when its lines change."""
        lines = tuple(self.qp.config_list(name))
        cached = self._lists.get(name)
        if cached is not None and cached[0] == lines:
            return cached[1]
        parsed = ClientList(lines)
        for error in parsed.errors:
            self.log(LOGERROR, f"ignoring a line of {name}: {error}")
        self._lists[name] = (lines, parsed)
        return parsed

    def is_in_norelayclients(self, address, keys):
        no_relay = self.client_list("norelayclients")
        found = no_relay.key_match(keys) or no_relay.network_match(address)
        if found is not None:
            self.log(LOGINFO, f"{found} in norelayclients")
            return True
        self.log(LOGDEBUG, "no match in norelayclients")
        return False

    def is_in_cidr_block(self, address):
        network = self.client_list("relayclients").network_match(address)
        if network is not None:
            self.log(LOGINFO, f"pass, cidr match ({address} in {network})")
            return True
        self.log(LOGDEBUG, "no cidr match")
        return False

    def is_octet_match(self, address, keys):
        if address == _LOOPBACK6:
            self.log(LOGINFO, f"pass, octet matched localhost ({address})")
            return True
        found = self.client_list("relayclients").key_match(keys)
        if found is not None:
            self.log(LOGINFO, f"pass, octet match in relayclients ({found})")
            return True
        try:
            more = self.qp.config_reader.map("morerelayclients")
        except ConfigError as exc:
            self.log(LOGERROR, f"err, morerelayclients not used: {exc}")
            more = {}
        for key in keys:
            if key.encode("utf-8", "surrogateescape") in more:
                self.log(LOGINFO, f"pass, octet match in morerelayclients ({key})")
                return True
        self.log(LOGDEBUG, "no octet match")
        return False

    # -- rcpt, with `only` -----------------------------------------------------------------
    def relay_only(self, transaction, recipient, params):
        if self.connection.relay_client:
            self.log(LOGINFO, "pass, relay client")
            return OK
        self.log(LOGINFO, "fail, relay only")
        return DENY
