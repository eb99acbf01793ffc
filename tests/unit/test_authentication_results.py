"""Our Authentication-Results header, read back by an RFC 8601 parser (the `authres` package)."""

from __future__ import annotations

import authres
from harness import SessionDriver, make_qp, plugin_source

from qpsmtpd_py.trace_headers import authentication_results

CAPTURE = plugin_source("""
    class Capture(Plugin):
        def init(self, qp, *args):
            self.headers = []

        def hook_queue(self, transaction):
            self.headers.append(transaction.header)
            return OK
""")

# The results as the iprev (fcrdns), SPF, DKIM and DMARC plugins write them.
RESULTS = plugin_source("""
    class Results(Plugin):
        def hook_connect(self, transaction):
            self.store_auth_results("iprev=pass policy.iprev=127.0.0.1")
            return DECLINED

        def hook_mail(self, transaction, sender, params):
            self.store_auth_results(f"spf=softfail smtp.mailfrom={sender.host}")
            return DECLINED

        def hook_data_post_headers(self, transaction):
            self.store_auth_results("dkim=pass (good signature) header.i=@b.example header.b=AbC+/9xY=")
            self.store_auth_results("dkim=fail (body hash did not verify) header.i=@c.example")
            self.store_auth_results("dmarc=pass (p=reject) header.from=b.example")
            return DECLINED
""")


def delivered_header(tmp_path, files=None):
    qp = make_qp(tmp_path, dict(files or {}), plugins=["results", "rcpt_ok", "capture"],
                 plugin_files={"results": RESULTS, "capture": CAPTURE})
    driver = SessionDriver(qp)
    driver.take()
    driver.command("EHLO client.example")
    assert driver.command("MAIL FROM:<a@b.example>")[0].startswith("250 ")
    assert driver.command("RCPT TO:<r@test.example.org>")[0].startswith("250 ")
    assert driver.command("DATA") == ["354 go ahead"]
    driver.send(b"From: <a@b.example>\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    assert driver.take() == ["250 Queued"]
    capture = next(p for p in qp.plugins if p.name == "capture")
    values = capture.headers[0].get_all("Authentication-Results")
    assert len(values) == 1
    return values[0]


def parse(value):
    return authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")


def methods(header):
    return [(r.method, r.result) for r in header.results]


def test_delivered_header_is_read_back(tmp_path):
    value = delivered_header(tmp_path)
    header = parse(value)
    assert header.authserv_id == "test.example.org"
    assert methods(header) == [("auth", "none"), ("iprev", "pass"), ("spf", "softfail"), ("dkim", "pass"),
                               ("dkim", "fail"), ("dmarc", "pass")]
    # the parser drops (comments), as RFC 8601 lets it; what it writes back reads the same
    assert methods(parse(str(header).split(": ", 1)[1])) == methods(header)
    auth, iprev, spf, dkim, dkim_fail, dmarc = header.results
    assert auth.properties == []
    assert [(p.type, p.name, p.value) for p in iprev.properties] == [("policy", "iprev", "127.0.0.1")]
    assert [(p.type, p.name, p.value) for p in spf.properties] == [("smtp", "mailfrom", "b.example")]
    assert [(p.type, p.name, p.value) for p in dkim.properties] == [("header", "i", "@b.example"),
                                                                    ("header", "b", "AbC+/9xY=")]
    assert [(p.type, p.name, p.value) for p in dkim_fail.properties] == [("header", "i", "@c.example")]
    assert [(p.type, p.name, p.value) for p in dmarc.properties] == [("header", "from", "b.example")]


def test_authserv_id_from_config(tmp_path):
    header = parse(delivered_header(tmp_path, files={"me-auth-results": "auth.example"}))
    assert header.authserv_id == "auth.example"
    assert [method for method, _ in methods(header)] == ["auth", "iprev", "spf", "dkim", "dkim", "dmarc"]


def test_authenticated_user_is_read_back():
    value = authentication_results("mx.example.org", {"auth_user": "user@example.org", "auth_mechanism": "PLAIN"},
                                   ["spf=pass smtp.mailfrom=example.org"])
    header = parse(value)
    assert header.authserv_id == "mx.example.org"
    assert methods(header) == [("auth", "pass"), ("spf", "pass")]
    auth = header.results[0]
    assert [(p.type, p.name, p.value) for p in auth.properties] == [("smtp", "auth", "user@example.org")]


def test_no_results_at_all():
    header = parse(authentication_results("mx.example.org", {}, []))
    assert header.authserv_id == "mx.example.org"
    assert methods(header) == [("auth", "none")]
