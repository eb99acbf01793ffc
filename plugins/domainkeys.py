"""domainkeys - verify DomainKeys signatures (RFC 4870, historic; superseded by DKIM).

Hooks: data_post_headers (verify), data_post (refuse).

A message with a `DomainKey-Signature` header is checked; an unsigned one
is skipped. The first signature header counts. Its tags:

    a=rsa-sha1    the only algorithm DomainKeys knows
    q=dns         the key is the TXT record `<s>._domainkey.<d>`
    c=simple|nofws   canonicalization (default simple)
    d=, s=        signing domain and selector
    h=a:b:c       the signed headers (default: every header after the
                  signature header)
    b=            the signature (base64)

The key record holds `p=` (the base64 DER public key; empty: the key is
revoked), `k=rsa`, `g=` (granularity: the local part the key may sign for)
and `t=y` (testing). The sender is the address of the Sender header, else
of the From header; the signing domain must be its domain. Canonicalization
(RFC 4870 3.4): `simple` takes the signed header fields as they are,
`nofws` removes every space, tab, CR and LF from them and from each body
line; each line ends in CRLF, the headers are followed by an empty line
when there is a body, and empty lines at the end of the body are left out.

The outcome of a signature is `good`, or `bad` (the signature does not
verify, the signing domain is not the sender's, the key's granularity does
not match), `no key` (no key record), `revoked` (empty p=) or `bad format`
(no d=, s= or b=, an unknown q=, a= or c=). When it is not good, the
sender domain's policy record `_domainkey.<sender domain>` TXT is asked:

    no policy record      non-participant
    t=y (testing)         testing
    o=~ (signs some)      no signature
    o=- (signs all)       failure: refused

as qpsmtpd reports it. The result goes into the message's
Authentication-Results as `domainkey=<result>`, with the signature's
outcome as a comment when that is not good (`domainkey=non-participant (revoked)`,
`domainkey=bad (bad)` for a failure). The transaction note
`domainkey_status` holds the signature's outcome.

A failure is refused (at data_post, as the answer of data_post_headers is
ignored) with `DomainKeys signature validation failed` when `reject` is
set (the default), as `reject_type` says (perm: 5xx; temp: 4xx).

Arguments (key value pairs):
    reject 0|1          1 (default): refuse a failure; 0: only log it
    reject_type perm|temp|...   (perm)
    warn_only 1         deprecated, the same as reject 0
    timeout N           seconds for each DNS lookup (default 5)
    loglevel N          as for every plugin

Mail from relay clients and whitelisted hosts or senders is not checked.

Example config/plugins line:
    domainkeys reject 0
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from email.utils import getaddresses

from dkim.crypto import RSASSA_PKCS1_v1_5_verify, UnparsableKeyError, parse_public_key

from qpsmtpd_py.constants import DECLINED, LOGERROR, LOGINFO, LOGNOTICE, LOGWARN
from qpsmtpd_py.dns import DNSTemporaryFailure, require_nameservers, resolver_for
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_TIMEOUT = 5.0
FAILURE_MESSAGE = "DomainKeys signature validation failed"
_DOMAIN = re.compile(r"^[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$")
_SELECTOR = re.compile(r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$")
_FWS = re.compile(rb"[ \t\r\n]")


# -- parsing ------------------------------------------------------------------------------

def split_fields(header: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, raw field with its continuation lines, LF line ends removed per line)."""
    fields: list[tuple[str, list[bytes]]] = []
    for line in header.replace(b"\r\n", b"\n").split(b"\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1].append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        fields.append((name, [line]))
    return [(name, b"\r\n".join(lines)) for name, lines in fields]


def tags(text: str) -> dict[str, str]:
    """The tag=value list of a signature or key record; later tags do not override."""
    found: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if sep and name and name not in found:
            found[name] = value.strip()
    return found


def canonical(fields: list[tuple[str, bytes]], body: bytes, method: str, wanted: set[str] | None) -> bytes:
    """The text signed: the signed header fields, an empty line, the body (RFC 4870 3.4)."""
    out = []
    for name, raw in fields:
        if wanted is not None and name not in wanted:
            continue
        out.append((_FWS.sub(b"", raw) if method == "nofws" else raw) + b"\r\n")
    lines = body.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the text after the last line end
    if lines:
        out.append(b"\r\n")
    if method == "nofws":
        lines = [_FWS.sub(b"", line) for line in lines]
    while lines and lines[-1] in (b"", b"\r"):
        lines.pop()
    out.extend(line.rstrip(b"\r") + b"\r\n" for line in lines)
    return b"".join(out)


def sender_address(header) -> str | None:
    for name in ("Sender", "From"):
        value = header.get(name)
        if value:
            addresses = [a for _, a in getaddresses([value]) if "@" in a]
            return addresses[0] if addresses else None
    return None


class Signature:
    def __init__(self, value: str) -> None:
        found = tags(re.sub(r"\s+", " ", value))
        self.algorithm = found.get("a", "rsa-sha1").lower()
        self.query = found.get("q", "dns").lower()
        self.method = found.get("c", "simple").lower()
        self.domain = found.get("d", "").lower().rstrip(".")
        self.selector = found.get("s", "")
        self.headers = found.get("h")
        self.b = re.sub(r"\s+", "", found.get("b", ""))

    def problem(self) -> str | None:
        if self.algorithm != "rsa-sha1":
            return f"unknown algorithm {self.algorithm}"
        if self.query != "dns":
            return f"unknown query method {self.query}"
        if self.method not in ("simple", "nofws"):
            return f"unknown canonicalization {self.method}"
        if not _DOMAIN.match(self.domain) or not _SELECTOR.match(self.selector):
            return "missing or malformed d= or s="
        if not self.b:
            return "no signature data"
        return None

    def wanted(self) -> set[str] | None:
        if not self.headers:
            return None
        return {h.strip().lower() for h in self.headers.split(":") if h.strip()}


def verify_rsa_sha1(text: bytes, signature_b64: str, key_b64: str) -> bool:
    try:
        key = parse_public_key(base64.b64decode(key_b64, validate=True))
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError, UnparsableKeyError):
        return False
    try:
        return bool(RSASSA_PKCS1_v1_5_verify(hashlib.sha1(text), signature, key))
    except Exception:  # a signature longer than the key, a malformed key...
        return False


# -- the plugin ---------------------------------------------------------------------------

class Domainkeys(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"domainkeys takes key value pairs (reject, reject_type, warn_only), "
                              f"not `domainkeys {' '.join(args)}`")
        self.args.setdefault("reject", "1")
        if not self.args.get("reject_type"):
            self.args["reject_type"] = "perm"
        if self.args.get("warn_only") not in (None, "", "0"):
            self.log(LOGNOTICE, "warn_only is deprecated. Use reject instead")
            self.args["reject"] = "0"
        self.timeout = self.seconds_argument("timeout", DEFAULT_TIMEOUT)
        require_nameservers(qp)

    def hook_data_post(self, transaction):
        refusal = transaction.notes.pop("domainkeys_refusal", None)
        return refusal if refusal is not None else DECLINED

    async def hook_data_post_headers(self, transaction):
        if transaction.header is None or self.is_immune():
            return DECLINED
        value = transaction.header.get("DomainKey-Signature")
        if not value:
            self.log(LOGINFO, "skip, unsigned")
            return DECLINED
        sender = sender_address(transaction.header)
        if not sender:
            self.log(LOGINFO, "skip, failed to parse sender domain")
            return DECLINED
        status = await self.verify(transaction, Signature(value), sender)
        transaction.notes["domainkey_status"] = status
        if status == "good":
            self.store_auth_results("domainkey=good")
            self.log(LOGINFO, "pass, good")
            return DECLINED
        result = await self.policy(sender.rsplit("@", 1)[1].lower().rstrip("."))
        if result is not None:
            self.store_auth_results(f"domainkey={result} ({status})")
            self.log(LOGINFO, f"pass, {result} (signature {status})")
            return DECLINED
        self.store_auth_results(f"domainkey=bad ({status})")
        self.log(LOGERROR, f"fail, signature invalid ({status})")
        refusal = self.get_reject(FAILURE_MESSAGE, "signature invalid")
        if refusal != DECLINED:
            transaction.notes["domainkeys_refusal"] = refusal
        return DECLINED

    async def txt(self, name: str) -> list[str] | None:
        """The TXT records of `name`; None when there are none or the lookup failed."""
        try:
            return list(await resolver_for(self.qp).txt(name, timeout=self.timeout)) or None
        except DNSTemporaryFailure as exc:
            self.log(LOGWARN, f"error looking up {name}: {exc}")
        except Exception as exc:
            self.log(LOGERROR, f"error looking up {name}: {exc}")
        return None

    async def verify(self, transaction, signature: Signature, sender: str) -> str:
        problem = signature.problem()
        if problem:
            self.log(LOGINFO, f"bad format: {problem}")
            return "bad format"
        records = await self.txt(f"{signature.selector}._domainkey.{signature.domain}")
        if not records:
            return "no key"
        key = tags(records[-1])
        data = re.sub(r"\s+", "", key.get("p", ""))
        if not data:
            return "revoked"
        if key.get("k", "rsa").lower() != "rsa":
            self.log(LOGINFO, f"bad, key type {key.get('k')}")
            return "bad"
        local, _, domain = sender.rpartition("@")
        if domain.lower().rstrip(".") != signature.domain:
            self.log(LOGINFO, f"bad, signing domain {signature.domain} is not the sender's ({domain})")
            return "bad"
        if key.get("g") and key["g"] != local:
            self.log(LOGINFO, "bad, granularity does not match the sender")
            return "bad"
        fields = split_fields(transaction.header_bytes())
        first = next(i for i, (name, _) in enumerate(fields) if name == "domainkey-signature")
        text = canonical(fields[first + 1:], transaction.body_bytes(), signature.method, signature.wanted())
        return "good" if verify_rsa_sha1(text, signature.b, data) else "bad"

    async def policy(self, domain: str) -> str | None:
        """What the sender domain's policy makes of an unverified message; None: a failure."""
        records = await self.txt(f"_domainkey.{domain}")
        if not records:
            return "non-participant"
        policy = tags(records[0])
        if policy.get("t", "").lower() == "y":
            return "testing"
        if policy.get("o", "~") == "-":
            return None
        return "no signature"

