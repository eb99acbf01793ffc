"""A private redis-server for the tests: a temporary directory, a free loopback port, no persistence.

Never the machine's own Redis: `redis_server` (a pytest fixture) starts one for
the test and stops it afterwards; `start_redis()` does the same for scripts.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisServer:
    process: subprocess.Popen
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_redis() -> RedisServer:
    directory = Path(tempfile.mkdtemp(prefix="redis-test-"))
    port = free_port()
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--logfile", str(directory / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return RedisServer(process, port, directory)
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not start: {(directory / 'redis.log').read_text()[-500:]}")
        time.sleep(0.05)


def redis_available() -> bool:
    return Path(REDIS_SERVER).is_file()


needs_redis = pytest.mark.skipif(not redis_available(), reason="redis-server (Debian redis-server) is not installed")


@pytest.fixture
def redis_server():
    if not redis_available():
        pytest.skip("redis-server (Debian redis-server) is not installed")
    server = start_redis()
    yield server
    server.stop()
