"""dkim in the real daemon: keys from a test DNS server, results in the Maildir copy."""

import base64
import subprocess

import dkim
from dns_server import FakeDNS


def rsa_key():
    private = subprocess.run(["openssl", "genrsa", "-traditional", "1024"], capture_output=True, check=True,
                             timeout=60).stdout
    public = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=private,
                            capture_output=True, check=True, timeout=60).stdout
    return private, base64.b64encode(public).decode()


def zone(public):
    text = f"v=DKIM1; k=rsa; p={public}"
    chunks = " ".join(f'"{text[i:i + 200]}"' for i in range(0, len(text), 200))
    return f"wire._domainkey.example 300 IN TXT {chunks}\n"


MESSAGE = (b"From: <a@example.test>\r\nTo: <user@test.example.org>\r\nSubject: wire\r\n"
           b"Date: Thu, 26 Nov 2026 03:00:00 +0000\r\nMessage-ID: <wire@example.test>\r\n\r\n"
           b"A signed message.\r\n.. with a dot-stuffed line\r\n")


def send(daemon, data):
    with daemon.connect(timeout=5) as client:
        assert client.reply()[0] == 220
        assert client.command("EHLO client.test")[0] == 250
        assert client.command("MAIL FROM:<a@example.test>")[0] == 250
        assert client.command("RCPT TO:<user@test.example.org>")[0] == 250
        assert client.command("DATA")[0] == 354
        client.send(data + b".\r\n")
        reply = client.reply()
        assert client.command("QUIT")[0] == 221
    return reply


def test_signed_message_gets_dkim_pass(daemon_factory):
    private, public = rsa_key()
    unstuffed = MESSAGE.replace(b"\r\n..", b"\r\n.")
    signed = dkim.sign(unstuffed, b"wire", b"example.test", private, canonicalize=(b"relaxed", b"simple"))
    with FakeDNS(zone(public)) as server:
        daemon = daemon_factory(files={"dns_servers": server.address}, extra_plugins=["dkim timeout 2"])
        assert send(daemon, signed + MESSAGE)[0] == 250
        altered = signed + MESSAGE.replace(b"A signed", b"An altered")
        code, lines = send(daemon, altered)
        assert (code, lines) == (552, ["DKIM signature invalid (example.test)"])
    [message] = daemon.messages()
    header = message.split(b"\n\n", 1)[0].decode().replace("\n ", " ").replace("\n\t", " ")
    [results] = [line for line in header.split("\n") if line.startswith("Authentication-Results:")]
    assert "; dkim=pass header.i=@example.test header.b=" in results
    assert server.count("wire._domainkey.example.test", "TXT") >= 1


def test_relay_client_mail_is_signed(daemon_factory):
    private, public = rsa_key()
    daemon = daemon_factory(files={"relayclients": ["127.0.0.1"], "dkim/example.test/selector": "wire\n",
                                   "dkim/example.test/private": private.decode()},
                            extra_plugins=["relay", "dkim"])
    assert send(daemon, MESSAGE)[0] == 250
    [message] = daemon.messages()
    assert b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.test;" in message
    record = f"v=DKIM1; k=rsa; p={public}".encode()
    assert dkim.verify(message, dnsfunc=lambda name, timeout=5: record)
