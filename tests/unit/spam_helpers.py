"""Helpers for the spamassassin and dspam tests: a qp with the filter on the test's reactor."""

from __future__ import annotations

from harness import make_qp, plugin_source

from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.qp import Qpsmtpd

# Runs after the filter: what the message and the notes looked like once it was checked.
RECORD = plugin_source("""
    class Record(Plugin):
        def hook_data_post(self, transaction):
            self.qp.after_scan = {"header": transaction.header.as_string(), "notes": dict(transaction.notes),
                                  "karma": self.connection.notes.get("karma")}
            return DECLINED
""")

# Runs before the filter: connection notes the test wants set (karma, naughty).
SET_NOTES = plugin_source("""
    import json, os

    class SetNotes(Plugin):
        def hook_data_post(self, transaction):
            self.connection.notes.update(json.loads(os.environ.get("TEST_CONNECTION_NOTES", "{}")))
            transaction.notes.update(json.loads(os.environ.get("TEST_TRANSACTION_NOTES", "{}")))
            return DECLINED
""")


def filter_qp(tmp_path, reactor, line: str, files: dict | None = None, before=("rcpt_ok",)):
    """A qp with `before`, set_notes, the filter `line` (on `reactor`), a recorder, queue/discard."""
    qp = make_qp(tmp_path, files=files, plugins=[*before, "set_notes", line, "record", "queue/discard"],
                 plugin_files={"record": RECORD, "set_notes": SET_NOTES})
    qp.runner.clock = reactor
    for plugin in qp.plugins:
        plugin.reactor = reactor
    return qp


def after_scan(qp) -> dict:
    return getattr(qp, "after_scan", {"header": "", "notes": {}, "karma": None})


def load_errors(tmp_path, line: str) -> list[str]:
    """The start-up errors of a config with plugin `line`."""
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    (config / "plugins").write_text(f"{line}\n")
    (config / "me").write_text("test.example.org\n")
    return [str(error) for error in Qpsmtpd(ConfigReader([config])).load()]


def message(body: str = "Hello, lunch tomorrow?", subject: str = "hello", extra: str = "") -> str:
    """A small CRLF message; `extra` is more header lines (CRLF-terminated)."""
    return (f"From: a@example.com\r\nTo: user@test.example.org\r\nSubject: {subject}\r\n"
            f"Message-Id: <spam-test@example.com>\r\n{extra}\r\n{body}\r\n")

