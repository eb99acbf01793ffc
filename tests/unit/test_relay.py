"""The relay plugin: who may relay, seen through whole SMTP sessions."""

import pytest
from harness import SessionDriver, make_qp, write_config

from qpsmtpd_py.cdb import write_cdb
from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import LOGERROR, LOGINFO, LOGWARN
from qpsmtpd_py.qp import Qpsmtpd

ELSEWHERE = "someone@elsewhere.example"
RELAYED = f"250 <{ELSEWHERE}>, recipient ok"
REFUSED = "550 Relaying denied (#5.7.1)"

# qpsmtpd's own test data (t/config/relayclients and t/config/norelayclients),
# whitespace and comments included.
QPSMTPD_RELAYCLIENTS = (
    "# used by plugins/relay\n"
    "127.0.0.1 \n"
    " 192.0. \n"
    "#\n"
    "2001:0DB8\n"
    "2001:DB8::1\n"
    "2001:DB8::1/32\n"
    "2001:0DB8:0000:0000:0000:0000:0000:0001\n"
)
QPSMTPD_NORELAYCLIENTS = """\
# used by plugins/relay
192.0.99.5
192.0.99.6
192.0.98.
"""


@pytest.fixture(autouse=True)
def no_relayclient_env(monkeypatch):
    monkeypatch.delenv("RELAYCLIENT", raising=False)


def relay_qp(tmp_path, files=None, args=""):
    return make_qp(tmp_path, files=files, plugins=[f"relay {args}".strip(), "rcpt_ok"])


def capture_log(qp):
    """Every (level, plugin, message) the daemon logs from now on."""
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def connect(qp, ip):
    driver = SessionDriver(qp, remote_ip=ip)
    assert driver.take()[0].startswith("220 ")
    assert driver.command("HELO client.example")[0].startswith("250 ")
    assert driver.command("MAIL FROM:<sender@example.net>")[0].startswith("250 ")
    return driver


def rcpt(qp, ip, recipient=ELSEWHERE):
    return connect(qp, ip).command(f"RCPT TO:<{recipient}>")


def is_relay_client(qp, ip):
    return connect(qp, ip).session.connection.relay_client


# -- relayclients -----------------------------------------------------------------------

def test_listed_ip_may_relay_to_any_domain(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "192.0.2.17\n"})
    assert rcpt(qp, "192.0.2.17") == [RELAYED]


def test_unlisted_ip_is_refused_by_rcpt_ok(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "192.0.2.17\n"})
    assert rcpt(qp, "192.0.2.18") == [REFUSED]


def test_unlisted_ip_still_gets_mail_for_our_own_domain(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "192.0.2.17\n"})
    assert rcpt(qp, "192.0.2.18", "user@test.example.org") == ["250 <user@test.example.org>, recipient ok"]


def test_no_config_means_nobody_relays_not_even_ipv4_localhost(tmp_path):
    qp = relay_qp(tmp_path)
    log = capture_log(qp)
    assert rcpt(qp, "127.0.0.1") == [REFUSED]
    assert (LOGINFO, "relay", "skip, no match") in log


def test_ipv6_loopback_always_relays(tmp_path):
    qp = relay_qp(tmp_path)
    log = capture_log(qp)
    assert rcpt(qp, "::1") == [RELAYED]
    assert (LOGINFO, "relay", "pass, octet matched localhost (::1)") in log


def test_ipv4_octet_prefix_matches_whole_octets_only(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "192.0.\n"})
    log = capture_log(qp)
    assert is_relay_client(qp, "192.0.1.1")
    assert (LOGINFO, "relay", "pass, octet match in relayclients (192.0.)") in log
    assert not is_relay_client(qp, "192.51.1.1")
    assert not is_relay_client(qp, "203.0.113.0")
    assert not is_relay_client(qp, "192.100.1.1")


def test_qpsmtpd_test_config_with_whitespace_and_comments(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": QPSMTPD_RELAYCLIENTS})
    assert is_relay_client(qp, "127.0.0.1")  # written with a trailing blank
    assert is_relay_client(qp, "192.0.1.1")  # written with blanks around it
    assert not is_relay_client(qp, "127.0.0.2")
    assert not is_relay_client(qp, "198.51.100.1")
    assert is_relay_client(qp, "2001:db8::1")  # listed, and inside the 2001:0DB8 prefix
    assert is_relay_client(qp, "2001:db8:ffff::1")  # inside the prefix
    assert not is_relay_client(qp, "2001:db9::1")  # 2001:DB8::1/32 has host bits set: ignored


def test_lines_given_by_a_config_hook_are_trimmed_too(tmp_path):
    hook = ("from qpsmtpd_py.constants import DECLINED, OK\n"
            "from qpsmtpd_py.plugin import Plugin\n"
            "class Lines(Plugin):\n"
            "    def hook_config(self, transaction, name):\n"
            "        return (OK, '  192.0.2.5\\t') if name == 'relayclients' else DECLINED\n")
    qp = make_qp(tmp_path, plugins=["lines", "relay", "rcpt_ok"], plugin_files={"lines": hook})
    assert is_relay_client(qp, "192.0.2.5")


def test_ipv6_prefix_ending_in_a_colon(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "2001:db8:e431:ae06:\n"})
    assert rcpt(qp, "2001:db8:e431:ae06::25") == [RELAYED]
    assert is_relay_client(qp, "2001:0db8:e431:ae06:1:2:3:4")
    assert not is_relay_client(qp, "2001:db8:e431:ae07::25")


def test_ipv6_prefix_of_the_written_out_address_any_case(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "2001:0DB8\n"})
    log = capture_log(qp)
    assert is_relay_client(qp, "2001:db8::99")
    assert (LOGINFO, "relay", "pass, octet match in relayclients (2001:0db8)") in log
    assert not is_relay_client(qp, "2001:db9::99")


def test_ipv6_prefix_may_end_on_any_hex_digit(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "2001:0db8:e4\n"})
    assert is_relay_client(qp, "2001:db8:e431::1")
    assert is_relay_client(qp, "2001:db8:e4ff::1")
    assert not is_relay_client(qp, "2001:db8:e531::1")


def test_ipv6_single_address_in_any_notation(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "2001:DB8:0:0:0:0:0:1\n"})
    assert is_relay_client(qp, "2001:db8::1")
    assert not is_relay_client(qp, "2001:db8::2")
    qp = relay_qp(tmp_path / "other", {"relayclients": "2001:db8::1\n"})
    assert is_relay_client(qp, "2001:0db8:0000:0000:0000:0000:0000:0001")


# -- CIDR blocks ------------------------------------------------------------------------

def test_ipv4_cidr_block(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "192.0.1.0/24\n"})
    log = capture_log(qp)
    assert rcpt(qp, "192.0.1.1") == [RELAYED]
    assert (LOGINFO, "relay", "pass, cidr match (192.0.1.1 in 192.0.1.0/24)") in log
    assert not is_relay_client(qp, "192.0.2.1")


def test_ipv4_cidr_block_that_does_not_hold_the_client(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "192.0.0.0/24\n"})
    assert rcpt(qp, "192.0.1.1") == [REFUSED]


def test_cidr_block_includes_its_first_and_last_address(tmp_path):
    # qpsmtpd compared with > and <, leaving both ends out; fixed here.
    qp = relay_qp(tmp_path, {"relayclients": "198.51.100.0/24\n203.0.113.9/32\n2001:db8::7/128\n"})
    assert is_relay_client(qp, "198.51.100.0")
    assert is_relay_client(qp, "198.51.100.255")
    assert is_relay_client(qp, "203.0.113.9")
    assert is_relay_client(qp, "2001:db8::7")
    assert not is_relay_client(qp, "203.0.113.10")


def test_short_ipv4_cidr_block_pads_missing_octets_with_zeros(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "10/8\n172.16/12\n"})
    assert is_relay_client(qp, "10.200.3.4")
    assert is_relay_client(qp, "172.31.0.1")
    assert not is_relay_client(qp, "172.32.0.1")


def test_ipv6_cidr_block(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "fdda:b13d:e431:ae06::/64\n"})
    assert rcpt(qp, "fdda:b13d:e431:ae06:00a1::") == [RELAYED]
    assert not is_relay_client(qp, "fdda:b13d:e431:be17::1")


def test_ipv6_address_without_a_length_is_no_block(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "fdda:b13d:e431:be17::\n"})
    assert not is_relay_client(qp, "fdda:b13d:e431:be17::1")


def test_ipv4_client_is_not_in_an_ipv6_block_nor_the_reverse(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "::/0\n0.0.0.0/0\n"})
    log = capture_log(qp)
    assert is_relay_client(qp, "192.0.2.1")
    assert (LOGINFO, "relay", "pass, cidr match (192.0.2.1 in 0.0.0.0/0)") in log
    assert is_relay_client(qp, "2001:db8::1")
    assert (LOGINFO, "relay", "pass, cidr match (2001:db8::1 in ::/0)") in log


def test_malformed_lines_are_logged_and_ignored(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": ["10.1.2.3/24", "192.0.2.0/33", "2001:DB8::1/32",
                                              "mail.example.com", "192.0.2", "198.51.100.7"]})
    log = capture_log(qp)
    assert not is_relay_client(qp, "10.1.2.3")
    assert not is_relay_client(qp, "10.1.2.4")
    assert not is_relay_client(qp, "192.0.2.1")
    assert not is_relay_client(qp, "2001:db8::1")
    assert is_relay_client(qp, "198.51.100.7")  # the good line still counts
    errors = [message for level, _, message in log if level == LOGERROR]
    assert len(errors) == 5, errors  # once each, not once per connection
    assert all(message.startswith("ignoring a line of relayclients: ") for message in errors)
    assert any("'10.1.2.3/24'" in message and "host bits set" in message for message in errors)
    assert any("'mail.example.com': not an address, a prefix or a CIDR block" in message for message in errors)


def test_edited_relayclients_applies_to_the_next_connection(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "192.0.2.1\n"})
    qp.config_reader.recheck_interval = 0
    assert is_relay_client(qp, "192.0.2.1")
    (tmp_path / "config" / "relayclients").write_text("192.0.2.2\n")
    assert not is_relay_client(qp, "192.0.2.1")
    assert is_relay_client(qp, "192.0.2.2")


# -- norelayclients ---------------------------------------------------------------------

@pytest.mark.parametrize("ip", ["192.0.99.5", "192.0.98.1", "192.0.98.255"])
def test_norelayclients_overrides_relayclients(tmp_path, ip):
    qp = relay_qp(tmp_path, {"relayclients": QPSMTPD_RELAYCLIENTS, "norelayclients": QPSMTPD_NORELAYCLIENTS})
    log = capture_log(qp)
    assert rcpt(qp, ip) == [REFUSED]
    assert (LOGINFO, "relay", "fail, disabled by norelayclients") in log


@pytest.mark.parametrize("ip", ["192.0.99.7", "192.0.109.7"])
def test_norelayclients_leaves_other_relayclients_alone(tmp_path, ip):
    qp = relay_qp(tmp_path, {"relayclients": QPSMTPD_RELAYCLIENTS, "norelayclients": QPSMTPD_NORELAYCLIENTS})
    assert rcpt(qp, ip) == [RELAYED]


def test_norelayclients_logs_the_matching_line(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "192.0.\n", "norelayclients": "192.0.98.\n"})
    log = capture_log(qp)
    assert not is_relay_client(qp, "192.0.98.1")
    assert (LOGINFO, "relay", "192.0.98. in norelayclients") in log


def test_norelayclients_overrides_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAYCLIENT", "")
    qp = relay_qp(tmp_path, {"norelayclients": "192.0.2.66\n"})
    assert not is_relay_client(qp, "192.0.2.66")
    assert is_relay_client(qp, "192.0.2.67")
    assert is_relay_client(qp, "192.0.2.67")  # the variable is left in place for later clients


def test_norelayclients_overrides_ipv6_loopback(tmp_path):
    qp = relay_qp(tmp_path, {"norelayclients": "::1\n"})
    assert rcpt(qp, "::1") == [REFUSED]


def test_norelayclients_accepts_cidr_blocks_and_ipv6_prefixes(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "192.0.\n2001:db8::/32\n",
                             "norelayclients": "192.0.2.128/25\n2001:db8:bad:\n"})
    assert is_relay_client(qp, "192.0.2.127")
    assert not is_relay_client(qp, "192.0.2.128")
    assert is_relay_client(qp, "2001:db8:bac::1")
    assert not is_relay_client(qp, "2001:db8:bad::1")


# -- morerelayclients.cdb ---------------------------------------------------------------

def test_morerelayclients_cdb_exact_ip_and_prefixes(tmp_path):
    config = tmp_path / "config"
    config.mkdir()
    write_cdb(config / "morerelayclients.cdb",
              [(b"198.51.100.7", b""), (b"203.0.113.", b""), (b"2001:0db8:00aa", b""), (b"2001:db8:cc:", b"")])
    qp = relay_qp(tmp_path)
    log = capture_log(qp)
    assert rcpt(qp, "198.51.100.7") == [RELAYED]
    assert (LOGINFO, "relay", "pass, octet match in morerelayclients (198.51.100.7)") in log
    assert is_relay_client(qp, "203.0.113.200")
    assert (LOGINFO, "relay", "pass, octet match in morerelayclients (203.0.113.)") in log
    assert is_relay_client(qp, "2001:db8:aa::1")
    assert is_relay_client(qp, "2001:db8:cc::1")
    assert not is_relay_client(qp, "198.51.100.8")
    assert not is_relay_client(qp, "2001:db8:ab::1")


def test_norelayclients_overrides_morerelayclients(tmp_path):
    config = tmp_path / "config"
    config.mkdir()
    write_cdb(config / "morerelayclients.cdb", [(b"203.0.113.", b"")])
    qp = relay_qp(tmp_path, {"norelayclients": "203.0.113.5\n"})
    assert not is_relay_client(qp, "203.0.113.5")
    assert is_relay_client(qp, "203.0.113.6")


def test_broken_morerelayclients_cdb_grants_nothing_and_is_logged(tmp_path):
    config = tmp_path / "config"
    config.mkdir()
    (config / "morerelayclients.cdb").write_bytes(b"not a cdb")
    qp = relay_qp(tmp_path, {"relayclients": "192.0.2.1\n"})
    log = capture_log(qp)
    assert rcpt(qp, "203.0.113.5") == [REFUSED]
    assert any(level == LOGERROR and message.startswith("err, morerelayclients not used: ")
               for level, _, message in log)
    assert is_relay_client(qp, "192.0.2.1")


# -- RELAYCLIENT ----------------------------------------------------------------------------

def test_relayclient_env_makes_every_client_a_relay_client(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAYCLIENT", "")  # set, even empty, is enough
    qp = relay_qp(tmp_path)
    log = capture_log(qp)
    assert rcpt(qp, "203.0.113.5") == [RELAYED]
    assert (LOGINFO, "relay", "pass, enabled by env") in log


# -- only --------------------------------------------------------------------------------------

def test_only_accepts_every_recipient_of_a_relay_client(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "192.0.2.1\n"}, args="only 1")
    assert rcpt(qp, "192.0.2.1") == [RELAYED]


def test_only_refuses_everyone_else_even_for_our_own_domain(tmp_path):
    qp = relay_qp(tmp_path, {"relayclients": "192.0.2.1\n"}, args="only 1")
    log = capture_log(qp)
    assert rcpt(qp, "192.0.2.2", "user@test.example.org") == ["550 relaying denied"]
    assert rcpt(qp, "192.0.2.2") == ["550 relaying denied"]
    assert (LOGINFO, "relay", "fail, relay only") in log


def test_only_counts_a_client_made_relay_client_later(tmp_path):
    qp = relay_qp(tmp_path, args="only 1")
    driver = connect(qp, "192.0.2.2")
    driver.session.connection.relay_client = True  # as AUTH does
    assert driver.command(f"RCPT TO:<{ELSEWHERE}>") == [RELAYED]


def test_only_0_is_off(tmp_path):
    qp = relay_qp(tmp_path, args="only 0")
    assert rcpt(qp, "192.0.2.2", "user@test.example.org") == ["250 <user@test.example.org>, recipient ok"]
    assert rcpt(qp, "192.0.2.2") == [REFUSED]


# -- arguments ---------------------------------------------------------------------------------

def test_an_odd_number_of_arguments_stops_startup(tmp_path):
    config = write_config(tmp_path / "config", {"me": "test.example.org", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": "relay only\nrcpt_ok\n"})
    errors = Qpsmtpd(ConfigReader([config])).load()
    assert len(errors) == 1
    assert "plugin relay: arguments come in pairs" in str(errors[0])


def test_an_unknown_argument_is_logged(tmp_path):
    config = write_config(tmp_path / "config", {"me": "test.example.org", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": "relay onyl 1\n"})
    qp = Qpsmtpd(ConfigReader([config]))
    log = capture_log(qp)
    assert qp.load() == []
    assert (LOGWARN, "relay", "ignoring unknown argument 'onyl'") in log
