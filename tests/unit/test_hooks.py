"""The hook engine contract (reference §3): order, results, errors, notes, notifications."""

import os

import pytest
from harness import SessionDriver, make_qp, plugin_source, write_config
from twisted.internet import task

from qpsmtpd_py import log as qlog
from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.constants import (
    DECLINED,
    DENY,
    DENY_DISCONNECT,
    DENYSOFT,
    DENYSOFT_DISCONNECT,
    LOGCRIT,
    LOGERROR,
    LOGINFO,
    LOGNOTICE,
    LOGWARN,
    OK,
)
from qpsmtpd_py.hooks import HOOK_NAMES, HookResult, method_name, normalize
from qpsmtpd_py.plugin import escape_plugin_name
from qpsmtpd_py.qp import Qpsmtpd

# `answer HOOK CODE [message words]`: registers for HOOK, records every call in
# qp.trail and answers CODE (a name) with the message (`\n` = line break).
ANSWER = plugin_source("""
    from qpsmtpd_py.constants import return_code

    class Answer(Plugin):
        def register(self, qp, hook, code, *message):
            if not hasattr(qp, "trail"):
                qp.trail = []
            self.code = return_code(code)
            self.message = " ".join(message).replace("\\\\n", "\\n")
            self.register_hook(hook, self.answer)

        def answer(self, transaction, *args):
            self.qp.trail.append((self.name, self.running_hook))
            return (self.code, self.message) if self.message else self.code
""")

# Records the deny/ok notifications it hears about.
LISTENER = plugin_source("""
    class Listener(Plugin):
        def init(self, qp, *args):
            self.denies = []
            self.oks = []

        def hook_deny(self, transaction, plugin, code, message):
            self.denies.append((plugin, code, message))
            return DECLINED

        def hook_ok(self, transaction, plugin, code, message):
            self.oks.append((plugin, code, message))
            return DECLINED
""")


def plugin(qp, name):
    """The loaded plugin instance whose escaped name is `name`."""
    return next(p for p in qp.plugins if p.name == name)


def capture_log(qp):
    """Record (level, message) of every log line of the daemon, hooks and plugins."""
    lines = []

    def record(level, message, hook=None, plugin=None):
        lines.append((level, message))

    qp.logger.log = record
    qp.runner.log = record
    return lines


def greeted(qp, hello="EHLO client.example"):
    driver = SessionDriver(qp)
    driver.take()
    driver.command(hello)
    return driver


def load_errors(tmp_path, plugins, plugin_files):
    """Load a daemon that must fail; returns the load errors as strings."""
    plugin_dir = tmp_path / "test-plugins"
    for name, text in plugin_files.items():
        path = plugin_dir / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    config = write_config(tmp_path / "config", {
        "me": "test.example.org", "spool_dir": str(tmp_path / "spool"),
        "plugins": list(plugins), "plugin_dirs": str(plugin_dir)})
    qp = Qpsmtpd(ConfigReader([config]))
    return [str(error) for error in qp.load()]


# -- order and the first answer ---------------------------------------------------------------

def test_plugins_run_in_config_order_and_declined_passes_on(tmp_path):
    qp = make_qp(tmp_path, plugins=["answer:0 helo DECLINED", "answer:1 helo DECLINED", "answer:2 helo DECLINED"],
                 plugin_files={"answer": ANSWER})
    greeted(qp, "HELO client.example")
    assert qp.trail == [("answer_3a0", "helo"), ("answer_3a1", "helo"), ("answer_3a2", "helo")]


def test_first_non_declined_answer_wins_and_later_plugins_do_not_run(tmp_path):
    qp = make_qp(tmp_path, plugins=["answer:0 mail DECLINED", "answer:1 mail DENYSOFT first",
                                    "answer:2 mail DENY second"], plugin_files={"answer": ANSWER})
    driver = greeted(qp)
    assert driver.command("MAIL FROM:<a@b.example>") == ["450 first"]
    assert [name for name, _ in qp.trail] == ["answer_3a0", "answer_3a1"]


def test_ok_stops_a_later_deny(tmp_path):
    qp = make_qp(tmp_path, plugins=["answer:0 mail OK", "answer:1 mail DENY no"], plugin_files={"answer": ANSWER})
    driver = greeted(qp)
    assert driver.command("MAIL FROM:<a@b.example>") == [
        "250 <a@b.example>, sender OK - how exciting to get mail from you!"]
    assert [name for name, _ in qp.trail] == ["answer_3a0"]


def test_run_returns_the_winning_result_directly_when_all_plugins_are_synchronous(tmp_path):
    qp = make_qp(tmp_path, plugins=["answer:0 vrfy DECLINED", "answer:1 vrfy DENY go away\\nnow"],
                 plugin_files={"answer": ANSWER})
    driver = greeted(qp)
    result = qp.runner.run(driver.session, "vrfy")
    assert result == HookResult(DENY, ["go away", "now"])
    assert result.message == "go away"


def test_hook_without_plugins_gives_declined_with_no_message(tmp_path):
    qp = make_qp(tmp_path, plugins=[])
    driver = greeted(qp)
    assert qp.runner.run(driver.session, "data_post") == HookResult(DECLINED, [])


def test_register_hook_with_unshift_runs_before_earlier_plugins(tmp_path):
    first = plugin_source("""
        class First(Plugin):
            def register(self, qp, *args):
                self.register_hook("mail", "check", unshift=True)

            def check(self, transaction, sender, params):
                return DENY, "unshifted plugin ran first"
    """)
    qp = make_qp(tmp_path, plugins=["answer mail DENY loaded first", "first"],
                 plugin_files={"answer": ANSWER, "first": first})
    driver = greeted(qp)
    assert driver.command("MAIL FROM:<a@b.example>") == ["550 unshifted plugin ran first"]
    assert qp.trail == []


# -- broken plugins ---------------------------------------------------------------------------

def test_plugin_exception_is_logged_at_logcrit_and_next_plugin_runs(tmp_path):
    crash = plugin_source("""
        class Crash(Plugin):
            def hook_mail(self, transaction, sender, params):
                raise RuntimeError("dead")
    """)
    qp = make_qp(tmp_path, plugins=["crash", "answer mail DENY survived"],
                 plugin_files={"crash": crash, "answer": ANSWER})
    lines = capture_log(qp)
    driver = greeted(qp)
    assert driver.command("MAIL FROM:<a@b.example>") == ["550 survived"]
    crit = [message for level, message in lines if level == LOGCRIT]
    assert len(crit) == 1
    assert crit[0].startswith("FATAL PLUGIN ERROR [crash]: ")
    assert "dead" in crit[0]


def test_plugin_exception_goes_to_stderr_fd_with_session_prefix(tmp_path, monkeypatch):
    crash = plugin_source("""
        class Crash(Plugin):
            def hook_helo(self, transaction, host, *extra):
                raise ValueError("boom")
    """)
    qp = make_qp(tmp_path, plugins=["crash"], plugin_files={"crash": crash})
    log_path = tmp_path / "stderr.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    monkeypatch.setattr(qlog, "_stderr_fd", fd)
    try:
        driver = greeted(qp, "HELO client.example")
    finally:
        os.close(fd)
    lines = log_path.read_text().splitlines()
    fatal = [line for line in lines if "FATAL PLUGIN ERROR [crash]: " in line]
    assert len(fatal) == 1
    assert fatal[0].startswith(driver.session.connection.id + " ")
    assert "boom" in fatal[0]


def test_plugin_returning_none_is_logged_as_undef_and_skipped(tmp_path):
    undef = plugin_source("""
        class Undef(Plugin):
            def hook_helo(self, transaction, host, *extra):
                return None
    """)
    qp = make_qp(tmp_path, plugins=["undef", "answer helo DENY second plugin"],
                 plugin_files={"undef": undef, "answer": ANSWER})
    lines = capture_log(qp)
    driver = SessionDriver(qp)
    driver.take()
    assert driver.command("HELO client.example") == ["550 second plugin"]
    assert (LOGERROR, "Plugin undef, hook helo returned undef!") in lines


def test_invalid_return_code_is_logged_and_skipped(tmp_path):
    invalid = plugin_source("""
        class Invalid(Plugin):
            def hook_helo(self, transaction, host, *extra):
                return 123456
    """)
    qp = make_qp(tmp_path, plugins=["invalid"], plugin_files={"invalid": invalid})
    lines = capture_log(qp)
    driver = SessionDriver(qp)
    driver.take()
    reply = driver.command("HELO client.example")
    assert reply[0].startswith("250 test.example.org Hi ")
    assert (LOGERROR, "Plugin invalid, hook helo returned 123456") in lines


@pytest.mark.parametrize("raw", [None, (), "OK", 123456, (123456, "x"), ("x",), [], True])
def test_normalize_refuses_missing_or_unknown_codes(raw):
    assert normalize(raw) is None


def test_normalize_accepts_code_tuples_and_splits_lines():
    assert normalize(OK) == HookResult(OK, [])
    assert normalize((DENY,)) == HookResult(DENY, [])
    assert normalize((DENY, "a\nb", "c")) == HookResult(DENY, ["a", "b", "c"])
    assert normalize([DENYSOFT, None]) == HookResult(DENYSOFT, [])
    parser = normalize((OK, len))
    assert parser.code == OK and parser.messages == [len]


# -- replies ----------------------------------------------------------------------------------

def test_multi_line_message_gives_multi_line_reply(tmp_path):
    qp = make_qp(tmp_path, plugins=["answer mail DENY line1\\nline2\\nline3"], plugin_files={"answer": ANSWER})
    driver = greeted(qp)
    assert driver.command("MAIL FROM:<a@b.example>") == ["550-line1", "550-line2", "550 line3"]


def test_tuple_with_several_messages_gives_one_line_each(tmp_path):
    several = plugin_source("""
        class Several(Plugin):
            def hook_mail(self, transaction, sender, params):
                return DENYSOFT, "one", "two"
    """)
    qp = make_qp(tmp_path, plugins=["several"], plugin_files={"several": several})
    driver = greeted(qp)
    assert driver.command("MAIL FROM:<a@b.example>") == ["450-one", "450 two"]


# -- notes and notifications ----------------------------------------------------------------

def test_results_are_recorded_only_in_a_notes_dict_the_plugin_keeps(tmp_path):
    keeper = plugin_source("""
        class Keeper(Plugin):
            def hook_mail(self, transaction, sender, params):
                transaction.notes[self.name] = {"mine": 1}
                return DECLINED

            def hook_rcpt(self, transaction, rcpt, params):
                return DENY
    """)
    qp = make_qp(tmp_path, plugins=["keeper", "answer mail DECLINED"],
                 plugin_files={"keeper": keeper, "answer": ANSWER})
    driver = greeted(qp)
    driver.command("MAIL FROM:<a@b.example>")
    assert driver.command("RCPT TO:<r@c.example>") == ["550 relaying denied"]
    notes = driver.session.transaction.notes
    assert notes["keeper"] == {"mine": 1, "hook_mail": {"return": DECLINED}, "hook_rcpt": {"return": DENY}}
    # qpsmtpd records into a hash only when the plugin keeps one: no note appears by itself.
    assert "answer" not in notes


@pytest.mark.parametrize("code", ["DENY", "DENYSOFT", "DENY_DISCONNECT", "DENYSOFT_DISCONNECT"])
def test_deny_hooks_hear_plugin_name_code_and_message(tmp_path, code):
    qp = make_qp(tmp_path, plugins=["listener", f"answer mail {code} go away"],
                 plugin_files={"listener": LISTENER, "answer": ANSWER})
    greeted(qp).command("MAIL FROM:<a@b.example>")
    codes = {"DENY": DENY, "DENYSOFT": DENYSOFT, "DENY_DISCONNECT": DENY_DISCONNECT,
             "DENYSOFT_DISCONNECT": DENYSOFT_DISCONNECT}
    listener = plugin(qp, "listener")
    assert listener.denies == [("answer", codes[code], "go away")]
    assert ("answer", codes[code], "go away") not in listener.oks


def test_ok_hooks_hear_ok_and_declined_results(tmp_path):
    qp = make_qp(tmp_path, plugins=["listener", "answer:0 mail DECLINED", "answer:1 mail OK fine"],
                 plugin_files={"listener": LISTENER, "answer": ANSWER})
    greeted(qp).command("MAIL FROM:<a@b.example>")
    listener = plugin(qp, "listener")
    assert ("answer_3a0", DECLINED, "") in listener.oks
    assert ("answer_3a1", OK, "fine") in listener.oks
    assert listener.denies == []


def test_ok_hooks_never_hear_a_denial(tmp_path):
    denier = plugin_source("""
        class Denier(Plugin):
            def hook_deny(self, transaction, plugin, code, message):
                return DENY
    """)
    qp = make_qp(tmp_path, plugins=["listener", "denier", "answer mail DENY no"],
                 plugin_files={"listener": LISTENER, "denier": denier, "answer": ANSWER})
    greeted(qp).command("MAIL FROM:<a@b.example>")
    assert [entry for entry in plugin(qp, "listener").oks if entry[1] == DENY] == []


# -- asynchronous plugins ---------------------------------------------------------------------

ASYNC = plugin_source("""
    class Later(Plugin):
        def init(self, qp, *args):
            self.pending = []

        def hook_mail(self, transaction, sender, params):
            d = defer.Deferred()
            self.pending.append(d)
            return d

    """)

CORO = plugin_source("""
    class Coro(Plugin):
        def init(self, qp, *args):
            self.pending = []

        async def hook_mail(self, transaction, sender, params):
            d = defer.Deferred()
            self.pending.append(d)
            code = await d
            return code, "answered by a coroutine"
    """)


def test_deferred_returning_hook_answers_when_it_fires(tmp_path):
    qp = make_qp(tmp_path, plugins=["later"], plugin_files={"later": ASYNC})
    qp.runner.clock = task.Clock()
    driver = greeted(qp)
    assert driver.command("MAIL FROM:<a@b.example>") == []
    plugin(qp, "later").pending[0].callback((DENY, "later no"))
    assert driver.take() == ["550 later no"]


def test_deferred_declined_goes_on_to_the_next_plugin(tmp_path):
    qp = make_qp(tmp_path, plugins=["later", "answer mail DENYSOFT next one"],
                 plugin_files={"later": ASYNC, "answer": ANSWER})
    qp.runner.clock = task.Clock()
    driver = greeted(qp)
    driver.command("MAIL FROM:<a@b.example>")
    assert qp.trail == []
    plugin(qp, "later").pending[0].callback(DECLINED)
    assert driver.take() == ["450 next one"]


def test_failing_deferred_is_logged_as_fatal_and_next_plugin_runs(tmp_path):
    qp = make_qp(tmp_path, plugins=["later", "answer mail DENY after failure"],
                 plugin_files={"later": ASYNC, "answer": ANSWER})
    qp.runner.clock = task.Clock()
    lines = capture_log(qp)
    driver = greeted(qp)
    driver.command("MAIL FROM:<a@b.example>")
    plugin(qp, "later").pending[0].errback(RuntimeError("lookup failed"))
    assert driver.take() == ["550 after failure"]
    assert any(level == LOGCRIT and message.startswith("FATAL PLUGIN ERROR [later]: ") and "lookup failed" in message
               for level, message in lines)


def test_async_def_hook_is_awaited(tmp_path):
    qp = make_qp(tmp_path, plugins=["coro"], plugin_files={"coro": CORO})
    qp.runner.clock = task.Clock()
    driver = greeted(qp)
    assert driver.command("MAIL FROM:<a@b.example>") == []
    plugin(qp, "coro").pending[0].callback(DENYSOFT)
    assert driver.take() == ["450 answered by a coroutine"]


def test_async_def_hook_that_does_not_wait_answers_at_once(tmp_path):
    quick = plugin_source("""
        class Quick(Plugin):
            async def hook_mail(self, transaction, sender, params):
                return DENY, "quick"
    """)
    qp = make_qp(tmp_path, plugins=["quick"], plugin_files={"quick": quick})
    qp.runner.clock = task.Clock()
    driver = greeted(qp)
    assert driver.command("MAIL FROM:<a@b.example>") == ["550 quick"]


def test_hook_timing_out_gives_451_naming_the_plugin(tmp_path):
    qp = make_qp(tmp_path, plugins=["later", "answer mail DENY never reached"],
                 plugin_files={"later": ASYNC, "answer": ANSWER})
    clock = task.Clock()
    qp.runner.clock = clock
    qp.runner.plugin_timeout = 5
    lines = capture_log(qp)
    driver = greeted(qp)
    assert driver.command("MAIL FROM:<a@b.example>") == []
    clock.advance(4.9)
    assert driver.take() == []
    clock.advance(0.1)
    assert driver.take() == ["451 Timeout in plugin later, try again later"]
    assert qp.trail == []
    assert any(level == LOGERROR and "later" in message for level, message in lines)
    # the session goes on
    assert driver.command("NOOP") == ["250 OK"]


def test_async_def_hook_timing_out_gives_451(tmp_path):
    qp = make_qp(tmp_path, plugins=["coro"], plugin_files={"coro": CORO})
    clock = task.Clock()
    qp.runner.clock = clock
    qp.runner.plugin_timeout = 2
    driver = greeted(qp)
    driver.command("MAIL FROM:<a@b.example>")
    clock.advance(2)
    assert driver.take() == ["451 Timeout in plugin coro, try again later"]
    assert plugin(qp, "coro").pending[0].called  # cancelled, so it can clean up


def test_plugin_timeout_comes_from_config(tmp_path):
    qp = make_qp(tmp_path, {"plugin_timeout": "7"}, plugins=[])
    assert qp.runner.plugin_timeout == 7


def test_sync_only_hook_returning_a_deferred_is_logged_and_ignored(tmp_path):
    config_plugin = plugin_source("""
        class Cfg(Plugin):
            def hook_config(self, transaction, key):
                return defer.Deferred()
    """)
    qp = make_qp(tmp_path, plugins=["cfg"], plugin_files={"cfg": config_plugin})
    lines = capture_log(qp)
    assert qp.config("me") == "test.example.org"
    assert any(level == LOGERROR and "cfg" in message for level, message in lines)


def test_config_hook_ok_overrides_the_file(tmp_path):
    config_plugin = plugin_source("""
        class Cfg(Plugin):
            def hook_config(self, transaction, key):
                if key == "me":
                    return OK, "from.hook.example"
                return DECLINED
    """)
    qp = make_qp(tmp_path, plugins=["cfg"], plugin_files={"cfg": config_plugin})
    assert qp.config("me") == "from.hook.example"
    driver = SessionDriver(qp)
    assert driver.take()[0].startswith("220 from.hook.example ESMTP ")


# -- loading and names ------------------------------------------------------------------------

def test_hook_names_and_method_names_follow_qpsmtpd():
    assert "pre-connection" in HOOK_NAMES and "auth-cram-md5" in HOOK_NAMES
    assert method_name("pre-connection") == "hook_pre_connection"
    assert method_name("auth-cram-md5") == "hook_auth_cram_md5"
    assert method_name("post-connection") == "hook_post_connection"


def test_unknown_hook_method_name_is_a_load_error(tmp_path):
    bad = plugin_source("""
        class Bad(Plugin):
            def hook_foo(self, transaction):
                return DECLINED
    """)
    errors = load_errors(tmp_path, ["bad"], {"bad": bad})
    assert len(errors) == 1
    assert "hook_foo" in errors[0] and "plugin bad" in errors[0]


def test_register_hook_with_invalid_name_is_a_load_error(tmp_path):
    bad = plugin_source("""
        class Bad(Plugin):
            def register(self, qp, *args):
                self.register_hook("nosuchhook", "register")
    """)
    errors = load_errors(tmp_path, ["bad"], {"bad": bad})
    assert len(errors) == 1
    assert "Invalid hook: nosuchhook" in errors[0]


def test_all_load_errors_are_reported_together(tmp_path):
    bad = plugin_source("""
        class Bad(Plugin):
            def hook_foo(self, transaction):
                return DECLINED
    """)
    errors = load_errors(tmp_path, ["bad", "no_such_plugin", "answer mail DENY"],
                         {"bad": bad, "answer": ANSWER})
    assert len(errors) == 2
    assert any("no_such_plugin" in error for error in errors)


def test_hook_methods_are_registered_automatically_for_both_plain_and_dashed_hooks(tmp_path):
    dashed = plugin_source("""
        class Dashed(Plugin):
            def init(self, qp, *args):
                self.seen = []

            def hook_pre_connection(self, transaction, info):
                self.seen.append(("pre-connection", info["remote_ip"]))
                return DECLINED

            def hook_post_connection(self, transaction):
                self.seen.append(("post-connection",))
                return DECLINED
    """)
    qp = make_qp(tmp_path, plugins=["dashed"], plugin_files={"dashed": dashed})
    assert "pre-connection" in qp.hooks and "post-connection" in qp.hooks
    driver = SessionDriver(qp)
    driver.close()
    assert plugin(qp, "dashed").seen == [("pre-connection", "127.0.0.1"), ("post-connection",)]


@pytest.mark.parametrize(("name", "escaped"), [
    ("queue/qmail-queue", "queue::qmail_2dqueue"),
    ("relay:0", "relay_3a0"),
    ("ident/p0f:2", "ident::p0f_3a2"),
    ("rcpt_ok", "rcpt_ok"),
    ("check.pl", "check_2epl"),
    ("virus/0day", "virus::_30day"),
    ("auth/auth_flat_file", "auth::auth_flat_file"),
])
def test_escape_plugin_name_matches_qpsmtpd(name, escaped):
    assert escape_plugin_name(name) == escaped


def test_plugin_in_subdirectory_and_numbered_instances_use_escaped_names(tmp_path):
    qp = make_qp(tmp_path, plugins=["sub/my-plugin:0 mail DECLINED", "sub/my-plugin:1 mail DENY no"],
                 plugin_files={"sub/my-plugin": ANSWER})
    assert [p.name for p in qp.plugins] == ["sub::my_2dplugin_3a0", "sub::my_2dplugin_3a1"]
    driver = greeted(qp)
    assert driver.command("MAIL FROM:<a@b.example>") == ["550 no"]


# -- standard arguments: reject, reject_type, loglevel ------------------------------------------

REJECTOR = plugin_source("""
    class Rejector(Plugin):
        def hook_mail(self, transaction, sender, params):
            return self.get_reject("bad sender", "sender looks odd")
""")


@pytest.mark.parametrize("args", ["reject_type bogus", "loglevel loud", "loglevel 9", "loglevel +x"])
def test_bad_standard_argument_is_a_load_error(tmp_path, args):
    errors = load_errors(tmp_path, [f"rejector {args}"], {"rejector": REJECTOR})
    assert len(errors) == 1
    assert args.split()[0] in errors[0]


def test_bad_reject_value_is_a_load_error(tmp_path):
    errors = load_errors(tmp_path, ["rejector reject maybe"], {"rejector": REJECTOR})
    assert len(errors) == 1
    assert "reject" in errors[0]


@pytest.mark.parametrize("args", ["loglevel 0", "loglevel 7", "loglevel +2", "loglevel -1",
                                  "reject_type perm", "reject_type temp_disconnect", "reject 0", "reject naughty"])
def test_good_standard_arguments_load(tmp_path, args):
    assert load_errors(tmp_path, [f"rejector {args}"], {"rejector": REJECTOR}) == []


@pytest.mark.parametrize(("args", "reply", "closed"), [
    ([], ["550 bad sender"], False),
    (["reject", "1"], ["550 bad sender"], False),
    (["reject_type", "perm"], ["550 bad sender"], False),
    (["reject_type", "hard"], ["550 bad sender"], False),
    (["reject_type", "temp"], ["450 bad sender"], False),
    (["reject_type", "soft"], ["450 bad sender"], False),
    (["reject_type", "disconnect"], ["550 bad sender"], True),
    (["reject_type", "temp_disconnect"], ["421 bad sender"], True),
    (["reject", "0"], ["250 <a@b.example>, sender OK - how exciting to get mail from you!"], False),
])
def test_get_reject_applies_reject_and_reject_type(tmp_path, args, reply, closed):
    qp = make_qp(tmp_path, plugins=[" ".join(["rejector", *args])], plugin_files={"rejector": REJECTOR})
    driver = greeted(qp)
    assert driver.command("MAIL FROM:<a@b.example>") == reply
    assert driver.closed is closed


def test_get_reject_zero_logs_fail_tolerated(tmp_path):
    qp = make_qp(tmp_path, plugins=["rejector reject 0"], plugin_files={"rejector": REJECTOR})
    lines = capture_log(qp)
    greeted(qp).command("MAIL FROM:<a@b.example>")
    assert (LOGINFO, "fail, tolerated, sender looks odd") in lines


def test_get_reject_naughty_defers_the_rejection_to_a_connection_note(tmp_path):
    qp = make_qp(tmp_path, plugins=["rejector reject naughty reject_type temp"],
                 plugin_files={"rejector": REJECTOR})
    driver = greeted(qp)
    assert driver.command("MAIL FROM:<a@b.example>")[0].startswith("250 ")
    notes = driver.session.connection.notes
    assert notes["naughty"] == "(rejector) bad sender"
    assert notes["naughty_reject_type"] == "temp"
    driver.command("MAIL FROM:<c@d.example>")
    assert notes["naughty"] == "(rejector) bad sender\r\n(rejector) bad sender"


@pytest.mark.parametrize(("setting", "level_in", "level_out"), [
    (None, LOGINFO, LOGINFO),
    ("2", LOGINFO, LOGCRIT),
    ("7", LOGWARN, 7),
    ("+1", LOGNOTICE, LOGINFO),
    ("-2", LOGINFO, LOGWARN),
    ("+5", LOGINFO, 7),
])
def test_loglevel_argument_adjusts_the_plugin_log_level(tmp_path, setting, level_in, level_out):
    talker = plugin_source(f"""
        class Talker(Plugin):
            def hook_helo(self, transaction, host, *extra):
                self.log({level_in}, "hello from the plugin")
                return DECLINED
    """)
    line = "talker" if setting is None else f"talker loglevel {setting}"
    qp = make_qp(tmp_path, plugins=[line], plugin_files={"talker": talker})
    lines = capture_log(qp)
    greeted(qp, "HELO client.example")
    assert [level for level, message in lines if message == "hello from the plugin"] == [level_out]


def test_plugin_log_lines_name_the_hook_and_plugin(tmp_path, monkeypatch):
    talker = plugin_source("""
        class Talker(Plugin):
            def hook_helo(self, transaction, host, *extra):
                self.log(LOGWARN, "greeted by", host)
                return DECLINED
    """)
    qp = make_qp(tmp_path, plugins=["talker"], plugin_files={"talker": talker})
    read_fd, write_fd = os.pipe()
    monkeypatch.setattr(qlog, "_stderr_fd", write_fd)
    try:
        driver = greeted(qp, "HELO client.example")
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        lines = pipe.read().splitlines()
    assert f"{driver.session.connection.id} (helo) talker: greeted by client.example" in lines


def test_plugin_sees_current_session_connection_and_transaction(tmp_path):
    peek = plugin_source("""
        class Peek(Plugin):
            def hook_mail(self, transaction, sender, params):
                assert transaction is self.transaction
                self.connection.notes["peek"] = (self.running_hook, self.session.connection.remote_ip,
                                                 str(sender), dict(params))
                return DECLINED
    """)
    qp = make_qp(tmp_path, plugins=["peek"], plugin_files={"peek": peek})
    driver = greeted(qp)
    driver.command("MAIL FROM:<a@b.example> BODY=8BITMIME")
    assert driver.session.connection.notes["peek"] == ("mail", "127.0.0.1", "<a@b.example>", {"body": "8BITMIME"})


def test_every_line_of_a_plugin_reaches_a_logging_plugin(tmp_path):
    recorder = plugin_source("""
        class Recorder(Plugin):
            def init(self, qp, *args):
                self.lines = []

            def hook_logging(self, transaction, level, hook, plugin, message):
                self.lines.append((hook, plugin, message))
                return DECLINED
    """)
    talker = plugin_source("""
        class Talker(Plugin):
            def hook_connect(self, transaction):
                self.log(LOGWARN, "first line")
                self.log(LOGWARN, "second line")
                return DECLINED
    """)
    qp = make_qp(tmp_path, plugins=["recorder", "talker", "rcpt_ok"],
                 plugin_files={"recorder": recorder, "talker": talker})
    SessionDriver(qp)
    lines = next(p for p in qp.plugins if p.name == "recorder").lines
    assert ("connect", "talker", "first line") in lines
    assert ("connect", "talker", "second line") in lines
    talker_plugin = next(p for p in qp.plugins if p.name == "talker")
    talker_plugin.log(LOGWARN, "outside any hook")
    assert (None, "talker", "outside any hook") in lines


def test_standard_arguments_after_a_positional_one(tmp_path):
    qp = make_qp(tmp_path, plugins=["count_unrecognized_commands 4 loglevel 6", "rcpt_ok"])
    plugin = next(p for p in qp.plugins if p.name == "count_unrecognized_commands")
    assert plugin.limit == 4 and plugin.args == {"loglevel": "6"}
