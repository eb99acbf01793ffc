"""Every SMTP verb over a session: replies and return-code matrices (reference §3, §6)."""


import pytest
from harness import ANSWER, SessionDriver, make_qp, plugin_source

from qpsmtpd_py import __version__

GREETING = f"220 test.example.org ESMTP qpsmtpd-py {__version__} ready; send us your mail, but not your spam."
HELO_REPLY = "250 test.example.org Hi [127.0.0.1] [127.0.0.1]; I am so happy to meet you."
EHLO_FIRST = "250-test.example.org Hi [127.0.0.1] [127.0.0.1]"
SENDER_OK = "250 <a@b.example>, sender OK - how exciting to get mail from you!"
RCPT_OK = "250 <r@test.example.org>, recipient ok"




QUEUE_OK = plugin_source("""
    class QueueOk(Plugin):
        def hook_queue(self, transaction):
            return OK
""")


def session(tmp_path, plugins=("rcpt_ok",), files=None, plugin_files=None):
    files = dict(files or {})
    qp = make_qp(tmp_path, files, plugins=list(plugins), plugin_files={"answer": ANSWER, **(plugin_files or {})})
    driver = SessionDriver(qp)
    return qp, driver


def started(tmp_path, plugins=("rcpt_ok",), files=None, plugin_files=None, hello="EHLO client.example"):
    """A session past the greeting and HELO/EHLO."""
    qp, driver = session(tmp_path, plugins, files, plugin_files)
    driver.take()
    if hello:
        driver.command(hello)
    return qp, driver


def plugin(qp, name):
    return next(p for p in qp.plugins if p.name == name)


# -- greeting ---------------------------------------------------------------------------------

def test_default_greeting(tmp_path):
    _, driver = session(tmp_path)
    assert driver.take() == [GREETING]
    assert not driver.closed


@pytest.mark.parametrize(("configured", "greeting"), [
    ("Hello there", "220 Hello there ESMTP"),
    ("mx.example ESMTP ready", "220 mx.example ESMTP ready"),
    ("ESMTP mx.example", "220 ESMTP mx.example"),
    ("mx.example (ESMTP)", "220 mx.example (ESMTP)"),
])
def test_smtpgreeting_overrides_greeting_and_esmtp_is_added_unless_present(tmp_path, configured, greeting):
    _, driver = session(tmp_path, files={"smtpgreeting": configured})
    assert driver.take() == [greeting]


@pytest.mark.parametrize(("code", "reply"), [
    ("DENY", "550 Connection from you denied, bye bye."),
    ("DENY_DISCONNECT", "550 Connection from you denied, bye bye."),
    ("DENYSOFT", "450 Connection from you temporarily denied, bye bye."),
    ("DENYSOFT_DISCONNECT", "450 Connection from you temporarily denied, bye bye."),
])
def test_connect_denial_replies_default_text_and_closes(tmp_path, code, reply):
    _, driver = session(tmp_path, plugins=[f"answer connect {code}"])
    assert driver.take() == [reply]
    assert driver.closed
    assert driver.session.connection.notes["disconnected"] == 1


def test_connect_denial_with_message_uses_it(tmp_path):
    _, driver = session(tmp_path, plugins=["answer connect DENY you are listed"])
    assert driver.take() == ["550 you are listed"]
    assert driver.closed


def test_connect_done_sends_no_greeting_and_keeps_the_session(tmp_path):
    _, driver = session(tmp_path, plugins=["answer connect DONE"])
    assert driver.take() == []
    assert not driver.closed
    assert driver.command("NOOP") == ["250 OK"]


@pytest.mark.parametrize("code", ["OK", "DECLINED"])
def test_connect_ok_or_declined_greets(tmp_path, code):
    _, driver = session(tmp_path, plugins=[f"answer connect {code}"])
    assert driver.take() == [GREETING]


@pytest.mark.parametrize(("code", "reply"), [
    ("DENY", "550 Sorry, service not available to you"),
    ("DENY_DISCONNECT", "550 Sorry, service not available to you"),
    ("DENYSOFT", "451 Sorry, try again later"),
    ("DENYSOFT_DISCONNECT", "451 Sorry, try again later"),
])
def test_pre_connection_denial_replies_and_closes_before_connect_hooks(tmp_path, code, reply):
    qp, driver = session(tmp_path, plugins=[f"answer:0 pre-connection {code}", "answer:1 connect DENY never"])
    assert driver.take() == [reply]
    assert driver.closed
    assert [hook for hook, _ in qp.trail] == ["pre-connection"]


def test_pre_connection_hook_gets_qpsmtpd_arguments(tmp_path):
    qp, driver = session(tmp_path, plugins=["answer pre-connection DENYSOFT busy, come back"])
    assert driver.take() == ["451 busy, come back"]
    (hook, (info,)), = qp.trail
    assert info["remote_ip"] == "127.0.0.1"
    assert info["remote_port"] == 40000
    assert info["local_ip"] == "127.0.0.1"
    assert info["local_port"] == 25
    assert set(info) >= {"max_conn_ip", "child_addrs"}


# -- HELO / EHLO ------------------------------------------------------------------------------

def test_helo_reply(tmp_path):
    _, driver = started(tmp_path, hello=None)
    assert driver.command("HELO client.example") == [HELO_REPLY]
    assert driver.session.connection.hello == "helo"
    assert driver.session.connection.hello_host == "client.example"


def test_ehlo_reply_lines_without_databytes(tmp_path):
    _, driver = started(tmp_path, hello=None)
    assert driver.command("EHLO client.example") == [EHLO_FIRST, "250-PIPELINING", "250 8BITMIME"]
    assert driver.session.connection.hello == "ehlo"


def test_ehlo_advertises_size_only_with_databytes(tmp_path):
    _, driver = started(tmp_path, files={"databytes": "1000"}, hello=None)
    assert driver.command("EHLO client.example") == [EHLO_FIRST, "250-PIPELINING", "250-8BITMIME", "250 SIZE 1000"]


def test_ehlo_with_databytes_zero_has_no_size(tmp_path):
    _, driver = started(tmp_path, files={"databytes": "0"}, hello=None)
    assert "250 SIZE 0" not in driver.command("EHLO client.example")


def test_ehlo_lists_capabilities_note_after_the_builtin_ones(tmp_path):
    caps = plugin_source("""
        class Caps(Plugin):
            def hook_ehlo(self, transaction, host, *extra):
                transaction.notes.setdefault("capabilities", []).extend(["STARTTLS", "AUTH PLAIN LOGIN"])
                return DECLINED
    """)
    _, driver = started(tmp_path, files={"databytes": "5000"}, plugin_files={"caps": caps},
                        plugins=["caps"], hello=None)
    assert driver.command("EHLO client.example") == [
        EHLO_FIRST, "250-PIPELINING", "250-8BITMIME", "250-SIZE 5000", "250-STARTTLS", "250 AUTH PLAIN LOGIN"]


@pytest.mark.parametrize(("line", "reply"), [
    ("HELO", "501 helo requires domain/address - see RFC-2821 4.1.1.1"),
    ("HELO ", "501 helo requires domain/address - see RFC-2821 4.1.1.1"),
    ("EHLO", "501 ehlo requires domain/address - see RFC-2821 4.1.1.1"),
    ("ehlo   ", "501 ehlo requires domain/address - see RFC-2821 4.1.1.1"),
])
def test_helo_and_ehlo_without_host_get_501(tmp_path, line, reply):
    _, driver = started(tmp_path, hello=None)
    assert driver.command(line) == [reply]
    assert driver.session.connection.hello is None


def test_helo_hook_gets_host_and_extra_words_before_hello_is_set(tmp_path):
    peek = plugin_source("""
        class Peek(Plugin):
            def hook_helo(self, transaction, host, *extra):
                self.seen = (host, extra, self.connection.hello, self.connection.hello_host)
                return DECLINED
    """)
    qp, driver = started(tmp_path, plugins=["peek"], plugin_files={"peek": peek}, hello=None)
    assert driver.command("HELO client.example extra words") == [HELO_REPLY]
    assert plugin(qp, "peek").seen == ("client.example", ("extra", "words"), None, None)


@pytest.mark.parametrize("kind", ["helo", "ehlo"])
@pytest.mark.parametrize(("code", "reply", "closed"), [
    ("DENY", "550 {KIND} denied", False),
    ("DENYSOFT", "450 {KIND} denied", False),
    ("DENY_DISCONNECT", "550 {KIND} denied", True),
    ("DENYSOFT_DISCONNECT", "450 {KIND} denied", True),
])
def test_helo_ehlo_denial_without_message(tmp_path, kind, code, reply, closed):
    _, driver = started(tmp_path, plugins=[f"answer {kind} {code}"], hello=None)
    assert driver.command(f"{kind.upper()} client.example") == [reply.format(KIND=kind.upper())]
    assert driver.closed is closed
    assert driver.session.connection.hello is None
    if not closed:
        assert driver.command("MAIL FROM:<a@b.example>") == ["503 please say hello first ..."]


@pytest.mark.parametrize(("code", "reply"), [("DENY", "550 go away"), ("DENYSOFT", "450 go away")])
def test_helo_denial_with_message(tmp_path, code, reply):
    _, driver = started(tmp_path, plugins=[f"answer helo {code} go away"], hello=None)
    assert driver.command("HELO client.example") == [reply]


def test_helo_deny_disconnect_sets_disconnected_note(tmp_path):
    _, driver = started(tmp_path, plugins=["answer ehlo DENY_DISCONNECT bye"], hello=None)
    assert driver.command("EHLO client.example") == ["550 bye"]
    assert driver.closed
    assert driver.session.connection.notes["disconnected"] == 1


@pytest.mark.parametrize("kind", ["helo", "ehlo"])
def test_helo_ehlo_done_sends_nothing(tmp_path, kind):
    _, driver = started(tmp_path, plugins=[f"answer {kind} DONE"], hello=None)
    assert driver.command(f"{kind} client.example") == []
    assert not driver.closed


def test_second_ehlo_is_accepted_and_resets_the_transaction(tmp_path):
    _, driver = started(tmp_path, hello="HELO first.example")
    assert driver.command("MAIL FROM:<a@b.example>") == [SENDER_OK]
    assert driver.command("EHLO second.example") == [EHLO_FIRST, "250-PIPELINING", "250 8BITMIME"]
    assert driver.session.connection.hello == "ehlo"
    assert driver.session.connection.hello_host == "second.example"
    assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]


def test_second_helo_after_ehlo_is_accepted(tmp_path):
    _, driver = started(tmp_path)
    assert driver.command("HELO again.example") == [HELO_REPLY]
    assert driver.session.connection.hello == "helo"


# -- MAIL -------------------------------------------------------------------------------------

def test_mail_before_helo_gets_503(tmp_path):
    _, driver = started(tmp_path, hello=None)
    assert driver.command("MAIL FROM:<a@b.example>") == ["503 please say hello first ..."]


def test_mail_accepted(tmp_path):
    _, driver = started(tmp_path)
    assert driver.command("MAIL FROM:<a@b.example>") == [SENDER_OK]
    assert driver.session.transaction.sender.format() == "<a@b.example>"


@pytest.mark.parametrize("line", ["mail from:<a@b.example>", "MAIL FROM: <a@b.example>", "Mail From:<a@b.example>  "])
def test_mail_verb_and_prefix_are_case_insensitive_and_spaces_tolerated(tmp_path, line):
    _, driver = started(tmp_path)
    assert driver.command(line) == [SENDER_OK]


@pytest.mark.parametrize(("line", "reply"), [
    ("MAIL <a@b.example>", "501 Syntax error in command"),
    ("MAIL TO:<a@b.example>", "501 Syntax error in command"),
    ("MAIL", "501 Syntax error in command"),
    ("MAIL FROM:a@b.example", "501 could not parse your mail from command"),
    ("MAIL FROM:<a@b.example> =bad", "501 Syntax error in parameters"),
    ("MAIL FROM:<no-at-sign>", "501 could not parse your mail from command"),
    ("MAIL FROM:<a@b..example>", "501 could not parse your mail from command"),
])
def test_mail_syntax_errors(tmp_path, line, reply):
    _, driver = started(tmp_path)
    assert driver.command(line) == [reply]
    assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]


@pytest.mark.parametrize("line", ["MAIL FROM:<>", "MAIL FROM:", "MAIL FROM: ", "MAIL FROM:<#@[]>"])
def test_null_sender_forms(tmp_path, line):
    _, driver = started(tmp_path)
    assert driver.command(line) == ["250 <>, sender OK - how exciting to get mail from you!"]
    assert driver.session.transaction.sender.is_null


def test_mail_hook_gets_address_and_lower_cased_params(tmp_path):
    qp, driver = started(tmp_path, plugins=["answer mail DECLINED"])
    assert driver.command("MAIL FROM:<a@b.example> SIZE=1230 BODY=8BITMIME CORRECT-WITHOUT-ARG") == [SENDER_OK]
    (hook, (sender, params)), = qp.trail
    assert sender.format() == "<a@b.example>"
    assert params == {"size": "1230", "body": "8BITMIME", "correct-without-arg": None}


@pytest.mark.parametrize(("code", "reply", "closed"), [
    ("DENY", "550 <a@b.example>, denied", False),
    ("DENYSOFT", "450 <a@b.example>, temporarily denied", False),
    ("DENY_DISCONNECT", "550 <a@b.example>, denied", True),
    ("DENYSOFT_DISCONNECT", "421 <a@b.example>, temporarily denied", True),
])
def test_mail_denial_matrix_default_texts(tmp_path, code, reply, closed):
    _, driver = started(tmp_path, plugins=[f"answer mail {code}"])
    assert driver.command("MAIL FROM:<a@b.example>") == [reply]
    assert driver.closed is closed
    if not closed:
        assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]


@pytest.mark.parametrize(("code", "reply"), [
    ("DENY", "550 not you"), ("DENYSOFT", "450 not you"),
    ("DENY_DISCONNECT", "550 not you"), ("DENYSOFT_DISCONNECT", "421 not you"),
])
def test_mail_denial_with_message(tmp_path, code, reply):
    _, driver = started(tmp_path, plugins=[f"answer mail {code} not you"])
    assert driver.command("MAIL FROM:<a@b.example>") == [reply]


def test_mail_done_sends_nothing_and_stores_no_sender(tmp_path):
    _, driver = started(tmp_path, plugins=["answer mail DONE"])
    assert driver.command("MAIL FROM:<a@b.example>") == []
    assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]


@pytest.mark.parametrize("code", ["OK", "DECLINED"])
def test_mail_ok_and_declined_accept(tmp_path, code):
    _, driver = started(tmp_path, plugins=[f"answer mail {code} ignored text"])
    assert driver.command("MAIL FROM:<a@b.example>") == [SENDER_OK]


def test_second_mail_starts_a_new_transaction(tmp_path):
    _, driver = started(tmp_path)
    driver.command("MAIL FROM:<a@b.example>")
    driver.command("RCPT TO:<r@test.example.org>")
    assert driver.command("MAIL FROM:<c@d.example>") == [
        "250 <c@d.example>, sender OK - how exciting to get mail from you!"]
    assert driver.session.transaction.recipients == []
    assert driver.session.transaction.sender.format() == "<c@d.example>"


def test_mail_pre_ok_rewrites_the_address(tmp_path):
    rewrite = plugin_source("""
        class Rewrite(Plugin):
            def hook_mail_pre(self, transaction, address, params):
                return OK, "<rewritten@x.example>"

            def hook_rcpt_pre(self, transaction, address, params):
                return OK, "<r@test.example.org>"
    """)
    _, driver = started(tmp_path, plugins=["rewrite", "rcpt_ok"], plugin_files={"rewrite": rewrite})
    assert driver.command("MAIL FROM:whatever") == [
        "250 <rewritten@x.example>, sender OK - how exciting to get mail from you!"]
    assert driver.command("RCPT TO:garbage") == [RCPT_OK]


def test_mail_pre_other_codes_are_ignored(tmp_path):
    _, driver = started(tmp_path, plugins=["answer mail_pre DENY <x@y.example>"])
    assert driver.command("MAIL FROM:<a@b.example>") == [SENDER_OK]


def test_dont_require_anglebrackets(tmp_path):
    _, driver = started(tmp_path, plugins=["dont_require_anglebrackets", "rcpt_ok"])
    assert driver.command("MAIL FROM:ask@perl.org") == [
        "250 <ask@perl.org>, sender OK - how exciting to get mail from you!"]
    assert driver.command("RCPT TO:r@test.example.org") == [RCPT_OK]
    assert driver.command("MAIL FROM:") == ["250 <>, sender OK - how exciting to get mail from you!"]


@pytest.mark.parametrize(("line", "reply"), [
    ("MAIL FROM:<a@b.example> SIZE=1001", "552 Message size exceeds fixed maximum message size"),
    ("MAIL FROM:<a@b.example> SIZE=abc", "501 Syntax error in parameters (SIZE)"),
    ("MAIL FROM:<a@b.example> SIZE=1000", SENDER_OK),
    ("MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME", SENDER_OK),
])
def test_size_parameter_checked_against_databytes_at_mail(tmp_path, line, reply):
    _, driver = started(tmp_path, files={"databytes": "1000"})
    assert driver.command(line) == [reply]


def test_size_parameter_not_limited_without_databytes(tmp_path):
    _, driver = started(tmp_path)
    assert driver.command("MAIL FROM:<a@b.example> SIZE=999999999999") == [SENDER_OK]


# -- RCPT -------------------------------------------------------------------------------------

def test_rcpt_without_mail_gets_503(tmp_path):
    _, driver = started(tmp_path)
    assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]


@pytest.mark.parametrize(("line", "reply"), [
    ("RCPT <r@test.example.org>", "501 Syntax error in command"),
    ("RCPT FROM:<r@test.example.org>", "501 Syntax error in command"),
    ("RCPT TO:", "501 Syntax error in address"),
    ("RCPT TO:r@test.example.org", "501 could not parse recipient"),
    ("RCPT TO:<>", "501 could not parse recipient"),
    ("RCPT TO:<nobody>", "501 could not parse recipient"),
])
def test_rcpt_syntax_errors(tmp_path, line, reply):
    _, driver = started(tmp_path)
    driver.command("MAIL FROM:<a@b.example>")
    assert driver.command(line) == [reply]
    assert driver.session.transaction.recipients == []


def test_rcpt_bare_postmaster_is_valid(tmp_path):
    _, driver = started(tmp_path)
    driver.command("MAIL FROM:<a@b.example>")
    assert driver.command("RCPT TO:<postmaster>") == ["250 <postmaster>, recipient ok"]


def test_rcpt_ok_stores_recipients(tmp_path):
    _, driver = started(tmp_path)
    driver.command("MAIL FROM:<a@b.example>")
    assert driver.command("RCPT TO:<r@test.example.org>") == [RCPT_OK]
    assert driver.command("rcpt to:<s@test.example.org>") == ["250 <s@test.example.org>, recipient ok"]
    assert [r.format() for r in driver.session.transaction.recipients] == [
        "<r@test.example.org>", "<s@test.example.org>"]


def test_rcpt_declined_by_every_plugin_gets_450(tmp_path):
    _, driver = started(tmp_path, plugins=[])
    driver.command("MAIL FROM:<a@b.example>")
    assert driver.command("RCPT TO:<r@test.example.org>") == ["450 No plugin decided if relaying is allowed"]
    assert driver.session.transaction.recipients == []


@pytest.mark.parametrize(("code", "reply", "closed"), [
    ("DENY", "550 relaying denied", False),
    ("DENYSOFT", "450 relaying denied", False),
    ("DENY_DISCONNECT", "550 delivery denied", True),
    ("DENYSOFT_DISCONNECT", "421 relaying denied", True),
    ("OK", "250 <r@elsewhere.example>, recipient ok", False),
    ("DECLINED", "450 No plugin decided if relaying is allowed", False),
])
def test_rcpt_matrix_default_texts(tmp_path, code, reply, closed):
    _, driver = started(tmp_path, plugins=[f"answer rcpt {code}"])
    driver.command("MAIL FROM:<a@b.example>")
    assert driver.command("RCPT TO:<r@elsewhere.example>") == [reply]
    assert driver.closed is closed


def test_rcpt_denial_with_message_and_done(tmp_path):
    _, driver = started(tmp_path, plugins=["answer rcpt DENY no such user"])
    driver.command("MAIL FROM:<a@b.example>")
    assert driver.command("RCPT TO:<r@test.example.org>") == ["550 no such user"]
    _, driver = started(tmp_path / "2", plugins=["answer rcpt DONE"])
    driver.command("MAIL FROM:<a@b.example>")
    assert driver.command("RCPT TO:<r@test.example.org>") == []
    assert driver.session.transaction.recipients == []


def test_rcpt_hook_gets_address_and_params(tmp_path):
    qp, driver = started(tmp_path, plugins=["answer rcpt OK"])
    driver.command("MAIL FROM:<a@b.example>")
    driver.command("RCPT TO:<r@test.example.org> NOTIFY=NEVER")
    (hook, (rcpt, params)), = qp.trail
    assert rcpt.format() == "<r@test.example.org>"
    assert params == {"notify": "NEVER"}


def test_rcpt_is_not_checked_for_helo(tmp_path):
    _, driver = started(tmp_path)
    driver.command("MAIL FROM:<a@b.example>")
    assert driver.command("RCPT TO:<r@test.example.org>") == [RCPT_OK]


# -- DATA (command side) ----------------------------------------------------------------------

def test_data_without_mail(tmp_path):
    _, driver = started(tmp_path)
    assert driver.command("DATA") == ["503 MAIL first"]


def test_data_without_rcpt(tmp_path):
    _, driver = started(tmp_path)
    driver.command("MAIL FROM:<a@b.example>")
    assert driver.command("DATA") == ["503 RCPT first"]


def test_data_goes_ahead(tmp_path):
    _, driver = started(tmp_path)
    driver.command("MAIL FROM:<a@b.example>")
    driver.command("RCPT TO:<r@test.example.org>")
    assert driver.command("DATA") == ["354 go ahead"]


@pytest.mark.parametrize(("code", "reply", "closed"), [
    ("DENY", ["554 Message denied"], False),
    ("DENYSOFT", ["451 Message denied temporarily"], False),
    ("DENY_DISCONNECT", ["554 Message denied"], True),
    ("DENYSOFT_DISCONNECT", ["451 Message denied temporarily"], True),
    ("DONE", [], False),
    ("OK", ["354 go ahead"], False),
    ("DECLINED", ["354 go ahead"], False),
])
def test_data_hook_matrix(tmp_path, code, reply, closed):
    _, driver = started(tmp_path, plugins=["rcpt_ok", f"answer data {code}"])
    driver.command("MAIL FROM:<a@b.example>")
    driver.command("RCPT TO:<r@test.example.org>")
    assert driver.command("DATA") == reply
    assert driver.closed is closed
    if code in ("DENY", "DENYSOFT"):
        # the transaction is gone
        assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]


def test_data_denial_with_message(tmp_path):
    _, driver = started(tmp_path, plugins=["rcpt_ok", "answer data DENYSOFT try later"])
    driver.command("MAIL FROM:<a@b.example>")
    driver.command("RCPT TO:<r@test.example.org>")
    assert driver.command("DATA") == ["451 try later"]


# -- RSET, NOOP, VRFY, HELP, QUIT -------------------------------------------------------------

def test_rset_clears_the_transaction(tmp_path):
    _, driver = started(tmp_path)
    driver.command("MAIL FROM:<a@b.example>")
    driver.command("RCPT TO:<r@test.example.org>")
    assert driver.command("RSET") == ["250 OK"]
    assert driver.session.transaction.sender is None
    assert driver.session.transaction.recipients == []
    assert driver.command("DATA") == ["503 MAIL first"]


def test_rset_before_helo(tmp_path):
    _, driver = started(tmp_path, hello=None)
    assert driver.command("RSET") == ["250 OK"]


def test_noop(tmp_path):
    _, driver = started(tmp_path, hello=None)
    assert driver.command("NOOP") == ["250 OK"]
    assert driver.command("noop with arguments") == ["250 OK"]


@pytest.mark.parametrize(("code", "reply", "closed"), [
    ("DENY", ["500 Stop wasting my time."], False),
    ("DENY_DISCONNECT", ["500 Stop wasting my time."], True),
    ("DONE", [], False),
    ("OK", ["250 OK"], False),
])
def test_noop_hook_matrix(tmp_path, code, reply, closed):
    _, driver = started(tmp_path, plugins=[f"answer noop {code}"])
    assert driver.command("NOOP") == reply
    assert driver.closed is closed


def test_vrfy_default(tmp_path):
    _, driver = started(tmp_path)
    assert driver.command("VRFY postmaster") == ["252 Just try sending a mail and we'll see how it turns out ..."]


@pytest.mark.parametrize(("code", "reply"), [
    ("DENY", ["554 Access Denied"]),
    ("OK", ["250 User OK"]),
    ("DONE", []),
    ("DENYSOFT", ["252 Just try sending a mail and we'll see how it turns out ..."]),
])
def test_vrfy_hook_matrix(tmp_path, code, reply):
    _, driver = started(tmp_path, plugins=[f"answer vrfy {code}"])
    assert driver.command("VRFY someone") == reply


def test_vrfy_deny_resets_the_transaction(tmp_path):
    _, driver = started(tmp_path, plugins=["rcpt_ok", "answer vrfy DENY"])
    driver.command("MAIL FROM:<a@b.example>")
    driver.command("VRFY someone")
    assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]


def test_help_default(tmp_path):
    _, driver = started(tmp_path)
    lines = driver.command("HELP")
    assert lines[0] == f"214-This is qpsmtpd-py {__version__}"
    assert all(line.startswith("214-") for line in lines[:-1])
    assert lines[-1].startswith("214 ")
    assert len(lines) >= 2


def test_help_omits_version_when_smtpgreeting_is_set(tmp_path):
    _, driver = started(tmp_path, files={"smtpgreeting": "mx.example"})
    assert driver.command("HELP")[0] == "214-This is qpsmtpd-py"


@pytest.mark.parametrize(("code", "reply"), [
    ("DENY", ["500 Syntax error, command not recognized"]),
    ("DONE", []),
    ("OK", ["214 see the web site"]),
])
def test_help_hook_matrix(tmp_path, code, reply):
    message = " see the web site" if code == "OK" else ""
    qp, driver = started(tmp_path, plugins=[f"answer help {code}{message}"])
    assert driver.command("HELP mail from") == reply
    assert qp.trail == [("help", ("mail from",))]


def test_quit_replies_221_and_closes(tmp_path):
    _, driver = started(tmp_path)
    assert driver.command("QUIT") == ["221 test.example.org closing connection. Have a wonderful day."]
    assert driver.closed
    assert driver.command("NOOP") == []


def test_quit_hook_message_replaces_the_text(tmp_path):
    _, driver = started(tmp_path, plugins=["answer quit OK fortune cookie"])
    assert driver.command("QUIT") == ["221 fortune cookie"]
    assert driver.closed


def test_quit_done_sends_nothing_but_still_closes(tmp_path):
    _, driver = started(tmp_path, plugins=["answer quit DONE"])
    assert driver.command("QUIT") == []
    assert driver.closed


# -- unrecognized commands --------------------------------------------------------------------

@pytest.mark.parametrize("line", ["FOO", "", "STARTTLS", "EXPN root", "BDAT 100 LAST", "ABCDEFGHIJKLM",
                                  "AUTH PLAIN", "NO-OP", "HELO\tclient.example"])
def test_unrecognized_commands_get_500(tmp_path, line):
    _, driver = started(tmp_path)
    assert driver.command(line) == ["500 Unrecognized command"]
    assert not driver.closed


def test_unrecognized_command_hook_gets_lower_cased_verb_and_rest(tmp_path):
    qp, driver = started(tmp_path, plugins=["answer unrecognized_command DECLINED"])
    driver.command("XFOO  some  args")
    assert qp.trail == [("unrecognized_command", ("xfoo", "some  args"))]


@pytest.mark.parametrize(("code", "reply", "closed"), [
    ("DENY", ["500 Unrecognized command"], False),
    ("DENY_DISCONNECT", ["521 Unrecognized command"], True),
    ("DONE", [], False),
    ("OK", ["500 Unrecognized command"], False),
])
def test_unrecognized_command_hook_matrix(tmp_path, code, reply, closed):
    _, driver = started(tmp_path, plugins=[f"answer unrecognized_command {code}"])
    assert driver.command("XFOO") == reply
    assert driver.closed is closed


def test_unrecognized_command_deny_with_message(tmp_path):
    _, driver = started(tmp_path, plugins=["answer unrecognized_command DENY what?"])
    assert driver.command("XFOO") == ["500 what?"]


def test_count_unrecognized_commands_closes_at_the_fourth(tmp_path):
    qp, driver = started(tmp_path, plugins=["count_unrecognized_commands 4"])
    assert driver.command("FOO") == ["500 Unrecognized command"]
    assert driver.command("BAR") == ["500 Unrecognized command"]
    assert driver.command("BAZ") == ["500 Unrecognized command"]
    assert driver.command("QUX") == [
        "521 Closing connection, 4 unrecognized commands. Perhaps you should read RFC 2821?"]
    assert driver.closed
    assert driver.session.connection.notes["unrec_cmd_count"] == 4


def test_commands_are_case_insensitive(tmp_path):
    _, driver = started(tmp_path, hello=None)
    assert driver.command("helo client.example") == [HELO_REPLY]
    assert driver.command("NoOp") == ["250 OK"]
    assert driver.command("rSeT") == ["250 OK"]


# -- hooks around the transaction and the connection ------------------------------------------

def test_reset_transaction_hook_fires_at_mail_rset_and_after_queue(tmp_path):
    resets = plugin_source("""
        class Resets(Plugin):
            def init(self, qp, *args):
                self.seen = []

            def hook_reset_transaction(self, transaction):
                self.seen.append(transaction.sender.format() if transaction.sender else None)
                return DECLINED

            def hook_queue(self, transaction):
                return OK
    """)
    qp, driver = started(tmp_path, plugins=["rcpt_ok", "resets"], plugin_files={"resets": resets})
    seen = plugin(qp, "resets").seen
    driver.command("MAIL FROM:<a@b.example>")
    driver.command("MAIL FROM:<c@d.example>")
    assert [s for s in seen if s] == ["<a@b.example>"]
    driver.command("RSET")
    assert [s for s in seen if s] == ["<a@b.example>", "<c@d.example>"]
    driver.command("MAIL FROM:<e@f.example>")
    driver.command("RCPT TO:<r@test.example.org>")
    driver.command("DATA")
    assert driver.command(b"Subject: x\r\n\r\nbody\r\n.") == ["250 Queued"]
    assert [s for s in seen if s] == ["<a@b.example>", "<c@d.example>", "<e@f.example>"]
    assert driver.session.transaction.sender is None


CONNECTION_HOOKS = plugin_source("""
    class Lifecycle(Plugin):
        def init(self, qp, *args):
            self.seen = []

        def hook_disconnect(self, transaction):
            self.seen.append("disconnect")
            return DECLINED

        def hook_post_connection(self, transaction):
            self.seen.append("post-connection")
            return DECLINED

        def hook_quit(self, transaction):
            self.seen.append("quit")
            return DECLINED
""")


def test_quit_runs_quit_then_disconnect_then_post_connection_once(tmp_path):
    qp, driver = started(tmp_path, plugins=["lifecycle"], plugin_files={"lifecycle": CONNECTION_HOOKS})
    seen = plugin(qp, "lifecycle").seen
    driver.command("QUIT")
    assert seen == ["quit", "disconnect"]
    assert driver.session.connection.notes["disconnected"] == 1
    driver.close()
    assert seen == ["quit", "disconnect", "post-connection"]


def test_client_close_runs_disconnect_and_post_connection(tmp_path):
    qp, driver = started(tmp_path, plugins=["lifecycle"], plugin_files={"lifecycle": CONNECTION_HOOKS})
    driver.command("MAIL FROM:<a@b.example>")
    driver.close()
    assert plugin(qp, "lifecycle").seen == ["disconnect", "post-connection"]
    driver.send(b"NOOP\r\n")
    assert driver.take() == []


def test_session_registers_with_factory_until_closed(tmp_path):
    _, driver = started(tmp_path)
    assert driver.session in driver.factory.sessions
    driver.close()
    assert driver.session not in driver.factory.sessions


# -- line rules -------------------------------------------------------------------------------

def test_command_of_512_octets_with_crlf_is_accepted(tmp_path):
    _, driver = started(tmp_path)
    line = "NOOP " + "x" * 505
    assert len(line) + 2 == 512
    assert driver.command(line) == ["250 OK"]


def test_overlong_command_line_gets_500_and_session_goes_on(tmp_path):
    _, driver = started(tmp_path)
    assert driver.command("NOOP " + "x" * 600) == ["500 Line too long"]
    assert not driver.closed
    assert driver.command("NOOP") == ["250 OK"]


def test_mail_and_rcpt_lines_may_be_up_to_1024_octets(tmp_path):
    _, driver = started(tmp_path)
    params = " ".join(f"X-PARAM{i}=value" for i in range(60))
    line = "MAIL FROM:<a@b.example> " + params
    assert 600 < len(line) < 1020
    assert driver.command(line) == [SENDER_OK]
    assert driver.command("MAIL FROM:<a@b.example> X=" + "v" * 1100) == ["500 Line too long"]


def test_overlong_line_split_over_reads_is_refused_once(tmp_path):
    _, driver = started(tmp_path)
    driver.send(b"NOOP " + b"x" * 400)
    driver.send(b"x" * 400)
    assert driver.take() == []
    assert driver.command(b"x" * 10) == ["500 Line too long"]
    assert driver.command("NOOP") == ["250 OK"]


def test_endless_line_without_newline_closes_the_session(tmp_path):
    _, driver = started(tmp_path)
    driver.send(b"NOOP " + b"x" * 20000)
    assert driver.take() == ["500 Line too long"]
    assert driver.closed


@pytest.mark.parametrize("line", [b"NOOP\0", b"NO\0OP", b"MAIL FROM:<a@b.example>\0", b"NOOP\rRSET"])
def test_nul_or_bare_cr_in_command_gets_500(tmp_path, line):
    _, driver = started(tmp_path)
    assert driver.command(line) == ["500 Syntax error: NUL or bare CR in command"]
    assert driver.command("RCPT TO:<r@test.example.org>") == ["503 Use MAIL before RCPT"]


def test_command_ending_in_bare_lf_is_accepted(tmp_path):
    _, driver = started(tmp_path)
    driver.send(b"NOOP\n")
    assert driver.take() == ["250 OK"]


def test_pipelined_commands_in_one_read_are_answered_in_order(tmp_path):
    _, driver = started(tmp_path)
    driver.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<r@test.example.org>\r\nRCPT TO:<x@elsewhere.example>\r\n"
                b"NOOP\r\nRSET\r\n")
    assert driver.take() == [SENDER_OK, RCPT_OK, "550 Relaying denied (#5.7.1)", "250 OK", "250 OK"]


def test_command_split_across_reads(tmp_path):
    _, driver = started(tmp_path)
    for byte in b"MAIL FROM:<a@b.example>\r":
        driver.send(bytes([byte]))
        assert driver.take() == []
    driver.send(b"\n")
    assert driver.take() == [SENDER_OK]


# -- idle time --------------------------------------------------------------------------------

def test_idle_session_times_out_with_421(tmp_path):
    _, driver = started(tmp_path, files={"timeoutsmtpd": "30", "timeout": "600"})
    session = driver.session
    session.check_idle(session.last_read + 29)
    assert driver.take() == [] and not driver.closed
    session.check_idle(session.last_read + 31)
    assert driver.take() == ["421 Connection Timed Out"]
    assert driver.closed


def test_command_timeout_defaults_to_timeout(tmp_path):
    _, driver = started(tmp_path, files={"timeout": "50"})
    session = driver.session
    session.check_idle(session.last_read + 49)
    assert not driver.closed
    session.check_idle(session.last_read + 51)
    assert driver.closed


def test_shutdown_between_commands_says_421(tmp_path):
    _, driver = started(tmp_path)
    driver.session.shutdown()
    assert driver.take() == ["421 test.example.org Service shutting down, closing transmission channel"]
    assert driver.closed


def test_nothing_after_quit_is_answered(tmp_path):
    _, driver = started(tmp_path)
    driver.send(b"QUIT\r\nNOOP\r\nMAIL FROM:<a@b.example>\r\n")
    assert driver.take() == ["221 test.example.org closing connection. Have a wonderful day."]


def test_nothing_after_a_disconnecting_denial_is_answered(tmp_path):
    _, driver = started(tmp_path, plugins=["answer mail DENY_DISCONNECT bye"])
    driver.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<r@test.example.org>\r\nNOOP\r\n")
    assert driver.take() == ["550 bye"]
    assert driver.closed


def test_commands_wait_while_the_client_does_not_read_replies(tmp_path):
    _, driver = started(tmp_path)
    driver.session.pauseProducing()
    driver.send(b"NOOP\r\nRSET\r\n")
    assert driver.take() == []
    driver.session.resumeProducing()
    assert driver.take() == ["250 OK", "250 OK"]


# -- *_parse hooks, internal errors, reply framing --------------------------------------------

PARSERS = plugin_source("""
    class Parsers(Plugin):
        def hook_ehlo_parse(self, transaction):
            return OK, self.parse_ehlo

        def parse_ehlo(self, session, cmd, line):
            return OK, line.split()[-1].lower()

        def hook_mail_parse(self, transaction):
            return OK, self.parse_mail

        def parse_mail(self, session, cmd, line):
            if line.startswith("FROM:<boom"):
                raise ValueError("parser crashed")
            if not line.startswith("FROM:<"):
                return DENY, "custom parse error"
            return OK, line[5:]
""")


def test_ehlo_parse_hook_supplies_the_parser(tmp_path):
    _, driver = started(tmp_path, plugins=["parsers"], plugin_files={"parsers": PARSERS}, hello=None)
    assert driver.command("EHLO ignored IGNORED2 Real.Example")[0] == EHLO_FIRST
    assert driver.session.connection.hello_host == "real.example"


def test_mail_parse_hook_parser_result_and_denial(tmp_path):
    _, driver = started(tmp_path, plugins=["parsers"], plugin_files={"parsers": PARSERS})
    assert driver.command("MAIL FROM:<a@b.example>") == [SENDER_OK]
    assert driver.command("MAIL FROM: <a@b.example>") == ["501 custom parse error"]


def test_crashing_parser_gives_501_with_the_line_and_is_logged(tmp_path):
    qp, driver = started(tmp_path, plugins=["parsers"], plugin_files={"parsers": PARSERS})
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, message))
    assert driver.command("MAIL FROM:<boom@b.example>") == ["501 FROM:<boom@b.example>"]
    assert any(message.startswith("Failed to parse command [mail]") for _, message in lines)
    assert driver.command("NOOP") == ["250 OK"]


def test_internal_error_costs_one_command_not_the_session(tmp_path):
    broken = plugin_source("""
        class Broken(Plugin):
            def hook_mail_pre(self, transaction, address, params):
                return OK, len  # a callable where the new address should be
    """)
    qp, driver = started(tmp_path, plugins=["broken"], plugin_files={"broken": broken})
    qp.logger.log = lambda *args, **kwargs: None
    assert driver.command("MAIL FROM:<a@b.example>") == ["451 Internal error - try again later"]
    assert not driver.closed
    assert driver.command("NOOP") == ["250 OK"]


def test_plugin_message_cannot_inject_a_separate_reply(tmp_path):
    inject = plugin_source("""
        class Inject(Plugin):
            def hook_mail(self, transaction, sender, params):
                return DENY, "bad sender\\r\\n250 OK\\rnot a reply"
    """)
    _, driver = started(tmp_path, plugins=["inject"], plugin_files={"inject": inject})
    driver.send(b"MAIL FROM:<a@b.example>\r\n")
    raw = driver.transport.value()
    assert raw == b"550-bad sender\r\n550 250 OKnot a reply\r\n"


def test_capabilities_are_not_repeated_after_a_second_ehlo(tmp_path):
    caps = plugin_source("""
        class Caps(Plugin):
            def hook_ehlo(self, transaction, host, *extra):
                transaction.notes.setdefault("capabilities", []).append("STARTTLS")
                return DECLINED
    """)
    _, driver = started(tmp_path, plugins=["caps"], plugin_files={"caps": caps}, hello=None)
    first = driver.command("EHLO one.example")
    second = driver.command("EHLO two.example")
    assert first == second == [EHLO_FIRST, "250-PIPELINING", "250-8BITMIME", "250 STARTTLS"]


def test_connect_hook_timeout_refuses_the_session(tmp_path):
    from twisted.internet import task

    hang = plugin_source("""
        from twisted.internet import defer

        class Hang(Plugin):
            def hook_connect(self, transaction):
                return defer.Deferred()
    """)
    qp = make_qp(tmp_path, plugins=["hang", "rcpt_ok"], plugin_files={"hang": hang})
    clock = task.Clock()
    qp.runner.clock = clock
    qp.runner.plugin_timeout = 5
    qp.logger.log = qp.runner.log = lambda *args, **kwargs: None
    driver = SessionDriver(qp)
    assert driver.take() == []
    clock.advance(5)
    assert driver.take() == ["451 Timeout in plugin hang, try again later"]
    replies = driver.command("EHLO client.example") + driver.command("MAIL FROM:<a@b.example>")
    assert not any(reply.startswith("250") for reply in replies), replies
