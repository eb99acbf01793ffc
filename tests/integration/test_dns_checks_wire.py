"""fcrdns, resolvable_fromhost and dns_whitelist_soft in the real daemon, DNS from a test server."""

from dns_server import FakeDNS

ZONE = """
1.0.0.127.in-addr.arpa. 300 IN PTR mail.client.test.
mail.client             300 IN A   127.0.0.1
mx                      300 IN MX  10 smtp.mx.test.
smtp.mx                 300 IN A   192.0.2.25
nodata                  300 IN TXT "no mail here"
private                 300 IN A   10.0.0.7
1.0.0.127.wl            300 IN TXT "trusted by wl.test"
"""
BODY = "Subject: dns checks\r\n\r\nhello\r\n.\r\n"


def test_fcrdns_names_the_client_and_resolvable_fromhost_checks_senders(daemon_factory):
    with FakeDNS(ZONE) as server:
        daemon = daemon_factory(files={"dns_servers": server.address,
                                       "invalid_resolvable_fromhost": ["10.0.0.0/8"]},
                                extra_plugins=["fcrdns timeout 2", "resolvable_fromhost timeout 2"])
        with daemon.connect(timeout=5) as client:
            assert client.reply()[0] == 220
            code, lines = client.command("EHLO client.test")
            assert code == 250 and "Hi mail.client.test [127.0.0.1]" in lines[0]
            assert client.command("MAIL FROM:<a@nodata.test>") == (
                450, ["FQDN required in the envelope sender (#4.1.8)"])
            assert client.command("MAIL FROM:<a@private.test>")[0] == 450
            assert client.command("MAIL FROM:<a@Mx.Test>")[0] == 250
            assert client.command("RCPT TO:<user@test.example.org>")[0] == 250
            assert client.command("DATA")[0] == 354
            client.send(BODY)
            assert client.reply()[0] == 250
            assert client.command("QUIT")[0] == 221
        message = daemon.messages()[0].decode()
        assert "Authentication-Results: test.example.org; auth=none; iprev=pass" in message
        assert "Received: from mail.client.test (HELO client.test) (127.0.0.1)" in message
        assert server.count("1.0.0.127.in-addr.arpa", "PTR") >= 1
        assert server.count("mx.test", "MX") >= 1


def test_dns_whitelist_soft_exempts_after_the_first_rcpt(daemon_factory):
    with FakeDNS(ZONE) as server:
        daemon = daemon_factory(files={"dns_servers": server.address, "whitelist_zones": ["wl.test"], "loglevel": "6"},
                                extra_plugins=["dns_whitelist_soft", "resolvable_fromhost timeout 2"])
        with daemon.connect(timeout=5) as client:
            assert client.reply()[0] == 220
            assert client.command("HELO client.test")[0] == 250
            assert client.command("MAIL FROM:<a@nodata.test>")[0] == 450  # not yet known as whitelisted
            assert client.command("MAIL FROM:<a@mx.test>")[0] == 250
            assert client.command("RCPT TO:<user@test.example.org>")[0] == 250
            assert client.command("RSET")[0] == 250
            assert client.command("MAIL FROM:<a@nodata.test>")[0] == 250  # whitelisthost: not checked
            assert client.command("QUIT")[0] == 221
        assert "Host 127.0.0.1 is whitelisted: trusted by wl.test" in daemon.log()
        assert server.count("1.0.0.127.wl.test", "TXT") >= 1
