"""stunnel/PROXY protocol against the real daemon, with real v1 and v2 header bytes."""

import socket
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_tcp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def deliver_through_proxy(daemon, header: bytes) -> list[str]:
    with daemon.connect() as client:
        client.send(header)
        client.expect(220, timeout=5)
        hello = client.expect(250, "HELO proxied.example")
        client.expect(250, "MAIL FROM:<a@example.com>")
        client.expect(250, "RCPT TO:<postmaster@test.example.org>")
        client.expect(354, "DATA")
        client.expect(250, "Subject: p\r\n\r\nbody\r\n.")
        client.expect(221, "QUIT")
    return hello


def test_v1_header_gives_the_session_the_real_client(daemon_factory):
    daemon = daemon_factory(extra_plugins=["stunnel timeout 1"])  # the start probe sends no header
    hello = deliver_through_proxy(daemon, b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\n")
    assert hello == ["test.example.org Hi [203.0.113.7] [203.0.113.7]; I am so happy to meet you."]
    [message] = daemon.messages()
    assert b"Received: from [203.0.113.7] (HELO proxied.example) (203.0.113.7)" in message


def test_v2_header_gives_the_session_the_real_client(daemon_factory):
    daemon = daemon_factory(extra_plugins=["stunnel timeout 1"])  # the start probe sends no header
    hello = deliver_through_proxy(daemon, v2_tcp4("198.51.100.9", "192.0.2.1", 51000, 25))
    assert "[198.51.100.9]" in hello[0]


def test_trusted_proxy_without_a_header_is_refused(daemon_factory):
    # The fixture's start probe is itself a header-less connection from a trusted address:
    # it gets the 550 (a reply all the same) and the daemon counts as started.
    daemon = daemon_factory(extra_plugins=["stunnel timeout 0.5"])
    with daemon.connect() as client:
        code, text = client.reply(timeout=5)
        assert (code, text) == (550, ["PROXY protocol header expected"])
        client.wait_eof()


def test_untrusted_clients_are_served_as_they_are(daemon_factory):
    daemon = daemon_factory(extra_plugins=["stunnel trusted 10.0.0.0/8"])
    with daemon.connect() as client:
        client.expect(220, timeout=5)
        assert "[127.0.0.1]" in client.expect(250, "HELO direct.example")[0]
