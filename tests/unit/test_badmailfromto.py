"""The badmailfromto plugin: given senders may not write to given recipients."""

from harness import SessionDriver, make_qp, write_config

from qpsmtpd_py.address import Address
from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import LOGDEBUG, LOGWARN
from qpsmtpd_py.qp import Qpsmtpd

PAIRS = ["stalker@example.net   victim@example.org",
         "@spam.example         ceo@example.org  (anything after the pair is ignored)"]


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def bmft_qp(tmp_path, lines=PAIRS, plugins=("badmailfromto", "rcpt_ok")):
    return make_qp(tmp_path, files={"badmailfromto": lines, "rcpthosts": ["example.org"]}, plugins=list(plugins))


def session(qp, sender, ip="192.0.2.9"):
    driver = SessionDriver(qp, remote_ip=ip)
    assert driver.take()[0].startswith("220 ")
    assert driver.command("HELO client.example")[0].startswith("250 ")
    assert driver.command(f"MAIL FROM:{sender}")[0].startswith("250 ")
    return driver


def ok(recipient):
    return [f"250 {recipient}, recipient ok"]


def plugin(qp):
    return next(p for p in qp.plugins if p.name == "badmailfromto")


def test_listed_pair_is_refused_as_if_the_recipient_did_not_exist(tmp_path):
    qp = bmft_qp(tmp_path)
    driver = session(qp, "<stalker@example.net>")
    assert driver.session.transaction.notes["badmailfromto"] == "stalker@example.net"
    assert driver.command("RCPT TO:<Victim@Example.ORG>") == ["550 mail to victim@example.org not accepted here"]


def test_the_listed_sender_may_still_write_to_others(tmp_path):
    qp = bmft_qp(tmp_path)
    driver = session(qp, "<stalker@example.net>")
    log = capture_log(qp)
    assert driver.command("RCPT TO:<friend@example.org>") == ok("<friend@example.org>")
    assert (LOGDEBUG, "badmailfromto", "pass, recipient not listed") in log


def test_other_senders_may_write_to_the_recipient(tmp_path):
    qp = bmft_qp(tmp_path)
    driver = session(qp, "<friend@example.net>")
    log = capture_log(qp)
    assert not isinstance(driver.session.transaction.notes.get("badmailfromto"), str)
    assert driver.command("RCPT TO:<victim@example.org>") == ok("<victim@example.org>")
    assert (LOGDEBUG, "badmailfromto", "pass, sender not listed") in log


def test_note_is_absent_for_an_unlisted_sender(tmp_path):
    qp = bmft_qp(tmp_path)
    driver = session(qp, "<friend@example.net>")
    assert driver.session.transaction.notes.get("badmailfromto") is None


def test_sender_compares_without_regard_to_case(tmp_path):
    qp = bmft_qp(tmp_path, ["Stalker@Example.NET victim@example.org"])
    driver = session(qp, "<STALKER@example.net>")
    assert driver.command("RCPT TO:<victim@example.org>") == ["550 mail to victim@example.org not accepted here"]


def test_host_entry_lists_every_sender_of_the_host(tmp_path):
    qp = bmft_qp(tmp_path)
    driver = session(qp, "<anyone@SPAM.example>")
    assert driver.session.transaction.notes["badmailfromto"] == "@spam.example"
    assert driver.command("RCPT TO:<ceo@example.org>") == ["550 mail to ceo@example.org not accepted here"]
    assert driver.command("RCPT TO:<victim@example.org>") == ok("<victim@example.org>")
    assert session(qp, "<x@sub.spam.example>").command("RCPT TO:<ceo@example.org>") == ok("<ceo@example.org>")


def test_sender_listed_by_address_and_by_host_is_checked_against_both_lines(tmp_path):
    # qpsmtpd kept only the last matching line's sender: the first pair went through.
    qp = bmft_qp(tmp_path, ["stalker@spam.example victim@example.org", "@spam.example ceo@example.org"])
    driver = session(qp, "<stalker@spam.example>")
    assert driver.command("RCPT TO:<victim@example.org>") == ["550 mail to victim@example.org not accepted here"]
    assert driver.command("RCPT TO:<ceo@example.org>") == ["550 mail to ceo@example.org not accepted here"]


def test_relay_clients_are_not_exempt(tmp_path):
    qp = bmft_qp(tmp_path)
    driver = SessionDriver(qp, remote_ip="192.0.2.9")
    driver.take()
    driver.session.connection.relay_client = True
    driver.command("HELO client.example")
    driver.command("MAIL FROM:<stalker@example.net>")
    assert driver.command("RCPT TO:<victim@example.org>") == ["550 mail to victim@example.org not accepted here"]


def test_null_sender_is_not_looked_up(tmp_path):
    qp = bmft_qp(tmp_path, ["@ victim@example.org"])
    log = capture_log(qp)
    driver = session(qp, "<>")
    assert driver.command("RCPT TO:<victim@example.org>") == ok("<victim@example.org>")
    assert (LOGDEBUG, "badmailfromto", "skip, null sender") in log


def test_empty_file_is_not_looked_up(tmp_path):
    qp = make_qp(tmp_path, plugins=["badmailfromto", "rcpt_ok"])
    log = capture_log(qp)
    session(qp, "<a@example.net>")
    assert (LOGDEBUG, "badmailfromto", "skip, empty list") in log


def test_sender_entry_without_at_sign_is_logged_and_skipped(tmp_path):
    qp = bmft_qp(tmp_path, ["example.net victim@example.org", "a@example.net victim@example.org"])
    log = capture_log(qp)
    driver = session(qp, "<a@example.net>")
    assert (LOGWARN, "badmailfromto", "bad config, no @ sign in example.net") in log
    assert driver.command("RCPT TO:<victim@example.org>")[0].startswith("550 ")


def test_a_new_transaction_forgets_the_sender(tmp_path):
    qp = bmft_qp(tmp_path)
    driver = session(qp, "<stalker@example.net>")
    assert driver.command("RSET") == ["250 OK"]
    assert driver.command("MAIL FROM:<friend@example.net>")[0].startswith("250 ")
    assert driver.command("RCPT TO:<victim@example.org>") == ok("<victim@example.org>")


def test_is_sender_immune_as_qpsmtpd_tests_it(tmp_path):
    check = plugin(bmft_qp(tmp_path)).is_sender_immune
    assert check(Address("matt", "test.com"), [])
    assert check(Address.null(), ["bad@example.com"])
    assert check(Address("matt", None), ["bad@example.com"])
    assert check(Address("", "example.com"), ["bad@example.com"])
    assert not check(Address("matt", "example.com"), ["bad@example.com"])


def test_odd_arguments_stop_start_up(tmp_path):
    config = write_config(tmp_path / "config", {"me": "t.example", "spool_dir": str(tmp_path / "spool"),
                                                "plugins": ["badmailfromto strict"]})
    errors = [str(e) for e in Qpsmtpd(ConfigReader([config])).load()]
    assert len(errors) == 1 and "badmailfromto takes no arguments" in errors[0]
