"""sender_permitted_from in the real daemon, SPF records from a test DNS server."""

from dns_server import FakeDNS

ZONE = """
good     300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
forged   300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
"""
BODY = "Subject: spf\r\n\r\nhello\r\n.\r\n"


def test_spf_rejects_a_forged_sender_and_annotates_a_good_one(daemon_factory):
    with FakeDNS(ZONE) as server:
        daemon = daemon_factory(files={"dns_servers": server.address},
                                extra_plugins=["sender_permitted_from reject 3 timeout 5"])
        with daemon.connect(timeout=10) as client:
            assert client.reply()[0] == 220
            assert client.command("EHLO client.test")[0] == 250
            assert client.command("MAIL FROM:<someone@forged.test>") == (
                550, ["SPF - forgery: domain of forged.test does not designate 127.0.0.1 as permitted sender"])
            assert client.command("MAIL FROM:<someone@good.test>")[0] == 250
            assert client.command("RCPT TO:<user@test.example.org>")[0] == 250
            assert client.command("DATA")[0] == 354
            client.send(BODY)
            assert client.reply()[0] == 250
            assert client.command("QUIT")[0] == 221
        message = daemon.messages()[0].decode()
        assert "spf=pass smtp.mailfrom=good.test" in message
        assert ("Received-SPF: Pass (test.example.org: domain of good.test designates 127.0.0.1 as permitted sender)"
                in message)
        assert server.count("forged.test", "TXT") >= 1
