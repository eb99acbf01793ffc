r"""helo - check the host name a client gives in HELO or EHLO.

Hooks: helo and ehlo (the checks), data_post (the X-HELO header).

The name given in HELO/EHLO goes through a list of checks chosen by `policy`;
the first check that fails refuses the greeting (and costs the connection one
karma point). Relay clients and whitelisted hosts (`is_immune`) are not
checked. At data_post every message gets an `X-HELO: <name>` header on top
(an X-HELO the client sent is removed first).

Policies and their checks, in the order they run:

lenient (the default)
    is_in_badhelo      the name is in config/badhelo (below):
                       `I do not believe you are <name>.`
    invalid_localhost  the name is `localhost` but the client is not on a
                       loopback address: `You are not localhost`
    is_forged_literal  an address literal (`[192.0.2.1]`,
                       `[IPv6:2001:db8::1]`) that is not the client's address:
                       `Forged IPs not accepted here` (a literal with a private
                       address, e.g. `[192.168.1.5]` from a desktop behind
                       NAT, is let through)
    is_plain_ip        a bare address (`192.0.2.1`, `2001:db8::1`), neither a
                       name nor a literal:
                       `Plain IP is invalid HELO hostname (RFC 2821)`
rfc: the lenient checks, then
    is_not_fqdn        no dot: `HELO name is not fully qualified. Read RFC 2821`;
                       characters other than letters, digits, `-` and `.`:
                       `HELO name contains invalid FQDN characters. Read RFC 1035`
    no_forward_dns     the name has no A or AAAA record:
                       `HELO hostname does not exist` (NXDOMAIN),
                       `HELO hostname did not resolve` (no address)
    no_reverse_dns     the client's address has no PTR record:
                       `no rDNS for <ip>` (NXDOMAIN), `no reverse DNS for <ip>`
strict: the rfc checks, then
    is_address_literal any address literal:
                       `RFC 2821 allows an address literal, but we do not`
    no_matching_dns    neither does an address of the name match the client's
                       address, nor does a PTR name of the client match the
                       name: `That HELO hostname fails FCrDNS`. The match is
                       fuzzy, as in qpsmtpd: addresses match when they share
                       the first three octets (IPv4) or the first 96 bits
                       (IPv6); names when their last two labels are equal
                       (mx0.example.com matches mx1.example.com). A match both
                       ways is worth one karma point.

The forward and reverse lookups set the connection notes
`helo_forward_match` and `helo_reverse_match` (cleared at every HELO/EHLO).
The A, AAAA and PTR questions are asked at the same time; each waits at most
`timeout` seconds. A lookup that fails (timeout, SERVFAIL) is logged at
LOGERROR and the check passes.

config/badhelo, one entry per line: a host name, compared without regard to
case, or a Perl regular expression (any entry holding one of the characters
{ } [ ] ( ) ^ $ | * + ? \ !), searched for in the lower-cased name. An entry
that starts with `!` is negated: the name fails when the rest of the pattern
does NOT match it. A pattern that does not compile is logged and skipped.

    aol.com
    yahoo.com
    ^[^.]+$
    !\.

Arguments (key value pairs):
    policy lenient|rfc|strict   which checks run (default lenient).
    timeout N                   seconds for each DNS lookup (default 5;
                                `dns_timeout` is the same).
    reject 0|1|naughty          1 (default): refuse; 0: only log and lower
                                karma; naughty: note it for the naughty plugin.
    reject_type ...             ignored: qpsmtpd's code always uses
                                `disconnect` (a refused greeting gets 550 and
                                the connection is closed), whatever its manual
                                says; so does this plugin.
    loglevel N                  as for every plugin.

Kept from qpsmtpd: the forced reject_type; a badhelo pattern match gives the
reply `I do not believe you are <name>.` (qpsmtpd's `Your HELO hostname is not
allowed` is only logged: its code never sends it); an empty HELO argument only
costs two karma points; the fuzzy matches of no_matching_dns.

Differences from qpsmtpd:
- is_forged_literal checks address literals; qpsmtpd's version skipped every
  literal and refused every plain IP as "forged" instead, so is_plain_ip
  never ran. Private-address literals are let through (qpsmtpd issue #129);
- IPv6: `[IPv6:...]` literals are literals (also for is_not_fqdn), plain
  IPv6 addresses are plain IPs, no_forward_dns asks for AAAA as well as A,
  addresses are compared in their canonical form and IPv4-mapped client
  addresses as IPv4 (qpsmtpd issues #81 and #82);
- qpsmtpd took any IPv4 address holding `255` for "not an IP";
- a failed PTR lookup passes (qpsmtpd refused with `error getting reverse DNS
  for <ip>` and closed the connection over a DNS outage);
- the match notes are cleared at each HELO/EHLO (qpsmtpd kept those of a
  previous greeting).

Example config/plugins line:
    helo policy rfc reject naughty timeout 3
"""

from __future__ import annotations

import ipaddress
import re

import dns.reversename
from twisted.internet import defer

from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGERROR, LOGINFO, LOGNOTICE
from qpsmtpd_py.dns import require_nameservers, resolver_for
from qpsmtpd_py.perl_regex import perl_regex
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_TIMEOUT = 5.0
POLICIES = {
    "lenient": ("is_in_badhelo", "invalid_localhost", "is_forged_literal", "is_plain_ip"),
    "rfc": ("is_not_fqdn", "no_forward_dns", "no_reverse_dns"),
    "strict": ("is_address_literal", "no_matching_dns"),
}
# Addresses a client behind NAT may name itself by (RFC 1918, CGN, ULA, loopback, link-local).
PRIVATE_NETWORKS = [ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "fc00::/7", "fe80::/10", "::1/128")]
_REGEX_CHARS = re.compile(r"[{}\[\]()^$|*+?\\!]")
_IPV4_LITERAL = re.compile(r"^\[(\d{1,3}\.){3}\d{1,3}\]$")
_FQDN_CHARS = re.compile(r"[^a-zA-Z0-9.-]")


def parse_ip(text):
    """An address (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        address = ipaddress.ip_address((text or "").split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def literal_address(host):
    """The address of an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`), or None."""
    if not (host.startswith("[") and host.endswith("]")):
        return None
    inner = host[1:-1]
    if inner[:5].lower() == "ipv6:":
        address = parse_ip(inner[5:])
        return address if address is not None and ":" in inner[5:] else None
    return parse_ip(inner)  # IPv4, or a bare IPv6 address as some clients send it


def same_network(first, second):
    """qpsmtpd's fuzzy address match: equal, or same /24 (IPv4) or /96 (IPv6)."""
    if first is None or second is None or first.version != second.version:
        return False
    if first == second:
        return True
    bits = 24 if first.version == 4 else 96
    return ipaddress.ip_network(f"{first}/{bits}", strict=False) == \
        ipaddress.ip_network(f"{second}/{bits}", strict=False)


def same_domain(dns_name, helo_name):
    """qpsmtpd's fuzzy name match: equal, or the last two labels equal."""
    dns_name, helo_name = dns_name.lower().rstrip("."), helo_name.lower().rstrip(".")
    labels = dns_name.split(".")
    if not dns_name or len(labels) < 2:
        return False
    return dns_name == helo_name or labels[-2:] == helo_name.split(".")[-2:]


class _Check:
    """One HELO being checked: the name, the client, the DNS lookups once started."""

    def __init__(self, host, remote_ip):
        self.host = host
        self.remote_ip = remote_ip or ""
        self.remote = parse_ip(remote_ip)
        self.lookups = None


class Helo(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"helo takes key value pairs (policy, timeout, reject, loglevel), "
                              f"not `helo {' '.join(args)}`")
        self.args["reject_type"] = "disconnect"  # as qpsmtpd's code does, whatever was given
        self.args.setdefault("reject", "1")
        policy = self.args.get("policy") or "lenient"
        if policy not in POLICIES:
            raise PluginError(f"policy must be lenient, rfc or strict, not {policy!r}")
        self.policy = policy
        self.tests = list(POLICIES["lenient"])
        if policy in ("rfc", "strict"):
            self.tests += POLICIES["rfc"]
        if policy == "strict":
            self.tests += POLICIES["strict"]
        timeout = self.args.get("dns_timeout") or self.args.get("timeout") or DEFAULT_TIMEOUT
        try:
            self.timeout = float(timeout)
        except ValueError:
            raise PluginError(f"timeout must be a number of seconds, not {timeout!r}") from None
        if self.timeout <= 0:
            self.timeout = DEFAULT_TIMEOUT
        if policy != "lenient":
            require_nameservers(qp)
        self._badhelo = ((), [])

    # -- hooks ---------------------------------------------------------------------------
    async def hook_helo(self, transaction, host=None, *args):
        return await self.helo_handler(host)

    async def hook_ehlo(self, transaction, host=None, *args):
        return await self.helo_handler(host)

    def hook_data_post(self, transaction):
        header = transaction.header
        if header is None:
            return DECLINED
        header.delete("X-HELO")
        hello_host = self.connection.hello_host
        if hello_host:
            header.add("X-HELO", hello_host, 0)
        return DECLINED

    async def helo_handler(self, host):
        if not host:
            self.log(LOGINFO, "fail, tolerated, no helo host")
            self.adjust_karma(-2)
            return DECLINED
        if self.is_immune():
            return DECLINED
        notes = self.connection.notes
        notes.pop("helo_forward_match", None)
        notes.pop("helo_reverse_match", None)
        check = _Check(host, self.connection.remote_ip)
        try:
            for test in self.tests:
                failure = getattr(self, test)(check)
                if isinstance(failure, defer.Deferred) or hasattr(failure, "__await__"):
                    failure = await failure
                if failure:
                    self.adjust_karma(-1)
                    return self.get_reject(*failure)
        finally:
            if check.lookups:
                for lookup in check.lookups.values():
                    if not lookup.called:
                        lookup.addErrback(lambda _: None)
                        lookup.cancel()
        self.log(LOGINFO, "pass")
        return DECLINED

    # -- lenient -------------------------------------------------------------------------
    def badhelo_entries(self):
        """config/badhelo -> [(entry, compiled pattern or None, negated)], cached per content."""
        lines = tuple(line.strip() for line in self.qp.config_list("badhelo") if line.strip())
        if lines != self._badhelo[0]:
            entries = []
            for line in lines:
                pattern, negated = None, False
                if _REGEX_CHARS.search(line):
                    negated = line.startswith("!")
                    try:
                        pattern = perl_regex(line[1:] if negated else line)
                    except re.error as exc:
                        self.log(LOGERROR, f"skipping badhelo pattern {line!r}: {exc}")
                        continue
                entries.append((line, pattern, negated))
            self._badhelo = (lines, entries)
        return self._badhelo[1]

    def is_in_badhelo(self, check):
        error = f"I do not believe you are {check.host}."
        host = check.host.lower()
        for line, pattern, negated in self.badhelo_entries():
            if pattern is not None and (pattern.search(host) is None) == negated:
                # qpsmtpd's is_regex_match answers `Your HELO hostname is not allowed`,
                # but its caller replies with its own message: so does this plugin.
                self.log(LOGDEBUG, f"badhelo pattern match ({line})")
                return error, "in badhelo"
            if host == line.lower():
                return error, "in badhelo"
        return None

    def invalid_localhost(self, check):
        if check.remote is not None and check.remote.is_loopback:
            self.log(LOGDEBUG, "pass, is localhost")
            return None
        if check.host.lower() != "localhost":
            self.log(LOGDEBUG, "pass, host is not localhost")
            return None
        return "You are not localhost", "invalid localhost"

    def is_forged_literal(self, check):
        address = literal_address(check.host)
        if address is None:
            return None
        if check.remote is not None and address == check.remote:
            return None
        if any(address in network for network in PRIVATE_NETWORKS):
            self.log(LOGINFO, f"private address literal {check.host} from {check.remote_ip}, tolerated")
            return None
        return "Forged IPs not accepted here", "forged IP literal"

    def is_plain_ip(self, check):
        if parse_ip(check.host) is None:
            return None
        self.log(LOGDEBUG, "fail, plain IP")
        return "Plain IP is invalid HELO hostname (RFC 2821)", "plain IP"

    # -- rfc -----------------------------------------------------------------------------
    def is_not_fqdn(self, check):
        host = check.host
        if _IPV4_LITERAL.match(host) or literal_address(host) is not None:
            return None
        if "." not in host:
            return "HELO name is not fully qualified. Read RFC 2821", "not FQDN"
        if _FQDN_CHARS.search(host):
            return "HELO name contains invalid FQDN characters. Read RFC 1035", "invalid FQDN chars"
        return None

    def start_lookups(self, check):
        """A, AAAA and PTR, all asked at once, the first time a DNS check needs one."""
        if check.lookups is None:
            resolver = resolver_for(self.qp)
            check.lookups = {}
            if literal_address(check.host) is None and parse_ip(check.host) is None:
                check.lookups["A"] = resolver.query(check.host, "A", timeout=self.timeout)
                check.lookups["AAAA"] = resolver.query(check.host, "AAAA", timeout=self.timeout)
            if check.remote is not None:
                name = dns.reversename.from_address(str(check.remote)).to_text()
                check.lookups["PTR"] = resolver.query(name, "PTR", timeout=self.timeout)
        return check.lookups

    async def no_forward_dns(self, check):
        if literal_address(check.host) is not None:
            return None
        lookups = self.start_lookups(check)
        if "A" not in lookups:
            return None
        answers = [await lookups["A"], await lookups["AAAA"]]
        if any(answer.rcode == "NXDOMAIN" for answer in answers):
            return "HELO hostname does not exist", "no such host"
        failed = [answer.rcode for answer in answers if answer.rcode != "NOERROR"]
        addresses = [rd.address for answer in answers if answer.rcode == "NOERROR" for rd in answer.rdata]
        if not addresses and failed:
            self.log(LOGERROR, f"skip, query failed ({', '.join(failed)})")
            return None
        for address in addresses:
            self.check_ip_match(address, check)
            if self.connection.notes.get("helo_forward_match"):
                break
        if addresses:
            self.log(LOGDEBUG, "pass, forward DNS")
            return None
        return "HELO hostname did not resolve", "no forward DNS"

    async def no_reverse_dns(self, check):
        lookups = self.start_lookups(check)
        if "PTR" not in lookups:
            self.log(LOGERROR, f"skip, cannot look up PTR of {check.remote_ip!r}")
            return None
        answer = await lookups["PTR"]
        ip = check.remote_ip
        if answer.rcode == "NXDOMAIN":
            return f"no rDNS for {ip}", "no rDNS"
        if answer.rcode != "NOERROR":
            self.log(LOGERROR, f"skip, PTR query for {ip} failed ({answer.rcode})")
            return None
        names = [rd.target.to_text(omit_final_dot=True) for rd in answer.rdata]
        for name in names:
            self.log(LOGDEBUG, f"PTR: {name}")
            self.check_name_match(name.lower(), check.host.lower())
        if names:
            self.log(LOGDEBUG, "has rDNS")
            return None
        return f"no reverse DNS for {ip}", "no rDNS"

    # -- strict ---------------------------------------------------------------------------
    def is_address_literal(self, check):
        if literal_address(check.host) is None:
            return None
        self.log(LOGDEBUG, "fail, bracketed IP")
        return "RFC 2821 allows an address literal, but we do not", "bracketed IP"

    def no_matching_dns(self, check):
        notes = self.connection.notes
        forward, reverse = notes.get("helo_forward_match"), notes.get("helo_reverse_match")
        if forward and reverse:
            self.log(LOGDEBUG, "forward and reverse match")
            self.adjust_karma(1)
            return None
        if forward or reverse:
            self.log(LOGDEBUG, "name matches IP" if forward else "reverse matches name")
            return None
        self.log(LOGINFO, "fail, no forward or reverse DNS match")
        return "That HELO hostname fails FCrDNS", "no matching DNS"

    # -- the fuzzy matches ------------------------------------------------------------------
    def check_ip_match(self, address, check):
        found, remote = parse_ip(address), check.remote
        if found is None or remote is None:
            return
        if found == remote:
            self.log(LOGDEBUG, "forward ip match")
            self.connection.notes["helo_forward_match"] = 1
        elif same_network(found, remote):
            self.log(LOGNOTICE, "forward network match")
            self.connection.notes["helo_forward_match"] = 1

    def check_name_match(self, dns_name, helo_name):
        if same_domain(dns_name, helo_name):
            exact = dns_name.rstrip(".") == helo_name.rstrip(".")
            self.log(LOGDEBUG if exact else LOGNOTICE, "reverse name match" if exact else "reverse domain match")
            self.connection.notes["helo_reverse_match"] = 1
