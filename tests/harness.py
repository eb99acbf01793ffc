"""Test helpers: a qp built from a temp config dir, and sessions without sockets.

`SessionDriver` drives one SMTPSession over twisted's StringTransport, line by
line, as the style guide asks for protocol tests: no sockets, no sleeps.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport

from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.qp import Qpsmtpd
from qpsmtpd_py.session_factory import SessionFactory
from qpsmtpd_py.settings import Settings
from qpsmtpd_py.smtp import SMTPSession

# What a test plugin written as a string gets imported for it.
PLUGIN_PREAMBLE = """\
import io

from twisted.internet import defer

from qpsmtpd_py.constants import *
from qpsmtpd_py.plugin import Plugin
"""


def plugin_source(body: str) -> str:
    """Source of a test plugin: the common imports, then `body` dedented."""
    return PLUGIN_PREAMBLE + textwrap.dedent(body)


# A test plugin: `answer HOOK CODE [message words]` answers CODE (a return-code
# name) for HOOK and records (hook, args) in qp.trail.
ANSWER = plugin_source("""
    from qpsmtpd_py.constants import return_code

    class Answer(Plugin):
        def register(self, qp, hook, code, *message):
            if not hasattr(qp, "trail"):
                qp.trail = []
            self.code = return_code(code)
            self.message = " ".join(message)
            self.register_hook(hook, self.answer)

        def answer(self, transaction, *args):
            self.qp.trail.append((self.running_hook, args))
            return (self.code, self.message) if self.message else self.code
""")


def write_config(directory: Path, files: dict[str, str | Iterable[str]]) -> Path:
    """Write config files; a value is the file's text or its lines."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        text = content if isinstance(content, str) else "\n".join(content) + "\n"
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def make_qp(tmp_path: Path, files: dict[str, str | Iterable[str]] | None = None,
            plugins: Iterable[str] = ("rcpt_ok",), plugin_files: dict[str, str] | None = None) -> Qpsmtpd:
    """A loaded Qpsmtpd on a temp config dir.

    `plugin_files` maps plugin names to Python source written into a test
    plugin dir (listed in config/plugin_dirs before the bundled plugins).
    """
    files = dict(files or {})
    files.setdefault("me", "test.example.org")
    files.setdefault("spool_dir", str(tmp_path / "spool"))
    files.setdefault("plugins", list(plugins))
    if plugin_files:
        plugin_dir = tmp_path / "test-plugins"
        for name, source in plugin_files.items():
            path = plugin_dir / f"{name}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        files.setdefault("plugin_dirs", str(plugin_dir))
    config_dir = write_config(tmp_path / "config", files)
    qp = Qpsmtpd(ConfigReader([config_dir]))
    errors = qp.load()
    assert not errors, [str(e) for e in errors]
    return qp


class SessionDriver:
    """One session over a StringTransport; `command()` returns the reply lines."""

    def __init__(self, qp: Qpsmtpd, settings: Settings | None = None, remote_ip: str = "127.0.0.1",
                 remote_port: int = 40000) -> None:
        self.factory = SessionFactory(qp, settings or Settings())
        self.session: SMTPSession = self.factory.buildProtocol(None)
        address = IPv6Address if ":" in remote_ip else IPv4Address
        self.transport = StringTransport(peerAddress=address("TCP", remote_ip, remote_port),
                                         hostAddress=address("TCP", "::1" if ":" in remote_ip else "127.0.0.1", 25))
        self.session.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.session.dataReceived(data)

    def take(self) -> list[str]:
        """Reply lines written since the last call, without CRLF."""
        out = self.transport.value().decode("utf-8", "surrogateescape")
        self.transport.clear()
        return [line for line in out.split("\r\n") if line]

    def command(self, line: str | bytes) -> list[str]:
        data = line if isinstance(line, bytes) else line.encode()
        self.send(data + b"\r\n")
        return self.take()

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def close(self) -> None:
        """Simulate the client going away."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.session.connectionLost(Failure(ConnectionDone()))
