"""dmarc - DMARC (RFC 7489) check of the From header's domain.

Hooks: data_post_headers (evaluate), data_post (refuse).

Load it after sender_permitted_from and dkim: it reads their results from
the transaction notes they leave:

    dmarc_spf      (sender_permitted_from) a dict: `domain` (the envelope
                   sender's domain), `scope` (`mfrom`), `result` (pass,
                   fail, softfail, ...)
    dkim_results   (dkim) a list of dicts, one per DKIM signature, each with
                   at least `domain` (the d= of the signature) and `result`
                   (pass, fail, permerror, ...)

A missing note counts as no SPF pass, or no DKIM signature.

The From domain: the message must have a From header with addresses of one
domain (RFC 7489 6.6.1; several addresses of one domain are fine). No From
header is refused (`empty from address, null sender?`); addresses of
several domains, or none that can be read, are refused as `unparseable from
header` (both follow `reject`, as in qpsmtpd).

Policy discovery (RFC 7489 6.6.3): the TXT records of `_dmarc.<From
domain>`; when none of them starts with `v=DMARC1`, those of
`_dmarc.<organizational domain>`. The organizational domain is the domain
one label below its public suffix (`mail.example.co.uk` -> `example.co.uk`),
from the Public Suffix List that the `publicsuffixlist` package bundles; no
DNS or network access is needed for it. Several DMARC records at one name
mean no policy. Each lookup waits at most `timeout` seconds and is
asynchronous. A policy found at the organizational domain for a subdomain
applies its `sp` (when given, else `p`).

Evaluation: DMARC passes when SPF passed for an envelope sender domain
aligned with the From domain, or a DKIM signature passed for a domain
aligned with it. Alignment is relaxed (the same organizational domain) or,
with `aspf=s` / `adkim=s` in the record, strict (the same domain). When it
fails, the policy applies: `none` accepts; `quarantine` and `reject` refuse
the message at data_post (`failed DMARC policy`, as qpsmtpd, which has no
quarantine either) and cost karma -3. `pct` (0..100) is the share of failing
messages the policy applies to; those sampled out are accepted (logged
`sampled_out`). Mail::DMARC downgrades a sampled-out `reject` to
`quarantine` instead; with no quarantine store here both mean acceptance.

The result goes into the message's Authentication-Results header:

    dmarc=pass (p=reject) header.from=example.org
    dmarc=fail (p=reject) header.from=example.org
    dmarc=none header.from=example.org           no DMARC record
    dmarc=temperror header.from=example.org      a lookup failed (accepted)

and into the transaction note `dmarc_result`, a dict with `result`,
`disposition` (none, quarantine, reject), `domain` (the From domain),
`policy_domain`, `policy` (the record's tags), `spf_aligned`,
`dkim_aligned`, `reason`.

Reporting (`reporting 1`, the default): for every message evaluated against
a policy that asks for aggregate reports (`rua=`), one line is appended to
a file, by default `dmarc/aggregate.jsonl` under the spool directory (or
the `reporting_file` given). Each line is a JSON object with what an
aggregate report (RFC 7489 appendix C) needs: time, source IP, header_from,
envelope_from, envelope_to, the policy's domain, tags (p, sp, pct, adkim,
aspf, rua), the disposition, the DMARC, DKIM (domain and result of each
signature) and SPF (domain, result) results. Sending the reports is left to
a separate tool reading that file.

Not checked: relay clients (as in qpsmtpd). Whitelisted hosts and senders
are evaluated and noted but never refused.

Arguments (key value pairs):
    reject 0|1|naughty    1 (default): refuse a message failing a policy of
                          quarantine or reject; 0: only note and log;
                          naughty: leave the refusal to the naughty plugin
    reject_type perm|temp|disconnect|...   how to refuse (perm: 550)
    reporting 0|1         record aggregate-report data (default 1)
    reporting_file PATH   where to append it (default
                          <spool_dir>/dmarc/aggregate.jsonl)
    timeout N             seconds per DNS lookup (default 5)
    loglevel N            as for every plugin

Example config/plugins lines:
    sender_permitted_from
    dkim
    dmarc reject 1

Differences from qpsmtpd: qpsmtpd used Mail::DMARC::PurePerl, which sent
aggregate reports from its own database; here only the data is recorded.
Its Authentication-Results entry was `dmarc=<result> (p=<p>) d=<domain>`,
and nothing without a policy; here RFC 7489's `header.from=<domain>` and
`dmarc=none` for no policy. A DNS failure is `temperror` and accepted.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import time
from pathlib import Path

from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN
from qpsmtpd_py.dns import require_nameservers, resolver_for
from qpsmtpd_py.domains import organizational_domain
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_TIMEOUT = 5.0
POLICIES = ("none", "quarantine", "reject")


def aligned(a: str, b: str, mode: str) -> bool:
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


def parse_record(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record, or None when it is not one."""
    parts = [p.strip() for p in text.split(";")]
    if not parts or parts[0].replace(" ", "").lower() != "v=dmarc1":
        return None
    tags = {}
    for part in parts[1:]:
        if "=" not in part:
            continue
        key, value = part.split("=", 1)
        key = key.strip().lower()
        if key not in tags:
            tags[key] = value.strip()
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        if not tags.get("rua"):
            return None  # RFC 7489 6.6.3: an invalid p without rua is no record
        p = "none"
    tags["p"] = p
    sp = tags.get("sp", "").lower()
    tags["sp"] = sp if sp in POLICIES else p
    for key in ("adkim", "aspf"):
        tags[key] = "s" if tags.get(key, "r").lower() == "s" else "r"
    pct = tags.get("pct", "100")
    tags["pct"] = str(min(100, int(pct))) if pct.isdigit() else "100"
    return tags


def from_domains(values: list[str]) -> set[str]:
    return {address.rsplit("@", 1)[1].strip().rstrip(".").lower()
            for _, address in email.utils.getaddresses(values)
            if "@" in address and address.rsplit("@", 1)[1].strip()}


class Dmarc(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"dmarc takes key value pairs (reject, reject_type, reporting, reporting_file, "
                              f"timeout, loglevel), not `dmarc {' '.join(args)}`")
        self.args.setdefault("reject", "1")
        self.args["reject_type"] = self.args.get("reject_type") or "perm"
        self.reporting = self.args.get("reporting", "1") not in ("0", "")
        self.timeout = self.seconds_argument("timeout", DEFAULT_TIMEOUT)
        require_nameservers(qp)
        organizational_domain("example.org")  # load the list once, at start-up
        self.random = random.random

    # -- data_post_headers ---------------------------------------------------------------
    async def hook_data_post_headers(self, transaction):
        if self.connection.relay_client:
            self.log(LOGINFO, "skip, relay client")
            return DECLINED
        header = transaction.header
        values = header.get_all("From") if header is not None else []
        if not values or not any(v.strip() for v in values):
            self.log(LOGINFO, "skip, null sender")
            self.refuse_later(transaction, "empty from address, null sender?")
            return DECLINED
        domains = from_domains(values)
        if len(domains) != 1:
            self.log(LOGERROR, f"unparseable from header: {' '.join(values)}")
            self.refuse_later(transaction, "unparseable from header")
            return DECLINED
        domain = domains.pop()

        found = await self.discover(domain)
        if found is None:
            self.log(LOGINFO, f"fail, DNS error looking up the policy of {domain}")
            self.store_auth_results(f"dmarc=temperror header.from={domain}")
            transaction.notes["dmarc_result"] = {"result": "temperror", "disposition": "none", "domain": domain,
                                                 "reason": "temperror"}
            return DECLINED
        if not found:
            self.log(LOGINFO, "skip, no policy")
            self.store_auth_results(f"dmarc=none header.from={domain}")
            transaction.notes["dmarc_result"] = {"result": "none", "disposition": "none", "domain": domain,
                                                 "reason": "no policy"}
            return DECLINED
        policy_domain, tags = found

        spf = transaction.notes.get("dmarc_spf") or {}
        spf_aligned = (spf.get("result") == "pass" and spf.get("scope", "mfrom") == "mfrom"
                       and aligned(spf.get("domain") or "", domain, tags["aspf"]))
        dkim = transaction.notes.get("dkim_results") or []
        dkim_aligned = any(d.get("result") == "pass" and aligned(d.get("domain") or "", domain, tags["adkim"])
                           for d in dkim)
        p = tags["sp"] if policy_domain != domain else tags["p"]
        reason = ""
        if spf_aligned or dkim_aligned:
            result, disposition = "pass", "none"
        else:
            result, disposition = "fail", p
            pct = int(tags["pct"])
            if disposition != "none" and pct < 100 and self.random() * 100 >= pct:
                disposition, reason = "none", "sampled_out"
        note = {"result": result, "disposition": disposition, "domain": domain, "policy_domain": policy_domain,
                "policy": tags, "spf_aligned": spf_aligned, "dkim_aligned": dkim_aligned, "reason": reason}
        transaction.notes["dmarc_result"] = note
        if self.reporting and tags.get("rua"):
            self.record(transaction, note, spf, dkim)
        elif self.reporting:
            self.log(LOGDEBUG, "has policy, no report URI")
        self.store_auth_results(f"dmarc={result} (p={p}) header.from={domain}")
        if result == "pass":
            self.log(LOGINFO, "pass")
            return DECLINED
        detail = f"{result}, p={p}" + (", tolerated" if disposition == "none" else "") + (
            f", {reason}" if reason else "")
        self.log(LOGINFO, detail)
        if disposition == "none":
            return DECLINED
        if self.is_immune():
            return DECLINED
        self.adjust_karma(-3)
        self.refuse_later(transaction, "failed DMARC policy")
        return DECLINED

    def refuse_later(self, transaction, message):
        """data_post_headers' answer is not a reply: the refusal waits for data_post."""
        refusal = self.get_reject(message)
        if refusal != DECLINED:
            transaction.notes["dmarc_refusal"] = refusal

    # -- data_post -----------------------------------------------------------------------
    def hook_data_post(self, transaction):
        refusal = transaction.notes.pop("dmarc_refusal", None)
        return refusal if refusal is not None else DECLINED

    # -- policy discovery ----------------------------------------------------------------
    async def discover(self, domain):
        """(policy domain, tags); False: no policy; None: a lookup failed."""
        found = await self.lookup(domain)
        if found is None or found:
            return found
        organizational = organizational_domain(domain)
        if organizational == domain:
            return False
        return await self.lookup(organizational)

    async def lookup(self, name):
        answer = await resolver_for(self.qp).query(f"_dmarc.{name}", "TXT", timeout=self.timeout)
        if answer.temporary:
            self.log(LOGDEBUG, f"_dmarc.{name}: {answer.rcode}")
            return None
        records = []
        for rdata in answer.rdata:
            text = b"".join(rdata.strings).decode("utf-8", "replace").strip()
            if text.replace(" ", "").lower().startswith("v=dmarc1"):
                records.append(text)
        if len(records) != 1:
            if records:
                self.log(LOGWARN, f"_dmarc.{name} has {len(records)} DMARC records: no policy")
            return False
        tags = parse_record(records[0])
        if tags is None:
            self.log(LOGINFO, f"_dmarc.{name}: invalid record {records[0]!r}")
            return False
        self.log(LOGDEBUG, f"policy of {name}: {records[0]}")
        return name, tags

    # -- aggregate-report data -----------------------------------------------------------
    def report_path(self):
        configured = self.args.get("reporting_file")
        if configured:
            return Path(configured)
        return Path(self.qp.spool_dir) / "dmarc" / "aggregate.jsonl"

    def record(self, transaction, note, spf, dkim):
        sender = transaction.sender
        recipients = transaction.recipients or []
        tags = note["policy"]
        entry = {
            "time": int(time.time()),
            "source_ip": self.connection.remote_ip,
            "header_from": note["domain"],
            "envelope_from": (getattr(sender, "host", None) or "") if sender is not None else "",
            "envelope_to": (getattr(recipients[0], "host", None) or "").lower() if recipients else "",
            "policy_domain": note["policy_domain"],
            "policy": {k: tags.get(k) for k in ("p", "sp", "pct", "adkim", "aspf", "rua", "ruf", "fo")
                       if tags.get(k) is not None},
            "disposition": note["disposition"],
            "dmarc": note["result"],
            "reason": note["reason"],
            "dkim_aligned": note["dkim_aligned"],
            "spf_aligned": note["spf_aligned"],
            "dkim": [{"domain": d.get("domain"), "selector": d.get("selector"), "result": d.get("result")}
                     for d in dkim],
            "spf": {"domain": spf.get("domain"), "scope": spf.get("scope"), "result": spf.get("result")},
        }
        path = self.report_path()
        line = json.dumps(entry, sort_keys=True) + "\n"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # one write() of a line opened O_APPEND: lines of concurrent children do not interleave
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            self.log(LOGERROR, f"cannot record DMARC report data in {path}: {exc.strerror}")
