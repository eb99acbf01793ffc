"""A private redis-server for the tests: a temporary directory, a free loopback port, no persistence.

Never the machine's own Redis: `redis_server` (a pytest fixture) starts one for
the test and stops it afterwards; `start_redis()` does the same for scripts.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from server_process import free_port, greets, private_directory, read_log, stop_process, wait_until_ready

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    process: subprocess.Popen
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_redis() -> RedisServer:
    directory = private_directory("redis-test-")
    port = free_port()
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--logfile", str(directory / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(process, lambda: greets(port, b"+PONG", send=b"PING\r\n"), "redis-server",
                         log=lambda: read_log(directory / "redis.log"))
    except RuntimeError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return RedisServer(process, port, directory)


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
