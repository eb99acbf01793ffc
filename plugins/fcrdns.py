"""fcrdns - forward-confirmed reverse DNS (FCrDNS, RFC 8601 "iprev") of the client.

Hook: connect.

The client's address is looked up as a PTR record (IPv4 in in-addr.arpa,
IPv6 in ip6.arpa); then the A and AAAA records of every name found (at most
10) are looked up, all at the same time. The client passes when one of
those addresses is its own. As in qpsmtpd, an address in the same network
also passes (same first three octets for IPv4; for IPv6, new here, the same
/64), so an organisation's pool of servers whose names and addresses do not
correspond one to one is not penalised; the log says `forward network
match`.

Each step waits at most `timeout` seconds. The outcome goes into the
Authentication-Results header of every message of the connection, and into
the connection note `fcrdns`:

    iprev=pass        a forward address matched (karma +1 when exactly)
    iprev=fail        PTR names were found, but none leads back to the
                      address (or none is a valid host name); karma -1
    iprev=permerror   no PTR record (NXDOMAIN or an empty answer); karma -1
    iprev=temperror   a lookup failed (SERVFAIL, timeout) before an answer
                      was certain

When the address is confirmed exactly, the confirmed name becomes the
connection's remote host: `connection.remote_host` and `remote_info` (which
the Received header, the `Hi` of the EHLO reply and the logs show), as
qpsmtpd's front ends did with the name of a PTR lookup. qpsmtpd-py does no
PTR lookup of its own, so without this plugin the remote host stays
`[<ip>]`; with it, only a name whose forward records confirm it is used (a
name already given, e.g. by a front end, is kept if it is among the
confirmed names).

A client on a loopback address gets karma +1 (`pass, is localhost`) and is
checked like any other, but never refused. A client on another address
whose remote host is already `localhost` fails at once (karma -1), as in
qpsmtpd. Relay clients and whitelisted hosts are not checked.

Arguments (key value pairs):
    timeout N             seconds per step (PTR, then the forward lookups);
                          default 5.
    reject 0|1|naughty    0 (default): only note, log and adjust karma;
                          1: refuse a client whose result is fail or
                          permerror; naughty: let the naughty plugin refuse
                          it later. qpsmtpd's manual says the default is 1;
                          its code says 0, and so does this plugin.
    reject_type           ignored: the refusal is always temporary (450), as
                          qpsmtpd's code forces (its manual says disconnect).
    loglevel N            as for every plugin.

Differences from qpsmtpd: qpsmtpd's plugin never refused anyone (its
`reject` was read but unused); it checked the front end's unconfirmed PTR
name, and the DNS checks were skipped when that name was missing; it asked
for A records only; a name with addresses that did not match was logged as
a pass; a timeout was `fail`; and several iprev results could be added for
one connection. Here there is exactly one result, from A and AAAA lookups,
and a failure is a failure.

Example config/plugins line:
    fcrdns timeout 5 reject 0
"""

import ipaddress
import re

from twisted.internet import defer

from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGINFO, LOGNOTICE, LOGWARN
from qpsmtpd_py.dns import require_nameservers, resolver_for, reverse_name
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_TIMEOUT = 5.0
MAX_NAMES = 10
_HOSTNAME = re.compile(r"^[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$")


def is_loopback(ip):
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def same_network(a, b):
    """qpsmtpd's fuzzy match: same /24 (IPv4) or, new here, same /64 (IPv6)."""
    if a.version != b.version:
        return False
    prefix = 24 if a.version == 4 else 64
    return ipaddress.ip_network(f"{a}/{prefix}", strict=False) == ipaddress.ip_network(f"{b}/{prefix}",
                                                                                         strict=False)


class Fcrdns(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"fcrdns takes key value pairs (timeout, reject, loglevel), "
                              f"not `fcrdns {' '.join(args)}`")
        self.args["reject_type"] = "temp"  # qpsmtpd's code forces it
        self.args.setdefault("reject", "0")
        self.timeout = self.seconds_argument("timeout", DEFAULT_TIMEOUT)
        require_nameservers(qp)

    async def hook_connect(self, transaction):
        if self.is_immune():
            return DECLINED
        connection = self.connection
        ip = connection.remote_ip
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            self.log(LOGWARN, f"skip, not an IP address: {ip}")
            return DECLINED
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
            ip = str(address)
        loopback = is_loopback(ip)
        if loopback:
            self.adjust_karma(1)
            self.log(LOGINFO, "pass, is localhost")
        elif (connection.remote_host or "").lower() == "localhost":
            self.adjust_karma(-1)
            self.log(LOGINFO, "fail, not localhost")
            connection.notes["fcrdns"] = "fail"
            return self.refuse(ip, "fail")

        result, name = await self.check(ip, address)
        connection.notes["fcrdns"] = result
        self.store_auth_results(f"iprev={result}")
        if result == "pass":
            if name is not None:
                self.set_remote_host(name)
            return DECLINED
        if result in ("fail", "permerror"):
            self.adjust_karma(-1)
            if not loopback:
                return self.refuse(ip, result)
        return DECLINED

    def refuse(self, ip, result):
        return self.get_reject(f"Your address {ip} has no forward-confirmed reverse DNS", f"iprev={result}")

    async def check(self, ip, address):
        """(iprev result, the exactly confirmed name or None)."""
        resolver = resolver_for(self.qp)
        answer = await resolver.query(reverse_name(ip, "ip6.arpa" if address.version == 6 else "in-addr.arpa"),
                                      "PTR", timeout=self.timeout)
        if answer.temporary:
            self.log(LOGINFO, f"fail, error getting rDNS: {answer.rcode}")
            return "temperror", None
        names = []
        for rdata in answer.rdata:
            name = rdata.target.to_text(omit_final_dot=True)
            if name.lower() not in (n.lower() for n in names):
                names.append(name)
        if not names:
            self.log(LOGINFO, f"fail, no rDNS: {answer.rcode if answer.rcode != 'NOERROR' else 'no PTR records'}")
            return "permerror", None
        self.log(LOGDEBUG, f"PTR: {', '.join(names)}")
        valid = [n for n in names if _HOSTNAME.match(n)]
        if not valid:
            self.log(LOGINFO, f"fail, {'not FQDN' if all('.' not in n for n in names) else 'invalid FQDN chars'}: "
                              f"{', '.join(names)}")
            return "fail", None
        if len(valid) > MAX_NAMES:
            self.log(LOGDEBUG, f"checking the first {MAX_NAMES} of {len(valid)} PTR names")
            valid = valid[:MAX_NAMES]

        lookups = [(name, resolver.query(name, rdtype, timeout=self.timeout))
                   for name in valid for rdtype in ("A", "AAAA")]
        answers = await defer.gatherResults([lookup for _, lookup in lookups])
        temporary, found, network_match = False, False, None
        exact = []
        for (name, _), forward in zip(lookups, answers, strict=True):
            if forward.temporary:
                self.log(LOGDEBUG, f"query for {name}/{forward.rdtype} failed: {forward.rcode}")
                temporary = True
                continue
            for rdata in forward.rdata:
                found = True
                forward_address = ipaddress.ip_address(rdata.address)
                if forward_address == address:
                    if name not in exact:
                        exact.append(name)
                elif network_match is None and same_network(forward_address, address):
                    network_match = (name, rdata.address)
        if exact:
            self.log(LOGDEBUG, "forward ip match")
            self.adjust_karma(1)
            self.log(LOGINFO, f"pass, {exact[0]}")
            current = (self.connection.remote_host or "").lower()
            return "pass", next((n for n in exact if n.lower() == current), exact[0])
        if network_match is not None:
            self.log(LOGNOTICE, f"forward network match: {network_match[0]} has {network_match[1]}")
            self.log(LOGINFO, f"pass, network match {network_match[0]}")
            return "pass", None
        if temporary:
            self.log(LOGINFO, "fail, error getting forward DNS")
            return "temperror", None
        self.log(LOGINFO, f"fail, {'no PTR host has forward DNS' if not found else 'forward DNS does not match'}")
        return "fail", None

    def set_remote_host(self, name):
        connection = self.connection
        old = connection.remote_host
        if name == old:
            return
        connection.remote_host = name
        info = connection.remote_info or ""
        if info == old or not info:
            connection.remote_info = name
        elif old and info.endswith("@" + old):
            connection.remote_info = info[:-len(old)] + name  # ident user@host
        self.log(LOGDEBUG, f"remote host {old} -> {name}")
