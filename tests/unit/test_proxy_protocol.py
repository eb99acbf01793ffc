"""PROXY protocol v1 and v2 headers, built byte by byte as the spec lays them out."""

import socket
import struct

import pytest

from qpsmtpd_py.proxy_protocol import V2_SIGNATURE, ProxyInfo, header_length, parse


def v2(command: int, family: int, addresses: bytes, tlvs: bytes = b"") -> bytes:
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def v2_tcp4(src="203.0.113.7", dst="192.0.2.1", sport=40000, dport=25, tlvs=b"") -> bytes:
    return v2(1, 0x11, socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport), tlvs)


def v2_tcp6(src="2001:db8::7", dst="2001:db8::1", sport=40000, dport=25) -> bytes:
    return v2(1, 0x21, socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
              + struct.pack("!HH", sport, dport))


def test_v1_tcp4():
    header = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\n"
    assert header_length(header + b"EHLO x\r\n") == len(header)
    assert parse(header) == ProxyInfo("TCP4", "203.0.113.7", 40000, "192.0.2.1", 25)


def test_v1_tcp6():
    header = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 587\r\n"
    assert parse(header) == ProxyInfo("TCP6", "2001:db8::7", 40000, "2001:db8::1", 587)


def test_v1_unknown_keeps_the_proxy_address():
    assert parse(b"PROXY UNKNOWN\r\n") is None
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") is None


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 203.0.113.7 192.0.2.1 40000\r\n",
    b"PROXY TCP4 2001:db8::7 192.0.2.1 40000 25\r\n",
    b"PROXY TCP5 203.0.113.7 192.0.2.1 40000 25\r\n",
    b"PROXY TCP4 203.0.113.7 192.0.2.1 70000 25\r\n",
    b"PROXY TCP4 203.0.113.999 192.0.2.1 4 25\r\n",
])
def test_v1_malformed_lines_are_refused(header):
    with pytest.raises(ValueError):
        parse(header)


def test_v1_line_without_end_is_refused_once_too_long():
    assert header_length(b"PROXY TCP4 203.0.113.7 ") is None
    with pytest.raises(ValueError):
        header_length(b"PROXY TCP4 " + b"1" * 120)


def test_smtp_instead_of_a_header_is_refused():
    with pytest.raises(ValueError):
        header_length(b"EHLO mail.example\r\n")


def test_v2_tcp4_with_tlvs():
    tlvs = b"\x04\x00\x05hello"  # a PP2_TYPE_NOOP TLV: ignored
    header = v2_tcp4(tlvs=tlvs)
    assert header_length(header + b"EHLO x\r\n") == len(header)
    assert parse(header) == ProxyInfo("TCP4", "203.0.113.7", 40000, "192.0.2.1", 25)


def test_v2_tcp6():
    assert parse(v2_tcp6()) == ProxyInfo("TCP6", "2001:db8::7", 40000, "2001:db8::1", 25)


def test_v2_local_and_unspec_keep_the_proxy_address():
    assert parse(v2(0, 0x00, b"")) is None
    assert parse(v2(1, 0x00, b"")) is None


def test_v2_header_arriving_byte_by_byte():
    header = v2_tcp6()
    for cut in range(len(header)):
        assert header_length(header[:cut]) is None
    assert header_length(header) == len(header)


@pytest.mark.parametrize("header", [
    V2_SIGNATURE + bytes([0x10 | 1, 0x11]) + struct.pack("!H", 12) + bytes(12),  # version 1 in a v2 frame
    V2_SIGNATURE + bytes([0x20 | 5, 0x11]) + struct.pack("!H", 12) + bytes(12),  # unknown command
    V2_SIGNATURE + bytes([0x21, 0x31]) + struct.pack("!H", 0),  # AF_UNIX stream
])
def test_v2_malformed_headers_are_refused(header):
    with pytest.raises(ValueError):
        parse(header)
