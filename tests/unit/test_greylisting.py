"""greylisting: the triplet, the black/white periods on a fake clock, deferral points and every exemption."""

from __future__ import annotations

import pytest
from harness import SessionDriver, make_qp, plugin_source, write_config
from reactor_helpers import capture_log, next_reply, reactor, run  # noqa: F401  (reactor is a fixture)
from redis_server import redis_server  # noqa: F401  (a fixture)

from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import LOGERROR
from qpsmtpd_py.qp import Qpsmtpd

CLIENT = "192.0.2.1"
CLIENT_KEY = str(0xC0000201)
MAIL = ["HELO client.example", "MAIL FROM:<a@example.com>"]




@pytest.fixture
def grey_qp(tmp_path, reactor, clock):  # noqa: F811
    """grey_qp("args", files=, before=) -> a qp with greylisting on the test reactor and fake clock."""

    def make(line="", files=None, before=(), plugin_files=None):
        files = dict(files or {})
        qp = make_qp(tmp_path, files=files, plugins=[*before, f"greylisting db_dir {tmp_path / 'db'} {line}",
                                                       "rcpt_ok"], plugin_files=plugin_files)
        qp.runner.clock = reactor
        plugin = greylisting(qp)
        plugin.reactor = reactor
        plugin.clock = clock
        return qp

    return make


def greylisting(qp):
    return next(p for p in qp.plugins if p.name == "greylisting")


async def converse(reactor, qp, lines, remote_ip=CLIENT, notes=None, relay=False, host=None):  # noqa: F811
    """One session: the last reply line to each of `lines`."""
    driver = SessionDriver(qp, remote_ip=remote_ip)
    await next_reply(reactor, driver)
    driver.session.connection.notes.update(notes or {})
    driver.session.connection.relay_client = relay
    if host:
        driver.session.connection.remote_host = host
    replies = []
    for line in lines:
        driver.send(line.encode() + b"\r\n")
        replies.append((await next_reply(reactor, driver))[-1])
    driver.close()
    return replies


async def stored(qp, key=CLIENT_KEY):
    return await (await greylisting(qp).store()).get(key)


def test_first_attempt_is_deferred_until_black_timeout_then_white(reactor, grey_qp, clock):  # noqa: F811
    qp = grey_qp("black_timeout 60")

    async def go():
        seen = [(await converse(reactor, qp, MAIL))[-1], await stored(qp)]
        clock.now += 30
        seen += [(await converse(reactor, qp, MAIL))[-1], await stored(qp)]
        clock.now += 31
        seen += [(await converse(reactor, qp, MAIL))[-1], await stored(qp)]
        clock.now += 3600
        seen += [(await converse(reactor, qp, MAIL))[-1], await stored(qp)]
        return seen

    first = int(clock.now)
    assert run(reactor, go) == [
        "450 This mail is temporarily denied", f"{first}:1:0:0",
        "450 This mail is temporarily denied", f"{first}:1:1:0",
        "250 <a@example.com>, sender OK - how exciting to get mail from you!", f"{first}:1:1:1",
        "250 <a@example.com>, sender OK - how exciting to get mail from you!", f"{first + 61 + 3600}:1:1:2",
    ]


def test_white_entry_goes_black_again_after_white_timeout(reactor, grey_qp, clock):  # noqa: F811
    qp = grey_qp("black_timeout 60 white_timeout 1000")

    async def go():
        await converse(reactor, qp, MAIL)
        clock.now += 61
        passed = (await converse(reactor, qp, MAIL))[-1]
        clock.now += 1001
        return passed[:3], (await converse(reactor, qp, MAIL))[-1][:3]

    assert run(reactor, go) == ("250", "450")


def test_ipv6_client_is_keyed_by_its_integer(reactor, grey_qp):  # noqa: F811
    qp = grey_qp()

    async def go():
        await converse(reactor, qp, MAIL, remote_ip="2001:db8::1")
        return await stored(qp, str(0x20010DB8000000000000000000000001))

    assert run(reactor, go).endswith(":1:0:0")


def test_sender_and_recipient_triplet_greylists_at_rcpt(reactor, grey_qp, clock):  # noqa: F811
    qp = grey_qp("sender 1 recipient 1 black_timeout 10")
    rcpt = ["HELO c", "MAIL FROM:<a@example.com>", "RCPT TO:<u@test.example.org>"]
    other = ["HELO c", "MAIL FROM:<a@example.com>", "RCPT TO:<v@test.example.org>"]

    async def go():
        first = await converse(reactor, qp, rcpt)
        clock.now += 11
        again = await converse(reactor, qp, rcpt)
        new_recipient = await converse(reactor, qp, other)
        key = await stored(qp, f"{CLIENT_KEY}:a@example.com:u@test.example.org")
        return first[1][:3], first[2], again[2][:3], new_recipient[2][:3], key

    mail, first, again, new_recipient, key = run(reactor, go)
    assert (mail, first, again, new_recipient) == ("250", "450 This mail is temporarily denied", "250", "450")
    assert key.endswith(":1:0:1")  # deferred once (not counted as black), then delivered


def test_deny_late_defers_at_data_with_451(reactor, grey_qp):  # noqa: F811
    qp = grey_qp("deny_late 1")
    replies = run(reactor, lambda: converse(reactor, qp, [*MAIL, "RCPT TO:<u@test.example.org>", "DATA"]))
    assert [r[:3] for r in replies] == ["250", "250", "250", "451"]
    assert replies[-1] == "451 This mail is temporarily denied"


def test_null_sender_is_deferred_at_data_not_rcpt(reactor, grey_qp):  # noqa: F811
    qp = grey_qp("recipient 1")
    replies = run(reactor, lambda: converse(reactor, qp, ["HELO c", "MAIL FROM:<>", "RCPT TO:<u@test.example.org>",
                                                          "DATA"]))
    assert [r[:3] for r in replies] == ["250", "250", "250", "451"]


def test_all_recipients_whitelisted_lets_a_late_deferral_pass(reactor, grey_qp):  # noqa: F811
    marker = plugin_source("""
        class MarkRecipients(Plugin):
            def hook_rcpt(self, transaction, recipient, *args):
                transaction.notes["whitelistrcpt"] = transaction.notes.get("whitelistrcpt", 0) + 1
                return DECLINED
    """)
    qp = grey_qp("deny_late 1", before=["mark"], plugin_files={"mark": marker})
    replies = run(reactor, lambda: converse(reactor, qp, [*MAIL, "RCPT TO:<u@test.example.org>", "DATA"]))
    assert replies[-1][:3] == "354"


def test_reject_0_records_but_lets_mail_through(reactor, grey_qp):  # noqa: F811
    qp = grey_qp("reject 0")

    async def go():
        return (await converse(reactor, qp, MAIL))[-1][:3], await stored(qp)

    reply, value = run(reactor, go)
    assert reply == "250" and value.endswith(":1:0:0")


@pytest.mark.parametrize(("session", "why"), [
    ({"relay": True}, "relay client"),
    ({"notes": {"whitelisthost": 1}}, "whitelisted host"),
    ({"notes": {"tls_enabled": 1}}, "TLS session"),
])
def test_exempt_clients_pass_and_are_not_recorded(reactor, grey_qp, session, why):  # noqa: F811
    qp = grey_qp()
    log = capture_log(qp)

    async def go():
        return (await converse(reactor, qp, MAIL, **session))[-1][:3], await stored(qp)

    assert run(reactor, go) == ("250", None)
    assert any(why in message for _, message in log)


@pytest.mark.parametrize(("p0f", "expected"), [
    ({"genre": "Windows", "detail": "XP"}, "450"),
    ({"genre": "Linux", "detail": "3.x"}, "250"),
    ({"genre": "Linux", "distance": 9}, "450"),
    (None, "250"),  # no fingerprint: not greylisted
])
def test_p0f_criteria_choose_who_is_greylisted(reactor, grey_qp, p0f, expected):  # noqa: F811
    qp = grey_qp("p0f genre,windows,distance,5")
    notes = {"p0f": p0f} if p0f else {}
    assert run(reactor, lambda: converse(reactor, qp, MAIL, notes=notes))[-1][:3] == expected


@pytest.mark.parametrize(("country", "expected"), [("us", "250"), ("CA", "250"), ("CN", "450"), (None, "450")])
def test_geoip_countries_are_not_greylisted(reactor, grey_qp, country, expected):  # noqa: F811
    qp = grey_qp("geoip US,CA")
    notes = {"geoip_country": country} if country else {}
    assert run(reactor, lambda: converse(reactor, qp, MAIL, notes=notes))[-1][:3] == expected


@pytest.mark.parametrize(("ip", "host", "expected"), [
    ("192.0.2.7", None, "250"),
    (CLIENT, "mx.friendly.example", "250"),
    (CLIENT, "out-17.bulk.example", "250"),
    (CLIENT, "mx.stranger.example", "450"),
    (CLIENT, None, "450"),
])
def test_exclude_files_list_ips_names_and_patterns(reactor, grey_qp, tmp_path, ip, host, expected):  # noqa: F811
    (tmp_path / "clients").write_text("# friends\n192.0.2.7\nmx.friendly.example  # ours\n/^out-\\d+\\.bulk\\./\n")
    qp = grey_qp(files={"greylist_exclude_files": str(tmp_path / "clients")})
    assert run(reactor, lambda: converse(reactor, qp, MAIL, remote_ip=ip, host=host))[-1][:3] == expected


def test_denysoft_greylist_file_sets_defaults_and_arguments_win(reactor, grey_qp, clock):  # noqa: F811
    qp = grey_qp("white_timeout 99", files={"denysoft_greylist": ["black_timeout 5", "white_timeout 7"]})
    assert greylisting(qp).timeouts == {"black_timeout": 5.0, "white_timeout": 99.0}

    async def go():
        await converse(reactor, qp, MAIL)
        clock.now += 6
        return (await converse(reactor, qp, MAIL))[-1][:3]

    assert run(reactor, go) == "250"


def test_per_recipient_timeouts_come_from_user_config(reactor, grey_qp, clock):  # noqa: F811
    per_user = plugin_source("""
        class PerUser(Plugin):
            def hook_user_config(self, transaction, address, key):
                if key == "denysoft_greylist" and address.user == "patient":
                    return OK, "black_timeout 3600"
                return DECLINED
    """)
    qp = grey_qp("per_recipient 1 black_timeout 10", before=["per_user"], plugin_files={"per_user": per_user})

    async def go():
        replies = []
        for user in ("hasty", "patient"):
            await converse(reactor, qp, ["HELO c", "MAIL FROM:<a@example.com>", f"RCPT TO:<{user}@test.example.org>"],
                           remote_ip=f"192.0.2.{len(user)}")
        clock.now += 11
        for user in ("hasty", "patient"):
            replies.append((await converse(reactor, qp, ["HELO c", "MAIL FROM:<a@example.com>",
                                                         f"RCPT TO:<{user}@test.example.org>"],
                                           remote_ip=f"192.0.2.{len(user)}"))[-1][:3])
        return replies

    assert run(reactor, go) == ["250", "450"]


def test_unreachable_redis_lets_mail_through_and_logs(reactor, tmp_path, clock):  # noqa: F811
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        qp = make_qp(tmp_path, plugins=[f"greylisting redis 127.0.0.1:{sock.getsockname()[1]}", "rcpt_ok"])
        qp.runner.clock = reactor
        greylisting(qp).reactor = reactor
        log = capture_log(qp)
        assert run(reactor, lambda: converse(reactor, qp, MAIL))[-1][:3] == "250"
    assert any(level == LOGERROR and "UNABLE TO OBTAIN GREYLIST RESULT: cannot connect to redis" in message
               for level, message in log)


def test_redis_greylist_is_shared_by_two_hosts(reactor, tmp_path, clock, redis_server):  # noqa: F811
    hosts = []
    for name in ("mx1", "mx2"):
        qp = make_qp(tmp_path / name, plugins=[f"greylisting redis {redis_server.url} black_timeout 60", "rcpt_ok"])
        qp.runner.clock = reactor
        greylisting(qp).reactor = reactor
        greylisting(qp).clock = clock
        hosts.append(qp)

    async def go():
        first = (await converse(reactor, hosts[0], MAIL))[-1][:3]
        clock.now += 61
        return first, (await converse(reactor, hosts[1], MAIL))[-1][:3]

    assert run(reactor, go) == ("450", "250")


def test_upgrade_rewrites_dotted_ip_keys(reactor, grey_qp):  # noqa: F811
    qp = grey_qp("upgrade 1")
    plugin = greylisting(qp)

    async def go():
        store = plugin.store_settings.open(reactor)
        await store.set("192.0.2.9:a@example.com", "1700000000:1:1:3")
        await store.set("3221225993", "1700000000:1:0:0")
        await store.close()
        await plugin.store()
        return await (await plugin.store()).scan()

    assert run(reactor, go) == {f"{0xC0000209}:a@example.com": "1700000000:1:1:3", "3221225993": "1700000000:1:0:0"}


@pytest.mark.parametrize(("line", "files", "message"), [
    ("remote_ip 0", {}, "triplet is empty"),
    ("black_timeout soon", {}, "black_timeout must be a number of seconds"),
    ("p0f os,windows", {}, "p0f key 'os' is not one of"),
    ("p0f genre", {}, "p0f takes key,value pairs"),
    ("sender yes", {}, "sender must be 0 or 1"),
    ("reject 2", {}, "reject must be 0 or 1"),
    ("redis host:port", {}, "redis must be host"),
    ("", {"greylist_exclude_files": "/nonexistent/clients"}, "cannot be read"),
])
def test_bad_settings_stop_start_up(tmp_path, line, files, message):
    config = write_config(tmp_path / "config", {"me": "x", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": [f"greylisting db_dir {tmp_path} {line}"], **files})
    errors = Qpsmtpd(ConfigReader([config])).load()
    assert len(errors) == 1 and message in str(errors[0])


def test_odd_arguments_are_refused(tmp_path):
    with pytest.raises(AssertionError, match="arguments come in pairs"):
        make_qp(tmp_path, plugins=["greylisting reject"])
