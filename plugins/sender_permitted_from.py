"""sender_permitted_from - SPF (RFC 7208) check of the envelope sender.

Hooks: mail, data_post_headers, and data_post when `no_dmarc_policy` is set.

At MAIL, the SPF policy of the sender's domain is evaluated for the client's
address (with pyspf, in a thread of the reactor's pool, as pyspf blocks). The
DNS questions go to the daemon's nameservers (config/dns_servers, else
/etc/resolv.conf), never to another resolver. The whole evaluation has a
budget of `timeout` seconds; a slower DNS gives a temporary error.

The result is kept for the message: at the end of the data, the message
gets a `Received-SPF:` header (pyspf's text) and `spf=<result>
smtp.mailfrom=<domain>` in its Authentication-Results header. Transaction
notes: `spfquery` (the result: `code`, `why`, `header`), `dmarc_spf` (domain,
scope, result, for a DMARC plugin), `spf_pass_host` (the sender's domain,
when it passed). Karma: +1 for pass; -1 for fail and softfail when `reject` is not 0 (as
qpsmtpd).

Not checked: relay clients, whitelisted hosts and senders, authenticated
users, and the null sender (or a sender without a local part or domain).

Arguments (key value pairs):
    reject N        what to refuse at MAIL (default 0: nothing):
                    0 only annotate (header, notes);
                    1 the same (qpsmtpd: annotate only);
                    2 also defer (451) on DNS errors (temperror) and on fail;
                    3 refuse fail (550 "SPF - forgery: ..."), defer softfail;
                    4 also refuse softfail, defer permerror;
                    5 also refuse neutral;
                    6 also refuse none and permerror.
                    Replies are `SPF - <result>: <why>`.
    spf_deny 1|2    qpsmtpd's older argument: 1 is reject 3, 2 is reject 4
                    (it wins over reject).
    no_dmarc_policy N  0 (default) or 1..4: at the end of the data, refuse
                    the message when the domain of its From header publishes
                    no DMARC policy (no `v=DMARC1` TXT record at
                    `_dmarc.<domain>`, nor at `_dmarc.<organizational
                    domain>`, from the Public Suffix List as in the dmarc
                    plugin: `mail.example.co.uk` -> `example.co.uk`) and
                    SPF gave fail (1), also softfail (2), also neutral (3),
                    also none or permerror (4). Meant for `reject 1` or
                    `reject 2` with a dmarc plugin after this one: mail of
                    domains with a DMARC policy is left to it. A DNS error in
                    the DMARC lookup refuses nothing.
    timeout N       seconds for the whole SPF evaluation (default 20, the
                    time RFC 7208 recommends at least).
    loglevel N      as for every plugin.

Without `reject` or `spf_deny`, the level is read from config/spfbehavior
(one number), as qpsmtpd does.

Example config/plugins line:
    sender_permitted_from reject 3

Differences from qpsmtpd: its results came from Mail::SPF, whose texts
(the `<why>` of replies, the Received-SPF header) differ from pyspf's; here
<why> is pyspf's comment (e.g. "domain of example.org does not designate
192.0.2.1 as permitted sender"). qpsmtpd's no_dmarc_policy needed its dmarc
plugin's result; here the plugin looks for the DMARC record itself.
"""

from __future__ import annotations

import email.utils
import os
import re
import threading
from dataclasses import dataclass

import dns.exception
import dns.nameserver
import dns.resolver
import spf
from twisted.internet import defer, threads

from qpsmtpd_py.constants import DECLINED, DENY, DENYSOFT, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN
from qpsmtpd_py.dns import nameservers_for, require_nameservers, resolver_for
from qpsmtpd_py.domains import organizational_domain
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_TIMEOUT = 20.0
_local = threading.local()  # the resolver of the SPF check running in this thread
_resolvers: dict = {}  # (pid, nameservers) -> dns.resolver.Resolver
_resolvers_lock = threading.Lock()
_original_lookup = spf.DNSLookup


def _lookup(name, qtype, strict=True, timeout=30):
    """pyspf's DNS lookup, sent to the resolver of the check running in this thread.

    pyspf would use dnspython's process-wide default resolver; threads of
    other checks (or other code) keep theirs, as the resolver is per thread.
    """
    resolver = getattr(_local, "resolver", None)
    if resolver is None:
        return _original_lookup(name, qtype, strict, timeout)
    found = []
    try:
        answers = resolver.resolve(name, qtype, lifetime=timeout, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return found
    except dns.exception.DNSException as exc:  # SERVFAIL (NoNameservers), timeout, ...
        raise spf.TempError(f"DNS {exc}") from None
    for rdata in answers:
        if qtype in ("A", "AAAA"):
            found.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            found.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            found.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            found.append(((name, qtype), rdata.strings))
    return found


spf.DNSLookup = _lookup


def thread_resolver(nameservers):
    """A dnspython resolver of this process for these nameservers (made once)."""
    key = (os.getpid(), tuple(nameservers))
    with _resolvers_lock:
        resolver = _resolvers.get(key)
        if resolver is None:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
            resolver.timeout = 2.0
            # dnspython's LRU cache is thread-safe: SPF records are asked once per TTL, not per message.
            resolver.cache = dns.resolver.LRUCache(10000)
            _resolvers[key] = resolver
    return resolver


@dataclass
class SPFResult:
    code: str  # pass fail softfail neutral none permerror temperror
    why: str
    header: str  # the value of the Received-SPF header
    explanation: str  # pyspf's explanation (the SMTP text it suggests)


def evaluate(nameservers, ip, sender, helo, receiver, timeout):
    """Run in a worker thread: pyspf's check, its DNS sent to `nameservers`."""
    _local.resolver = thread_resolver(nameservers)
    try:
        query = spf.query(i=ip, s=sender, h=helo, receiver=receiver, timeout=timeout, querytime=timeout)
        code, _smtp_code, explanation = query.check()
        why = query.get_header_comment(code)
        if code == "temperror" and getattr(query, "prob", None):
            why = f"{why}: {query.prob}"
        return SPFResult(code, why, query.get_header(code, receiver=receiver), explanation)
    finally:
        _local.resolver = None


class SenderPermittedFrom(Plugin):
    reject_values = re.compile(r"^[0-6]$")
    reject_help = "0 to 6"

    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"sender_permitted_from takes key value pairs (reject, spf_deny, no_dmarc_policy, "
                              f"timeout, loglevel), not `sender_permitted_from {' '.join(args)}`")
        reject = self.args.get("reject")
        spf_deny = self.args.get("spf_deny")
        if spf_deny not in (None, "0", "1", "2"):
            raise PluginError(f"spf_deny must be 0, 1 or 2, not {spf_deny!r}")
        if spf_deny in ("1", "2"):
            reject = "3" if spf_deny == "1" else "4"
        if not reject or reject == "0":
            behavior = (qp.config("spfbehavior") or "").strip()
            if behavior:
                if behavior not in "0123456" or len(behavior) != 1:
                    raise PluginError(f"config/spfbehavior must be 0 to 6, not {behavior!r}")
                reject = behavior
        self.reject = int(reject or 0)
        no_dmarc = self.args.get("no_dmarc_policy") or "0"
        if no_dmarc not in ("0", "1", "2", "3", "4"):
            raise PluginError(f"no_dmarc_policy must be 0 to 4, not {no_dmarc!r}")
        self.no_dmarc_policy = int(no_dmarc)
        self.timeout = self.seconds_argument("timeout", DEFAULT_TIMEOUT)
        require_nameservers(qp)
        self.register_hook("mail", "evaluate_spf")
        self.register_hook("data_post_headers", "add_spf_header")
        if self.no_dmarc_policy > 0:
            organizational_domain("example.org")  # load the list once, at start-up
            self.register_hook("data_post", "check_no_dmarc_policy")

    def _reactor(self):
        reactor = getattr(self.qp.runner, "clock", None)
        if reactor is None or not hasattr(reactor, "getThreadPool"):
            from twisted.internet import reactor
        return reactor

    def skipped(self):
        if self.is_immune():
            return True
        if self.connection.notes.get("auth_user"):
            self.log(LOGINFO, "skip, authenticated user")
            return True
        return False

    # -- MAIL ----------------------------------------------------------------------------
    async def evaluate_spf(self, transaction, sender, *args):
        notes = transaction.notes
        host = (sender.host or "") if sender is not None else ""
        if self.skipped():
            notes["dmarc_spf"] = {"domain": host, "scope": "mfrom", "result": "pass"}
            return DECLINED
        if sender is None or sender.is_null or not sender.host or not sender.user:
            self.log(LOGINFO, "skip, null sender")
            notes["dmarc_spf"] = {"scope": "helo", "result": "none"}
            return DECLINED, "SPF - null sender"

        mail_from = f"{sender.user}@{host.lower()}"
        helo = self.connection.hello_host or ""
        notes["dmarc_spf"] = {"domain": host, "scope": "mfrom", "result": "none"}
        reactor = self._reactor()
        work = threads.deferToThreadPool(reactor, reactor.getThreadPool(), evaluate, nameservers_for(self.qp),
                                         self.connection.remote_ip, mail_from, helo, self.qp.config("me") or "",
                                         self.timeout)
        work.addTimeout(self.timeout + 2, reactor)  # pyspf keeps to its budget; this is a guard
        try:
            result = await work
        except defer.TimeoutError:
            self.log(LOGWARN, f"SPF check of {mail_from} did not end in time")
            result = None
        except Exception as exc:  # pyspf's own errors: the check has no result
            self.log(LOGERROR, f"SPF check of {mail_from} failed: {exc!r}")
            result = None
        if result is None:
            self.log(LOGINFO, "fail, no response")
            if self.reject >= 2:
                return DENYSOFT, "SPF - no response"
            return DECLINED, "SPF - no response"

        notes["spfquery"] = result
        notes["dmarc_spf"] = {"domain": host, "scope": "mfrom", "result": result.code}
        return self.judge(transaction, result, host, mail_from)

    def judge(self, transaction, result, host, mail_from):
        code, why, reject = result.code, result.why, self.reject
        message = f"SPF - {code}: {why}"
        if code == "pass":
            self.adjust_karma(1)
            transaction.notes["spf_pass_host"] = host.lower()
            self.log(LOGINFO, f"pass, {why}")
            return DECLINED
        if not reject:
            self.log(LOGINFO, f"skip, tolerated ({code}: {why})")
            return DECLINED, message
        if code in ("fail", "softfail"):
            self.adjust_karma(-1)  # as qpsmtpd: only when some reject level is set
        if code == "none":
            if reject >= 6:
                self.log(LOGINFO, f"fail, none, {why}")
                return DENY, message
            self.log(LOGINFO, f"skip, tolerated, none, {why}")
            return DECLINED
        if code == "fail":
            if reject >= 3:
                self.log(LOGINFO, f"fail, {why}")
                return DENY, f"SPF - forgery: {why}"
            if reject >= 2:
                self.log(LOGINFO, f"fail, {why}")
                return DENYSOFT, f"SPF - fail: {why}"
            self.log(LOGINFO, f"fail, tolerated, {why}")
            return DECLINED
        if code == "softfail":
            if reject >= 3:
                self.log(LOGINFO, f"fail, soft, {why}")
                return (DENY if reject >= 4 else DENYSOFT), f"SPF - fail: {why}"
            self.log(LOGINFO, f"fail, tolerated, soft, {why}")
            return DECLINED
        if code == "neutral":
            if reject >= 5:
                self.log(LOGINFO, f"fail, {code}, {why}")
                return DENY, message
            self.log(LOGINFO, f"fail, tolerated, {code}, {why}")
            return DECLINED
        if code == "permerror":
            if reject > 3:
                self.log(LOGINFO, f"fail, {code}, {why}")
                return (DENY if reject >= 6 else DENYSOFT), message
            self.log(LOGINFO, f"fail, tolerated, {code}, {why}")
            return DECLINED
        if code == "temperror":
            self.log(LOGINFO, f"fail, {code}, {why}")
            if reject >= 2:
                return DENYSOFT, message
            self.log(LOGINFO, f"fail, tolerated, {code}, {why}")
            return DECLINED
        self.log(LOGINFO, f"SPF from {mail_from} was {code}: {why}")
        return DECLINED

    # -- end of data ---------------------------------------------------------------------
    def add_spf_header(self, transaction):
        result = transaction.notes.get("spfquery")
        if result is None:
            return DECLINED
        if self.skipped():
            return DECLINED
        self.log(LOGDEBUG, f"result was {result.code}")
        if transaction.header is None:
            self.log(LOGERROR, "missing headers!")
            return DECLINED
        transaction.header.add("Received-SPF", result.header, 0)
        domain = transaction.notes.get("dmarc_spf", {}).get("domain", "")
        self.store_auth_results(f"spf={result.code} smtp.mailfrom={domain}")
        return DECLINED

    async def check_no_dmarc_policy(self, transaction):
        if self.skipped():
            return DECLINED
        result = transaction.notes.get("spfquery")
        if result is None:
            self.log(LOGINFO, "pass")
            return DECLINED
        domain = self.from_domain(transaction)
        if domain is None:
            self.log(LOGINFO, "skip, no From domain for DMARC")
            return DECLINED
        policy = await self.has_dmarc_policy(domain)
        if policy is not False:  # a policy, or the lookup failed
            self.log(LOGINFO, f"skip, {domain} has a DMARC policy" if policy
                     else f"skip, DMARC lookup of {domain} failed")
            return DECLINED
        code, why, level = result.code, result.why, self.no_dmarc_policy
        if ((code in ("permerror", "none") and level >= 4) or (code == "neutral" and level >= 3)
                or (code == "softfail" and level >= 2) or (code == "fail" and level >= 1)):
            self.log(LOGINFO, f"fail, {code}, {why}")
            return DENY, f"SPF - {code}: {why}"
        self.log(LOGINFO, "pass")
        return DECLINED

    def from_domain(self, transaction):
        header = transaction.header
        values = header.get_all("From") if header is not None else []
        addresses = [address for _, address in email.utils.getaddresses(values) if "@" in address]
        if len(addresses) != 1:
            return None
        domain = addresses[0].rsplit("@", 1)[1].strip().rstrip(".").lower()
        return domain or None

    async def has_dmarc_policy(self, domain):
        """True: a DMARC record; False: none; None: the lookup failed."""
        resolver = resolver_for(self.qp)
        organizational = organizational_domain(domain)
        candidates = [domain] + ([organizational] if organizational != domain else [])
        for name in candidates:
            answer = await resolver.query(f"_dmarc.{name}", "TXT", timeout=min(self.timeout, 5.0))
            if answer.temporary:
                return None
            for rdata in answer.rdata:
                text = b"".join(rdata.strings).decode("ascii", "replace").strip()
                if text.lower().startswith("v=dmarc1"):
                    return True
        return False
