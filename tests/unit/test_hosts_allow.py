"""The hosts_allow plugin: per-IP session limit and config/hosts_allow rules."""

import pytest
from harness import SessionDriver, make_qp, plugin_source, write_config
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport

from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import (
    DECLINED,
    DENYSOFT,
    LOGDEBUG,
    LOGERROR,
    LOGINFO,
    LOGWARN,
)
from qpsmtpd_py.log import current_session
from qpsmtpd_py.qp import Qpsmtpd
from qpsmtpd_py.session_factory import SessionFactory
from qpsmtpd_py.settings import Settings

GREETING = "220 test.example.org ESMTP"
DENIED = "550 Sorry, service not available to you"
DEFERRED = "451 Sorry, try again later"

# Sets the connection note karma_history from config/test_karma (`ip value` lines),
# as qpsmtpd's karma plugin does in its own pre-connection hook.
KARMA = plugin_source("""
    class Karma(Plugin):
        def hook_pre_connection(self, transaction, info):
            for line in self.qp.config_list("test_karma"):
                ip, value = line.split()
                if ip == info["remote_ip"]:
                    self.connection.notes["karma_history"] = int(value)
            return DECLINED
""")

# Refuses everyone in pre-connection: shows whether hosts_allow let later plugins run.
REFUSE_ALL = plugin_source("""
    class RefuseAll(Plugin):
        def hook_pre_connection(self, transaction, info):
            return DENY, "refused by a later plugin"
""")


def capture_log(qp):
    """Every (level, plugin, message) the daemon logs from now on."""
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def hosts_qp(tmp_path, rules=None, before=(), after=(), files=None):
    files = dict(files or {})
    if rules is not None:
        files["hosts_allow"] = rules
    return make_qp(tmp_path, files=files, plugins=[*before, "hosts_allow", *after, "rcpt_ok"],
                   plugin_files={"karma": KARMA, "refuse_all": REFUSE_ALL})


class Client(SessionDriver):
    """A session of a shared SessionFactory: the factory's other sessions are child_addrs."""

    def __init__(self, factory, remote_ip, local_ip=None):
        self.factory = factory
        self.session = factory.buildProtocol(None)
        family = IPv6Address if ":" in remote_ip else IPv4Address
        local_ip = local_ip or ("::1" if ":" in remote_ip else "127.0.0.1")
        self.transport = StringTransport(peerAddress=family("TCP", remote_ip, 40000),
                                         hostAddress=family("TCP", local_ip, 25))
        self.session.makeConnection(self.transport)


def child_process(qp, max_from_ip):
    return SessionFactory(qp, Settings(max_from_ip=max_from_ip))


def greeted(client):
    reply = client.take()
    return len(reply) == 1 and reply[0].startswith(GREETING) and not client.closed


def refused(client, reply):
    return client.take() == [reply] and client.closed


def first_reply(qp, ip):
    driver = SessionDriver(qp, remote_ip=ip)
    reply = driver.take()
    assert len(reply) == 1
    if reply[0].startswith("220 "):
        assert not driver.closed
        return "220"
    assert driver.closed, "a refused client must be disconnected"
    return reply[0]


def run_hook(qp, info, notes=None):
    """Call the plugin's pre-connection hook directly, as the core would."""
    plugin = next(entry.plugin for entry in qp.hooks.entries("pre-connection") if entry.name == "hosts_allow")
    driver = SessionDriver(qp)  # a session, for self.connection
    driver.session.connection.notes.update(notes or {})
    current_session.set(driver.session)
    full = {"remote_ip": "192.0.2.1", "remote_port": 40000, "local_ip": "127.0.0.1", "local_port": 25,
            "max_conn_ip": 2, "child_addrs": []}
    full.update(info)
    return plugin.hook_pre_connection(None, full)


# -- the per-IP limit --------------------------------------------------------------------------

def test_sessions_up_to_the_limit_are_greeted(tmp_path):
    factory = child_process(hosts_qp(tmp_path), 2)
    assert greeted(Client(factory, "192.0.2.1"))
    assert greeted(Client(factory, "192.0.2.1"))


def test_the_session_over_the_limit_gets_451_and_is_closed(tmp_path):
    qp = hosts_qp(tmp_path)
    log = capture_log(qp)
    factory = child_process(qp, 2)
    Client(factory, "192.0.2.1")
    Client(factory, "192.0.2.1")
    third = Client(factory, "192.0.2.1")
    assert refused(third, "451 too many connections from 192.0.2.1, try again later")
    assert (LOGINFO, "hosts_allow", "fail: too many connections from 192.0.2.1 (3 > 2)") in log


def test_other_addresses_do_not_count(tmp_path):
    factory = child_process(hosts_qp(tmp_path), 1)
    for ip in ("192.0.2.1", "192.0.2.2", "198.51.100.1", "2001:db8::1"):
        assert greeted(Client(factory, ip)), ip
    assert refused(Client(factory, "192.0.2.2"), "451 too many connections from 192.0.2.2, try again later")


def test_a_session_that_ended_no_longer_counts(tmp_path):
    factory = child_process(hosts_qp(tmp_path), 1)
    first = Client(factory, "192.0.2.1")
    assert greeted(first)
    first.close()
    assert greeted(Client(factory, "192.0.2.1"))


def test_limit_0_means_no_limit(tmp_path):
    factory = child_process(hosts_qp(tmp_path), 0)
    for _ in range(20):
        assert greeted(Client(factory, "192.0.2.1"))
    qp = hosts_qp(tmp_path / "direct")
    assert run_hook(qp, {"max_conn_ip": 0, "child_addrs": ["192.0.2.1"] * 50}) == DECLINED


def test_the_limit_counts_the_new_session_plus_child_addrs(tmp_path):
    qp = hosts_qp(tmp_path)
    assert run_hook(qp, {"max_conn_ip": 3, "child_addrs": ["192.0.2.1", "192.0.2.9", "192.0.2.1"]}) == DECLINED
    assert run_hook(qp, {"max_conn_ip": 2, "child_addrs": ["192.0.2.1", "192.0.2.9", "192.0.2.1"]}) == (
        DENYSOFT, "too many connections from 192.0.2.1, try again later")
    assert run_hook(qp, {"max_conn_ip": 1, "child_addrs": [None, "192.0.2.9"]}) == DECLINED


def test_ipv6_sessions_are_counted(tmp_path):
    factory = child_process(hosts_qp(tmp_path), 2)
    assert greeted(Client(factory, "2001:db8::25"))
    assert greeted(Client(factory, "2001:db8::25"))
    assert greeted(Client(factory, "2001:db8::26"))
    assert refused(Client(factory, "2001:db8::25"), "451 too many connections from 2001:db8::25, try again later")


def test_ipv6_addresses_match_whatever_their_notation(tmp_path):
    qp = hosts_qp(tmp_path)
    info = {"remote_ip": "2001:db8::25", "max_conn_ip": 2,
            "child_addrs": ["2001:DB8:0:0:0:0:0:25", "2001:0db8::0025"]}
    assert run_hook(qp, info) == (DENYSOFT, "too many connections from 2001:db8::25, try again later")


def test_an_ipv4_client_on_an_ipv6_listener_counts_as_the_same_ipv4_address(tmp_path):
    factory = child_process(hosts_qp(tmp_path), 2)
    assert greeted(Client(factory, "192.0.2.1"))  # on 0.0.0.0
    assert greeted(Client(factory, "::ffff:192.0.2.1", local_ip="::1"))  # on [::]
    assert refused(Client(factory, "::ffff:192.0.2.1", local_ip="::1"),
                   "451 too many connections from 192.0.2.1, try again later")
    assert refused(Client(factory, "192.0.2.1"), "451 too many connections from 192.0.2.1, try again later")


def test_mapped_forms_in_child_addrs_count_too(tmp_path):
    qp = hosts_qp(tmp_path)
    info = {"remote_ip": "192.0.2.1", "max_conn_ip": 2, "child_addrs": ["::ffff:192.0.2.1", "::FFFF:c000:201"]}
    assert run_hook(qp, info)[0] == DENYSOFT


# -- karma -------------------------------------------------------------------------------------

def test_good_karma_allows_three_more_sessions(tmp_path):
    qp = hosts_qp(tmp_path, before=["karma"], files={"test_karma": "192.0.2.1 6\n192.0.2.2 5\n"})
    log = capture_log(qp)
    factory = child_process(qp, 1)
    for _ in range(4):
        assert greeted(Client(factory, "192.0.2.1"))
    assert (LOGDEBUG, "hosts_allow", "connect limit +3 for positive karma") in log
    assert refused(Client(factory, "192.0.2.1"), "451 too many connections from 192.0.2.1, try again later")
    assert (LOGINFO, "hosts_allow", "fail: too many connections from 192.0.2.1 (5 > 4)") in log
    # 5 is not more than 5: the plain limit.
    assert greeted(Client(factory, "192.0.2.2"))
    assert refused(Client(factory, "192.0.2.2"), "451 too many connections from 192.0.2.2, try again later")


@pytest.mark.parametrize("karma", [0, -3])
def test_bad_karma_allows_one_session(tmp_path, karma):
    qp = hosts_qp(tmp_path, before=["karma"], files={"test_karma": f"192.0.2.1 {karma}\n"})
    log = capture_log(qp)
    factory = child_process(qp, 10)
    assert greeted(Client(factory, "192.0.2.1"))
    assert (LOGINFO, "hosts_allow", f"connect limit 1, karma {karma}") in log
    assert refused(Client(factory, "192.0.2.1"), "451 too many connections from 192.0.2.1, try again later")
    assert (LOGINFO, "hosts_allow", "fail: too many connections from 192.0.2.1 (2 > 1)") in log
    assert greeted(Client(factory, "192.0.2.2"))  # no karma note: the plain limit


def test_karma_does_not_impose_a_limit_when_there_is_none(tmp_path):
    qp = hosts_qp(tmp_path)
    assert run_hook(qp, {"max_conn_ip": 0, "child_addrs": ["192.0.2.1"]}, {"karma_history": -5}) == DECLINED


def test_karma_that_is_no_number_is_ignored(tmp_path):
    qp = hosts_qp(tmp_path)
    log = capture_log(qp)
    assert run_hook(qp, {"max_conn_ip": 2, "child_addrs": ["192.0.2.1"]}, {"karma_history": "lots"}) == DECLINED
    assert (LOGWARN, "hosts_allow", "ignoring connection note karma_history 'lots': not a number") in log


# -- config/hosts_allow ------------------------------------------------------------------------

def test_an_address_without_length_is_that_address_only(tmp_path):
    qp = hosts_qp(tmp_path, "192.0.2.5 DENY go away\n")
    log = capture_log(qp)
    assert first_reply(qp, "192.0.2.5") == "550 go away"
    assert (LOGINFO, "hosts_allow", "fail, go away") in log
    assert first_reply(qp, "192.0.2.6") == "220"
    assert first_reply(qp, "192.0.2.50") == "220"
    assert (LOGDEBUG, "hosts_allow", "pass") in log


def test_an_ipv4_network(tmp_path):
    qp = hosts_qp(tmp_path, "192.0.2.0/24 DENYSOFT busy here\n10.0.0.0/8 DENY\n")
    assert first_reply(qp, "192.0.2.0") == "451 busy here"
    assert first_reply(qp, "192.0.2.255") == "451 busy here"  # first and last addresses included
    assert first_reply(qp, "192.0.3.1") == "220"
    assert first_reply(qp, "10.200.3.4") == DENIED


def test_an_ipv6_network_and_address(tmp_path):
    qp = hosts_qp(tmp_path, "2001:db8:bad::/48 DENY no v6 from there\n2001:DB8::0025 DENYSOFT\n")
    log = capture_log(qp)
    assert first_reply(qp, "2001:db8:bad:1::7") == "550 no v6 from there"
    assert first_reply(qp, "2001:db8:bae::7") == "220"
    assert first_reply(qp, "2001:db8::25") == DEFERRED
    assert first_reply(qp, "2001:db8::26") == "220"
    assert (LOGINFO, "hosts_allow", "fail, DENYSOFT by rule 2001:db8::25/128") in log


def test_an_ipv4_client_on_an_ipv6_listener_matches_ipv4_rules(tmp_path):
    qp = hosts_qp(tmp_path, "192.0.2.0/24 DENY ipv4 rule\n::ffff:198.51.100.0/120 DENY mapped rule\n")
    assert first_reply(qp, "::ffff:192.0.2.7") == "550 ipv4 rule"
    assert first_reply(qp, "198.51.100.7") == "550 mapped rule"
    assert first_reply(qp, "::ffff:198.51.100.7") == "550 mapped rule"


@pytest.mark.parametrize(("code", "reply"), [
    ("DENY", DENIED),
    ("DENY_DISCONNECT", DENIED),
    ("DENYHARD", DENIED),
    ("DENYSOFT", DEFERRED),
    ("DENYSOFT_DISCONNECT", DEFERRED),
    ("deny", DENIED),
    ("DenySoft", DEFERRED),
    ("OK", "220"),
    ("DECLINED", "220"),
    ("DONE", "220"),
])
def test_return_code_names(tmp_path, code, reply):
    qp = hosts_qp(tmp_path, f"192.0.2.5 {code}\n")
    assert first_reply(qp, "192.0.2.5") == reply


@pytest.mark.parametrize(("code", "reply"), [("DENY", "550"), ("DENY_DISCONNECT", "550"),
                                             ("DENYSOFT", "451"), ("DENYSOFT_DISCONNECT", "451")])
def test_the_message_is_the_rest_of_the_line(tmp_path, code, reply):
    qp = hosts_qp(tmp_path, f"192.0.2.5\t{code}   Sorry, known spam  only source \n")
    assert first_reply(qp, "192.0.2.5") == f"{reply} Sorry, known spam  only source"


def test_ok_accepts_and_skips_the_later_pre_connection_plugins(tmp_path):
    qp = hosts_qp(tmp_path, "192.0.2.5 OK a friend\n", after=["refuse_all"])
    log = capture_log(qp)
    assert first_reply(qp, "192.0.2.5") == "220"
    assert (LOGDEBUG, "hosts_allow", "pass, OK, a friend") in log
    assert first_reply(qp, "192.0.2.6") == "550 refused by a later plugin"


def test_declined_leaves_the_decision_to_later_plugins(tmp_path):
    qp = hosts_qp(tmp_path, "192.0.2.5 DECLINED\n192.0.2.0/24 DENY\n", after=["refuse_all"])
    assert first_reply(qp, "192.0.2.5") == "550 refused by a later plugin"


def test_the_first_matching_line_wins(tmp_path):
    # qpsmtpd's documented example: one host excluded from its network's DENY.
    qp = hosts_qp(tmp_path, "192.168.3.4    DECLINED\n192.168.3.0/24 DENY Sorry, known spam only source\n"
                            "192.168.3.5 OK never reached\n")
    assert first_reply(qp, "192.168.3.4") == "220"
    assert first_reply(qp, "192.168.3.5") == "550 Sorry, known spam only source"
    assert first_reply(qp, "192.168.4.5") == "220"


def test_leading_whitespace_comments_and_blank_lines(tmp_path):
    qp = hosts_qp(tmp_path, "# hosts_allow\n\n   192.0.2.5   DENY   indented\n  # 192.0.2.6 DENY\n")
    log = capture_log(qp)
    assert first_reply(qp, "192.0.2.5") == "550 indented"
    assert first_reply(qp, "192.0.2.6") == "220"
    assert not [line for line in log if line[0] <= LOGWARN]


MALFORMED = [
    ("192.0.2.5", "'192.0.2.5': no return code (expected `address[/length] CODE [message]`)"),
    ("192.0.2.5 NOPE refused?", "'192.0.2.5 NOPE refused?': unknown return code 'NOPE' (one of OK, DENY, "
                                "DENYSOFT, DENYHARD, DENY_DISCONNECT, DENYSOFT_DISCONNECT, DECLINED, DONE)"),
    ("192.0.2.5/24 DENY", "'192.0.2.5/24 DENY': 192.0.2.5/24 has host bits set"),
    ("192.0.2.0/33 DENY", "'192.0.2.0/33 DENY': '192.0.2.0/33' does not appear to be an IPv4 or IPv6 network"),
    ("192.0/16 DENY", "'192.0/16 DENY': '192.0/16' does not appear to be an IPv4 or IPv6 network"),
    ("mail.example.com DENY", "'mail.example.com DENY': 'mail.example.com' does not appear to be an IPv4 "
                              "or IPv6 network"),
    ("2001:db8::1/64 DENY", "'2001:db8::1/64 DENY': 2001:db8::1/64 has host bits set"),
]


def test_malformed_lines_are_logged_once_and_skipped(tmp_path):
    config = write_config(tmp_path / "config", {
        "me": "test.example.org", "spool_dir": str(tmp_path / "spool"), "plugins": "hosts_allow\nrcpt_ok\n",
        "hosts_allow": [line for line, _ in MALFORMED] + ["192.0.2.0/24 DENYSOFT the valid line"]})
    qp = Qpsmtpd(ConfigReader([config]))
    log = capture_log(qp)
    assert qp.load() == []
    errors = [(level, message) for level, plugin, message in log if plugin == "hosts_allow"]
    assert errors == [(LOGERROR, f"ignoring a line of hosts_allow: {why}") for _, why in MALFORMED]
    assert first_reply(qp, "192.0.2.5") == "451 the valid line"
    assert first_reply(qp, "192.0.2.6") == "451 the valid line"
    # Two sessions later, still each bad line once.
    assert len([line for line in log if line[0] <= LOGERROR]) == len(MALFORMED)


def test_an_edited_file_is_parsed_again(tmp_path):
    qp = hosts_qp(tmp_path, "192.0.2.5 DENY first\n")
    plugin = next(entry.plugin for entry in qp.hooks.entries("pre-connection"))
    assert first_reply(qp, "192.0.2.5") == "550 first"
    qp.config_list = lambda name: ["192.0.2.5 DENYSOFT second"] if name == "hosts_allow" else []
    assert first_reply(qp, "192.0.2.5") == "451 second"
    assert [rule.message for rule in plugin.rules()] == ["second"]


def test_the_limit_is_checked_before_the_rules(tmp_path):
    factory = child_process(hosts_qp(tmp_path, "192.0.2.1 OK always welcome\n"), 1)
    assert greeted(Client(factory, "192.0.2.1"))
    assert refused(Client(factory, "192.0.2.1"), "451 too many connections from 192.0.2.1, try again later")


def test_no_file_means_no_rules(tmp_path):
    qp = hosts_qp(tmp_path)
    assert first_reply(qp, "192.0.2.5") == "220"
    assert run_hook(qp, {"remote_ip": "not an address", "max_conn_ip": 0}) == DECLINED


# -- arguments ---------------------------------------------------------------------------------

def test_loglevel_is_understood(tmp_path):
    qp = make_qp(tmp_path, files={"hosts_allow": "192.0.2.5 DENY\n"},
                 plugins=["hosts_allow loglevel -2", "rcpt_ok"])
    log = capture_log(qp)
    assert first_reply(qp, "192.0.2.5") == DENIED
    assert (LOGINFO - 2, "hosts_allow", "fail, DENY by rule 192.0.2.5/32") in log


def test_an_odd_number_of_arguments_stops_startup(tmp_path):
    config = write_config(tmp_path / "config", {"me": "test.example.org", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": "hosts_allow 5\nrcpt_ok\n"})
    errors = Qpsmtpd(ConfigReader([config])).load()
    assert len(errors) == 1
    assert "plugin hosts_allow: hosts_allow takes no arguments but `loglevel N`" in str(errors[0])


def test_an_unknown_argument_is_logged(tmp_path):
    config = write_config(tmp_path / "config", {"me": "test.example.org", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": "hosts_allow max 5\n"})
    qp = Qpsmtpd(ConfigReader([config]))
    log = capture_log(qp)
    assert qp.load() == []
    assert (LOGWARN, "hosts_allow", "ignoring unknown argument 'max'") in log
