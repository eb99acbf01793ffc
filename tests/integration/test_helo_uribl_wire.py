"""helo and uribl in the real daemon, their resolver pointed at a test DNS server by config/dns_servers."""

from dns_server import FakeDNS

ZONE = """
mail.client.     300 IN A   127.0.0.1
1.0.0.127.in-addr.arpa. 300 IN PTR mail.client.
spam.example.com.multi.bl. 300 IN A   127.0.0.2
spam.example.com.multi.bl. 300 IN TXT "listed in multi.bl"
"""


def test_helo_policy_rfc(daemon_factory):
    with FakeDNS(ZONE) as server:
        daemon = daemon_factory(files={"dns_servers": server.address, "badhelo": "^spam"},
                                extra_plugins=["helo policy strict timeout 2"])
        with daemon.connect(timeout=5) as client:
            client.expect(220)
            assert client.command("EHLO spammer.example") == (550, ["I do not believe you are spammer.example."])
            client.wait_eof(5)  # reject_type is always disconnect
        with daemon.connect(timeout=5) as client:
            client.expect(220)
            assert client.command("HELO nosuch.client") == (550, ["HELO hostname does not exist"])
            client.wait_eof(5)
        with daemon.connect(timeout=5) as client:
            client.start_mail(helo="mail.client")
            client.expect(250, "Subject: hi\r\n\r\nbody\r\n.")
            client.expect(221, "QUIT")
        assert server.count("1.0.0.127.in-addr.arpa", "PTR") >= 1
    (message,) = daemon.messages()
    assert b"X-HELO: mail.client\n" in message


def test_uribl_denies_and_marks(daemon_factory):
    with FakeDNS(ZONE) as server:
        daemon = daemon_factory(files={"dns_servers": server.address,
                                       "uribl_zones": ["multi.bl -1 deny"]},
                                extra_plugins=["uribl timeout 2"])
        with daemon.connect(timeout=5) as client:
            client.start_mail()
            code, text = client.command("Subject: offer\r\n\r\nsee http://www.spam.example.com/\r\n.")
            assert (code, text) == (552, ["spam.example.com in multi.bl: listed in multi.bl"])
            client.expect(250, "MAIL FROM:<a@example.com>")
            client.expect(250, "RCPT TO:<postmaster@test.example.org>")
            client.expect(354, "DATA")
            client.expect(250, "Subject: clean\r\n\r\nsee http://www.good.example.org/\r\n.")
            client.expect(221, "QUIT")
        assert server.count("www.good.example.org.multi.bl", "A") == 1
    assert len(daemon.messages()) == 1
