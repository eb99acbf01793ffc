"""The uribl plugin: whole SMTP sessions over a StringTransport, DNS from tests/dns_server.py."""

from __future__ import annotations

import base64
import importlib.util
import time

import pytest
from dns_server import FakeDNS, silent_udp_port
from harness import SessionDriver, make_qp, plugin_source
from reactor_helpers import next_reply, run

from qpsmtpd_py.dns import Resolver, nameservers_for
from qpsmtpd_py.paths import bundled_plugin_dir

ZONE = """
spam.example.com.multi.bl.      300 IN A   127.0.0.2
spam.example.com.multi.bl.      300 IN TXT "spam.example.com is listed, see http://bl.test/"
masked.example.org.multi.bl.    300 IN A   127.0.0.64
1.2.0.192.multi.bl.             300 IN A   127.0.0.2
spam.example.com.other.bl.      300 IN A   127.0.0.4
deep.example.net.multi.bl.      300 IN A   127.0.0.2
"""

CAPTURE = plugin_source("""
    class Capture(Plugin):
        def hook_queue(self, transaction):
            self.qp.captured = transaction.header.as_string()
            return OK, "captured"
""")


@pytest.fixture
def server():
    with FakeDNS(ZONE, origin="bl.") as fake:
        yield fake


def uribl_qp(tmp_path, reactor, dns_address, zones, args="", files=None):
    files = dict(files or {})
    files["dns_servers"] = dns_address
    files["uribl_zones"] = zones
    qp = make_qp(tmp_path, files, plugins=[f"uribl {args}".strip(), "rcpt_ok", "capture"],
                 plugin_files={"capture": CAPTURE})
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)
    qp.captured = None
    return qp


def send(reactor, qp, message: bytes):
    """One session delivering `message` (CRLF lines, no final dot); (reply to the data, seconds)."""

    async def talk():
        driver = SessionDriver(qp)
        driver.take()
        for command in ("EHLO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@test.example.org>", "DATA"):
            driver.send(f"{command}\r\n".encode())
            await next_reply(reactor, driver)
        started = time.monotonic()
        driver.send(message + b".\r\n")
        lines = await next_reply(reactor, driver, timeout=30)
        return lines, time.monotonic() - started

    return run(reactor, talk, timeout=40)


def body(text: str) -> bytes:
    return ("Subject: offer\r\n\r\n" + text.replace("\n", "\r\n") + "\r\n").encode()


def test_listed_domain_adds_a_header(reactor, tmp_path, server):
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl"])
    lines, _ = send(reactor, qp, body("Buy now at http://www.spam.example.com/offer !"))
    assert lines == ["250 captured"]
    assert qp.captured.startswith(
        "X-URIBL-Match: spam.example.com in multi.bl: spam.example.com is listed, see http://bl.test/\n")
    assert server.count("www.spam.example.com.multi.bl", "A") == 1
    assert server.count("example.com.multi.bl", "A") == 1
    assert server.count("spam.example.com.multi.bl", "TXT") == 1
    assert server.count("example.com.multi.bl", "TXT") == 0  # TXT only for listed names


def test_deny_action(reactor, tmp_path, server):
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl"], args="action deny")
    lines, _ = send(reactor, qp, body("first paragraph: spam.example.com"))
    assert lines == ["552 spam.example.com in multi.bl: spam.example.com is listed, see http://bl.test/"]
    assert qp.captured is None


def test_zone_action_and_mask_columns(reactor, tmp_path, server):
    # other.bl answers 127.0.0.4: mask 2 does not select it, mask 4 does; its action denysoft
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl 64 log", "other.bl 4 denysoft"])
    lines, _ = send(reactor, qp, body("see spam.example.com and masked.example.org"))
    assert lines == ["452 spam.example.com in other.bl: 127.0.0.4"]


def test_mask_filters_out_an_answer(reactor, tmp_path, server):
    qp = uribl_qp(tmp_path, reactor, server.address, ["other.bl 2,8 deny"])
    lines, _ = send(reactor, qp, body("see spam.example.com"))
    assert lines == ["250 captured"]
    assert "X-URIBL-Match" not in qp.captured


def test_deny_wins_over_headers(reactor, tmp_path, server):
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl 0 add-header", "other.bl -1 deny"])
    lines, _ = send(reactor, qp, body("see spam.example.com"))
    assert lines == ["552 spam.example.com in other.bl: 127.0.0.4"]


def test_addresses_in_uris(reactor, tmp_path, server):
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl"], args="action deny")
    lines, _ = send(reactor, qp, body("click http://3221225985/win"))
    assert lines == ["552 1.2.0.192 in multi.bl: 127.0.0.2"]


def test_checkip_no(reactor, tmp_path, server):
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl"], args="action deny checkip no")
    lines, _ = send(reactor, qp, body("click http://0xc0.0.2.1/win"))
    assert lines == ["250 captured"]
    assert server.total() == 0


def test_munged_uris_are_found(reactor, tmp_path, server):
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl"], args="action deny")
    lines, _ = send(reactor, qp, body("go to http%3A%2F%2Fsp=\nam.exa;mple&#46;com now"))
    assert lines[0].startswith("552 spam.example.com in multi.bl")


def test_whitelisted_domain_is_not_looked_up(reactor, tmp_path, server):
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl"], args="action deny",
                  files={"uribl_whitelist_domains": "example.net"})
    lines, _ = send(reactor, qp, body("http://www.deep.example.net/ and deep.example.net"))
    assert lines == ["250 captured"]
    assert server.total() == 0


def test_headers_are_scanned_only_with_scan_headers(reactor, tmp_path, server):
    message = b"Subject: see spam.example.com\r\nX-Mailer: x\r\n\r\nno links here\r\n"
    qp = uribl_qp(tmp_path / "a", reactor, server.address, ["multi.bl"], args="action deny")
    qp_headers = uribl_qp(tmp_path / "b", reactor, server.address, ["multi.bl"], args="action deny scan-headers 1")

    async def both():
        outcome = []
        for one in (qp, qp_headers):
            driver = SessionDriver(one)
            driver.take()
            for command in ("HELO c.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@test.example.org>", "DATA"):
                driver.send(f"{command}\r\n".encode())
                await next_reply(reactor, driver)
            driver.send(message + b".\r\n")
            outcome.append((await next_reply(reactor, driver))[0])
        return outcome

    plain, scanned = run(reactor, both)
    assert plain == "250 captured"
    assert scanned.startswith("552 spam.example.com in multi.bl")


def mime(header: str, text: str) -> bytes:
    """A message from header lines and a body written with LF line ends."""
    return (header.strip("\n") + "\n\n" + text).replace("\n", "\r\n").encode()


def b64(text: str) -> str:
    return base64.encodebytes(text.encode()).decode()


def test_base64_text_part_is_decoded(reactor, tmp_path, server):
    encoded = b64("Cheap pills at http://www.spam.example.com/buy today!\n")
    assert "spam" not in encoded
    message = mime("Subject: offer\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
                   "Content-Transfer-Encoding: base64", encoded)
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl"], args="action deny")
    lines, _ = send(reactor, qp, message)
    assert lines == ["552 spam.example.com in multi.bl: spam.example.com is listed, see http://bl.test/"]


def test_quoted_printable_html_href_is_found(reactor, tmp_path, server):
    # =3D is `=`, the soft break joins the line, and only an HTML parser undoes the hex entities
    html = ('<html><body><p>Hello</p><a href=3D"http://www&#x2e;spam&#x2e;example&#x2e;com/of=\n'
            'fer?id=3D7">click here</a></body></html>\n')
    message = mime("Subject: offer\nMIME-Version: 1.0\nContent-Type: text/html; charset=us-ascii\n"
                   "Content-Transfer-Encoding: quoted-printable", html)
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl"], args="action deny")
    lines, _ = send(reactor, qp, message)
    assert lines[0].startswith("552 spam.example.com in multi.bl")
    assert server.count("www.spam.example.com.multi.bl", "A") == 1


def test_multipart_alternative_parts_are_scanned(reactor, tmp_path, server):
    html = b64('<p>Offer</p><a href="http://deep.example.net/x"><img src="http://cdn.example.org/p.png"></a>')
    text = mime("""
Subject: offer
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"
""", f"""This is a multi-part message in MIME format. preamble.example.com
--outer
Content-Type: multipart/alternative; boundary="inner"

--inner
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Visit masked.example.org =E2=80=94 today
--inner
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: base64

{html}
--inner--
--outer
Content-Type: application/octet-stream; name="data.bin"
Content-Transfer-Encoding: base64

{b64("attachment.example.com")}
--outer--
""")
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl"])
    lines, _ = send(reactor, qp, text)
    assert lines == ["250 captured"]
    assert "X-URIBL-Match: masked.example.org in multi.bl: 127.0.0.64\n" in qp.captured  # the text/plain part
    assert "X-URIBL-Match: deep.example.net in multi.bl: 127.0.0.2\n" in qp.captured  # the HTML part's href
    assert server.count("cdn.example.org.multi.bl", "A") == 1  # an img src
    assert server.count("attachment.example.com.multi.bl", "A") == 0  # not a text part
    assert server.count("preamble.example.com.multi.bl", "A") == 0  # nor the preamble


def test_no_uris_no_lookups(reactor, tmp_path, server):
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl"])
    lines, _ = send(reactor, qp, body("just words, no links"))
    assert lines == ["250 captured"]
    assert server.total() == 0


def test_names_are_capped(reactor, tmp_path, server):
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl"], args="max-names 3")
    text = " ".join(f"http://host{n}.example.org/" for n in range(20))
    lines, _ = send(reactor, qp, body(text))
    assert lines == ["250 captured"]
    assert server.total() == 3  # host0.example.org, example.org, host1.example.org


def test_big_body_is_scanned_in_a_thread_up_to_the_cap(reactor, tmp_path, server):
    filler = ("x" * 76 + "\n") * 2000  # ~150 KB: more than the 64 KiB read inline
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl"], args="action deny")
    lines, _ = send(reactor, qp, body(filler + "late link: spam.example.com"))
    assert lines[0].startswith("552 spam.example.com")


def test_scan_cap_hides_late_links(reactor, tmp_path, server):
    filler = ("x" * 76 + "\n") * 2000
    qp = uribl_qp(tmp_path, reactor, server.address, ["multi.bl"], args="action deny max-scan 100000")
    lines, _ = send(reactor, qp, body(filler + "late link: spam.example.com"))
    assert lines == ["250 captured"]


def test_dead_nameserver_costs_at_most_the_timeout(reactor, tmp_path):
    sock, port = silent_udp_port()
    try:
        qp = uribl_qp(tmp_path, reactor, f"127.0.0.1:{port}", ["multi.bl", "other.bl"], args="timeout 0.5")
        text = " ".join(f"http://host{n}.example.org/" for n in range(10))
        lines, elapsed = send(reactor, qp, body(text))
    finally:
        sock.close()
    assert lines == ["250 captured"]
    assert elapsed < 1.5, elapsed


def test_relay_client_is_not_checked(reactor, tmp_path, server):
    qp = make_qp(tmp_path, {"dns_servers": server.address, "uribl_zones": "multi.bl", "relayclients": "127.0.0.1"},
                 plugins=["relay", "uribl action deny", "rcpt_ok", "capture"], plugin_files={"capture": CAPTURE})
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)
    lines, _ = send(reactor, qp, body("spam.example.com"))
    assert lines == ["250 captured"]
    assert server.total() == 0


def test_bad_configuration_stops_start_up(tmp_path):
    from qpsmtpd_py.config import ConfigReader
    from qpsmtpd_py.qp import Qpsmtpd

    cases = [("action reject", ["multi.bl"]), ("timeout soon", ["multi.bl"]), ("max-names -1", ["multi.bl"]),
             ("", ["multi.bl 2,x"]), ("", ["multi.bl 2 drop"]), ("a b c", ["multi.bl"])]
    for number, (args, zones) in enumerate(cases):
        config = tmp_path / str(number)
        config.mkdir()
        (config / "plugins").write_text(f"uribl {args}\n")
        (config / "uribl_zones").write_text("\n".join(zones) + "\n")
        (config / "spool_dir").write_text(str(tmp_path / "spool"))
        errors = Qpsmtpd(ConfigReader([config])).load()
        assert errors and "uribl" in str(errors[0]), (args, zones)


def load_module():
    spec = importlib.util.spec_from_file_location("uribl_module", bundled_plugin_dir() / "uribl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scanner():
    scan = load_module().scan_text
    names, capped = scan("see http://WWW.Spam.Example.com/x, https://3221225985/ and http://0x7f.0.0.01/ "
                         "or www.shop.example.co.uk; readme.txt, example.com.html")
    assert names == ["1.2.0.192", "1.0.0.127", "www.spam.example.com", "spam.example.com", "example.com",
                     "www.shop.example.co.uk", "shop.example.co.uk", "example.co.uk"]
    assert not capped
    assert scan("http://1.2.3.4/", checkip=False)[0] == []
    assert scan("aa.bb.example.com http://aa.bb.example.com/", whitelist={"example.com"})[0] == []
    assert scan("one.com two.com three.com", max_names=2) == (["one.com", "two.com"], True)


def test_parse_zones():
    module = load_module()
    zones, errors = module.parse_zones(["# comment", "", "multi.bl 2,8 deny", "ob.bl 1", "all.bl", "neg.bl -1",
                                        "bad.bl 1 drop"], "add-header")
    assert [(z.name, z.mask, z.action) for z in zones] == [
        ("multi.bl", 10, "deny"), ("ob.bl", 1, "add-header"), ("all.bl", 0xFFFFFF, "add-header"),
        ("neg.bl", 0xFFFFFF, "add-header")]
    assert len(errors) == 1
    assert zones[0].listed("127.0.0.2") and not zones[0].listed("127.0.0.4")
