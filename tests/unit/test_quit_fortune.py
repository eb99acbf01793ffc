"""The quit_fortune plugin, with a stand-in fortune program (run inline instead of in a thread)."""

import os

import pytest
from harness import SessionDriver, make_qp
from twisted.internet import defer

from qpsmtpd_py.constants import LOGERROR

FAREWELL = "221 test.example.org closing connection. Have a wonderful day."


def script(tmp_path, body, name="fortune", mode=0o755):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def fortune_qp(tmp_path, program, args=""):
    qp = make_qp(tmp_path, plugins=[f"quit_fortune fortune {program} {args}".strip(), "rcpt_ok"])
    for plugin in qp.plugins:
        if plugin.name == "quit_fortune":
            plugin.in_thread = lambda function: defer.maybeDeferred(function)
    return qp


def capture_log(qp):
    lines = []
    qp.logger.log = lambda level, message, hook=None, plugin=None: lines.append((level, plugin, message))
    return lines


def quit_after(qp, greeting=None):
    driver = SessionDriver(qp)
    driver.take()
    if greeting:
        assert driver.command(f"{greeting} client.example")[0].startswith("250")
    reply = driver.command("QUIT")
    assert driver.closed
    return reply


def test_helo_client_gets_a_fortune(tmp_path):
    program = script(tmp_path, 'echo "You will meet a tall stranger."\necho "  -- $1"\n')
    qp = fortune_qp(tmp_path, program)
    assert quit_after(qp, "HELO") == [
        "221-test.example.org closing connection.",
        "221-  / You will meet a tall stranger.",
        "221   /   -- -s",
    ]


def test_ehlo_client_gets_the_usual_farewell(tmp_path):
    qp = fortune_qp(tmp_path, script(tmp_path, "echo never shown\n"))
    assert quit_after(qp, "EHLO") == [FAREWELL]


def test_client_that_never_greeted_gets_the_usual_farewell(tmp_path):
    qp = fortune_qp(tmp_path, script(tmp_path, "echo never shown\n"))
    assert quit_after(qp) == [FAREWELL]


def test_empty_fortune(tmp_path):
    qp = fortune_qp(tmp_path, script(tmp_path, "exit 0\n"))
    assert quit_after(qp, "HELO") == ["221 test.example.org closing connection."]


def test_failing_fortune_is_logged(tmp_path):
    qp = fortune_qp(tmp_path, script(tmp_path, "echo half a joke\nexit 3\n"))
    log = capture_log(qp)
    assert quit_after(qp, "HELO") == ["221-test.example.org closing connection.", "221   / half a joke"]
    assert any(level == LOGERROR and message.endswith("exited with 3") for level, _, message in log)


def test_slow_fortune_is_killed(tmp_path):
    # The program leaves a child behind holding its output open: the whole group is killed.
    qp = fortune_qp(tmp_path, script(tmp_path, "sleep 30 &\nsleep 30\n"), "timeout 0.3")
    log = capture_log(qp)
    assert quit_after(qp, "HELO") == ["221 test.example.org closing connection."]
    assert any(level == LOGERROR and "did not finish within 0.3s" in message for level, _, message in log)


def test_program_that_cannot_run(tmp_path):
    program = script(tmp_path, "echo x\n")
    qp = fortune_qp(tmp_path, program)
    program.unlink()
    log = capture_log(qp)
    assert quit_after(qp, "HELO") == ["221 test.example.org closing connection."]
    assert any(level == LOGERROR and message.startswith("cannot run ") for level, _, message in log)


@pytest.mark.parametrize("mode", [0o644, None])
def test_no_executable_program_no_hook(tmp_path, mode):
    program = script(tmp_path, "echo x\n", mode=mode or 0o755)
    if mode is None:
        os.unlink(program)
    qp = fortune_qp(tmp_path, program)
    assert "quit" not in qp.hooks
    assert quit_after(qp, "HELO") == [FAREWELL]


def test_default_program(tmp_path):
    qp = make_qp(tmp_path, plugins=["quit_fortune", "rcpt_ok"])
    plugin = next(p for p in qp.plugins if p.name == "quit_fortune")
    assert plugin.fortune == "/usr/games/fortune" and plugin.timeout == 5.0
    assert ("quit" in qp.hooks) == os.access("/usr/games/fortune", os.X_OK)


@pytest.mark.parametrize("args", ["fortune", "timeout 0", "timeout soon", "timeout -1"])
def test_bad_arguments_stop_start_up(tmp_path, args):
    with pytest.raises(AssertionError, match="quit_fortune"):
        make_qp(tmp_path, plugins=[f"quit_fortune {args}", "rcpt_ok"])
