"""dnsbl in the real daemon, its resolver pointed at a test DNS server by config/dns_servers."""

import time

from dns_server import FakeDNS, silent_udp_port

ZONE = """
1.0.0.127.bl 300 IN TXT "127.0.0.1 is listed in bl.test, see http://bl.test/"
"""


def test_listed_client_gets_the_zone_text(daemon_factory):
    with FakeDNS(ZONE) as server:
        daemon = daemon_factory(files={"dns_servers": server.address, "dnsbl_zones": ["clean.test", "bl.test"]},
                                extra_plugins=["dnsbl timeout 2"])
        with daemon.connect(timeout=5) as client:
            assert client.reply() == (550, ["127.0.0.1 is listed in bl.test, see http://bl.test/"])
            client.wait_eof(5)
        assert server.count("1.0.0.127.bl.test", "TXT") >= 1
        assert server.count("1.0.0.127.clean.test", "TXT") >= 1


def test_dead_nameserver_delays_the_greeting_by_at_most_the_timeout(daemon_factory):
    sock, port = silent_udp_port()
    try:
        daemon = daemon_factory(files={"dns_servers": f"127.0.0.1:{port}", "dnsbl_zones": ["bl.test", "other.test"]},
                                extra_plugins=["dnsbl timeout 2"])
        started = time.monotonic()
        with daemon.connect(timeout=5) as client:
            code, _ = client.reply(timeout=4)
            elapsed = time.monotonic() - started
        assert code == 220
        assert elapsed < 3.0, elapsed
        assert elapsed > 1.5, elapsed  # the lookups really waited for the timeout
        assert "bl.test query failed: TIMEOUT" in daemon.log()
    finally:
        sock.close()
