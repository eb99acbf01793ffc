"""HAProxy's PROXY protocol, versions 1 (text) and 2 (binary): parsing only.

A load balancer or stunnel in front of the daemon sends one header before any
SMTP byte, telling the real client's address. Spec:
https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included


class ProxyInfo(NamedTuple):
    protocol: str  # TCP4 or TCP6
    source_ip: str
    source_port: int
    destination_ip: str
    destination_port: int


def header_length(data: bytes) -> int | None:
    """Length of the complete header at the start of `data`; None while incomplete.

    Raises ValueError when the data cannot be a PROXY header.
    """
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)] and len(data) < 16:
        return None
    if data.startswith(V2_SIGNATURE):
        (length,) = struct.unpack("!H", data[14:16])
        return 16 + length if len(data) >= 16 + length else None
    if not b"PROXY "[:len(data)] == data[:6]:
        raise ValueError("not a PROXY protocol header")
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX:
            raise ValueError("PROXY v1 line too long")
        return None
    return end + 2


def parse(header: bytes) -> ProxyInfo | None:
    """The client's addresses; None for a health check (v1 UNKNOWN, v2 LOCAL)."""
    if header.startswith(V2_SIGNATURE):
        return _parse_v2(header)
    return _parse_v1(header)


def _parse_v1(header: bytes) -> ProxyInfo | None:
    words = header.decode("ascii", "replace").rstrip("\r\n").split(" ")
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return None
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ValueError(f"malformed PROXY v1 line: {header[:V1_MAX]!r}")
    _, protocol, source, destination, source_port, destination_port = words
    version = 4 if protocol == "TCP4" else 6
    return ProxyInfo(protocol, _address(source, version), _port(source_port),
                     _address(destination, version), _port(destination_port))


def _parse_v2(header: bytes) -> ProxyInfo | None:
    version_command, family = header[12], header[13]
    if version_command >> 4 != 2:
        raise ValueError(f"unsupported PROXY v2 version {version_command >> 4}")
    command = version_command & 0x0F
    if command == 0:
        return None  # LOCAL: the proxy's own health check
    if command != 1:
        raise ValueError(f"unknown PROXY v2 command {command}")
    body = header[16:]
    if family == 0x11 and len(body) >= 12:  # TCP over IPv4
        source, destination, source_port, destination_port = struct.unpack("!4s4sHH", body[:12])
        return ProxyInfo("TCP4", str(ipaddress.IPv4Address(source)), source_port,
                         str(ipaddress.IPv4Address(destination)), destination_port)
    if family == 0x21 and len(body) >= 36:  # TCP over IPv6
        source, destination, source_port, destination_port = struct.unpack("!16s16sHH", body[:36])
        return ProxyInfo("TCP6", str(ipaddress.IPv6Address(source)), source_port,
                         str(ipaddress.IPv6Address(destination)), destination_port)
    if family == 0x00:
        return None  # UNSPEC: addresses unknown, keep the proxy's
    raise ValueError(f"unsupported PROXY v2 address family 0x{family:02x}")


def _address(text: str, version: int) -> str:
    address = ipaddress.ip_address(text)
    if address.version != version:
        raise ValueError(f"{text} is not an IPv{version} address")
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"bad port {text!r}")
    return int(text)
