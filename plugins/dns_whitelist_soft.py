"""dns_whitelist_soft - DNS-based whitelist: exempt listed clients from later checks.

Hooks: connect (the lookups start), rcpt (their answers are read).

At connect the client's address is looked up, as a TXT record, in every zone
of `config/whitelist_zones` (`192.0.2.1` as `1.2.0.192.<zone>`; an IPv6
client as its 32 nibbles reversed, as for dnsbl). The connect hook does not
wait for the answers: the other connect plugins (dnsbl, ...) run meanwhile.
The first RCPT waits for them, at most `timeout` seconds after the lookups
started; when a zone lists the client, the connection note `whitelisthost`
is set to the TXT text, so the plugins that honour it (`is_immune`: rhsbl,
resolvable_fromhost, ... in a later transaction) skip the client from then on, and
the plugin logs `Host <ip> is whitelisted: <text>` at LOGNOTICE. Later
RCPTs do not wait again. A zone that does not answer in time, or answers
SERVFAIL, counts as not listing (logged at LOGERROR).

Put this plugin before the plugins whose rejections it should override, and
remember that until the first RCPT the note is not set (as in qpsmtpd): a
plugin that decides at connect, HELO or MAIL does not see it. Use the
`whitelist` plugin's `whitelisthosts` for an exemption known at connect.

config/whitelist_zones, one zone per line; anything after the zone name on
the line is ignored:

    list.dnswl.example

Arguments (key value pairs):
    timeout N     seconds the first RCPT waits for the answers, counted
                  from connect (default 4, qpsmtpd's fixed wait).
    loglevel N    as for every plugin.

Differences from qpsmtpd: IPv6 clients are looked up (qpsmtpd reversed
dotted quads only); an empty TXT record whitelists too, the note then being
`Whitelisted by <zone>` (qpsmtpd's code ignored an empty text although its
manual says any answer counts); qpsmtpd's manual speaks of "A or TXT"
answers, but its code asks for TXT only, and so does this plugin; the wait
is bounded once, not per answer that arrives.

Example config/plugins line:
    dns_whitelist_soft timeout 3
"""

from twisted.internet import defer

from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGERROR, LOGNOTICE, LOGWARN
from qpsmtpd_py.dns import require_nameservers, resolver_for, reverse_name
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_TIMEOUT = 4.0
_PENDING = "dns_whitelist_soft_lookups"  # connection note: the lookups started at connect


def parse_zones(lines):
    """config/whitelist_zones lines -> zone names (first word of each line)."""
    zones = []
    for line in lines:
        words = line.split()
        if words and words[0].strip(".") not in zones:
            zones.append(words[0].strip("."))
    return zones


class DnsWhitelistSoft(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"dns_whitelist_soft takes key value pairs (timeout, loglevel), "
                              f"not `dns_whitelist_soft {' '.join(args)}`")
        self.timeout = self.seconds_argument("timeout", DEFAULT_TIMEOUT, non_positive="error")
        require_nameservers(qp)

    def hook_connect(self, transaction):
        zones = parse_zones(self.qp.config_list("whitelist_zones"))
        if not zones:
            return DECLINED
        remote_ip = self.connection.remote_ip
        try:
            reversed_ip = reverse_name(remote_ip)
        except ValueError:
            self.log(LOGWARN, f"skip, not an IP address: {remote_ip}")
            return DECLINED
        resolver = resolver_for(self.qp)
        lookups = []
        for zone in zones:
            name = f"{reversed_ip}.{zone}"
            self.log(LOGDEBUG, f"checking {name} in the background")
            lookups.append((zone, resolver.query(name, "TXT", timeout=self.timeout)))
        self.connection.notes[_PENDING] = lookups
        return DECLINED

    async def hook_rcpt(self, transaction, recipient, *args):
        notes = self.connection.notes
        lookups = notes.pop(_PENDING, None)
        if notes.get("whitelisthost") or not lookups:
            return DECLINED
        self.log(LOGDEBUG, "waiting for whitelist dns")
        # Each query ends by itself within `timeout` of connect (a TIMEOUT answer).
        answers = await defer.gatherResults([lookup for _, lookup in lookups])
        for (zone, _), answer in zip(lookups, answers, strict=True):
            if answer.rcode not in ("NOERROR", "NXDOMAIN"):
                self.log(LOGERROR, f"{zone} query failed: {answer.rcode}")
                continue
            if not answer.rdata:
                continue
            text = b"".join(answer.rdata[0].strings).decode("utf-8", "replace") or f"Whitelisted by {zone}"
            notes["whitelisthost"] = text
            self.log(LOGNOTICE, f"Host {self.connection.remote_ip} is whitelisted: {text}")
            return DECLINED
        self.log(LOGDEBUG, "not whitelisted")
        return DECLINED
