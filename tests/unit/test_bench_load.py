"""Tests for bench/load.py, the SMTP load generator, against an in-test sink.

The sink is a minimal asyncio SMTP server on 127.0.0.1 (port 0) running in a
background thread, so load.py's own event loop can run in the test's thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

LOAD_PY = Path(__file__).resolve().parents[2] / "bench" / "load.py"


def _import_load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_load", LOAD_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up in sys.modules while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


load = _import_load()


@dataclass
class Received:
    conn: int
    mail_from: str
    rcpts: list[str]
    raw: bytes  # as sent on the wire, still dot-stuffed, without the final "."
    data: bytes  # dot-unstuffed


@dataclass
class Sink:
    """A tiny SMTP sink; recipients whose local part starts with "reject" get 550."""

    port: int = 0
    connections: int = 0
    messages: list[Received] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        mail_from, rcpts = "", []
        writer.write(b"220 sink ready\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            arg = line.partition(b":")[2].strip().strip(b"<>").decode()
            if verb in (b"HELO", b"EHLO", b"RSET"):
                writer.write(b"250 ok\r\n")
            elif verb == b"MAIL":
                mail_from, rcpts = arg, []
                writer.write(b"250 2.1.0 sender ok\r\n")
            elif verb == b"RCPT" and arg.startswith("reject"):
                writer.write(b"550-5.1.1 no such user\r\n550 5.1.1 really not\r\n")
            elif verb == b"RCPT":
                rcpts.append(arg)
                writer.write(b"250 2.1.5 recipient ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                raw = []
                while (body_line := await reader.readline()) != b".\r\n":
                    assert body_line, "connection closed inside DATA"
                    raw.append(body_line)
                data = b"".join(ln[1:] if ln.startswith(b".") else ln for ln in raw)
                self.messages.append(Received(conn, mail_from, rcpts, b"".join(raw), data))
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"500 unknown command\r\n")
        writer.close()

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            self.loop = asyncio.new_event_loop()
            server = self.loop.run_until_complete(
                asyncio.start_server(self.handle, "127.0.0.1", 0)
            )
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            server.close()
            self.loop.run_until_complete(server.wait_closed())
            self.loop.close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def stop(self) -> None:
        assert self.loop is not None
        assert self.thread is not None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    s.start()
    yield s
    s.stop()


def _split(message: bytes) -> tuple[bytes, bytes]:
    headers, sep, body = message.partition(b"\r\n\r\n")
    assert sep, "no blank line after the headers"
    return headers, body


def _check_sized_messages(sink: Sink, count: int, size: int) -> None:
    assert len(sink.messages) == count
    expected = load.build_body(size)
    ids = set()
    for msg in sink.messages:
        headers, body = _split(msg.data)
        assert len(body) == size
        assert body == expected
        assert all(len(ln) <= 80 for ln in body.split(b"\r\n"))
        ids.add(next(h for h in headers.split(b"\r\n") if h.startswith(b"Message-ID:")))
        # Some body lines start with a dot: the wire copy must have doubled them.
        assert b"\r\n.." in msg.raw
        assert msg.mail_from == "a@example.com"
    assert len(ids) == count


def test_new_connection_per_message(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--port", str(sink.port), "--sessions", "3", "--messages", "30", "--size", "2000"]
    assert load.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    _check_sized_messages(sink, 30, 2000)
    assert sink.connections == 30
    assert all(msg.rcpts == ["b@example.com"] for msg in sink.messages)
    assert "ok=30 failed=0" in out[1]
    assert "connections=30" in out[1]
    assert out[2].startswith("latency_ms p50=")
    assert float(out[-1]) > 0


def test_persist_json_rcpts_and_memory(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--port", str(sink.port), "--sessions", "3", "--messages", "30", "--size", "2000",
        "--persist", "--rcpts", "2", "--pid", str(os.getpid()), "--json",
    ]
    assert load.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    _check_sized_messages(sink, 30, 2000)
    assert sink.connections == 3
    assert {msg.conn for msg in sink.messages} == {1, 2, 3}
    assert all(msg.rcpts == ["1b@example.com", "2b@example.com"] for msg in sink.messages)
    assert report["ok"] == 30
    assert report["failed"] == 0
    assert report["quit_errors"] == 0
    assert report["connections"] == 3
    assert report["msgs_per_s"] > 0
    assert 0 < report["p50_ms"] <= report["p90_ms"] <= report["p99_ms"]
    assert report["procs"] >= 1
    assert report["rss_mib"] > 0
    assert report["pss_mib"] > 0


def test_default_body(sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    assert load.main(["--port", str(sink.port), "--sessions", "2", "--messages", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] != ""
    assert len(sink.messages) == 5
    for msg in sink.messages:
        assert _split(msg.data)[1] == load.DEFAULT_BODY
        assert b"\r\n..This line" in msg.raw


def test_failures_are_counted_and_shown(
    sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--port", str(sink.port), "--sessions", "2", "--messages", "4", "--persist",
        "--to", "reject@example.com",
    ]
    assert load.main(argv) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert sink.messages == []
    assert "ok=0 failed=4" in out[1]
    assert any("RCPT TO: 550-5.1.1 no such user | 550 5.1.1 really not" in ln for ln in out)
    assert float(out[-1]) == 0.0


@pytest.mark.parametrize(
    "host", ["10.0.0.1", "192.0.2.7", "0.0.0.0", "2001:db8::1", "example.com", "localhost"]
)
def test_non_loopback_host_refused(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load.main(["--host", host, "--port", "25", "--messages", "1"])
    assert exc.value.code == 2
    assert "loopback" in capsys.readouterr().err
    # The programmatic entry point refuses too, before opening anything.
    with pytest.raises(ValueError, match="loopback"):
        asyncio.run(load.run_load(load.LoadConfig(port=25, host=host, messages=1)))


def test_loopback_hosts_accepted() -> None:
    assert load.check_loopback("127.0.0.1") == "127.0.0.1"
    assert load.check_loopback("127.1.2.3") == "127.1.2.3"
    assert load.check_loopback("::1") == "::1"
    assert load.check_loopback("[::1]") == "::1"


@pytest.mark.parametrize("size", [0, 2, 3, 79, 80, 81, 82, 161, 2000, 10240])
def test_body_size_and_stuffing(size: int) -> None:
    body = load.build_body(size)
    assert len(body) == size
    assert body == b"" or body.endswith(b"\r\n")
    stuffed = load.dot_stuff(body)
    unstuffed = b"".join(
        ln[1:] if ln.startswith(b".") else ln for ln in stuffed.splitlines(keepends=True)
    )
    assert unstuffed == body
