"""The sender_permitted_from plugin: sessions on a reactor of their own, SPF records from tests/dns_server.py."""

from __future__ import annotations

import time

import pytest
from dns_server import FakeDNS
from harness import SessionDriver, make_qp, plugin_source
from reactor_helpers import capture_log, next_reply, reactor, run  # noqa: F401 (reactor is a fixture)

from qpsmtpd_py.dns import Resolver, nameservers_for

ZONE = """
pass       300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
fail       300 IN TXT "v=spf1 ip4:198.51.100.0/24 -all"
soft       300 IN TXT "v=spf1 ~all"
neutral    300 IN TXT "v=spf1 ?all"
none       300 IN A   192.0.2.77
none       300 IN TXT "just some text"
perm       300 IN TXT "v=spf1 +all"
perm       300 IN TXT "v=spf1 -all"
inc        300 IN TXT "v=spf1 include:pass.test -all"
_dmarc.policy 300 IN TXT "v=DMARC1; p=none"
redir      300 IN TXT "v=spf1 redirect=pass.test"
redirfail  300 IN TXT "v=spf1 redirect=fail.test"
macro      300 IN TXT "v=spf1 exists:%{i}._spf.%{d} -all"
192.0.2.1._spf.macro 300 IN A 127.0.0.2
local      300 IN TXT "v=spf1 exists:%{l}.users.%{d} -all"
good.users.local 300 IN A 127.0.0.2
incbroken  300 IN TXT "v=spf1 include:broken.test -all"
_dmarc.example.co.uk. 300 IN TXT "v=DMARC1; p=reject"
_dmarc.co.uk. 300 IN TXT "v=DMARC1; p=none"
"""
IP = "192.0.2.1"
CAPTURE = plugin_source("""
    class Capture(Plugin):
        def hook_queue(self, transaction):
            self.qp.captured = transaction.header.as_string()
            return OK, "captured"
""")
WHY = {
    "fail": f"domain of fail.test does not designate {IP} as permitted sender",
    "soft": f"transitioning domain of soft.test does not designate {IP} as permitted sender",
    "neutral": f"{IP} is neither permitted nor denied by domain of neutral.test",
    "none": f"{IP} is neither permitted nor denied by domain of none.test",
}


@pytest.fixture
def server():
    with FakeDNS(ZONE, servfail={"temp.test", "broken.test"}, slow={"slow.test": 3.0}) as fake:
        yield fake


def make(reactor, tmp_path, server, args="", files=None, plugins=()):  # noqa: F811
    files = {"dns_servers": server.address, **(files or {})}
    qp = make_qp(tmp_path, files, plugins=[f"sender_permitted_from {args}".strip(), *plugins, "rcpt_ok", "capture"],
                 plugin_files={"capture": CAPTURE})
    qp.runner.clock = reactor
    qp._dns_resolver = Resolver(nameservers_for(qp), reactor=reactor)
    return qp


def session(reactor, qp, commands, ip=IP, prepare=None):  # noqa: F811
    """Run `commands` (a bytes item is sent as data) in one session; (replies, driver)."""

    async def talk():
        driver = SessionDriver(qp, remote_ip=ip)
        await next_reply(reactor, driver)
        if prepare:
            prepare(driver)
        replies = []
        for command in commands:
            driver.send(command if isinstance(command, bytes) else f"{command}\r\n".encode())
            replies.append((await next_reply(reactor, driver))[-1])
        return replies, driver

    return run(reactor, talk)


def received_spf(header):
    lines = [line for line in header.splitlines() if line.startswith("Received-SPF:")]
    assert len(lines) == 1
    return lines[0]


def mail_replies(reactor, tmp_path, server, args, domains, **kw):  # noqa: F811
    qp = make(reactor, tmp_path, server, args, **kw)
    replies, driver = session(reactor, qp, ["HELO client.example", *(f"MAIL FROM:<user@{d}.test>" for d in domains)])
    return replies[1:], driver


DOMAINS = ["pass", "fail", "soft", "neutral", "none", "perm", "temp"]
ACCEPT = "250 "
# level -> the reply to MAIL from each of DOMAINS
EXPECTED = {
    0: [ACCEPT] * 7,
    1: [ACCEPT] * 7,
    2: [ACCEPT, f"450 SPF - fail: {WHY['fail']}", ACCEPT, ACCEPT, ACCEPT, ACCEPT, "450 SPF - temperror: "],
    3: [ACCEPT, f"550 SPF - forgery: {WHY['fail']}", f"450 SPF - fail: {WHY['soft']}", ACCEPT, ACCEPT, ACCEPT,
        "450 SPF - temperror: "],
    4: [ACCEPT, f"550 SPF - forgery: {WHY['fail']}", f"550 SPF - fail: {WHY['soft']}", ACCEPT, ACCEPT,
        "450 SPF - permerror: ", "450 SPF - temperror: "],
    5: [ACCEPT, f"550 SPF - forgery: {WHY['fail']}", f"550 SPF - fail: {WHY['soft']}",
        f"550 SPF - neutral: {WHY['neutral']}", ACCEPT, "450 SPF - permerror: ", "450 SPF - temperror: "],
    6: [ACCEPT, f"550 SPF - forgery: {WHY['fail']}", f"550 SPF - fail: {WHY['soft']}",
        f"550 SPF - neutral: {WHY['neutral']}", f"550 SPF - none: {WHY['none']}", "550 SPF - permerror: ",
        "450 SPF - temperror: "],
}


@pytest.mark.parametrize("level", sorted(EXPECTED))
def test_every_reject_level(reactor, tmp_path, server, level):  # noqa: F811
    replies, driver = mail_replies(reactor, tmp_path, server, f"reject {level}", DOMAINS)
    for domain, reply, expected in zip(DOMAINS, replies, EXPECTED[level], strict=True):
        assert reply.startswith(expected), (domain, reply)
    # karma: +1 for pass; -1 for fail and softfail, only with a reject level
    assert driver.session.connection.notes["karma"] == (1 if level == 0 else -1)


def test_results_are_noted_and_explained(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server, "reject 6")
    replies, driver = session(reactor, qp, ["HELO client.example", "MAIL FROM:<user@perm.test>"])
    result = driver.session.transaction.notes["spfquery"]
    assert result.code == "permerror"
    assert replies[1] == f"550 SPF - permerror: {result.why}"
    assert "permanent error in processing domain of perm.test" in result.why
    assert driver.session.transaction.notes["dmarc_spf"] == {"domain": "perm.test", "scope": "mfrom",
                                                             "result": "permerror"}


def test_temperror_and_level_1(reactor, tmp_path, server):  # noqa: F811
    replies, driver = mail_replies(reactor, tmp_path, server, "reject 1", ["temp"])
    assert replies == ["250 <user@temp.test>, sender OK - how exciting to get mail from you!"]
    result = driver.session.transaction.notes["spfquery"]
    assert result.code == "temperror"
    assert result.why.startswith("temporary error in processing during lookup of temp.test: ")


def test_include_and_case(reactor, tmp_path, server):  # noqa: F811
    replies, driver = mail_replies(reactor, tmp_path, server, "reject 6", ["INC"])
    assert replies[0].startswith("250 ")
    notes = driver.session.transaction.notes
    assert notes["spfquery"].code == "pass"
    assert notes["spf_pass_host"] == "inc.test"


def test_legacy_spf_deny_and_spfbehavior(reactor, tmp_path, server):  # noqa: F811
    replies, _ = mail_replies(reactor, tmp_path, server, "spf_deny 1", ["soft", "fail"])
    assert replies[0].startswith("450 SPF - fail: ") and replies[1].startswith("550 SPF - forgery: ")


def test_spf_deny_2_is_reject_4(reactor, tmp_path, server):  # noqa: F811
    replies, _ = mail_replies(reactor, tmp_path, server, "spf_deny 2 reject 1", ["soft"])
    assert replies[0].startswith("550 SPF - fail: ")


def test_spfbehavior_config_when_no_reject(reactor, tmp_path, server):  # noqa: F811
    replies, _ = mail_replies(reactor, tmp_path, server, "", ["neutral"], files={"spfbehavior": "5"})
    assert replies[0].startswith("550 SPF - neutral: ")


def test_reject_argument_wins_over_spfbehavior(reactor, tmp_path, server):  # noqa: F811
    replies, _ = mail_replies(reactor, tmp_path, server, "reject 3", ["neutral"], files={"spfbehavior": "5"})
    assert replies[0].startswith("250 ")


def test_bad_arguments(tmp_path):
    bad = {"reject 7": "reject must be 0 to 6", "spf_deny 3": "spf_deny must be", "no_dmarc_policy 5":
           "no_dmarc_policy must be", "timeout x": "timeout must be", "reject": "takes key value pairs"}
    for args, error in bad.items():
        with pytest.raises(AssertionError, match=error):
            make_qp(tmp_path, {"dns_servers": "127.0.0.1:1"}, plugins=[f"sender_permitted_from {args}"])


def test_headers_and_authentication_results(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server, "reject 3")
    replies, _ = session(reactor, qp, ["HELO client.example", "MAIL FROM:<user@pass.test>",
                                       "RCPT TO:<b@test.example.org>", "DATA", b"Subject: hi\r\n\r\nbody\r\n.\r\n"])
    assert replies[-1] == "250 captured"
    lines = qp.captured.splitlines()
    assert lines[0] == "Authentication-Results: test.example.org; auth=none; spf=pass smtp.mailfrom=pass.test"
    assert received_spf(qp.captured) == (
        f"Received-SPF: Pass (test.example.org: domain of pass.test designates {IP} as permitted "
        f"sender) client-ip={IP}; envelope-from=\"user@pass.test\"; helo=client.example; "
        "receiver=test.example.org; mechanism=\"ip4:192.0.2.0/24\"; identity=mailfrom")
    assert lines[1].startswith("Received: from ")


def test_tolerated_fail_is_annotated_for_that_message_only(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server, "reject 1")
    replies, driver = session(reactor, qp, ["HELO client.example", "MAIL FROM:<user@soft.test>",
                                            "RCPT TO:<b@test.example.org>", "DATA",
                                            b"Subject: hi\r\n\r\nbody\r\n.\r\n",
                                            "MAIL FROM:<>", "RCPT TO:<b@test.example.org>", "DATA",
                                            b"Subject: two\r\n\r\nbody\r\n.\r\n"])
    assert replies[4] == replies[8] == "250 captured"
    # the second message (null sender): no SPF result at all
    assert "Received-SPF" not in qp.captured
    assert "spf=" not in qp.captured


def test_softfail_header(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server, "reject 2")
    replies, _ = session(reactor, qp, ["HELO client.example", "MAIL FROM:<user@soft.test>",
                                       "RCPT TO:<b@test.example.org>", "DATA", b"Subject: hi\r\n\r\nbody\r\n.\r\n"])
    assert replies[-1] == "250 captured"
    assert received_spf(qp.captured).startswith(
        f"Received-SPF: SoftFail (test.example.org: {WHY['soft']}) client-ip={IP};")
    assert "spf=softfail smtp.mailfrom=soft.test" in qp.captured


def test_null_sender_is_not_checked(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server, "reject 6")
    replies, driver = session(reactor, qp, ["HELO client.example", "MAIL FROM:<>"])
    assert replies[1].startswith("250 ")
    assert driver.session.transaction.notes["dmarc_spf"] == {"scope": "helo", "result": "none"}
    assert server.total() == 0


def test_relay_client_is_not_checked(reactor, tmp_path, server):  # noqa: F811
    def relay(driver):
        driver.session.connection.relay_client = True

    qp = make(reactor, tmp_path, server, "reject 6")
    replies, driver = session(reactor, qp, ["HELO client.example", "MAIL FROM:<user@fail.test>"], prepare=relay)
    assert replies[1].startswith("250 ")
    assert driver.session.transaction.notes["dmarc_spf"] == {"domain": "fail.test", "scope": "mfrom",
                                                             "result": "pass"}
    assert "spfquery" not in driver.session.transaction.notes
    assert server.total() == 0


def test_authenticated_user_is_not_checked(reactor, tmp_path, server):  # noqa: F811
    def authenticated(driver):
        driver.session.connection.notes["auth_user"] = "user@fail.test"

    qp = make(reactor, tmp_path, server, "reject 6")
    replies, _ = session(reactor, qp, ["HELO client.example", "MAIL FROM:<user@fail.test>"], prepare=authenticated)
    assert replies[1].startswith("250 ")
    assert server.total() == 0


def test_slow_dns_costs_at_most_the_timeout(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server, "reject 2 timeout 1")
    started = time.monotonic()
    replies, driver = session(reactor, qp, ["HELO client.example", "MAIL FROM:<user@slow.test>"])
    assert time.monotonic() - started < 2.8
    assert replies[1].startswith("450 SPF - temperror: ")


def test_no_dmarc_policy(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server, "reject 1 no_dmarc_policy 1")
    message = b"From: <user@fail.test>\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"
    policy = b"From: someone <user@policy.test>\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"
    replies, _ = session(reactor, qp, [
        "HELO client.example",
        "MAIL FROM:<user@fail.test>", "RCPT TO:<b@test.example.org>", "DATA", message,
        "MAIL FROM:<user@fail.test>", "RCPT TO:<b@test.example.org>", "DATA", policy,
        "MAIL FROM:<user@soft.test>", "RCPT TO:<b@test.example.org>", "DATA", message,
    ])
    assert replies[4] == f"552 SPF - fail: {WHY['fail']}"  # no DMARC record for fail.test
    assert replies[8] == "250 captured"  # policy.test publishes one
    assert replies[12] == "250 captured"  # softfail needs no_dmarc_policy 2
    assert server.count("_dmarc.fail.test", "TXT") >= 1
    assert server.count("_dmarc.policy.test", "TXT") >= 1


def test_no_dmarc_policy_levels(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server, "reject 0 no_dmarc_policy 4")
    commands = ["HELO client.example"]
    for domain in ("soft", "neutral", "perm", "none", "pass"):
        commands += [f"MAIL FROM:<user@{domain}.test>", "RCPT TO:<b@test.example.org>", "DATA",
                     f"From: <x@{domain}.test>\r\n\r\nbody\r\n.\r\n".encode()]
    replies, _ = session(reactor, qp, commands)
    ends = replies[4::4]
    assert ends[0] == f"552 SPF - softfail: {WHY['soft']}"
    assert ends[1] == f"552 SPF - neutral: {WHY['neutral']}"
    assert ends[2].startswith("552 SPF - permerror: ")
    assert ends[3] == f"552 SPF - none: {WHY['none']}"
    assert ends[4] == "250 captured"


def test_log_lines(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server, "reject 3")
    log = capture_log(qp)
    session(reactor, qp, ["HELO client.example", "MAIL FROM:<user@pass.test>", "MAIL FROM:<user@fail.test>"])
    messages = [message for _, message in log]
    assert any(m.endswith(f"pass, domain of pass.test designates {IP} as permitted sender") for m in messages)
    assert any(m.endswith(f"fail, {WHY['fail']}") for m in messages)


# -- redirect=, macros, include: of a broken domain -------------------------------------------

def spf_result(reactor, tmp_path, server, sender, ip=IP):  # noqa: F811
    qp = make(reactor, tmp_path, server, "reject 0")
    replies, driver = session(reactor, qp, ["HELO client.example", f"MAIL FROM:<{sender}>"], ip=ip)
    assert replies[1].startswith("250 ")
    return driver.session.transaction.notes["spfquery"]


def test_redirect_passes_through_the_redirected_record(reactor, tmp_path, server):  # noqa: F811
    result = spf_result(reactor, tmp_path, server, "user@redir.test")
    assert result.code == "pass"
    assert 'mechanism="ip4:192.0.2.0/24"' in result.header
    assert server.count("pass.test", "TXT") >= 1


def test_redirect_to_a_failing_record_fails(reactor, tmp_path, server):  # noqa: F811
    result = spf_result(reactor, tmp_path, server, "user@redirfail.test")
    assert result.code == "fail"
    assert server.count("fail.test", "TXT") >= 1


def test_exists_with_ip_and_domain_macros(reactor, tmp_path, server):  # noqa: F811
    result = spf_result(reactor, tmp_path, server, "user@macro.test")
    assert result.code == "pass"
    assert server.count("192.0.2.1._spf.macro.test", "A") >= 1


def test_exists_macro_without_a_record_gives_the_all_result(reactor, tmp_path, server):  # noqa: F811
    result = spf_result(reactor, tmp_path, server, "user@macro.test", ip="192.0.2.2")
    assert result.code == "fail"
    assert server.count("192.0.2.2._spf.macro.test", "A") >= 1


def test_exists_with_the_local_part_macro(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server, "reject 3")
    replies, _ = session(reactor, qp, ["HELO client.example", "MAIL FROM:<good@local.test>", "RSET",
                                       "MAIL FROM:<bad@local.test>"])
    assert replies[1].startswith("250 ")
    assert replies[3].startswith("550 SPF - forgery: ")
    assert server.count("good.users.local.test", "A") >= 1
    assert server.count("bad.users.local.test", "A") >= 1


def test_include_of_a_servfail_domain_is_a_temperror(reactor, tmp_path, server):  # noqa: F811
    replies, driver = mail_replies(reactor, tmp_path, server, "reject 2", ["incbroken"])
    assert replies[0].startswith("450 SPF - temperror: ")
    assert driver.session.transaction.notes["spfquery"].code == "temperror"
    assert server.count("broken.test", "TXT") >= 1


def test_no_dmarc_policy_looks_at_the_organizational_domain(reactor, tmp_path, server):  # noqa: F811
    qp = make(reactor, tmp_path, server, "reject 1 no_dmarc_policy 1")
    commands = ["HELO client.example"]
    for domain in ("mail.example.co.uk", "mail.other.co.uk"):
        commands += ["MAIL FROM:<user@fail.test>", "RCPT TO:<b@test.example.org>", "DATA",
                     f"From: <x@{domain}>\r\n\r\nbody\r\n.\r\n".encode()]
    replies, _ = session(reactor, qp, commands)
    assert replies[4] == "250 captured"  # the policy of example.co.uk
    assert replies[8] == f"552 SPF - fail: {WHY['fail']}"  # other.co.uk has none; co.uk is a public suffix
    assert server.count("_dmarc.mail.example.co.uk", "TXT") >= 1
    assert server.count("_dmarc.example.co.uk", "TXT") >= 1
    assert server.count("_dmarc.other.co.uk", "TXT") >= 1
    assert server.count("_dmarc.co.uk", "TXT") == 0
