"""p0f for the ident/p0f tests: the real daemon (Debian's `p0f`) and a scripted API server.

`RealP0f` runs p0f 3 in the foreground on the loopback interface with its API
socket in a temporary directory; it needs root (CAP_NET_RAW) to capture.
`FakeP0f` answers on a unix socket in a thread, speaking p0f 3's or p0f 2's
API byte for byte as p0f's api.h and p0f-query.h define it, for what the real
p0f cannot be made to do on demand: p0f 2 (Debian ships p0f 3 only), chosen
OS names, bad magic, silence, a cut answer.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

from server_process import private_directory, read_log, stop_process, wait_until_ready

P0F = shutil.which("p0f") or "/usr/sbin/p0f"
FINGERPRINTS = Path("/etc/p0f/p0f.fp")
HAVE_P0F = os.access(P0F, os.X_OK) and FINGERPRINTS.is_file()
CAN_CAPTURE = HAVE_P0F and os.geteuid() == 0
WHY_NOT = ("p0f (Debian package p0f) is not installed" if not HAVE_P0F
           else "p0f needs root to capture on the loopback interface")

V3_QUERY_MAGIC, V3_RESPONSE_MAGIC = 0x50304601, 0x50304602
V3_OK, V3_NO_MATCH, V3_BAD_QUERY = 0x10, 0x20, 0x00
V2_MAGIC = 0x0DEFACED


def v3_answer(os_name: str = "", os_flavor: str = "", link_type: str = "", status: int = V3_OK,
              magic: int = V3_RESPONSE_MAGIC, distance: int = 3, uptime_min: int = 0) -> bytes:
    def text(value: str) -> bytes:
        return value.encode().ljust(32, b"\0")

    return (struct.pack("=9IhBB", magic, status, 1700000000, 1700000100, 4, uptime_min, 49, 0, 0, distance, 0, 1)
            + text(os_name) + text(os_flavor) + text("") + text("") + text(link_type) + text("English"))


def v2_answer(query_id: int, genre: str, detail: str, link: str, uptime: int, kind: int = 0) -> bytes:
    return struct.pack("@IIB20s40sb30s30sBBBhHi", V2_MAGIC, query_id, kind, genre.encode(), detail.encode(), 7,
                       link.encode(), b"", 0, 0, 1, 0, 0, uptime)


def v3_ask(path: Path, ip: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, os_name) from p0f 3 for `ip`: the tests' own blocking query."""
    address = ipaddress.ip_address(ip)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(struct.pack("=IB16s", V3_QUERY_MAGIC, address.version, address.packed))
        answer = b""
        while len(answer) < 232:
            chunk = sock.recv(232 - len(answer))
            if not chunk:
                break
            answer += chunk
    status = struct.unpack_from("=I", answer, 4)[0]
    return status, answer[40:72].split(b"\0")[0].decode()


def loopback_syn(ip: str) -> None:
    """One TCP connection over loopback from and to `ip`, for p0f to see its SYN."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family) as server:
        server.bind((ip, 0))
        server.listen(1)
        with socket.create_connection(server.getsockname()[:2], timeout=5):
            server.accept()[0].close()


class RealP0f:
    """`p0f -i lo -s <dir>/p0f.sock` in the foreground, for as long as the `with` block."""

    def __init__(self) -> None:
        self.directory = private_directory("p0f-")
        self.socket = self.directory / "p0f.sock"
        self.log = self.directory / "p0f.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> RealP0f:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([P0F, "-i", "lo", "-s", str(self.socket), "-f", str(FINGERPRINTS),
                                             "tcp"], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(self.process, self.socket.exists, "p0f", log=lambda: read_log(self.log))
        except RuntimeError:
            self.__exit__()
            raise
        return self

    def knows(self, ip: str) -> bool:
        """p0f has seen traffic from `ip` (it may still not name its OS)."""
        return v3_ask(self.socket, ip)[0] == V3_OK

    def __exit__(self, *exc: object) -> None:
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


class FakeP0f:
    """A p0f API socket served by a thread.

    `answers` maps the queried address (p0f 3: the IP as text) to the bytes to
    send back; `answer_v2` makes the answer from a p0f 2 query's fields; with
    `silent` it reads the query and never answers. Every query received is
    kept in `queries`.
    """

    def __init__(self, directory: Path, answers: dict[str, bytes] | None = None,
                 answer_v2=None, silent: bool = False) -> None:
        self.socket = directory / "fake-p0f.sock"
        self.answers = answers or {}
        self.answer_v2 = answer_v2
        self.silent = silent
        self.queries: list[bytes] = []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(self.socket))
        self.server.listen(8)
        self.stopping = threading.Event()
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def __enter__(self) -> FakeP0f:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(5)
        for sock in self.held:
            sock.close()

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            query = self.read_query(client)
            self.queries.append(query)
            if self.silent:
                self.held.append(client)  # kept open, never answered
                continue
            with client:
                client.sendall(self.answer(query))

    @staticmethod
    def read_query(client: socket.socket) -> bytes:
        """21 bytes (p0f 3) or 24 (p0f 2, told apart by its magic)."""
        data = b""
        while len(data) < 21 or (struct.unpack_from("=I", data)[0] == V2_MAGIC and len(data) < 24):
            chunk = client.recv(24 - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def answer(self, query: bytes) -> bytes:
        if struct.unpack_from("=I", query)[0] == V2_MAGIC:
            _magic, _kind, query_id, source, destination, sport, dport = struct.unpack("@IBI4s4sHH", query)
            return self.answer_v2(query_id, socket.inet_ntoa(source), socket.inet_ntoa(destination), sport, dport)
        magic, family, address = struct.unpack("=IB16s", query)
        if magic != V3_QUERY_MAGIC or family not in (4, 6):
            return v3_answer(status=V3_BAD_QUERY)
        ip = str(ipaddress.ip_address(address[:4] if family == 4 else address))
        return self.answers.get(ip, v3_answer(status=V3_NO_MATCH))
