"""SMTPSession._send(): a reply goes straight to the socket only when nothing is queued before it."""

import pytest
from harness import SessionDriver, make_qp


class KernelSocket:
    """A socket whose send() takes at most `room` bytes, or raises."""

    def __init__(self, room: int | None = None, error: OSError | None = None) -> None:
        self.room, self.error, self.sent = room, error, b""

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        taken = data if self.room is None else data[:self.room]
        self.sent += taken
        return len(taken)


class TCPTransport:
    """The parts of twisted.internet.tcp.Server that _send() looks at."""

    TLS = False
    connected = True
    disconnecting = False
    _writeDisconnected = False

    def __init__(self, sock: KernelSocket, queued: bytes = b"") -> None:
        self.socket = sock
        self.dataBuffer = queued
        self._tempDataBuffer: list[bytes] = []
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data


@pytest.fixture
def session(tmp_path):
    return SessionDriver(make_qp(tmp_path)).session


def test_with_nothing_queued_the_reply_goes_to_the_socket(session):
    session.transport = TCPTransport(KernelSocket())
    session._send(b"250 OK\r\n")
    assert (session.transport.socket.sent, session.transport.written) == (b"250 OK\r\n", b"")


def test_what_the_kernel_does_not_take_is_queued_in_order(session):
    session.transport = TCPTransport(KernelSocket(room=3))
    session._send(b"250 OK\r\n")
    assert (session.transport.socket.sent, session.transport.written) == (b"250", b" OK\r\n")


def test_a_full_socket_queues_the_whole_reply(session):
    session.transport = TCPTransport(KernelSocket(error=BlockingIOError()))
    session._send(b"250 OK\r\n")
    assert session.transport.written == b"250 OK\r\n"


@pytest.mark.parametrize("state", ["queued", "tls", "disconnecting"])
def test_behind_queued_data_tls_or_a_closing_connection_the_reply_is_queued(session, state):
    transport = TCPTransport(KernelSocket(), queued=b"221 earlier\r\n" if state == "queued" else b"")
    transport.TLS = state == "tls"
    transport.disconnecting = state == "disconnecting"
    session.transport = transport
    session._send(b"250 OK\r\n")
    assert (transport.socket.sent, transport.written) == (b"", b"250 OK\r\n")
