"""dmarc after sender_permitted_from in the real daemon, SPF and DMARC records from a test DNS server."""

from dns_server import FakeDNS

ZONE = """
good           300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
_dmarc.good    300 IN TXT "v=DMARC1; p=reject"
bank           300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.bank    300 IN TXT "v=DMARC1; p=reject"
"""


def message(sender, from_address):
    return (f"MAIL FROM:<{sender}>", f"From: <{from_address}>\r\nSubject: dmarc\r\n\r\nhello\r\n.\r\n")


def test_dmarc_passes_aligned_spf_and_refuses_a_spoofed_from(daemon_factory):
    with FakeDNS(ZONE) as server:
        daemon = daemon_factory(files={"dns_servers": server.address},
                                extra_plugins=["sender_permitted_from timeout 5", "dmarc timeout 5"])
        with daemon.connect(timeout=10) as client:
            assert client.reply()[0] == 220
            assert client.command("EHLO client.test")[0] == 250
            replies = []
            # SPF passes for good.test, aligned with the From of the first message only
            for sender, from_address in (("a@good.test", "b@mail.good.test"), ("a@good.test", "ceo@bank.test")):
                mail, data = message(sender, from_address)
                assert client.command(mail)[0] == 250
                assert client.command("RCPT TO:<user@test.example.org>")[0] == 250
                assert client.command("DATA")[0] == 354
                client.send(data)
                replies.append(client.reply())
            assert client.command("QUIT")[0] == 221
        assert replies[0][0] == 250
        assert replies[1] == (552, ["failed DMARC policy"])
        [stored] = daemon.messages()
        text = stored.decode()
        assert "spf=pass smtp.mailfrom=good.test" in text
        assert "dmarc=pass (p=reject) header.from=mail.good.test" in text
        assert server.count("_dmarc.bank.test", "TXT") == 1
