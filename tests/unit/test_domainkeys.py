"""The domainkeys plugin: messages signed here (RFC 4870), keys served by tests/dns_server.py."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess

import pytest
from dkim.crypto import RSASSA_PKCS1_v1_5_sign, parse_pem_private_key
from dns_server import FakeDNS
from harness import SessionDriver, make_qp, plugin_source
from reactor_helpers import next_reply, reactor, run  # noqa: F401 (reactor is a fixture)

from qpsmtpd_py.dns import Resolver, nameservers_for

CAPTURE = plugin_source("""
    class Capture(Plugin):
        def hook_data_post_headers(self, transaction):
            self.qp.captured_notes = transaction.notes
            return DECLINED

        def hook_queue(self, transaction):
            self.qp.captured = True
            return OK, "captured"
""")


def rsa_key(bits=1024):
    """(private key PEM, base64 of the DER public key), made by openssl."""
    private = subprocess.run(["openssl", "genrsa", "-traditional", str(bits)],
                             capture_output=True, check=True, timeout=60).stdout
    public = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=private,
                            capture_output=True, check=True, timeout=60).stdout
    return private, base64.b64encode(public).decode()


def txt(name, text):
    chunks = " ".join(f'"{text[i:i + 200]}"' for i in range(0, len(text), 200))
    return f"{name} 300 IN TXT {chunks}\n"


@pytest.fixture(scope="module")
def key():
    return rsa_key()


@pytest.fixture
def server(key):
    public = key[1]
    zone = (txt("sel1._domainkey.example", f"k=rsa; p={public}")
            + txt("sel1._domainkey.strict", f"k=rsa; p={public}")
            + txt("old._domainkey.example", "k=rsa; p=")
            + txt("_domainkey.strict", "o=-")
            + txt("_domainkey.some", "o=~")
            + txt("_domainkey.trial", "t=y; o=-"))
    with FakeDNS(zone) as fake:
        yield fake


# -- a small RFC 4870 signer, written apart from the plugin -----------------------------

def canonicalize(message: bytes, method: str, headers: list[str] | None) -> bytes:
    head, _, body = message.partition(b"\r\n\r\n")
    fields = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    text = b""
    for field in fields:
        if headers is not None and field.split(b":")[0].strip().lower().decode() not in headers:
            continue
        text += (re.sub(rb"[ \t\r\n]", b"", field) if method == "nofws" else field) + b"\r\n"
    lines = body.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    if lines:
        text += b"\r\n"
    if method == "nofws":
        lines = [re.sub(rb"[ \t]", b"", line) for line in lines]
    while lines and lines[-1] == b"":
        lines.pop()
    return text + b"".join(line + b"\r\n" for line in lines)


def sign(message: bytes, private: bytes, domain="example.test", selector="sel1", method="simple",
         headers: list[str] | None = None) -> bytes:
    digest = hashlib.sha1(canonicalize(message, method, headers))
    signature = base64.b64encode(RSASSA_PKCS1_v1_5_sign(digest, parse_pem_private_key(private))).decode()
    h = f"h={':'.join(headers)}; " if headers else ""
    field = (f"DomainKey-Signature: a=rsa-sha1; q=dns; c={method}; {h}\r\n"
             f"\ts={selector}; d={domain};\r\n\tb={signature[:60]}\r\n\t{signature[60:]}\r\n")
    return field.encode() + message


def message(body="Hello there.\r\n\r\nBye.\r\n\r\n\r\n", sender="a@example.test"):
    return (f"From: A <{sender}>\r\nTo: b@test.example.org\r\nSubject: greetings,\r\n"
            f"  folded\r\nMessage-ID: <1@example.test>\r\n\r\n{body}").encode()


# -- sessions ---------------------------------------------------------------------------

def dk_qp(tmp_path, reactor, dns_address, args=""):  # noqa: F811
    qp = make_qp(tmp_path, {"dns_servers": dns_address},
                 plugins=[f"domainkeys {args}".strip(), "rcpt_ok", "capture"],
                 plugin_files={"capture": CAPTURE})
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)
    qp.captured = None
    qp.captured_notes = {}
    return qp


async def session(reactor, qp, data: bytes):  # noqa: F811
    driver = SessionDriver(qp, remote_ip="192.0.2.1")
    await next_reply(reactor, driver)
    for command in ("EHLO client.example", "MAIL FROM:<a@example.test>", "RCPT TO:<b@test.example.org>", "DATA"):
        driver.send(f"{command}\r\n".encode())
        await next_reply(reactor, driver)
    driver.send(data + b".\r\n")
    return await next_reply(reactor, driver, timeout=30), driver


def deliver(reactor, tmp_path, server, data, args=""):  # noqa: F811
    qp = dk_qp(tmp_path, reactor, server.address, args)
    lines, driver = run(reactor, lambda: session(reactor, qp, data), timeout=40)
    results = [r for r in qp.captured_notes.get("authentication_results", []) if r.startswith("domainkey=")]
    return lines, results, qp.captured_notes.get("domainkey_status")


@pytest.mark.parametrize("method", ["simple", "nofws"])
def test_good_signature(reactor, tmp_path, server, key, method):  # noqa: F811
    lines, results, status = deliver(reactor, tmp_path, server, sign(message(), key[0], method=method))
    assert lines == ["250 captured"]
    assert results == ["domainkey=good"]
    assert status == "good"


def test_nofws_survives_whitespace_changes(reactor, tmp_path, server, key):  # noqa: F811
    data = sign(message(), key[0], method="nofws")
    data = data.replace(b"Hello there.", b"Hello   there. ").replace(b"greetings,\r\n  folded", b"greetings, folded")
    lines, results, _ = deliver(reactor, tmp_path, server, data)
    assert results == ["domainkey=good"]


def test_simple_does_not_survive_whitespace_changes(reactor, tmp_path, server, key):  # noqa: F811
    data = sign(message(), key[0]).replace(b"Hello there.", b"Hello  there.")
    _, results, status = deliver(reactor, tmp_path, server, data)
    assert status == "bad"
    assert results == ["domainkey=non-participant (bad)"]


@pytest.mark.parametrize("change, result", [
    ((b"Message-ID: <1@", b"Message-ID: <2@"), "domainkey=good"),  # not in h=: may change
    ((b"greetings", b"news"), "domainkey=non-participant (bad)"),
])
def test_header_list(reactor, tmp_path, server, key, change, result):  # noqa: F811
    data = sign(message(), key[0], headers=["from", "subject"]).replace(*change)
    _, results, _ = deliver(reactor, tmp_path, server, data)
    assert results == [result]


def test_altered_body_without_policy_is_accepted(reactor, tmp_path, server, key):  # noqa: F811
    data = sign(message(), key[0]).replace(b"Hello", b"Jello")
    lines, results, status = deliver(reactor, tmp_path, server, data)
    assert lines == ["250 captured"]
    assert status == "bad"
    assert results == ["domainkey=non-participant (bad)"]


def test_good_signature_of_a_signs_all_domain(reactor, tmp_path, server, key):  # noqa: F811
    data = sign(message(sender="a@strict.test"), key[0], domain="strict.test")
    _, results, _ = deliver(reactor, tmp_path, server, data)
    assert results == ["domainkey=good"]


def test_altered_body_of_a_signs_all_domain_is_refused(reactor, tmp_path, server, key):  # noqa: F811
    data = sign(message(sender="a@strict.test"), key[0], domain="strict.test").replace(b"Hello", b"Jello")
    lines, results, _ = deliver(reactor, tmp_path, server, data)
    assert lines == ["552 DomainKeys signature validation failed"]
    assert results == ["domainkey=bad (bad)"]


@pytest.mark.parametrize("args", ["reject 0", "warn_only 1"])
def test_failure_only_logged(reactor, tmp_path, server, key, args):  # noqa: F811
    data = sign(message(sender="a@strict.test"), key[0], domain="strict.test").replace(b"Hello", b"Jello")
    lines, results, _ = deliver(reactor, tmp_path, server, data, args)
    assert lines == ["250 captured"]
    assert results == ["domainkey=bad (bad)"]


def test_reject_type_temp(reactor, tmp_path, server, key):  # noqa: F811
    data = sign(message(sender="a@strict.test"), key[0], domain="strict.test").replace(b"Hello", b"Jello")
    lines, _, _ = deliver(reactor, tmp_path, server, data, "reject_type temp")
    assert lines[0].startswith("4")


@pytest.mark.parametrize("domain, result", [("some.test", "no signature"), ("trial.test", "testing")])
def test_policies(reactor, tmp_path, server, key, domain, result):  # noqa: F811
    data = sign(message(sender=f"a@{domain}"), key[0], domain=domain)  # no key for these domains
    lines, results, status = deliver(reactor, tmp_path, server, data)
    assert lines == ["250 captured"]
    assert status == "no key"
    assert results == [f"domainkey={result} (no key)"]


def test_unsigned_is_skipped(reactor, tmp_path, server):  # noqa: F811
    lines, results, status = deliver(reactor, tmp_path, server, message())
    assert lines == ["250 captured"]
    assert results == [] and status is None
    assert server.total() == 0


def test_revoked_key(reactor, tmp_path, server, key):  # noqa: F811
    _, results, status = deliver(reactor, tmp_path, server, sign(message(), key[0], selector="old"))
    assert status == "revoked"
    assert results == ["domainkey=non-participant (revoked)"]


def test_missing_key(reactor, tmp_path, server, key):  # noqa: F811
    _, results, status = deliver(reactor, tmp_path, server, sign(message(), key[0], selector="nokey"))
    assert status == "no key"
    assert results == ["domainkey=non-participant (no key)"]


def test_signing_domain_must_be_the_senders(reactor, tmp_path, server, key):  # noqa: F811
    data = sign(message(sender="a@other.test"), key[0])
    _, results, status = deliver(reactor, tmp_path, server, data)
    assert status == "bad"


def test_bad_format(reactor, tmp_path, server, key):  # noqa: F811
    data = sign(message(), key[0]).replace(b"a=rsa-sha1", b"a=rsa-sha256")
    _, results, status = deliver(reactor, tmp_path, server, data)
    assert status == "bad format"
