"""dnsbl - refuse clients listed in DNS block lists (RBLs).

Hooks: connect (the lookups), rcpt (postmaster and abuse stay reachable).

At connect the client's address is looked up in every zone of
`config/dnsbl_zones`. All zones are asked at the same time; the reply to the
client waits at most `timeout` seconds, however many zones there are and even
when a nameserver is dead (a zone that does not answer in time counts as not
listing the client, logged at LOGERROR, as is SERVFAIL). When several zones
list the client, the first in the file names the reason. Each listing costs
the connection one karma point (connection note `karma`).

An IPv4 client `192.0.2.1` is looked up as `1.2.0.192.<zone>`; an IPv6 client
as its 32 nibbles reversed (`1.0.0.0...8.b.d.0.1.0.0.2.<zone>`), as IPv6
block lists publish them. IPv4 clients on an IPv6 listener are IPv4 clients.

config/dnsbl_zones, one zone per line:

    zen.example.org
        A TXT lookup: listed when a TXT record exists; the reply is its text.
    rbl.example.net:Listed by rbl.example.net, see https://example.net/?ip=%IP%
        An A lookup: listed when an A record exists; the reply is the text
        after the colon, `%IP%` replaced by the client's address (empty text:
        `Blocked by <zone>`).
    zen.example.org=127.0.0.2-127.0.0.11,127.0.1.2[:message]
        New in qpsmtpd-py, a return-code filter: an A lookup, and the client
        is listed only when one of the returned addresses is in one of the
        comma-separated addresses or `first-last` ranges (so a list's
        "not listed, but ..." codes such as 127.255.255.254 are not
        refusals). Without a message the reply is the zone's TXT text (asked
        at the same time), else `Blocked by <zone>`. A zone name holds no
        `=` and a message comes after the first colon, so no qpsmtpd line
        means anything else here. A filter that does not parse is logged at
        LOGERROR and the zone is skipped.

config/dnsbl_allow: addresses that are never looked up, one per line, either
a whole address or a prefix ending in a dot (`172.16.33.`); for IPv6 a prefix
of the address as written (`2001:db8:`).

config/dnsbl_rejectmsg: the text put before `$RBLSMTPD` (below).

The RBLSMTPD environment variable (as for djb's rblsmtpd):
- not set: every check is made;
- set but empty: no check is made;
- set and not empty: no DNS check is made, and with `reject connect` the
  client is refused with `<dnsbl_rejectmsg> <RBLSMTPD>` (`%IP%` replaced).
Relay clients and whitelisted hosts or senders (`is_immune`) are not checked.

Arguments (key value pairs):
    reject 0|1|naughty|connect   1 (default): refuse a listed client at
                                 connect; 0: only log and lower karma;
                                 naughty: note it for the naughty plugin
                                 (connection note `naughty`), which refuses
                                 later; connect: as 1, and see RBLSMTPD.
    reject_type perm|temp|disconnect|...   how to refuse (default perm:
                                 550 and the session ends at the greeting;
                                 temp: 450).
    timeout N                    seconds to wait for the DNS (default 30).
    loglevel N                   as for every plugin.
A single word is the legacy form of reject_type (`dnsbl disconnect`).

At RCPT a recipient postmaster, abuse, mailer-daemon or root (any case,
any domain) clears the connection note `naughty`, so a client refused
with `reject naughty` can still write to them.

Differences from qpsmtpd: zones are asked in parallel, not one after
another (qpsmtpd waited up to `timeout` per zone); IPv6 clients are checked;
return-code filters; for an `A` zone the reply is the configured message
(qpsmtpd replied with the name looked up: its `A`-record branch never ran).

Example config/plugins line:
    dnsbl reject naughty timeout 5
"""

import ipaddress
import os
import re

from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN
from qpsmtpd_py.dns import require_nameservers, resolver_for, reverse_name
from qpsmtpd_py.plugin import REJECT_TYPES, Plugin, PluginError

_SPECIAL_USERS = re.compile(r"^(?:postmaster|abuse|mailer-daemon|root)$", re.IGNORECASE)
DEFAULT_TIMEOUT = 30.0


class Zone:
    __slots__ = ("message", "name", "ranges")

    def __init__(self, name, message, ranges):
        self.name = name
        self.message = message  # None: TXT zone
        self.ranges = ranges  # None: no return-code filter

    @property
    def wants_a(self):
        return self.message is not None or self.ranges is not None

    @property
    def wants_txt(self):
        return self.message is None

    def matches(self, address):
        if self.ranges is None:
            return True
        ip = ipaddress.ip_address(address)
        return any(first <= ip <= last for first, last in self.ranges)


def parse_ranges(text):
    """`127.0.0.2-127.0.0.11,127.0.1.2` -> [(first, last), ...]; ValueError."""
    ranges = []
    for item in text.split(","):
        first, _, last = item.strip().partition("-")
        low = ipaddress.ip_address(first.strip())
        high = ipaddress.ip_address(last.strip()) if last else low
        if low.version != high.version or high < low:
            raise ValueError(f"bad range {item.strip()!r}")
        ranges.append((low, high))
    return ranges


def parse_zones(lines):
    """config/dnsbl_zones lines -> zones, and a description of each bad line."""
    zones, errors = [], []
    for line in lines:
        head, colon, message = line.strip().partition(":")
        name, equals, filter_text = head.partition("=")
        name = name.strip().rstrip(".")
        if not name:
            continue
        ranges = None
        if equals:
            try:
                ranges = parse_ranges(filter_text)
            except ValueError as exc:
                errors.append(f"{line.strip()!r}: {exc}")
                continue
        zones.append(Zone(name, message if colon else None, ranges))
    return zones, errors


class Dnsbl(Plugin):
    reject_values = re.compile(r"^(?:0|1|naughty|connect)$")
    reject_help = "0, 1, naughty or connect"

    def register(self, qp, *args):
        if len(args) % 2:
            if len(args) > 1 or args[0].lower() not in REJECT_TYPES:
                raise PluginError(f"dnsbl takes key value pairs (reject, reject_type, timeout, loglevel), "
                                  f"or one reject_type word; not `dnsbl {' '.join(args)}`")
            self.args = {"reject_type": args[0]}  # qpsmtpd's legacy form
        self.args.setdefault("reject_type", "perm")
        self.args.setdefault("reject", "1")
        self.timeout = self.seconds_argument("timeout", DEFAULT_TIMEOUT)  # qpsmtpd: `timeout 0` is the default
        require_nameservers(qp)
        self._zones = ((), [])

    # -- config ------------------------------------------------------------------------
    def zones(self):
        lines = tuple(self.qp.config_list("dnsbl_zones"))
        if lines != self._zones[0]:
            zones, errors = parse_zones(lines)
            for error in errors:
                self.log(LOGERROR, f"ignoring a line of dnsbl_zones: {error}")
            self._zones = (lines, zones)
        return self._zones[1]

    def ip_whitelisted(self, remote_ip):
        for entry in self.qp.config_list("dnsbl_allow"):
            entry = entry.strip()
            if not entry:
                continue
            if ":" in entry:
                if remote_ip.lower().startswith(entry.lower()):
                    return True
                continue
            entry = entry if entry.endswith(".") else entry + "."
            if (remote_ip + ".").startswith(entry):
                return True
        return False

    def is_set_rblsmtpd(self, remote_ip):
        value = os.environ.get("RBLSMTPD")
        if value is None:
            self.log(LOGDEBUG, f"RBLSMTPD not set for {remote_ip}")
            return None
        if value:
            self.log(LOGINFO, f'RBLSMTPD="{value}" for {remote_ip}')
            return value
        self.log(LOGINFO, f"RBLSMTPD set, but empty for {remote_ip}")
        return True

    def return_env_message(self, remote_ip):
        result = os.environ["RBLSMTPD"].replace("%IP%", remote_ip)
        message = self.qp.config("dnsbl_rejectmsg")
        self.log(LOGINFO, f"fail, {message}")
        return self.get_reject_type(), " ".join(part for part in (message, result) if part)

    # -- hooks -------------------------------------------------------------------------
    async def hook_connect(self, transaction):
        remote_ip = self.connection.remote_ip
        if os.environ.get("RBLSMTPD") and self.args.get("reject") == "connect":
            return self.return_env_message(remote_ip)
        if self.is_immune() or self.is_set_rblsmtpd(remote_ip) or self.ip_whitelisted(remote_ip):
            return DECLINED
        zones = self.zones()
        if not zones:
            self.log(LOGDEBUG, "skip, no zones")
            return DECLINED
        try:
            reversed_ip = reverse_name(remote_ip)
        except ValueError:
            self.log(LOGWARN, f"skip, not an IP address: {remote_ip}")
            return DECLINED

        resolver = resolver_for(self.qp)
        lookups = []
        for zone in zones:  # every question is on its way before any answer is awaited
            name = f"{reversed_ip}.{zone.name}"
            a = resolver.query(name, "A", timeout=self.timeout) if zone.wants_a else None
            txt = resolver.query(name, "TXT", timeout=self.timeout) if zone.wants_txt else None
            lookups.append((zone, name, a, txt))

        for zone, name, a_lookup, txt_lookup in lookups:
            reason = await self.listed(zone, name, a_lookup, txt_lookup, remote_ip)
            if reason is not None:
                # Twisted runs a coroutine in its own context: self.connection is still this session's.
                self.adjust_karma(-1)
                return self.get_reject(reason, zone.name)
        self.log(LOGINFO, "pass")
        return DECLINED

    async def listed(self, zone, name, a_lookup, txt_lookup, remote_ip):
        """The reply text if `zone` lists the client, else None."""
        if a_lookup is not None:
            answer = await a_lookup
            if not self.usable(answer, zone, "A"):
                return None
            hits = [rd.address for rd in answer.rdata if zone.matches(rd.address)]
            if not hits:
                if answer.rdata:
                    self.log(LOGDEBUG, f"{zone.name}: return codes {[rd.address for rd in answer.rdata]} "
                                       "not in the filter")
                return None
            self.log(LOGDEBUG, f"found A for {name} with IP {hits[0]}")
            if zone.message:
                return zone.message.replace("%IP%", remote_ip)
            if zone.message is None and txt_lookup is not None:
                text = await txt_lookup
                if text.rcode == "NOERROR" and text.rdata:
                    return _txt(text.rdata[0])
            return f"Blocked by {zone.name}"
        answer = await txt_lookup
        if not self.usable(answer, zone, "TXT") or not answer.rdata:
            return None
        text = _txt(answer.rdata[0])
        self.log(LOGDEBUG, f"found TXT, {text}")
        return text

    def usable(self, answer, zone, rdtype):
        if answer.rcode in ("NOERROR", "NXDOMAIN"):
            return answer.rcode == "NOERROR"
        self.log(LOGERROR, f"{zone.name} query failed: {answer.rcode}")
        return False

    def hook_rcpt(self, transaction, recipient, *args):
        user = getattr(recipient, "user", None) or ""
        if _SPECIAL_USERS.match(user):
            self.log(LOGWARN, f"skip, don't blacklist special account: {user}")
            self.is_naughty(0)  # clears the note a `reject naughty` left
        return DECLINED


def _txt(rdata):
    return b"".join(rdata.strings).decode("utf-8", "replace")
