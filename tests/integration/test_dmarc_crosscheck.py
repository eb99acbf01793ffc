"""The dmarc plugin against an independent implementation: Perl's Mail::DMARC.

Each case (a From domain, the SPF result for the envelope sender's domain,
DKIM results, the _dmarc records of the test DNS server) is evaluated twice:

- by the dmarc plugin, in a session on a reactor of its own (as in
  tests/unit/test_dmarc.py): SPF and DKIM results injected through the
  notes sender_permitted_from (`dmarc_spf`) and dkim (`dkim_results`)
  leave, the outcome read from the `dmarc_result` note, the
  Authentication-Results entry and the reply to the message;
- by Mail::DMARC::PurePerl (Debian package libmail-dmarc-perl) in a perl
  subprocess, its Net::DNS resolver pointed at the same FakeDNS (through
  `set_resolver`), its configuration a file in the test's directory
  (MAIL_DMARC_CONFIG_FILE).

Both must agree on the result (pass, fail, none) and on the policy applied
(the disposition: none, quarantine, reject).

The domains are under real public suffixes (com, net, org, co.uk, info),
served by FakeDNS as absolute names: for a name under an unlisted suffix
such as `test`, Mail::DMARC (RFC 7489 3.2 read literally) takes the
top-level label itself as the organizational domain, while the Public
Suffix List's algorithm (default rule `*`) gives the name one label below
it; that difference is about test names, not about DMARC. Mail::DMARC also
wants the From domain (or its organizational domain) to exist in DNS (RFC
7489 9.6), hence the A records.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from dns_server import FakeDNS
from harness import SessionDriver, make_qp, plugin_source
from reactor_helpers import next_reply, reactor, run  # noqa: F401 (reactor is a fixture)

from qpsmtpd_py.dns import Resolver, nameservers_for


def _has_mail_dmarc() -> bool:
    try:
        return subprocess.run(["perl", "-MMail::DMARC::PurePerl", "-MNet::DNS::Resolver", "-MJSON::PP",
                               "-e", "1"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not _has_mail_dmarc(), reason="Perl Mail::DMARC (libmail-dmarc-perl) not installed")

ZONE = """
example.com.              300 IN A   192.0.2.10
_dmarc.example.com.       300 IN TXT "v=DMARC1; p=reject; sp=quarantine"
_dmarc.own.example.com.   300 IN TXT "v=DMARC1; p=none"
example.net.              300 IN A   192.0.2.11
_dmarc.example.net.       300 IN TXT "v=DMARC1; p=quarantine; adkim=s; aspf=s"
example.org.              300 IN A   192.0.2.12
_dmarc.example.org.       300 IN TXT "v=DMARC1; p=none"
example.co.uk.            300 IN A   192.0.2.13
_dmarc.example.co.uk.     300 IN TXT "v=DMARC1; p=reject"
example.info.             300 IN A   192.0.2.14
example.biz.              300 IN A   192.0.2.15
_dmarc.example.biz.       300 IN TXT "v=DMARC1; p=quarantine; pct=0"
"""

# (id, From domain, (envelope sender domain, SPF result) or None, [(DKIM d=, result)],
#  expected (result, disposition)); the expectation is what RFC 7489 asks, both sides must give it.
CASES = [
    ("spf-aligned-strict", "example.com", ("example.com", "pass"), [], ("pass", "none")),
    ("dkim-aligned-relaxed", "example.com", ("bounce.example.net", "pass"),
     [("mail.example.com", "pass")], ("pass", "none")),
    ("unaligned-and-failing-p-reject", "example.com", ("example.com", "fail"),
     [("example.com", "fail"), ("other.example.net", "pass")], ("fail", "reject")),
    ("spf-softfail-is-no-pass", "example.com", ("example.com", "softfail"), [], ("fail", "reject")),
    ("subdomain-org-fallback-sp", "news.example.com", ("example.net", "pass"), [], ("fail", "quarantine")),
    ("subdomain-org-fallback-relaxed-pass", "news.example.com", ("bounce.example.com", "pass"), [],
     ("pass", "none")),
    ("subdomain-own-record-not-sp", "own.example.com", ("example.net", "pass"), [], ("fail", "none")),
    ("strict-alignment-rejects-subdomains", "example.net", ("mail.example.net", "pass"),
     [("sub.example.net", "pass")], ("fail", "quarantine")),
    ("strict-alignment-exact-dkim", "example.net", ("elsewhere.example.org", "pass"),
     [("example.net", "pass")], ("pass", "none")),
    ("p-none-fails-tolerated", "example.org", ("example.com", "pass"), [("example.com", "pass")],
     ("fail", "none")),
    ("co-uk-org-domain-relaxed", "shop.example.co.uk", ("example.co.uk", "pass"), [], ("pass", "none")),
    ("co-uk-sibling-not-aligned-no-sp", "shop.example.co.uk", None, [("other.co.uk", "pass")],
     ("fail", "reject")),
    ("pct-0-quarantine-sampled-out", "example.biz", ("example.com", "pass"), [], ("fail", "none")),
    ("no-record", "example.info", ("example.info", "fail"), [], ("none", "none")),
]

# Evaluates one case with Mail::DMARC::PurePerl; JSON case on stdin, the FakeDNS port as argument;
# prints {"result": ..., "disposition": ...} as JSON.
VALIDATE = r"""
use strict;
use JSON::PP;
use Net::DNS::Resolver;
use Mail::DMARC::PurePerl;
my ($port) = @ARGV;
my $case = decode_json(do { local $/; <STDIN> });
my $dmarc = Mail::DMARC::PurePerl->new;
$dmarc->set_resolver(Net::DNS::Resolver->new(
    nameservers => ["127.0.0.1"], port => $port, recurse => 0, dnsrch => 0, tcp_timeout => 5,
    udp_timeout => 5, retry => 1));
$dmarc->source_ip("192.0.2.1");
$dmarc->envelope_to("test.example.org");
$dmarc->envelope_from($case->{envelope_from});
$dmarc->header_from($case->{header_from});
$dmarc->spf($case->{spf}) if @{$case->{spf}};
$dmarc->dkim($case->{dkim});
my $result = $dmarc->validate;
print encode_json({result => $result->result, disposition => $result->disposition}), "\n";
"""

INJECT = plugin_source("""
    class Inject(Plugin):
        def hook_data_post_headers(self, transaction):
            spf, dkim = self.qp.inject
            if spf is not None:
                transaction.notes["dmarc_spf"] = {"domain": spf[0], "scope": "mfrom", "result": spf[1]}
            transaction.notes["dkim_results"] = [{"domain": d, "selector": "s", "result": r, "comment": ""}
                                                 for d, r in dkim]
            return DECLINED
""")
CAPTURE = plugin_source("""
    class Capture(Plugin):
        def hook_data_post_headers(self, transaction):
            self.qp.captured_notes = transaction.notes  # after dmarc's, before its refusal
            return DECLINED

        def hook_queue(self, transaction):
            self.qp.captured_notes = transaction.notes
            return OK, "captured"
""")


@pytest.fixture(scope="module")
def server():
    with FakeDNS(ZONE) as fake:
        yield fake


def perl_dmarc(tmp_path, port: int, from_domain: str, spf, dkim) -> dict:
    config = tmp_path / "mail-dmarc.ini"
    config.write_text("[dns]\ntimeout = 5\n\n[report_store]\nauto_save = 0\n")
    envelope = spf[0] if spf else "bounce.example.info"
    case = {
        "header_from": from_domain,
        "envelope_from": envelope,
        "spf": [{"domain": spf[0], "scope": "mfrom", "result": spf[1]}] if spf else [],
        "dkim": [{"domain": d, "selector": "s", "result": r} for d, r in dkim],
    }
    env = dict(os.environ, MAIL_DMARC_CONFIG_FILE=str(config))
    result = subprocess.run(["perl", "-e", VALIDATE, str(port)], input=json.dumps(case).encode(),
                            capture_output=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


def ours(reactor, tmp_path, server, from_domain: str, spf, dkim):  # noqa: F811
    """(the dmarc_result note, the dmarc= A-R entries, the reply to the message)."""
    qp = make_qp(tmp_path, {"dns_servers": server.address},
                 plugins=["inject", "dmarc timeout 5", "rcpt_ok", "capture"],
                 plugin_files={"inject": INJECT, "capture": CAPTURE})
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)
    qp.inject = (spf, dkim)
    qp.captured_notes = {}
    sender = spf[0] if spf else "bounce.example.info"

    async def talk():
        driver = SessionDriver(qp, remote_ip="192.0.2.1")
        await next_reply(reactor, driver)
        for command in ("EHLO client.example", f"MAIL FROM:<a@{sender}>", "RCPT TO:<b@test.example.org>",
                        "DATA"):
            driver.send(f"{command}\r\n".encode())
            await next_reply(reactor, driver)
        driver.send(f"From: A <a@{from_domain}>\r\nTo: b@test.example.org\r\nSubject: hi\r\n\r\nHello.\r\n"
                    f".\r\n".encode())
        reply = (await next_reply(reactor, driver, timeout=20))[-1]
        return driver, reply

    driver, reply = run(reactor, talk, timeout=60)
    notes = qp.captured_notes
    auth = [r for r in notes.get("authentication_results", []) if r.startswith("dmarc=")]
    return notes.get("dmarc_result"), auth, reply


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_dmarc_plugin_agrees_with_mail_dmarc(reactor, tmp_path, server, case):  # noqa: F811
    _, from_domain, spf, dkim, (result, disposition) = case
    asked = server.count(f"_dmarc.{from_domain}", "TXT")
    perl = perl_dmarc(tmp_path, server.port, from_domain, spf, dkim)
    assert server.count(f"_dmarc.{from_domain}", "TXT") > asked  # Mail::DMARC asked the test server
    note, auth, reply = ours(reactor, tmp_path, server, from_domain, spf, dkim)
    assert note is not None, reply
    mine = {"result": note["result"], "disposition": note["disposition"]}
    assert mine == perl, f"ours {mine}, Mail::DMARC {perl}"
    assert mine == {"result": result, "disposition": disposition}
    # what the session shows of it
    if result == "none":
        assert auth == [f"dmarc=none header.from={from_domain}"]
    else:
        [entry] = auth
        assert entry.startswith(f"dmarc={result} (p=")
        assert entry.endswith(f") header.from={from_domain}")
    if disposition in ("quarantine", "reject"):
        assert reply.startswith("5") and reply.endswith(" failed DMARC policy"), reply
    else:
        assert reply == "250 captured", reply
