"""The whitelist plugin: hosts, HELO names, senders and recipients, per hook or per recipient."""

import pytest
from harness import SessionDriver, make_qp, plugin_source

from qpsmtpd_py.constants import LOGDEBUG, LOGINFO

# `refuse HOOK ...` refuses at those hooks, so a whitelist OK shows as this later plugin not running.
REFUSE = plugin_source("""
    class Refuse(Plugin):
        def register(self, qp, *hooks):
            for hook in hooks:
                self.register_hook(hook, self.refuse)

        def refuse(self, transaction, *args):
            return DENY, f"refused at {self.running_hook}"
""")
# Per-recipient lists: config/user_<list> lines are `recipient entry`.
USER_CONFIG = plugin_source("""
    class UserLists(Plugin):
        def hook_user_config(self, transaction, address, name):
            lines = [line.split(None, 1) for line in self.qp.config_list("user_" + name)]
            mine = [entry for who, entry in lines if who == address.address()]
            return (OK, *mine) if mine else DECLINED
""")
PLUGINS = {"refuse": REFUSE, "user_lists": USER_CONFIG}
FOREIGN = "someone@elsewhere.example"
HOOKS = ("connect", "helo", "ehlo", "mail")


@pytest.fixture(autouse=True)
def no_whitelistclient_env(monkeypatch):
    monkeypatch.delenv("WHITELISTCLIENT", raising=False)


def whitelist_qp(tmp_path, files, args="", after=(), before=()):
    after = [f"refuse {' '.join(HOOKS)}" if line == "refuse" else line for line in after]
    return make_qp(tmp_path, files=files, plugins=[*before, f"whitelist {args}".strip(), *after, "rcpt_ok"],
                   plugin_files=PLUGINS)


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def connect(qp, ip="192.0.2.9"):
    driver = SessionDriver(qp, remote_ip=ip)
    return driver, driver.take()


def hello(qp, ip="192.0.2.9", helo="client.example", verb="HELO"):
    driver, greeting = connect(qp, ip)
    assert greeting[0].startswith("220 "), greeting
    reply = driver.command(f"{verb} {helo}")
    assert reply[0].startswith("250"), reply
    return driver


def rcpt(qp, recipient, sender="a@example.com", ip="192.0.2.9", helo="client.example"):
    driver = hello(qp, ip, helo)
    assert driver.command(f"MAIL FROM:<{sender}>")[0].startswith("250 ")
    return driver, driver.command(f"RCPT TO:<{recipient}>")


def accepted(recipient):
    return [f"250 <{recipient}>, recipient ok"]


REFUSED = ["550 Relaying denied (#5.7.1)"]


# -- whitelisthosts -----------------------------------------------------------------------

@pytest.mark.parametrize(("line", "ip", "how"), [
    ("192.0.2.9", "192.0.2.9", "is a whitelisted host"),
    ("192.0.2.", "192.0.2.9", "is a whitelisted host"),
    ("192.0", "192.0.2.9", "is a whitelisted host"),
    ("10.1", "10.100.0.1", "is a whitelisted host"),  # a fragment is a text prefix
    ("192.0.2.0/24", "192.0.2.9", "is in a whitelisted block"),
    ("192.0.2.1/24", "192.0.2.9", "is in a whitelisted block"),  # host bits are ignored
    ("2001:db8::/32", "2001:db8:1::5", "is in a whitelisted block"),
    ("2001:DB8:0:0:0:0:0:5", "2001:db8::5", "is a whitelisted host"),
    ("2001:db8:", "2001:db8::5", "is a whitelisted host"),
])
def test_whitelisted_host(tmp_path, line, ip, how):
    qp = whitelist_qp(tmp_path, {"whitelisthosts": f"# comment\n{line}\n"}, after=["refuse"])
    log = capture_log(qp)
    driver, greeting = connect(qp, ip)
    assert greeting[0].startswith("220 ")  # the refusing connect plugin did not run
    notes = driver.session.connection.notes
    assert notes["whitelisthost"] == 1 and notes["karma"] == 5
    assert (LOGINFO, "whitelist", f"pass, {ip} {how}") in log


@pytest.mark.parametrize(("line", "ip"), [
    ("192.0.2.1", "192.0.2.10"),  # a whole address is not a prefix (qpsmtpd matched it)
    ("192.0.2.", "192.0.20.1"),
    ("192.0.2.0/24", "192.0.3.1"),
    ("2001:db8::/32", "2001:db9::1"),
    ("not an address/99", "192.0.2.9"),
])
def test_not_whitelisted_host(tmp_path, line, ip):
    qp = whitelist_qp(tmp_path, {"whitelisthosts": f"{line}\n"}, after=["refuse"])
    log = capture_log(qp)
    driver, greeting = connect(qp, ip)
    assert greeting == ["550 refused at connect"]
    assert "whitelisthost" not in driver.session.connection.notes
    assert (LOGDEBUG, "whitelist", f"skip: {ip} is not whitelisted") in log


def test_whitelisted_host_is_immune_for_rcpt_ok(tmp_path):
    qp = whitelist_qp(tmp_path, {"whitelisthosts": "192.0.2.9\n"})
    assert rcpt(qp, FOREIGN)[1] == accepted(FOREIGN)
    assert rcpt(qp, FOREIGN, ip="192.0.2.10")[1] == REFUSED


def test_whitelistclient_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WHITELISTCLIENT", "")
    qp = whitelist_qp(tmp_path, {}, after=["refuse"])
    log = capture_log(qp)
    driver, greeting = connect(qp)
    assert greeting[0].startswith("220 ")
    notes = driver.session.connection.notes
    assert notes["whitelistclient"] == 1 and notes["karma"] == 5 and "whitelisthost" not in notes
    assert (LOGINFO, "whitelist", "pass, 192.0.2.9 is whitelisted client") in log


def test_edited_list_applies_to_the_next_connection(tmp_path):
    qp = whitelist_qp(tmp_path, {"whitelisthosts": "192.0.2.9\n"})
    qp.config_reader.recheck_interval = 0
    assert connect(qp)[0].session.connection.notes.get("whitelisthost") == 1
    (tmp_path / "config" / "whitelisthosts").write_text("192.0.2.10\n")
    assert connect(qp)[0].session.connection.notes.get("whitelisthost") is None


# -- whitelisthelo ------------------------------------------------------------------------

@pytest.mark.parametrize("verb", ["HELO", "EHLO"])
def test_whitelisted_helo(tmp_path, verb):
    qp = whitelist_qp(tmp_path, {"whitelisthelo": "Mail.Example.COM\n"}, after=["refuse helo ehlo"])
    log = capture_log(qp)
    driver, _ = connect(qp)
    reply = driver.command(f"{verb} mail.example.com")
    assert reply[0].startswith("250")
    assert driver.session.connection.notes["whitelisthelo"] == 1
    assert (LOGINFO, "whitelist", "helo host mail.example.com in whitelisthelo") in log


def test_other_helo_goes_on_to_the_next_plugin(tmp_path):
    qp = whitelist_qp(tmp_path, {"whitelisthelo": "mail.example.com\n"}, after=["refuse helo"])
    driver, _ = connect(qp)
    assert driver.command("HELO other.example.com") == ["550 refused at helo"]
    assert "whitelisthelo" not in driver.session.connection.notes


def test_whitelisted_helo_does_not_allow_relaying(tmp_path):
    qp = whitelist_qp(tmp_path, {"whitelisthelo": "client.example\n"})
    assert rcpt(qp, FOREIGN)[1] == REFUSED


# -- whitelistsenders ---------------------------------------------------------------------

@pytest.mark.parametrize("line", ["a@example.com", "A@Example.COM", "example.com", "EXAMPLE.com"])
def test_whitelisted_sender(tmp_path, line):
    qp = whitelist_qp(tmp_path, {"whitelistsenders": f"{line}\n"}, after=["refuse mail"])
    log = capture_log(qp)
    driver = hello(qp, helo="client.example")
    # The refusing plugin is not reached for MAIL.
    assert driver.command("MAIL FROM:<a@example.com>")[0].startswith("250 ")
    assert driver.session.transaction.notes["whitelistsender"] == 1
    assert (LOGINFO, "whitelist", "envelope sender a@example.com in whitelistsenders") in log


def test_whitelisted_sender_relays_through_rcpt_ok(tmp_path):
    qp = whitelist_qp(tmp_path, {"whitelistsenders": "example.com\n"})
    assert rcpt(qp, FOREIGN, sender="boss@example.com")[1] == accepted(FOREIGN)
    assert rcpt(qp, FOREIGN, sender="boss@sub.example.com")[1] == REFUSED


def test_sender_note_lasts_one_transaction(tmp_path):
    qp = whitelist_qp(tmp_path, {"whitelistsenders": "example.com\n"})
    driver, reply = rcpt(qp, FOREIGN, sender="boss@example.com")
    assert reply == accepted(FOREIGN)
    driver.command("MAIL FROM:<other@example.org>")
    assert driver.command(f"RCPT TO:<{FOREIGN}>") == REFUSED


@pytest.mark.parametrize("sender", ["", "postmaster"])
def test_null_sender_and_sender_without_domain_never_match(tmp_path, sender):
    qp = whitelist_qp(tmp_path, {"whitelistsenders": "postmaster\n\n"})
    driver = hello(qp)
    assert driver.command(f"MAIL FROM:<{sender}>")[0].startswith("250 ")
    assert "whitelistsender" not in driver.session.transaction.notes


# -- whitelistrcpt ------------------------------------------------------------------------

def test_whitelisted_recipient_is_accepted_and_counted(tmp_path):
    qp = whitelist_qp(tmp_path, {"whitelistrcpt": "someone@elsewhere.example\nlisted.example\n"})
    log = capture_log(qp)
    driver, reply = rcpt(qp, FOREIGN)
    assert reply == accepted(FOREIGN)
    assert driver.command("RCPT TO:<Anyone@Listed.Example>") == accepted("Anyone@Listed.Example")
    assert driver.command("RCPT TO:<other@elsewhere.example>") == REFUSED
    assert driver.session.transaction.notes["whitelistrcpt"] == 2
    assert (LOGINFO, "whitelist", "recipient someone@elsewhere.example in whitelistrcpt") in log


def test_bare_postmaster_is_left_to_the_next_plugin(tmp_path):
    qp = whitelist_qp(tmp_path, {"whitelistrcpt": "postmaster\n"})
    driver, reply = rcpt(qp, "postmaster")
    assert reply == accepted("postmaster")  # by rcpt_ok
    assert "whitelistrcpt" not in driver.session.transaction.notes


# -- per_recipient ----------------------------------------------------------------------------

def hooked(qp):
    return sorted({hook for hook in ("connect", "helo", "ehlo", "mail", "rcpt")
                   if any(entry.name == "whitelist" for entry in qp.hooks.entries(hook))})


def test_normal_and_per_recipient_hooks(tmp_path):
    assert hooked(whitelist_qp(tmp_path / "a", {})) == ["connect", "ehlo", "helo", "mail", "rcpt"]
    qp = whitelist_qp(tmp_path / "b", {}, "per_recipient 1")
    assert hooked(qp) == ["rcpt"]
    assert len([e for e in qp.hooks.entries("rcpt") if e.name == "whitelist"]) == 4


def test_per_recipient_host_accepts_the_recipient(tmp_path):
    qp = whitelist_qp(tmp_path, {"whitelisthosts": "192.0.2.9\n"}, "per_recipient 1", after=["refuse connect"])
    driver, greeting = connect(qp, "192.0.2.9")
    assert greeting == ["550 refused at connect"]  # nothing is whitelisted at connect
    qp = whitelist_qp(tmp_path / "2", {"whitelisthosts": "192.0.2.9\n"}, "per_recipient 1")
    driver, reply = rcpt(qp, FOREIGN)
    assert reply == accepted(FOREIGN)
    assert driver.session.connection.notes["whitelisthost"] == 1


def test_per_recipient_helo_only_sets_its_note(tmp_path):
    # qpsmtpd answered OK here: a forged HELO name could relay anywhere.
    qp = whitelist_qp(tmp_path, {"whitelisthelo": "client.example\n"}, "per_recipient 1")
    driver, reply = rcpt(qp, FOREIGN, helo="CLIENT.example")
    assert reply == REFUSED
    assert driver.session.connection.notes["whitelisthelo"] == 1


def test_per_recipient_sender_and_recipient(tmp_path):
    qp = whitelist_qp(tmp_path, {"whitelistsenders": "example.com\n", "whitelistrcpt": "friend.example\n"},
                      "per_recipient 1")
    driver, reply = rcpt(qp, FOREIGN, sender="boss@example.com")
    assert reply == accepted(FOREIGN)
    assert driver.session.transaction.notes["whitelistsender"] == 1
    driver, reply = rcpt(qp, "x@friend.example", sender="a@example.org")
    assert reply == accepted("x@friend.example")
    assert driver.session.transaction.notes["whitelistrcpt"] == 1


def test_per_recipient_lists_merge_with_the_global_one(tmp_path):
    files = {"whitelistsenders": "global.example\n",
             "user_whitelistsenders": "user@test.example.org own.example\n"}
    qp = whitelist_qp(tmp_path, files, "per_recipient 1", before=["user_lists"])
    assert rcpt(qp, "user@test.example.org", sender="x@own.example")[0].session.transaction.notes.get(
        "whitelistsender") == 1
    assert rcpt(qp, "user@test.example.org", sender="x@global.example")[0].session.transaction.notes.get(
        "whitelistsender") == 1
    # Another recipient has no list of its own: only the global one.
    assert rcpt(qp, "other@test.example.org", sender="x@own.example")[0].session.transaction.notes.get(
        "whitelistsender") is None


def test_per_recipient_merge_0_uses_the_recipients_list_alone(tmp_path):
    files = {"whitelistsenders": "global.example\n",
             "user_whitelistsenders": "user@test.example.org own.example\n"}
    qp = whitelist_qp(tmp_path, files, "per_recipient 1 merge 0", before=["user_lists"])

    def whitelisted(recipient, sender):
        return rcpt(qp, recipient, sender=sender)[0].session.transaction.notes.get("whitelistsender") == 1

    assert whitelisted("user@test.example.org", "x@own.example")
    assert not whitelisted("user@test.example.org", "x@global.example")
    # Without a list of its own a recipient falls back on the global file.
    assert whitelisted("other@test.example.org", "x@global.example")


def test_per_recipient_hosts_from_the_recipients_list(tmp_path):
    files = {"user_whitelisthosts": "user@test.example.org 192.0.2.0/24\n"}
    qp = whitelist_qp(tmp_path, files, "per_recipient 1", before=["user_lists"])
    assert rcpt(qp, "user@test.example.org")[0].session.connection.notes.get("whitelisthost") == 1
    assert rcpt(qp, "other@test.example.org")[0].session.connection.notes.get("whitelisthost") is None


def test_merge_without_per_recipient_changes_nothing(tmp_path):
    qp = whitelist_qp(tmp_path, {"whitelisthosts": "192.0.2.9\n"}, "merge 0")
    assert hooked(qp) == ["connect", "ehlo", "helo", "mail", "rcpt"]
    assert connect(qp)[0].session.connection.notes["whitelisthost"] == 1


# -- arguments --------------------------------------------------------------------------------

@pytest.mark.parametrize("args", ["per_recipient", "per_recipient 1 merge", "reject_type never"])
def test_bad_arguments_stop_start_up(tmp_path, args):
    with pytest.raises(AssertionError, match="whitelist"):
        make_qp(tmp_path, plugins=[f"whitelist {args}", "rcpt_ok"])


def test_per_recipient_0_is_normal_mode(tmp_path):
    assert hooked(whitelist_qp(tmp_path, {}, "per_recipient 0")) == ["connect", "ehlo", "helo", "mail", "rcpt"]
