"""Helpers for the virus/* plugin tests: a qp with the plugin on the test's reactor, and messages."""

from __future__ import annotations

from pathlib import Path

from harness import make_qp, plugin_source

PROGRAMS = Path(__file__).resolve().parent.parent / "programs"


# Runs after the scanner: what the message looked like once it was scanned.
RECORD_SCAN = plugin_source("""
    class RecordScan(Plugin):
        def hook_data_post(self, transaction):
            self.qp.after_scan = {"header": transaction.header.as_string(), "notes": dict(transaction.notes),
                                  "recipients": [r.address() for r in transaction.recipients]}
            return DECLINED
""")


def virus_qp(tmp_path, reactor, line: str, files: dict | None = None, before: dict[str, str] | None = None):
    """A qp with rcpt_ok, test plugins `before` (name: source), the virus plugin `line` (on
    `reactor`) and a recorder of what it did."""
    before = before or {}
    qp = make_qp(tmp_path, files=files, plugins=["rcpt_ok", *before, line, "record_scan", "queue/discard"],
                 plugin_files={"record_scan": RECORD_SCAN, **before})
    qp.runner.clock = reactor
    for plugin in qp.plugins:
        if plugin.name.startswith("virus::"):
            plugin.reactor = reactor
    return qp


def the_plugin(qp):
    return next(plugin for plugin in qp.plugins if plugin.name.startswith("virus::"))


def multipart(text: str, subject: str = "scan me") -> str:
    """A CRLF multipart message whose attachment part holds `text`."""
    return (f"Subject: {subject}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed;\r\n boundary=\"b1\"\r\n\r\n"
            "--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            f"--b1\r\nContent-Type: application/octet-stream\r\n\r\n{text}\r\n--b1--\r\n")


def plain(text: str) -> str:
    return f"Subject: plain\r\n\r\n{text}\r\n"
