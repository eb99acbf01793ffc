"""The dmarc plugin: sessions on a reactor of their own, _dmarc records from tests/dns_server.py.

SPF and DKIM results are injected through the notes sender_permitted_from
(`dmarc_spf`) and dkim (`dkim_results`) leave, by a test plugin loaded before
dmarc.
"""

from __future__ import annotations

import json

import pytest
from dns_server import FakeDNS
from harness import SessionDriver, make_qp, plugin_source
from reactor_helpers import next_reply, reactor, run  # noqa: F401 (reactor is a fixture)

from qpsmtpd_py.dns import Resolver, nameservers_for

ZONE = """
_dmarc.reject       300 IN TXT "v=DMARC1; p=reject; rua=mailto:agg@reject.test"
_dmarc.quarantine   300 IN TXT "v=DMARC1; p=quarantine"
_dmarc.none         300 IN TXT "v=DMARC1; p=none; rua=mailto:agg@none.test"
_dmarc.sub          300 IN TXT "v=DMARC1; p=none; sp=reject"
_dmarc.pct0         300 IN TXT "v=DMARC1; p=reject; pct=0"
_dmarc.strict       300 IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"
_dmarc.twice        300 IN TXT "v=DMARC1; p=reject"
_dmarc.twice        300 IN TXT "v=DMARC1; p=none"
_dmarc.other        300 IN TXT "some other text"
_dmarc.example.co.uk. 300 IN TXT "v=DMARC1; p=reject"
"""
INJECT = plugin_source("""
    class Inject(Plugin):
        def hook_data_post_headers(self, transaction):
            spf, dkim = self.qp.inject
            if spf is not None:
                transaction.notes["dmarc_spf"] = {"domain": spf[0], "scope": "mfrom", "result": spf[1]}
            if dkim is not None:
                transaction.notes["dkim_results"] = [{"domain": d, "selector": "s", "result": r, "comment": ""}
                                                     for d, r in dkim]
            return DECLINED
""")
CAPTURE = plugin_source("""
    class Capture(Plugin):
        def hook_queue(self, transaction):
            self.qp.captured = transaction.header.as_string()
            self.qp.captured_notes = transaction.notes
            return OK, "captured"
""")


@pytest.fixture
def server():
    with FakeDNS(ZONE, servfail={"_dmarc.broken.test"}) as fake:
        yield fake


def make(reactor, tmp_path, server, args=""):  # noqa: F811
    qp = make_qp(tmp_path, {"dns_servers": server.address},
                 plugins=["inject", f"dmarc {args}".strip(), "rcpt_ok", "capture"],
                 plugin_files={"inject": INJECT, "capture": CAPTURE})
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)
    qp.captured = None
    qp.captured_notes = {}
    return qp


async def one_message(reactor, qp, from_header="From: A <a@reject.test>", spf=None, dkim=None,  # noqa: F811
                      relay_client=False):
    """One message; (the reply to its data, driver, the notes of the captured message)."""
    qp.inject = (spf, dkim)
    qp.captured_notes = {}
    driver = SessionDriver(qp, remote_ip="192.0.2.1")
    driver.session.connection.relay_client = relay_client
    await next_reply(reactor, driver)
    for command in ("EHLO client.example", "MAIL FROM:<a@bounce.test>", "RCPT TO:<b@test.example.org>", "DATA"):
        driver.send(f"{command}\r\n".encode())
        await next_reply(reactor, driver)
    head = f"{from_header}\r\n" if from_header else ""
    driver.send(f"{head}To: b@test.example.org\r\nSubject: hi\r\n\r\nHello.\r\n.\r\n".encode())
    return (await next_reply(reactor, driver, timeout=20))[-1], driver, qp.captured_notes


def deliver_many(reactor, jobs):  # noqa: F811
    """jobs: (qp, keyword arguments of one_message); one reactor run; their results."""

    async def talk():
        return [await one_message(reactor, qp, **kw) for qp, kw in jobs]

    return run(reactor, talk, timeout=60)


def deliver(reactor, qp, **kw):  # noqa: F811
    return deliver_many(reactor, [(qp, kw)])[0]


def dmarc_auth(notes):
    return [r for r in notes.get("authentication_results", []) if r.startswith("dmarc=")]


def test_aligned_spf_passes(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    reply, _, notes = deliver(reactor, qp, spf=("reject.test", "pass"))
    assert reply == "250 captured"
    assert dmarc_auth(notes) == ["dmarc=pass (p=reject) header.from=reject.test"]
    assert "dmarc=pass (p=reject) header.from=reject.test" in qp.captured
    note = notes["dmarc_result"]
    assert note["spf_aligned"] and not note["dkim_aligned"]


def test_aligned_dkim_passes_relaxed(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    reply, _, notes = deliver(reactor, qp, spf=("elsewhere.test", "pass"),
                              dkim=[("other.test", "pass"), ("mail.reject.test", "pass")])
    assert reply == "250 captured"
    assert notes["dmarc_result"]["dkim_aligned"]


def test_unaligned_or_failing_results_fail_and_p_reject_refuses(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    results = deliver_many(reactor, [
        (qp, {"spf": ("elsewhere.test", "pass"), "dkim": [("other.test", "pass"), ("reject.test", "fail")]}),
        (qp, {"spf": ("reject.test", "fail")}),
        (qp, {}),  # no SPF nor DKIM result at all
    ])
    for reply, driver, _ in results:
        assert reply == "552 failed DMARC policy"
        assert driver.session.connection.notes["karma"] == -3


def test_quarantine_is_refused(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    reply, _, _ = deliver(reactor, qp, from_header="From: a@quarantine.test")
    assert reply == "552 failed DMARC policy"


def test_p_none_is_accepted_and_annotated(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    reply, driver, notes = deliver(reactor, qp, from_header="From: a@none.test", spf=("x.test", "pass"))
    assert reply == "250 captured"
    assert dmarc_auth(notes) == ["dmarc=fail (p=none) header.from=none.test"]
    assert notes["dmarc_result"]["disposition"] == "none"
    assert "karma" not in driver.session.connection.notes


def test_sp_applies_to_subdomains(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    (own, _, _), (sub, _, _) = deliver_many(reactor, [(qp, {"from_header": "From: a@sub.test"}),
                                                      (qp, {"from_header": "From: a@mail.sub.test"})])
    assert own == "250 captured"  # p=none for the domain itself
    assert sub == "552 failed DMARC policy"  # sp=reject for its subdomains
    assert server.count("_dmarc.mail.sub.test", "TXT") == 1
    assert server.count("_dmarc.sub.test", "TXT") == 1  # the second time from the cache


def test_relaxed_and_strict_alignment(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    results = deliver_many(reactor, [
        (qp, {"from_header": "From: a@mail.reject.test", "spf": ("reject.test", "pass")}),
        (qp, {"from_header": "From: a@strict.test", "spf": ("mail.strict.test", "pass"),
              "dkim": [("mail.strict.test", "pass")]}),
        (qp, {"from_header": "From: a@strict.test", "dkim": [("STRICT.test", "pass")]}),
        (qp, {"from_header": "From: a@strict.test", "spf": ("strict.test", "pass")}),
    ])
    assert [reply for reply, _, _ in results] == ["250 captured", "552 failed DMARC policy", "250 captured",
                                                  "250 captured"]
    assert results[0][2]["dmarc_result"]["policy_domain"] == "reject.test"


def test_pct_0_samples_out(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    reply, _, notes = deliver(reactor, qp, from_header="From: a@pct0.test")
    assert reply == "250 captured"
    note = notes["dmarc_result"]
    assert (note["result"], note["disposition"], note["reason"]) == ("fail", "none", "sampled_out")


def test_no_record_is_none(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    domains = ("nothing.test", "other.test", "twice.test")
    results = deliver_many(reactor, [(qp, {"from_header": f"From: a@{d}"}) for d in domains])
    for domain, (reply, _, notes) in zip(domains, results, strict=True):
        assert reply == "250 captured"
        assert dmarc_auth(notes) == [f"dmarc=none header.from={domain}"]


def test_dns_failure_is_temperror_and_accepted(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    reply, _, notes = deliver(reactor, qp, from_header="From: a@broken.test")
    assert reply == "250 captured"
    assert dmarc_auth(notes) == ["dmarc=temperror header.from=broken.test"]


def test_organizational_domain_from_the_public_suffix_list(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    results = deliver_many(reactor, [
        (qp, {"from_header": "From: a@mail.example.co.uk"}),
        (qp, {"from_header": "From: a@mail.example.co.uk", "dkim": [("example.co.uk", "pass")]}),
        # example.co.uk and other.co.uk are different organizations
        (qp, {"from_header": "From: a@example.co.uk", "dkim": [("other.co.uk", "pass")]}),
    ])
    assert [reply for reply, _, _ in results] == ["552 failed DMARC policy", "250 captured",
                                                  "552 failed DMARC policy"]
    assert server.count("_dmarc.mail.example.co.uk", "TXT") == 1
    assert server.count("_dmarc.example.co.uk", "TXT") == 1
    assert server.count("_dmarc.co.uk", "TXT") == 0


def test_from_header_problems(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    results = deliver_many(reactor, [
        (qp, {"from_header": ""}),
        (qp, {"from_header": "From: a@reject.test, b@none.test"}),
        (qp, {"from_header": "From: a@reject.test, b@REJECT.test", "spf": ("reject.test", "pass")}),
    ])
    assert [reply for reply, _, _ in results] == ["552 empty from address, null sender?",
                                                  "552 unparseable from header", "250 captured"]


def test_reject_0_and_naughty_and_reject_type(reactor, tmp_path, server):  # noqa: F811
    results = deliver_many(reactor, [(make(reactor, tmp_path / name, server, args), {})
                                     for name, args in (("0", "reject 0"), ("n", "reject naughty"),
                                                        ("t", "reject_type temp"))])
    assert results[0][0] == "250 captured"
    assert results[1][0] == "250 captured"
    assert results[1][1].session.connection.notes["naughty"] == "(dmarc) failed DMARC policy"
    assert results[2][0].startswith("452 failed DMARC policy")


def test_relay_clients_are_skipped(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    reply, _, notes = deliver(reactor, qp, relay_client=True)
    assert reply == "250 captured"
    assert "dmarc_result" not in notes
    assert server.total() == 0


def test_reporting_records_one_line_per_message(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server)
    deliver_many(reactor, [
        (qp, {"spf": ("reject.test", "pass"), "dkim": [("other.test", "pass")]}),
        (qp, {"from_header": "From: a@none.test"}),
        (qp, {"from_header": "From: a@quarantine.test"}),  # no rua: nothing recorded
    ])
    lines = (tmp_path / "spool" / "dmarc" / "aggregate.jsonl").read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["header_from"] == "reject.test" and first["dmarc"] == "pass"
    assert first["source_ip"] == "192.0.2.1"
    assert first["envelope_from"] == "bounce.test" and first["envelope_to"] == "test.example.org"
    assert first["policy"]["rua"] == "mailto:agg@reject.test"
    assert first["dkim"] == [{"domain": "other.test", "selector": "s", "result": "pass"}]
    assert first["spf"]["result"] == "pass" and first["spf_aligned"] is True
    assert second["header_from"] == "none.test" and second["dmarc"] == "fail" and second["disposition"] == "none"


def test_reporting_file_and_off(reactor, tmp_path, server):  # noqa: F811
    target = tmp_path / "reports" / "dmarc.log"
    deliver_many(reactor, [(make(reactor, tmp_path / "a", server, f"reporting_file {target}"),
                            {"from_header": "From: a@none.test"}),
                           (make(reactor, tmp_path / "b", server, "reporting 0"),
                            {"from_header": "From: a@none.test"})])
    assert len(target.read_text().splitlines()) == 1
    assert not (tmp_path / "b" / "spool" / "dmarc").exists()
