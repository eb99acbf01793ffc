"""resolvable_fromhost - the sender's domain must be able to receive mail.

Hook: mail.

The domain of the MAIL FROM address must have an MX record whose host has
an address, or, without any MX (RFC 5321 5.1, the "implicit MX"), an A or
AAAA record of its own; and the address must not be in one of the networks
of `config/invalid_resolvable_fromhost`. All MX hosts are resolved at the
same time (A and AAAA); one usable MX is enough. Each step (the MX lookup,
then the addresses) waits at most `timeout` seconds.

The result is left in the transaction note `resolvable_fromhost`:

    mx          an MX host has a usable address
    a           no MX, but the domain's own A/AAAA address is usable
    ip          the domain is an address literal (`[192.0.2.1]`,
                `[IPv6:2001:db8::1]`); not looked up, karma -1
    whitelist   not checked: relay client, whitelisted host or sender
    null        not checked: the null sender `<>`
    anything else: what went wrong, e.g. `invalid MX for example.com`,
                `example.com has no MX or A`, `unparsable host`,
                `DNS error for example.com: SERVFAIL`

and the domain in the note `resolvable_fromhost_host`. qpsmtpd's manual
also names a result `config` for a failure tolerated by `reject 0`; its code
leaves the failure's text in the note, and so does this plugin.

A domain that cannot receive mail costs karma -1 and is refused with
`FQDN required in the envelope sender (#4.1.8)` (450 by default). When the
DNS fails (SERVFAIL, timeout) the reply is `Temporary address resolution
failure (#4.4.3)`, as in qpsmtpd. The digit after `#` is 5 when the reply
is permanent.

config/invalid_resolvable_fromhost: networks, one per line, `net/bits`
(IPv4 or IPv6) or a single address. An MX host or domain whose addresses
are all in these networks does not count. For example:

    0.0.0.0/8
    10.0.0.0/8
    127.0.0.0/8
    169.254.0.0/16
    224.0.0.0/4
    ::1/128
    fc00::/7

Arguments (key value pairs):
    reject 0|1|naughty    1 (default): refuse; 0: only note, log and lower
                          karma; naughty: let the naughty plugin refuse.
    reject_type           soft (default; 450), perm (550), ...
    timeout N             new in qpsmtpd-py: seconds per DNS step
                          (default 30, qpsmtpd's resolver timeout).
    loglevel N            as for every plugin.

Differences from qpsmtpd: IPv6 networks in invalid_resolvable_fromhost and
IPv6 address literals; a network whose address has host bits set
(`10.1.2.3/8`) and a single address count (qpsmtpd ignored both), and the
file is read again when it changes (qpsmtpd kept removed lines until a
restart); a domain whose only addresses are invalid fails (qpsmtpd passed
it with the note `a`); every address of an MX host is considered, not only
the first; a domain that does not exist is refused with the failure text
(qpsmtpd gave the temporary DNS text); a failure costs one karma point
(qpsmtpd took up to two, and one from domains without MX that pass by their
A record); a temporary DNS error costs none; `reject naughty` works (qpsmtpd
refused at once); the null MX (RFC 7505) is reported as such.

Example config/plugins line:
    resolvable_fromhost reject 1 reject_type soft
"""

import ipaddress

from twisted.internet import defer

from qpsmtpd_py.constants import DECLINED, DENYSOFT, DENYSOFT_DISCONNECT, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN
from qpsmtpd_py.dns import require_nameservers, resolver_for
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_TIMEOUT = 30.0


class TemporaryError(Exception):
    """The DNS did not answer well enough to decide."""


def parse_networks(lines):
    """config/invalid_resolvable_fromhost lines -> (networks, bad lines)."""
    networks, errors = [], []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text.split()[0], strict=False))
        except ValueError:
            errors.append(text)
    return networks, errors


def address_literal(host):
    """`[192.0.2.1]` / `[IPv6:2001:db8::1]` -> the address, else None."""
    if not (host.startswith("[") and host.endswith("]")):
        return None
    text = host[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class ResolvableFromhost(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"resolvable_fromhost takes key value pairs (reject, reject_type, timeout, "
                              f"loglevel), not `resolvable_fromhost {' '.join(args)}`")
        self.args.setdefault("reject", "1")
        self.args.setdefault("reject_type", "soft")
        self.timeout = self.seconds_argument("timeout", DEFAULT_TIMEOUT, non_positive="error")
        require_nameservers(qp)
        self._networks = ((), [])

    def invalid_networks(self):
        lines = tuple(self.qp.config_list("invalid_resolvable_fromhost"))
        if lines != self._networks[0]:
            networks, errors = parse_networks(lines)
            for error in errors:
                self.log(LOGERROR, f"ignoring a line of invalid_resolvable_fromhost: {error!r}")
            self._networks = (lines, networks)
        return self._networks[1]

    def is_valid(self, address, networks):
        ip = ipaddress.ip_address(address)
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return not any(ip.version == net.version and ip in net for net in networks)

    # -- the hook ----------------------------------------------------------------------
    async def hook_mail(self, transaction, sender, *args):
        notes = transaction.notes
        if self.is_immune():
            notes["resolvable_fromhost"] = "whitelist"
            return DECLINED
        if sender is None or sender.is_null:
            notes["resolvable_fromhost"] = "null"
            self.log(LOGINFO, "pass, null sender")
            return DECLINED
        host = (sender.host or "").rstrip(".")
        if not host:
            return self.fail(notes, "unparsable host")
        notes["resolvable_fromhost_host"] = host
        if host.startswith("["):
            if address_literal(host) is None:
                return self.fail(notes, f"invalid address literal {host}")
            self.log(LOGINFO, f"skip, {host} is an IP")
            notes["resolvable_fromhost"] = "ip"
            self.adjust_karma(-1)
            return DECLINED
        try:
            result, detail = await self.check_dns(host, self.invalid_networks())
        except TemporaryError as exc:
            notes["resolvable_fromhost"] = f"DNS error for {host}: {exc}"
            self.log(LOGWARN, f"query for {host} failed: {exc}")
            return self.get_reject(self.dsn("Temporary address resolution failure", 4, 3),
                                   f"{host} ({exc})")
        if result in ("mx", "a"):
            notes["resolvable_fromhost"] = result
            self.log(LOGINFO, f"pass, {detail}")
            return DECLINED
        return self.fail(notes, detail)

    def fail(self, notes, reason):
        notes["resolvable_fromhost"] = reason
        self.adjust_karma(-1)
        return self.get_reject(self.dsn("FQDN required in the envelope sender", 1, 8), reason)

    def dsn(self, text, subject, detail):
        temporary = self.get_reject_type(DENYSOFT) in (DENYSOFT, DENYSOFT_DISCONNECT)
        return f"{text} (#{4 if temporary else 5}.{subject}.{detail})"

    async def check_dns(self, host, networks):
        """("mx"|"a", log text) or ("fail", reason); TemporaryError when the DNS failed."""
        resolver = resolver_for(self.qp)
        answer = await resolver.query(host, "MX", timeout=self.timeout)
        if answer.temporary:
            raise TemporaryError(f"MX {answer.rcode}")
        exchanges = sorted((rd.preference, rd.exchange.to_text(omit_final_dot=True)) for rd in answer.rdata)
        if answer.rcode == "NXDOMAIN":
            return "fail", f"{host} does not exist"
        if exchanges:
            return await self.check_mx(host, exchanges, networks)
        self.log(LOGDEBUG, f"{host} has no MX")
        lookups = [resolver.query(host, rdtype, timeout=self.timeout) for rdtype in ("A", "AAAA")]
        answers = await defer.gatherResults(lookups)
        addresses = [rd.address for a in answers if not a.temporary for rd in a.rdata]
        valid = [address for address in addresses if self.is_valid(address, networks)]
        if valid:
            return "a", f"found A for {host}"
        if addresses:
            return "fail", f"invalid A for {host}"
        failed = [a for a in answers if a.temporary]
        if failed:
            raise TemporaryError(f"{failed[0].rdtype} {failed[0].rcode}")
        return "fail", f"{host} has no MX or A"

    async def check_mx(self, host, exchanges, networks):
        if len(exchanges) == 1 and exchanges[0][1] in ("", "."):
            return "fail", f"{host} has a null MX (accepts no mail)"
        resolver = resolver_for(self.qp)
        lookups = []
        for _, exchange in exchanges:
            literal = _ip_or_none(exchange)
            if literal is not None:  # an address in an MX (wrong, but seen)
                lookups.append((exchange, [literal], []))
                continue
            lookups.append((exchange, None, [resolver.query(exchange, rdtype, timeout=self.timeout)
                                             for rdtype in ("A", "AAAA")]))
        temporary = None
        for exchange, literal, pending in lookups:
            if literal is not None:
                addresses = literal
            else:
                answers = await defer.gatherResults(pending)
                addresses = [rd.address for a in answers if not a.temporary for rd in a.rdata]
                temporary = temporary or next((f"{a.rdtype} of {exchange} {a.rcode}" for a in answers
                                               if a.temporary), None)
            if any(self.is_valid(address, networks) for address in addresses):
                return "mx", f"{host} has MX at {exchange}"
            self.log(LOGDEBUG, f"MX {exchange} of {host}: no usable address ({', '.join(addresses) or 'none'})")
        if temporary:
            raise TemporaryError(temporary)
        return "fail", f"invalid MX for {host}"


def _ip_or_none(text):
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
