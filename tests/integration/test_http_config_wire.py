"""http_config for real: Twisted's HTTP client against a local web server, and in the daemon.

The web server is the standard library's, in a thread of the test process, on
127.0.0.1; each route answers with a status, a body and optional delays.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_port, wait_until
from harness import write_config

ROOT = Path(__file__).resolve().parents[2]


class Route:
    def __init__(self, status: int = 200, body: bytes = b"", delay: float = 0.0, body_delay: float = 0.0,
                 location: str | None = None) -> None:
        self.status, self.body, self.delay, self.body_delay, self.location = status, body, delay, body_delay, location


class ConfigServer:
    """A threaded HTTP server; `routes` maps a path to a Route, others get 404."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (the stdlib's name)
                server.requests.append(self.path)
                route = server.routes.get(self.path, Route(404, b"not found\n"))
                time.sleep(route.delay)
                self.send_response(route.status)
                if route.location:
                    self.send_header("Location", route.location)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if route.body_delay:
                    self.wfile.write(route.body[:2])
                    self.wfile.flush()
                    time.sleep(route.body_delay)
                    self.wfile.write(route.body[2:])
                else:
                    self.wfile.write(route.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def count(self, path: str) -> int:
        return self.requests.count(path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def web() -> Iterator[ConfigServer]:
    server = ConfigServer()
    yield server
    server.close()


def run_script(script: str, *args: str, timeout: float = 30) -> object:
    """Run `script` in a fresh Python (its own reactor); its last output line is JSON."""
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def plugin_config(tmp_path: Path, line: str) -> Path:
    return write_config(tmp_path / "config", {"me": "test.example.org", "spool_dir": str(tmp_path / "spool"),
                                              "plugins": [line]})


# -- the HTTP client, in a child-like process with a running reactor ---------------------------

CLIENT_SCRIPT = """
import json, sys
from qpsmtpd_py.eventloop import install_reactor
reactor = install_reactor()
from twisted.internet import defer
from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.qp import Qpsmtpd

qp = Qpsmtpd(ConfigReader([sys.argv[1]]))
assert not qp.load()
plugin = qp.plugins[0]
describe = sys.modules[type(plugin).__module__].describe

async def main():
    out = {}
    for url in json.loads(sys.argv[2]):
        start = reactor.seconds()
        try:
            status, body = await plugin.http_get(url, plugin.timeout)
            answer = [status, body.decode()]
        except Exception as exc:
            answer = ["error", describe(exc, plugin.timeout)]
        out[url] = answer + [round(reactor.seconds() - start, 2)]
    return out

def done(result):
    print(json.dumps(result if isinstance(result, dict) else str(result)))
    reactor.stop()

reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addBoth(done))
reactor.run()
"""


def test_the_http_client_against_a_real_server(tmp_path, web):
    web.routes = {
        "/value": Route(200, b"# comment\nvalue one\n"),
        "/broken": Route(500, b"oops"),
        "/slow": Route(200, b"late", delay=3),
        "/slow-body": Route(200, b"late body", body_delay=3),
        "/moved": Route(302, b"", location="/value"),
    }
    closed = f"http://127.0.0.1:{free_port()}/x"
    urls = [web.url + path for path in ("value", "missing", "broken", "slow", "slow-body", "moved")] + [closed]
    config = plugin_config(tmp_path, f"http_config {web.url} timeout=0.5")
    out = run_script(CLIENT_SCRIPT, str(config), json.dumps(urls))
    assert out[web.url + "value"][:2] == [200, "# comment\nvalue one\n"]
    assert out[web.url + "missing"][:2] == [404, "not found\n"]
    assert out[web.url + "broken"][:2] == [500, "oops"]
    assert out[web.url + "moved"][:2] == [200, "# comment\nvalue one\n"]
    for slow in ("slow", "slow-body"):  # cut off at the time-out, headers or not
        status, reason, elapsed = out[web.url + slow]
        assert (status, reason) == ("error", "no answer within 0.5 s")
        assert 0.4 <= elapsed < 2, elapsed
    assert out[closed][0] == "error" and "refused" in out[closed][1].lower()


MASTER_SCRIPT = """
import json, sys
from qpsmtpd_py.eventloop import defer_reactor
defer_reactor()
from qpsmtpd_py.config import ConfigReader
from qpsmtpd_py.qp import Qpsmtpd

qp = Qpsmtpd(ConfigReader([sys.argv[1]]))
assert not qp.load()
plugin = qp.plugins[0]
answer = plugin.hook_config(None, "smtpgreeting")
print(json.dumps([answer, sorted(plugin._fetching), plugin._due, plugin._agent is None]))
"""


def test_in_the_master_a_lookup_declines_and_fetches_nothing(tmp_path, web):
    web.routes = {"/smtpgreeting": Route(200, b"web greeting")}
    config = plugin_config(tmp_path, f"http_config {web.url}")
    assert run_script(MASTER_SCRIPT, str(config)) == [909, [], {}, True]  # DECLINED
    assert web.requests == []


# -- in the daemon -------------------------------------------------------------------------

ONE_CHILD = ["--children", "1", "--idle-children", "1", "--shutdown-timeout", "1"]


def greeting(daemon) -> str:
    with daemon.connect(timeout=5) as client:
        code, lines = client.reply()
        assert code == 220
        client.expect(221, "QUIT")
        return lines[0]


def wait_for_greeting(daemon, text: str, timeout: float = 5) -> None:
    wait_until(lambda: greeting(daemon) == text, timeout, interval=0.1, message=f"greeting {text!r}")


def test_the_greeting_comes_from_the_web_after_the_first_lookup(daemon_factory, web):
    web.routes = {"/smtpgreeting": Route(200, b"web greeting ESMTP\n")}
    daemon = daemon_factory(files={"smtpgreeting": "file greeting"}, args=ONE_CHILD,
                            extra_plugins=[f"http_config {web.url} cache=60"])
    # The start-up probe's session looked the greeting up first: it got the file's and started the fetch.
    wait_for_greeting(daemon, "web greeting ESMTP")
    for _ in range(3):
        assert greeting(daemon) == "web greeting ESMTP"
    assert web.count("/smtpgreeting") == 1  # cached for 60 s
    # The settings a child reads when it starts were asked for too (and are not on this server).
    assert web.count("/databytes") == 1


def test_stale_if_error_then_404_falls_back_to_the_files(daemon_factory, web):
    web.routes = {"/smtpgreeting": Route(200, b"web greeting ESMTP")}
    daemon = daemon_factory(files={"smtpgreeting": "file greeting", "loglevel": "6"}, args=ONE_CHILD,
                            extra_plugins=[f"http_config {web.url} cache=0.5 timeout=2"])
    wait_for_greeting(daemon, "web greeting ESMTP")

    web.routes["/smtpgreeting"] = Route(500, b"oops")
    failures = web.count("/smtpgreeting")
    deadline = time.monotonic() + 5
    while web.count("/smtpgreeting") < failures + 3:  # three failed refreshes in a row
        assert greeting(daemon) == "web greeting ESMTP"
        assert time.monotonic() < deadline, web.requests
        time.sleep(0.2)
    wait_until(lambda: "fetch failed" in daemon.log(), 5, message="failure logged")
    assert greeting(daemon) == "web greeting ESMTP"
    log = daemon.log()
    assert log.count("fetch failed") == 1, log
    assert f"smtpgreeting: fetch failed ({web.url}smtpgreeting: HTTP 500); keeping the last answer" in log

    web.routes["/smtpgreeting"] = Route(404, b"gone")
    wait_for_greeting(daemon, "file greeting ESMTP")
    wait_until(lambda: "smtpgreeting: the web servers answer again" in daemon.log(), 5, message="recovery logged")


def test_a_slow_server_never_delays_a_session(daemon_factory, web):
    web.routes = {"/smtpgreeting": Route(200, b"too late", delay=4)}
    daemon = daemon_factory(files={"smtpgreeting": "file greeting"}, args=ONE_CHILD,
                            extra_plugins=[f"http_config {web.url} timeout=0.5 cache=60"])
    started = time.monotonic()
    assert greeting(daemon) == "file greeting ESMTP"
    assert time.monotonic() - started < 2  # the 4 s answer from the web is not waited for
    wait_until(lambda: "no answer within 0.5 s" in daemon.log(), 5, message="time-out logged")
    assert greeting(daemon) == "file greeting ESMTP"
    assert daemon.log().count("fetch failed") == 1
