"""config/logging in the real daemon: logging/file writes a session's lines, grep-able by its id."""

from __future__ import annotations

import base64
import re
import socket

from conftest import wait_until

HELO = "wire-logging.example"
STAMP = r"\w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}"
LINE = re.compile(rf"^{STAMP} {re.escape(socket.gethostname())}\[(\d+)\]: (\S+) (.*)$")


def test_logging_file_writes_every_line_of_a_session(daemon_factory, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    daemon = daemon_factory(files={"logging": [f"logging/file loglevel 6 {logs}/log-%Y%m%d"]})
    credentials = base64.b64encode(b"\0user@example.com\0s3cret-Passw0rd").decode()
    with daemon.connect() as client:
        client.start_mail(helo=HELO)
        client.send("Subject: logged\r\n\r\nbody\r\n.\r\n")
        client.expect(250)
        client.command(f"AUTH PLAIN {credentials}")  # no AUTH plugin: refused, but logged
        client.expect(221, "QUIT")
        client.wait_eof()

    def session_lines():
        files = list(logs.glob("log-*"))
        if len(files) != 1:
            return None
        lines = [LINE.match(line) for line in files[0].read_text().splitlines()]
        assert all(lines), files[0].read_text()
        ours = [m for m in lines if m.group(3) == f"dispatching EHLO {HELO}"]
        if not ours:
            return None
        session_id = ours[0].group(2)
        mine = [m for m in lines if m.group(2) == session_id]
        return mine if mine[-1].group(3).startswith("221 ") else None

    lines = wait_until(session_lines, 10, message="the session's lines in the log file")
    session_id = lines[0].group(2)
    pid = session_id.split(".")[0]
    assert {m.group(1) for m in lines} == {pid}  # written by the child that served the session
    messages = [m.group(3) for m in lines]
    assert messages[0] == "Connection from [127.0.0.1] [127.0.0.1]"
    assert messages[1].startswith("220 test.example.org ESMTP")
    for expected in (f"dispatching EHLO {HELO}", "dispatching MAIL FROM:<a@example.com>",
                     "dispatching RCPT TO:<postmaster@test.example.org>", "dispatching DATA",
                     "dispatching AUTH PLAIN", "dispatching QUIT"):
        assert expected in messages, (expected, messages)
    assert any(m.startswith("250 Queued!") for m in messages), messages
    assert messages[-1].startswith("221 ")
    # The built-in writer is silent, and credentials are never logged.
    assert HELO not in daemon.log()
    text = "\n".join(messages)
    assert credentials not in text and "s3cret" not in text
