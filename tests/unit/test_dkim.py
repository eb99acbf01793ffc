"""The dkim plugin: sessions on a reactor of their own, DKIM keys served by tests/dns_server.py."""

from __future__ import annotations

import base64
import importlib.util
import subprocess
import threading

import dkim
import pytest
from dns_server import FakeDNS
from harness import SessionDriver, make_qp, plugin_source
from reactor_helpers import next_reply, reactor, run  # noqa: F401 (reactor is a fixture)

from qpsmtpd_py.dns import Resolver, nameservers_for
from qpsmtpd_py.paths import bundled_plugin_dir

CAPTURE = plugin_source("""
    import io

    class Capture(Plugin):
        def hook_data_post_headers(self, transaction):
            self.qp.captured_notes = transaction.notes  # after dkim's hook: its results are there
            return DECLINED

        def hook_queue(self, transaction):
            out = io.BytesIO()
            transaction.write_message(out)
            self.qp.captured = out.getvalue()
            return OK, "captured"
""")


def rsa_key(bits=1024, traditional=True):
    """(private key PEM, base64 of the DER public key), made by openssl."""
    command = ["openssl", "genrsa", *(["-traditional"] if traditional else []), str(bits)]
    private = subprocess.run(command, capture_output=True, check=True, timeout=60).stdout
    public = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=private,
                            capture_output=True, check=True, timeout=60).stdout
    return private, base64.b64encode(public).decode()


def txt_record(name, public):
    text = f"v=DKIM1; k=rsa; p={public}"
    chunks = " ".join(f'"{text[i:i + 200]}"' for i in range(0, len(text), 200))
    return f"{name} 300 IN TXT {chunks}\n"


@pytest.fixture(scope="module")
def keys():
    return {"good": rsa_key(), "other": rsa_key(), "pkcs8": rsa_key(traditional=False)}


@pytest.fixture
def server(keys):
    zone = (txt_record("sel1._domainkey.example", keys["good"][1])
            + txt_record("sel2._domainkey.other", keys["other"][1])
            + txt_record("out._domainkey.example", keys["pkcs8"][1])
            + 'bad._domainkey.example 300 IN TXT "v=DKIM1; k=rsa; p=bm90IGEga2V5"\n')
    with FakeDNS(zone, servfail={"broken._domainkey.example.test"}) as fake:
        yield fake


def dkim_qp(tmp_path, reactor, dns_address, args="", files=None):  # noqa: F811
    files = dict(files or {})
    files["dns_servers"] = dns_address
    qp = make_qp(tmp_path, files, plugins=[f"dkim {args}".strip(), "rcpt_ok", "capture"],
                 plugin_files={"capture": CAPTURE})
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)
    qp.captured = None
    qp.captured_notes = {}
    return qp


async def session(reactor, qp, message: bytes, relay_client=False, sender="a@example.test"):  # noqa: F811
    """One session delivering `message` (CRLF lines); (reply lines to the data, driver)."""
    driver = SessionDriver(qp, remote_ip="192.0.2.1")
    driver.session.connection.relay_client = relay_client
    await next_reply(reactor, driver)
    for command in ("EHLO client.example", f"MAIL FROM:<{sender}>", "RCPT TO:<b@test.example.org>", "DATA"):
        driver.send(f"{command}\r\n".encode())
        await next_reply(reactor, driver)
    driver.send(message + b".\r\n")
    return await next_reply(reactor, driver, timeout=30), driver


def deliver(reactor, qp, message: bytes, relay_client=False, sender="a@example.test"):  # noqa: F811
    return run(reactor, lambda: session(reactor, qp, message, relay_client, sender), timeout=40)


def message(body="Hello there.\r\n", sender="a@example.test", extra=""):
    return (f"From: A <{sender}>\r\nTo: b@test.example.org\r\nSubject: greetings\r\n"
            f"Date: Thu, 26 Nov 2026 03:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n{extra}\r\n{body}").encode()


def signed(data: bytes, key: bytes, selector: str, domain: str) -> bytes:
    return dkim.sign(data, selector.encode(), domain.encode(), key,
                     canonicalize=(b"relaxed", b"simple")) + data


def auth_results(driver):
    """The dkim entries of the last message's Authentication-Results."""
    results = driver.session.qp.captured_notes.get("authentication_results", [])
    return [r for r in results if r.startswith("dkim=")]


def stored_header(qp, name):
    head = qp.captured.split(b"\n\n", 1)[0].decode()
    return [line for line in head.replace("\n\t", " ").replace("\n ", " ").split("\n")
            if line.lower().startswith(name.lower() + ":")]


def test_valid_signature_passes(reactor, tmp_path, server, keys):  # noqa: F811
    qp = dkim_qp(tmp_path, reactor, server.address)
    lines, driver = deliver(reactor, qp, signed(message(), keys["good"][0], "sel1", "example.test"))
    assert lines == ["250 captured"]
    [result] = auth_results(driver)
    assert result.startswith("dkim=pass header.i=@example.test header.b=")
    notes = driver.session.connection.notes
    assert notes["dkim_result"] == "pass"
    assert notes["dkim_pass_domains"] == ["example.test"]
    assert notes["karma"] == 1
    assert "dkim=pass header.i=@example.test" in stored_header(qp, "Authentication-Results")[0]


def test_altered_body_fails_and_is_refused(reactor, tmp_path, server, keys):  # noqa: F811
    qp = dkim_qp(tmp_path, reactor, server.address)
    data = signed(message(), keys["good"][0], "sel1", "example.test").replace(b"Hello", b"Jello")
    lines, driver = deliver(reactor, qp, data)
    assert lines == ["552 DKIM signature invalid (example.test)"]
    [result] = auth_results(driver)
    assert result.startswith("dkim=fail (body hash did not verify) header.i=@example.test")
    assert driver.session.connection.notes["dkim_result"] == "fail"
    assert driver.session.connection.notes["karma"] == -1
    assert qp.captured is None


def test_altered_header_fails(reactor, tmp_path, server, keys):  # noqa: F811
    qp = dkim_qp(tmp_path, reactor, server.address, args="reject 0")
    data = signed(message(), keys["good"][0], "sel1", "example.test").replace(b"greetings", b"greeting!")
    lines, driver = deliver(reactor, qp, data)
    assert lines == ["250 captured"]  # reject 0: only recorded
    [result] = auth_results(driver)
    assert result.startswith("dkim=fail (signature did not verify)")


def test_reject_naughty_defers_the_refusal(reactor, tmp_path, server, keys):  # noqa: F811
    qp = dkim_qp(tmp_path, reactor, server.address, args="reject naughty")
    data = signed(message(), keys["good"][0], "sel1", "example.test").replace(b"Hello", b"Jello")
    lines, driver = deliver(reactor, qp, data)
    assert lines == ["250 captured"]
    assert driver.session.connection.notes["naughty"] == "(dkim) DKIM signature invalid (example.test)"


@pytest.mark.parametrize(("selector", "expected"), [
    ("missing", "dkim=permerror (no key for signature) header.i=@example.test"),
    ("bad", "dkim=permerror (bad key"),
])
def test_missing_or_bad_key_is_permerror_and_accepted(reactor, tmp_path, server, keys, selector,  # noqa: F811
                                                      expected):
    qp = dkim_qp(tmp_path, reactor, server.address)
    lines, driver = deliver(reactor, qp, signed(message(), keys["good"][0], selector, "example.test"))
    assert lines == ["250 captured"]
    [result] = auth_results(driver)
    assert result.startswith(expected)
    assert driver.session.connection.notes["dkim_result"] == "permerror"


def test_key_lookup_failure_is_temperror_and_deferred(reactor, tmp_path, server, keys):  # noqa: F811
    qp = dkim_qp(tmp_path, reactor, server.address, args="timeout 2")
    lines, driver = deliver(reactor, qp, signed(message(), keys["good"][0], "broken", "example.test"))
    assert lines == ["452 Please try again later - DKIM key lookup failed"]
    [result] = auth_results(driver)
    assert result.startswith("dkim=temperror (key lookup failed) header.i=@example.test")


def test_temperror_is_accepted_with_reject_0(reactor, tmp_path, server, keys):  # noqa: F811
    qp = dkim_qp(tmp_path, reactor, server.address, args="reject 0")
    lines, _ = deliver(reactor, qp, signed(message(), keys["good"][0], "broken", "example.test"))
    assert lines == ["250 captured"]


def test_every_signature_is_checked(reactor, tmp_path, server, keys):  # noqa: F811
    qp = dkim_qp(tmp_path, reactor, server.address)
    once = signed(message(), keys["good"][0], "sel1", "example.test")
    # A second signature, for other.test, made with the wrong key: it fails.
    twice = signed(once, keys["good"][0], "sel2", "other.test")
    lines, driver = deliver(reactor, qp, twice)
    assert lines == ["250 captured"]  # one signature passes: not refused
    results = auth_results(driver)
    assert len(results) == 2
    assert results[0].startswith("dkim=fail (signature did not verify) header.i=@other.test")
    assert results[1].startswith("dkim=pass header.i=@example.test")
    notes = driver.session.connection.notes
    assert notes["dkim_result"] == "pass"
    assert notes["dkim_pass_domains"] == ["example.test"]
    assert server.count("sel1._domainkey.example.test", "TXT") == 1
    assert server.count("sel2._domainkey.other.test", "TXT") == 1


def test_no_signature_is_none(reactor, tmp_path, server):  # noqa: F811
    qp = dkim_qp(tmp_path, reactor, server.address)
    lines, driver = deliver(reactor, qp, message())
    assert lines == ["250 captured"]
    assert auth_results(driver) == ["dkim=none"]
    assert driver.session.connection.notes["dkim_result"] == "none"
    assert server.total() == 0


def files_for(domain, private, selector="out"):
    return {f"dkim/{domain}/selector": f"{selector}\n", f"dkim/{domain}/private": private.decode()}


def test_relay_client_mail_is_signed_and_verifies(reactor, tmp_path, server, keys):  # noqa: F811
    # A PKCS#8 key, as `openssl genrsa` writes by default.
    qp = dkim_qp(tmp_path, reactor, server.address, files=files_for("example.test", keys["pkcs8"][0]))
    # The signed message verifies when it comes back in from outside.
    qp2 = dkim_qp(tmp_path / "in", reactor, server.address)

    async def out_and_in():
        sent = await session(reactor, qp, message(), relay_client=True)
        return sent, await session(reactor, qp2, qp.captured.replace(b"\n", b"\r\n"))

    (lines, driver), (lines2, driver2) = run(reactor, out_and_in, timeout=40)
    assert lines == ["250 captured"]
    assert auth_results(driver) == []  # relay clients' mail is not verified
    assert lines2 == ["250 captured"]
    [result] = auth_results(driver2)
    assert result.startswith("dkim=pass header.i=@example.test")
    head = qp.captured.split(b"\n\n", 1)[0].decode()
    assert head.startswith("Authentication-Results:") or head.startswith("Received:")
    [signature] = stored_header(qp, "DKIM-Signature")
    assert "d=example.test" in signature and "s=out" in signature
    assert "c=relaxed/simple" in signature and "a=rsa-sha256" in signature



def test_parent_domain_key_signs_subdomains(reactor, tmp_path, server, keys):  # noqa: F811
    qp = dkim_qp(tmp_path, reactor, server.address, files=files_for("example.test", keys["pkcs8"][0]))
    lines, _ = deliver(reactor, qp, message(sender="a@mail.example.test"), relay_client=True,
                       sender="a@mail.example.test")
    assert lines == ["250 captured"]
    [signature] = stored_header(qp, "DKIM-Signature")
    assert "d=example.test;" in signature


def test_symlinked_domain_signs_with_the_target_domain(reactor, tmp_path, server, keys):  # noqa: F811
    qp = dkim_qp(tmp_path, reactor, server.address, files=files_for("example.test", keys["pkcs8"][0]))
    (tmp_path / "config" / "dkim" / "client.test").symlink_to("example.test")
    lines, _ = deliver(reactor, qp, message(sender="a@client.test"), relay_client=True, sender="a@client.test")
    assert lines == ["250 captured"]
    [signature] = stored_header(qp, "DKIM-Signature")
    assert "d=example.test;" in signature


def test_no_key_no_signature(reactor, tmp_path, server):  # noqa: F811
    qp = dkim_qp(tmp_path, reactor, server.address)
    lines, _ = deliver(reactor, qp, message(sender="a@nokeys.test"), relay_client=True, sender="a@nokeys.test")
    assert lines == ["250 captured"]
    assert stored_header(qp, "DKIM-Signature") == []


def test_ed25519_signing(reactor, tmp_path, server):  # noqa: F811
    nacl = pytest.importorskip("nacl.signing")
    seed = bytes(range(32))
    public = base64.b64encode(bytes(nacl.SigningKey(seed).verify_key)).decode()
    qp = dkim_qp(tmp_path, reactor, server.address,
                 files=files_for("example.test", base64.b64encode(seed) + b"\n", selector="ed"))
    lines, _ = deliver(reactor, qp, message(), relay_client=True)
    assert lines == ["250 captured"]
    [signature] = stored_header(qp, "DKIM-Signature")
    assert "a=ed25519-sha256" in signature
    record = f"v=DKIM1; k=ed25519; p={public}".encode()
    assert dkim.verify(qp.captured, dnsfunc=lambda name, timeout=5: record)


def test_big_body_is_verified_off_the_reactor_thread(reactor, tmp_path, server, keys, monkeypatch):  # noqa: F811
    threads_seen = []
    original = dkim.DKIM

    class Recording(original):
        def verify(self, *args, **kwargs):
            threads_seen.append(threading.current_thread())
            return super().verify(*args, **kwargs)

    monkeypatch.setattr(dkim, "DKIM", Recording)
    qp = dkim_qp(tmp_path, reactor, server.address)
    body = ("x" * 76 + "\r\n") * 4000  # ~300 KB
    lines, driver = deliver(reactor, qp, signed(message(body=body), keys["good"][0], "sel1", "example.test"))
    assert lines == ["250 captured"]
    assert auth_results(driver)[0].startswith("dkim=pass")
    assert threads_seen and threads_seen[0] is not threading.main_thread()


def test_small_message_is_verified_inline(reactor, tmp_path, server, keys, monkeypatch):  # noqa: F811
    threads_seen = []
    original = dkim.DKIM

    class Recording(original):
        def verify(self, *args, **kwargs):
            threads_seen.append(threading.current_thread())
            return super().verify(*args, **kwargs)

    monkeypatch.setattr(dkim, "DKIM", Recording)
    qp = dkim_qp(tmp_path, reactor, server.address)
    lines, _ = deliver(reactor, qp, signed(message(), keys["good"][0], "sel1", "example.test"))
    assert lines == ["250 captured"]
    assert threads_seen == [threading.main_thread()]


def test_whitelisted_sender_is_not_checked(reactor, tmp_path, server, keys):  # noqa: F811
    qp = dkim_qp(tmp_path, reactor, server.address)

    async def talk():
        driver = SessionDriver(qp, remote_ip="192.0.2.1")
        driver.session.connection.notes["whitelisthost"] = 1
        await next_reply(reactor, driver)
        for command in ("EHLO c", "MAIL FROM:<a@example.test>", "RCPT TO:<b@test.example.org>", "DATA"):
            driver.send(f"{command}\r\n".encode())
            await next_reply(reactor, driver)
        driver.send(signed(message(), keys["good"][0], "sel1", "example.test") + b".\r\n")
        return await next_reply(reactor, driver), driver

    lines, driver = run(reactor, talk)
    assert lines == ["250 captured"]
    assert auth_results(driver) == []
    assert server.total() == 0


def test_load_private_key_formats(keys):
    spec = importlib.util.spec_from_file_location("dkim_plugin", bundled_plugin_dir() / "dkim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pkcs1, algorithm = module.load_private_key(keys["pkcs8"][0])
    assert algorithm == b"rsa-sha256" and b"BEGIN RSA PRIVATE KEY" in pkcs1
    assert module.load_private_key(keys["good"][0]) == (keys["good"][0], b"rsa-sha256")
    assert module.load_private_key(base64.b64encode(bytes(32)))[1] == b"ed25519-sha256"
    with pytest.raises(ValueError):
        module.load_private_key(b"garbage")
