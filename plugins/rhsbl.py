"""rhsbl - refuse senders whose domain is listed in a right-hand-side block list.

Hook: mail. The domain of the MAIL FROM address and the HELO name are looked
up in every zone of `config/rhsbl_zones` (as `<domain>.<zone>`), all at the
same time; MAIL waits at most `timeout` seconds for the answers. A zone that
does not answer in time, or answers SERVFAIL, counts as not listing (logged
at LOGCRIT, as qpsmtpd does).

config/rhsbl_zones, one zone per line:

    rhsbl.example.org
        A TXT lookup; listed when a TXT record exists.
    dbl.example.net  listed in dbl.example.net
        With any text after the zone (separated by white space): an A lookup,
        listed when an A record exists; the text is the reason given.

The reply (550 by default) is

    Mail from <domain> rejected because it <reason>
    Mail from HELO <helo> rejected because it <reason>

for the sender's domain and the HELO name; the reason is the TXT text, the
line's text for an A zone, or else the name looked up. The sender's domain
is checked first. The null sender `<>`, relay clients and whitelisted hosts
or senders are not checked; a HELO that is an address literal is not looked
up.

Arguments (key value pairs):
    reject 0|1|naughty      1 (default): refuse; 0: log only; naughty: note
                            it for the naughty plugin.
    reject_type perm|temp|disconnect|...   default perm.
    timeout N               seconds to wait for the DNS (default 30).
    loglevel N              as for every plugin.
A single word is the legacy form: `disconnect` means reject_type disconnect,
any other word reject_type perm.

Differences from qpsmtpd: the HELO name is really looked up (qpsmtpd only
named it in the reply of a TXT listing of the sender's domain); the zones
are asked in parallel with a bounded wait; an A zone's text is the reason.

Example config/plugins line:
    rhsbl timeout 5
"""

from qpsmtpd_py.constants import DECLINED, LOGCRIT, LOGDEBUG, LOGINFO
from qpsmtpd_py.dns import require_nameservers, resolver_for
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_TIMEOUT = 30.0


def parse_zones(lines):
    """config/rhsbl_zones lines -> [(zone, text or None)]."""
    zones = []
    for line in lines:
        words = line.strip().split(None, 1)
        if words:
            zones.append((words[0].rstrip("."), words[1] if len(words) > 1 else None))
    return zones


class Rhsbl(Plugin):
    def register(self, qp, *args):
        if len(args) == 1:
            self.args = {"reject_type": "disconnect" if args[0].lower() == "disconnect" else "perm"}
        elif len(args) % 2:
            raise PluginError(f"rhsbl takes key value pairs or one word, not `rhsbl {' '.join(args)}`")
        self.args.setdefault("reject", "1")
        self.args.setdefault("reject_type", "perm")
        self.timeout = self.seconds_argument("timeout", DEFAULT_TIMEOUT, non_positive="allow")
        require_nameservers(qp)

    async def hook_mail(self, transaction, sender, *args):
        if self.is_immune():
            return DECLINED
        if sender is None or sender.is_null:
            self.log(LOGINFO, "pass, null sender")
            return DECLINED
        zones = parse_zones(self.qp.config_list("rhsbl_zones"))
        if not zones:
            self.log(LOGINFO, "pass, no zones")
            return DECLINED
        hosts = [("sender", (sender.host or "").lower().rstrip("."))]
        helo = (self.connection.hello_host or "").lower().rstrip(".")
        if helo and not helo.startswith("[") and helo != hosts[0][1]:
            hosts.append(("helo", helo))
        resolver = resolver_for(self.qp)
        lookups = [(kind, host, zone, text, resolver.query(f"{host}.{zone}", "TXT" if text is None else "A",
                                                           timeout=self.timeout))
                   for kind, host in hosts if host for zone, text in zones]
        for kind, host, zone, text, lookup in lookups:
            answer = await lookup
            if answer.rcode not in ("NOERROR", "NXDOMAIN"):
                self.log(LOGCRIT, f"query failed: {host}.{zone}: {answer.rcode}")
                continue
            if not answer.rdata:
                continue
            if text is None:
                reason = b"".join(answer.rdata[0].strings).decode("utf-8", "replace")
            else:
                reason = text or f"{host}.{zone}"
            self.log(LOGDEBUG, f"{host}.{zone} listed: {reason}")
            self.log(LOGINFO, f"fail, {reason}")
            if kind == "sender":
                return self.get_reject(f"Mail from {host} rejected because it {reason}", zone)
            return self.get_reject(f"Mail from HELO {helo} rejected because it {reason}", zone)
        self.log(LOGINFO, "pass")
        return DECLINED
