"""dkim - verify the DKIM signatures of inbound mail, sign mail from relay clients.

Hooks: data_post_headers (verify or sign), data_post (refuse).

Verifying (every client that is not a relay client, a whitelisted host or a
whitelisted sender): each DKIM-Signature header of the message is checked,
not only the first. The public keys (`<selector>._domainkey.<domain>` TXT)
are all asked for at the same time, each lookup waiting at most `timeout`
seconds; then dkimpy checks the signatures against the keys fetched. That
takes well under a millisecond for a common message and is done in the
session's process; a message over 256 KiB is hashed in a thread so other
sessions are not held up.

Each signature adds one entry to the message's Authentication-Results
header (RFC 8601), in the order of the signatures:

    dkim=pass header.i=@example.org header.b="AbCdEfGh"
    dkim=fail (signature did not verify) header.i=@example.org ...
    dkim=permerror (no key for signature) header.i=@example.org ...
    dkim=temperror (key lookup failed) header.i=@example.org ...
    dkim=neutral (...)      a signature that cannot be evaluated here
                            (an ed25519 key without PyNaCl installed)
    dkim=none               the message has no DKIM-Signature

`fail` is a signature whose body hash or signature does not match (the
message was altered); `permerror` a signature that can never verify (no
key published, a malformed signature or key, a key under 1024 bits, the
From header not signed); `temperror` a key lookup that failed (SERVFAIL,
timeout). `header.b` (RFC 6008) tells two signatures of one domain apart.

The message's overall result goes into the connection note `dkim_result`
(as in qpsmtpd) and the transaction note of the same name: `pass` when a
signature passes, else `fail`, `temperror`, `permerror`, `neutral` in that
order, or `none`. The transaction note `dkim_results` lists every
signature as a dict (domain, selector, result, comment); the connection
note `dkim_pass_domains` collects the domains of passing signatures (for a
DMARC plugin). A pass gives karma +1; a fail or a permerror without any
pass gives karma -1.

What is refused (`reject 1`, the default as in qpsmtpd): a message with a
failing signature and no passing one (`552 DKIM signature invalid ...` with
`reject_type perm`); a message whose only results are temperror is
deferred (`452 Please try again later ...`), as qpsmtpd meant to. Anything
else is accepted: a missing or broken (permerror) signature is no reason to
refuse mail (RFC 6376 6.1). The refusal is given at data_post, since the
answer of data_post_headers is ignored (in qpsmtpd too, so its `reject` had
no effect).

Signing (relay clients): the domain is the envelope sender's domain (as in
qpsmtpd; for a null sender, the From header's domain). The key is looked
for in `dkim/<domain>/` in the configuration directories, then in the
directories of its parent domains (`dkim/example.org/` signs for
`host.example.org`, with d=example.org); a directory that is a symbolic link
signs with the domain it points to (`dkim/client.com -> example.org` signs
with d=example.org). The directory holds:

    selector    the selector (first line), e.g. may2013
    private     the private key: an RSA key in PEM (PKCS#1 `BEGIN RSA
                PRIVATE KEY` or PKCS#8 `BEGIN PRIVATE KEY`, as `openssl
                genrsa` writes), signed as rsa-sha256; or the base64 of a
                32-byte ed25519 seed, signed as ed25519-sha256 (needs
                PyNaCl)

The public key is published as `<selector>._domainkey.<domain> TXT
"v=DKIM1; k=rsa; p=<base64 of the DER public key>"`. The signature uses
relaxed/simple canonicalization (qpsmtpd's `relaxed`), covers the
headers RFC 6376 recommends, and is added on top of the header. Mail from
relay clients is not verified.

Arguments (key value pairs):
    reject 0|1|naughty    1 (default): refuse as above; 0: only record the
                          results; naughty: leave the refusal of a fail to
                          the naughty plugin (temperror is then accepted)
    reject_type perm|temp|disconnect|...   how a fail is refused (perm)
    timeout N             seconds for the key lookups (default 5)
    loglevel N            as for every plugin

Differences from qpsmtpd: every signature is checked and reported (Mail::DKIM
reported one result for the message); results use RFC 8601's words
(`permerror`, not `invalid`); ADSP policies (RFC 5617, historic) are not
looked up; no X-DKIM-Authentication header is added; the refusal works.

Example config/plugins line:
    dkim reject 1 timeout 5
"""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value
from twisted.internet import defer, threads

from qpsmtpd_py.constants import DECLINED, DENYSOFT, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN
from qpsmtpd_py.dns import DNSTemporaryFailure, require_nameservers, resolver_for
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_TIMEOUT = 5.0
THREAD_THRESHOLD = 256 * 1024
_DOMAIN = re.compile(r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)+$")
_SELECTOR = re.compile(r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$")
_COMMENT_UNSAFE = re.compile(r"[()\\;\"\r\n]+")
_ORDER = ("pass", "fail", "temperror", "permerror", "neutral")


# -- verifying ----------------------------------------------------------------------------

class Signature:
    """What the plugin needs of one DKIM-Signature header before dkimpy sees it."""

    def __init__(self, value: str) -> None:
        self.domain = self.selector = self.b = ""
        self.error = None
        try:
            tags = parse_tag_value(re.sub(r"\s+", " ", value).encode("utf-8", "surrogateescape"))
        except InvalidTagValueList as exc:
            self.error = f"malformed signature: {exc}"
            return
        self.domain = tags.get(b"d", b"").decode("ascii", "replace").strip().lower().rstrip(".")
        self.selector = tags.get(b"s", b"").decode("ascii", "replace").strip()
        self.b = re.sub(r"\s+", "", tags.get(b"b", b"").decode("ascii", "replace"))[:8]
        if not self.domain or not self.selector:
            self.error = "signature without d= or s="
        elif not _DOMAIN.match(self.domain) or not _SELECTOR.match(self.selector):
            self.error = "malformed d= or s="

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}".lower()


def _quiet_logger() -> logging.Logger:
    """dkimpy logs what went wrong as errors; the plugin reports it itself."""
    logger = logging.Logger("dkim", logging.CRITICAL)  # not registered: nothing reaches the root logger
    logger.addHandler(logging.NullHandler())
    return logger


def verify_all(message: bytes, signatures: list[Signature], keys: dict[str, str | None],
               temporary: set[str]) -> list[tuple[str, str]]:
    """(result, comment) for each signature; pure CPU, safe in a thread."""
    logger = _quiet_logger()
    try:
        verifier = dkim.DKIM(message, logger=logger)
    except dkim.DKIMException as exc:
        return [("permerror", f"message not parsable: {exc}")] * len(signatures)

    def dnsfunc(name, timeout=5):
        text = keys.get(name.decode("ascii", "replace").rstrip(".").lower())
        return None if text is None else text.encode()

    outcomes = []
    for index, signature in enumerate(signatures):
        if signature.error:
            outcomes.append(("permerror", signature.error))
            continue
        name = signature.key_name
        if name in temporary:
            outcomes.append(("temperror", "key lookup failed"))
            continue
        text = keys.get(name)
        if text is None:
            outcomes.append(("permerror", "no key for signature"))
            continue
        try:
            dkim.evaluate_pk(name.encode(), text.encode())
        except dkim.NaClNotFoundError:
            outcomes.append(("neutral", "ed25519 keys not supported here"))
            continue
        except Exception as exc:  # dkimpy raises several kinds for a bad key record
            outcomes.append(("permerror", f"bad key: {exc}"))
            continue
        try:
            passed = verifier.verify(idx=index, dnsfunc=dnsfunc)
        except dkim.NaClNotFoundError:
            outcomes.append(("neutral", "ed25519 keys not supported here"))
            continue
        except dkim.ValidationError as exc:
            if str(exc).startswith("body hash mismatch"):  # dkimpy's words for an altered body
                outcomes.append(("fail", "body hash did not verify"))
            else:
                outcomes.append(("permerror", str(exc)))
            continue
        except dkim.DKIMException as exc:
            outcomes.append(("permerror", str(exc)))
            continue
        outcomes.append(("pass", "") if passed else ("fail", "signature did not verify"))
    return outcomes


def overall(results: list[str]) -> str:
    for result in _ORDER:
        if result in results:
            return result
    return "none"


def auth_result(result: str, comment: str, signature: Signature) -> str:
    text = f"dkim={result}"
    if comment:
        comment = _COMMENT_UNSAFE.sub(" ", comment).strip()
        if len(comment) > 80:
            comment = comment[:77] + "..."
        text += f" ({comment})"
    if signature.domain and _DOMAIN.match(signature.domain):
        text += f" header.i=@{signature.domain}"
    if signature.b and re.match(r"^[A-Za-z0-9+/=]+$", signature.b):
        text += f' header.b="{signature.b}"'  # base64 may hold + / =: quoted (RFC 8601 value)
    return text


# -- signing ------------------------------------------------------------------------------

def _der_item(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER item at `pos`."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    return tag, pos, pos + length


def pkcs1_pem(pem: bytes) -> bytes:
    """An RSA key in PEM as dkimpy reads it (PKCS#1): a PKCS#8 key is unwrapped."""
    if b"BEGIN RSA PRIVATE KEY" in pem:
        return pem
    match = re.search(rb"-----BEGIN PRIVATE KEY-----(.*?)-----END PRIVATE KEY-----", pem, re.DOTALL)
    if match is None:
        raise ValueError("no RSA private key in PEM format found")
    der = base64.b64decode(b"".join(match.group(1).split()))
    try:
        tag, start, _ = _der_item(der, 0)  # PrivateKeyInfo SEQUENCE
        _, _, after_version = _der_item(der, start)
        _, _, after_algorithm = _der_item(der, after_version)
        tag, key_start, key_end = _der_item(der, after_algorithm)  # OCTET STRING: RSAPrivateKey
    except IndexError:
        raise ValueError("malformed PKCS#8 key") from None
    if tag != 0x04:
        raise ValueError("malformed PKCS#8 key")
    body = base64.encodebytes(der[key_start:key_end])
    return b"-----BEGIN RSA PRIVATE KEY-----\n" + body + b"-----END RSA PRIVATE KEY-----\n"


def load_private_key(data: bytes) -> tuple[bytes, bytes]:
    """(key as dkimpy wants it, signature algorithm) from a `private` file's contents."""
    if b"-----BEGIN" in data:
        return pkcs1_pem(data), b"rsa-sha256"
    try:
        seed = base64.b64decode(b"".join(data.split()), validate=True)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise ValueError("neither a PEM RSA key nor the base64 of a 32-byte ed25519 seed")
    return b"".join(data.split()), b"ed25519-sha256"


def sign_message(message: bytes, selector: str, domain: str, key: bytes, algorithm: bytes) -> str:
    """The DKIM-Signature field's value (continuation lines start with a space)."""
    logger = _quiet_logger()
    signer = dkim.DKIM(message, logger=logger, signature_algorithm=algorithm, linesep=b"\n")
    field = signer.sign(selector.encode(), domain.encode(), key, canonicalize=(b"relaxed", b"simple"))
    text = field.decode("ascii").replace("\r\n", "\n").rstrip("\n")
    name, _, value = text.partition(":")
    assert name.lower() == "dkim-signature"
    return value.lstrip(" ")


# -- the plugin ---------------------------------------------------------------------------

class Dkim(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"dkim takes key value pairs (reject, reject_type, timeout), "
                              f"not `dkim {' '.join(args)}`")
        self.args.setdefault("reject", "1")
        if not self.args.get("reject_type"):
            self.args["reject_type"] = "perm"
        self.timeout = self.seconds_argument("timeout", DEFAULT_TIMEOUT)
        require_nameservers(qp)

    def _reactor(self):
        reactor = getattr(self.qp.runner, "clock", None)
        if reactor is None or not hasattr(reactor, "getThreadPool"):
            from twisted.internet import reactor
        return reactor

    def _in_thread_if_big(self, transaction, work):
        """Run `work(message bytes)`: in a thread for a big message, else now."""
        header = transaction.header_bytes()
        if transaction.body_size > THREAD_THRESHOLD:
            body = transaction.body_file()

            def threaded():
                with body:
                    return work(header + b"\n" + body.read())

            self.log(LOGDEBUG, "big message, hashing it in a thread")
            reactor = self._reactor()
            return threads.deferToThreadPool(reactor, reactor.getThreadPool(), threaded)
        return defer.succeed(work(header + b"\n" + transaction.body_bytes()))

    async def hook_data_post_headers(self, transaction):
        if transaction.header is None:
            return DECLINED
        if self.connection.relay_client:
            await self.sign(transaction)
            return DECLINED
        if self.is_immune():
            return DECLINED
        await self.verify(transaction)
        return DECLINED

    def hook_data_post(self, transaction):
        refusal = transaction.notes.pop("dkim_refusal", None)
        return refusal if refusal is not None else DECLINED

    # -- verify ---------------------------------------------------------------------------
    async def verify(self, transaction):
        values = transaction.header.get_all("DKIM-Signature")
        if not values:
            self.record(transaction, [], [])
            self.log(LOGINFO, "none, no DKIM signature")
            return
        signatures = [Signature(v) for v in values]
        keys, temporary = await self.fetch_keys({s.key_name for s in signatures if not s.error})
        outcomes = await self._in_thread_if_big(
            transaction, lambda message: verify_all(message, signatures, keys, temporary))
        self.record(transaction, signatures, outcomes)

    async def fetch_keys(self, names):
        resolver = resolver_for(self.qp)
        names = sorted(names)
        answers = await defer.DeferredList([resolver.txt(name, timeout=self.timeout) for name in names],
                                           consumeErrors=True)
        keys: dict[str, str | None] = {}
        temporary: set[str] = set()
        for name, (ok, value) in zip(names, answers, strict=True):
            if not ok:
                if not value.check(DNSTemporaryFailure):
                    self.log(LOGERROR, f"error looking up {name}: {value.getErrorMessage()}")
                temporary.add(name)
                continue
            records = [r for r in value if "p=" in r]
            keys[name] = (next((r for r in records if r.lstrip().startswith("v=DKIM1")), None)
                          or (records[0] if records else None))
        return keys, temporary

    def record(self, transaction, signatures, outcomes):
        results = [result for result, _ in outcomes]
        summary = overall(results)
        self.connection.notes["dkim_result"] = summary
        transaction.notes["dkim_result"] = summary
        transaction.notes["dkim_results"] = [
            {"domain": s.domain, "selector": s.selector, "result": r, "comment": c}
            for s, (r, c) in zip(signatures, outcomes, strict=True)]
        if not signatures:
            self.store_auth_results("dkim=none")
            return
        passed = []
        for signature, (result, comment) in zip(signatures, outcomes, strict=True):
            self.store_auth_results(auth_result(result, comment, signature))
            detail = f"{result}, d={signature.domain or '?'} s={signature.selector or '?'}"
            self.log(LOGINFO, f"{detail}, {comment}" if comment else detail)
            if result == "pass" and signature.domain not in passed:
                passed.append(signature.domain)
        if passed:
            domains = self.connection.notes.setdefault("dkim_pass_domains", [])
            domains.extend(d for d in passed if d not in domains)
            self.adjust_karma(1)
            return
        if summary in ("fail", "permerror"):
            self.adjust_karma(-1)
        if summary == "fail":
            failed = {s.domain for s, (r, _) in zip(signatures, outcomes, strict=True) if r == "fail"}
            domains = ", ".join(sorted(failed))
            refusal = self.get_reject(f"DKIM signature invalid ({domains})", "signature invalid")
            if refusal != DECLINED:
                transaction.notes["dkim_refusal"] = refusal
        elif summary == "temperror" and self.args.get("reject") not in ("0", "", "naughty"):
            transaction.notes["dkim_refusal"] = (DENYSOFT, "Please try again later - DKIM key lookup failed")

    # -- sign -----------------------------------------------------------------------------
    def signing_domain(self, transaction):
        sender = transaction.sender
        host = getattr(sender, "host", None) if sender is not None else None
        if host:
            return host.lower().rstrip(".")
        from_value = transaction.header.get("From") or ""
        match = re.search(r"@([A-Za-z0-9.-]+)", from_value)
        return match.group(1).lower().rstrip(".") if match else None

    def key_dir(self, domain):
        """(signing domain, directory) of the key for `domain` or a parent domain, or None."""
        if not _DOMAIN.match(domain):
            return None
        labels = domain.split(".")
        candidates = [".".join(labels[i:]) for i in range(len(labels) - 1)]
        for base in self.qp.config_reader.search_dirs:
            root = Path(base) / "dkim"
            for candidate in candidates:
                path = root / candidate
                if not path.is_dir():
                    continue
                signer = candidate
                if path.is_symlink():
                    signer = path.resolve().name.lower()
                    if not _DOMAIN.match(signer):
                        self.log(LOGWARN, f"error, {path} points to {signer}, not a domain")
                        return None
                if candidate != domain:
                    self.log(LOGINFO, f"info, using the {candidate} key for {domain}")
                return signer, path
        return None

    async def sign(self, transaction):
        domain = self.signing_domain(transaction)
        if not domain:
            self.log(LOGINFO, "skip, no sender domain to sign for")
            return
        found = self.key_dir(domain)
        if found is None:
            self.log(LOGINFO, f"skip, DKIM not configured for {domain}")
            return
        signer, path = found
        try:
            selector = (path / "selector").read_text().split("\n", 1)[0].strip()
            key, algorithm = load_private_key((path / "private").read_bytes())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            self.log(LOGERROR, f"error, unable to read the key from {path}: {exc}")
            return
        if not _SELECTOR.match(selector):
            self.log(LOGERROR, f"error, bad selector in {path / 'selector'}: {selector!r}")
            return
        try:
            value = await self._in_thread_if_big(
                transaction, lambda message: sign_message(message, selector, signer, key, algorithm))
        except dkim.DKIMException as exc:
            self.log(LOGERROR, f"error, signing failed: {exc}")
            return
        transaction.header.add("DKIM-Signature", value, 0)
        self.log(LOGINFO, f"pass, we signed the message (d={signer} s={selector} a={algorithm.decode()})")

