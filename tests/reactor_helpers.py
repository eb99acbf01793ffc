"""Helpers for the tests that run a Twisted reactor of their own (the queue plugins' tests).

Each such test gets a fresh reactor instance (never the global one), run
without signal handlers as in the daemon's children, and closed afterwards:
`reactor` is the fixture (a test module imports it), `run` runs a coroutine
on it. The rest drives an SMTP session through the plugins on that reactor.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from harness import SessionDriver, make_qp
from server_process import free_port  # noqa: F401  (the tests import it from here)
from twisted.internet import defer, task
from twisted.python.failure import Failure


class FakeClock:
    """A wall clock tests move by hand: `clock.now += 3600`."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reactor():
    from twisted.internet.epollreactor import EPollReactor

    instance = EPollReactor()
    yield instance
    for call in instance.getDelayedCalls():
        call.cancel()
    for selectable in instance.removeAll():
        selectable.connectionLost(Failure(Exception("test over")))
    if instance.waker is not None:
        instance.removeReader(instance.waker)
        instance.waker.connectionLost(None)
    instance._poller.close()


def run(reactor, make_coroutine: Callable, timeout: float = 20.0):
    """Run the reactor until the coroutine is done; its result (or its exception)."""
    outcome = []

    def start():
        d = defer.ensureDeferred(make_coroutine())
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    guard = reactor.callLater(timeout, reactor.stop)
    # As in the daemon's children: no signal handlers, so no SIGCHLD for the reactor.
    reactor.run(installSignalHandlers=False)
    if guard.active():
        guard.cancel()
    assert outcome, f"not done within {timeout}s"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


async def next_reply(reactor, driver: SessionDriver, timeout: float = 15.0) -> list[str]:
    """The reply lines the session writes next (replies are written whole)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = driver.take()
        if lines:
            return lines
        if time.monotonic() > deadline:
            raise AssertionError("the session did not answer")
        await task.deferLater(reactor, 0.002, lambda: None)


def queue_qp(tmp_path, reactor, line: str, files: dict | None = None, before=("rcpt_ok",), after=()):
    """A qp whose plugins are `before`, the queue plugin `line`, then `after`, all on `reactor`."""
    qp = make_qp(tmp_path, files=files, plugins=[*before, line, *after])
    qp.runner.clock = reactor
    for plugin in qp.plugins:
        if plugin.name.startswith("queue::"):
            plugin.reactor = reactor
    return qp


def dot_stuffed(message: str) -> str:
    """A CRLF message as a client sends it after DATA: a dot doubled at line starts."""
    return "\r\n".join("." + line if line.startswith(".") else line for line in message.split("\r\n"))


def hand_over(reactor, qp, message: str, recipients=("user@test.example.org",), sender="a@example.com") -> str:
    """One session with HELO; the reply to the end of data."""

    async def talk():
        driver = SessionDriver(qp)
        driver.take()
        for command in ["HELO client.example", f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients),
                        "DATA"]:
            assert driver.command(command)[0][:3] in ("250", "354")
        driver.send(dot_stuffed(message).encode() + b".\r\n")
        return (await next_reply(reactor, driver))[-1]

    return run(reactor, talk)


def capture_log(qp) -> list[tuple[int, str]]:
    """Every (level, message) logged from now on (and still logged as usual)."""
    return _capture(qp, lambda level, message, plugin: (level, message))


def capture_log_with_plugin(qp) -> list[tuple[int, object, str]]:
    """Every (level, plugin, message) logged from now on (and still logged as usual)."""
    return _capture(qp, lambda level, message, plugin: (level, plugin, message))


def _capture(qp, entry):
    lines = []
    original = qp.logger.log

    def log(level, message, hook=None, plugin=None):
        lines.append(entry(level, message, plugin))
        original(level, message, hook=hook, plugin=plugin)

    qp.logger.log = log
    return lines


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
