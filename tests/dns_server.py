"""A DNS server for tests: zone data per test, on 127.0.0.1:<free port>, UDP and TCP.

    with FakeDNS(ZONE, servfail={"broken.test."}, slow={"slow.test.": 3.0},
                 truncate={"big.test."}) as server:
        server.port            # UDP and TCP port on 127.0.0.1
        server.count("a.test", "A")   # questions seen for that name and type (UDP + TCP)

ZONE is zone-file text (dnspython's parser); relative names are relative to
`origin` (default `test.`), absolute ones (`1.2.0.192.in-addr.arpa.`) may be
anywhere: the server is authoritative for the whole tree, with an SOA at the
root (TTL and MINIMUM 60) that NXDOMAIN and NODATA answers carry for
negative caching. Answers: the records of the asked type, following CNAMEs;
NXDOMAIN for a missing name, NOERROR without answers (NODATA) for a missing
type; names in `servfail` get SERVFAIL, names in
`slow` are answered after that many seconds, names in `truncate` get an empty
answer with the TC bit over UDP (the full answer over TCP).

`silent_udp_port()` gives a bound UDP socket that never answers: a dead
nameserver.

Both servers run in daemon threads, so blocking and asynchronous callers
(the reactor under test, a daemon in a subprocess) can use them alike.
"""

from __future__ import annotations

import collections
import socket
import socketserver
import struct
import threading
import time

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

DEFAULT_SOA = "@ 60 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60\n@ 60 IN NS ns.test.\n"


class FakeDNS:
    def __init__(self, zone_text: str, origin: str = "test.", servfail=(), slow=None, truncate=()) -> None:
        origin = origin.rstrip(".") + "."
        zone_text = DEFAULT_SOA + f"$ORIGIN {origin}\n" + zone_text
        self.origin = dns.name.root
        self.zone = dns.zone.from_text(zone_text, origin=".", relativize=False, check_origin=False)
        self.servfail = {self._name(n) for n in servfail}
        self.slow = {self._name(n): seconds for n, seconds in (slow or {}).items()}
        self.truncate = {self._name(n) for n in truncate}
        self.counts: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.udp = self.tcp = None
        for _ in range(20):  # UDP and TCP on one port number
            udp = _UDPServer(("127.0.0.1", 0), _UDPHandler)
            try:
                tcp = _TCPServer(("127.0.0.1", udp.server_address[1]), _TCPHandler)
            except OSError:
                udp.server_close()
                continue
            self.udp, self.tcp = udp, tcp
            break
        assert self.udp is not None, "no free port for UDP and TCP"
        self.udp.fake = self.tcp.fake = self
        self.port = self.udp.server_address[1]
        self.threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                        for s in (self.udp, self.tcp)]
        for thread in self.threads:
            thread.start()

    def _name(self, text: str) -> dns.name.Name:
        return dns.name.from_text(text.rstrip(".") + ".")

    @property
    def address(self) -> str:
        """The config/dns_servers line for this server."""
        return f"127.0.0.1:{self.port}"

    def count(self, name: str, rdtype: str = "A") -> int:
        with self.lock:
            return self.counts[(self._name(name), dns.rdatatype.from_text(rdtype))]

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def close(self) -> None:
        for server in (self.udp, self.tcp):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FakeDNS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- answering ---------------------------------------------------------------------
    def answer(self, data: bytes, over_tcp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return None
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        with self.lock:
            self.counts[(name, rdtype)] += 1
        if name in self.slow:
            time.sleep(self.slow[name])
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if name in self.truncate and not over_tcp:
            response.flags |= dns.flags.TC
            return response.to_wire()
        current = name
        for _ in range(8):  # follow CNAMEs inside the zone
            node = self.zone.get_node(current)
            if node is None:
                if current == name:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                break
            rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype)
            if rdataset is not None:
                response.answer.append(dns.rrset.from_rdata_list(current, rdataset.ttl, list(rdataset)))
                break
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None:
                break
            response.answer.append(dns.rrset.from_rdata_list(current, cname.ttl, list(cname)))
            current = cname[0].target
        if not any(rrset.rdtype == rdtype for rrset in response.answer):
            soa = self.zone.get_rdataset(self.origin, dns.rdatatype.SOA)
            response.authority.append(dns.rrset.from_rdata_list(self.origin, soa.ttl, list(soa)))
        return response.to_wire(max_size=65535)


class _UDPServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UDPHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.fake.answer(data, over_tcp=False)
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TCPHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.settimeout(5)
        header = _read(sock, 2)
        if header is None:
            return
        data = _read(sock, struct.unpack("!H", header)[0])
        if data is None:
            return
        reply = self.server.fake.answer(data, over_tcp=True)
        if reply is not None:
            sock.sendall(struct.pack("!H", len(reply)) + reply)


def _read(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def silent_udp_port() -> tuple[socket.socket, int]:
    """A bound UDP socket that never answers (close it when done) and its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]
