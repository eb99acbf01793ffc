"""dkim and domainkeys against an independent implementation: Perl's Mail::DKIM.

Mail::DKIM (Debian package libmail-dkim-perl) signs messages that the real
daemon's dkim and domainkeys plugins must find good, and verifies what the
dkim plugin signed for a relay client. Keys are made with openssl for each
test; the public keys are served by the test DNS server (FakeDNS), which
both the daemon (config/dns_servers) and Mail::DKIM (a Net::DNS resolver
pointed at it) ask.
"""

from __future__ import annotations

import base64
import subprocess

import pytest
from dns_server import FakeDNS


def _has_mail_dkim() -> bool:
    try:
        return subprocess.run(["perl", "-MMail::DKIM::Signer", "-MMail::DKIM::Verifier", "-MNet::DNS",
                               "-e", "1"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not _has_mail_dkim(), reason="Perl Mail::DKIM (libmail-dkim-perl) not installed")

# Signs the message on stdin; prints the signature header(s), CRLF line ends.
# Arguments: key file, domain, selector, kind (dkim-relaxed, dkim-simple, dk-nofws, dk-simple).
SIGN = r"""
use strict;
use Mail::DKIM::Signer;
use Mail::DKIM::DkSignature;
use Mail::DKIM::TextWrap;
my ($keyfile, $domain, $selector, $kind) = @ARGV;
my ($family, $method) = split /-/, $kind;
my $policy = sub {
    my $signer = shift;
    if ($family eq "dk") {
        $signer->add_signature(Mail::DKIM::DkSignature->new(
            Algorithm => "rsa-sha1", Method => $method, Headers => $signer->headers,
            Domain => $domain, Selector => $selector));
        return;
    }
    $signer->add_signature(Mail::DKIM::Signature->new(
        Algorithm => "rsa-sha256", Method => "$method/$method", Headers => $signer->headers,
        Domain => $domain, Selector => $selector));
    return;
};
my $signer = Mail::DKIM::Signer->new(KeyFile => $keyfile, Policy => $policy);
binmode STDIN;
while (<STDIN>) {
    s/\r?\n\z//;
    $signer->PRINT("$_\r\n");
}
$signer->CLOSE;
my @signatures = $signer->signatures;
die "no signature made\n" unless @signatures;
binmode STDOUT;
print $_->as_string, "\r\n" foreach @signatures;
"""

# Verifies the message on stdin with keys from 127.0.0.1:<port>; prints the overall
# result, then one line per signature: result, domain, detail.
VERIFY = r"""
use strict;
use Net::DNS::Resolver;
use Mail::DKIM::DNS;
use Mail::DKIM::Verifier;
my ($port) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ["127.0.0.1"], port => $port, recurse => 0, tcp_timeout => 5, udp_timeout => 5,
    retry => 1));
my $verifier = Mail::DKIM::Verifier->new;
binmode STDIN;
while (<STDIN>) {
    s/\r?\n\z//;
    $verifier->PRINT("$_\r\n");
}
$verifier->CLOSE;
print $verifier->result, "\n";
foreach my $signature ($verifier->signatures) {
    print join(" ", $signature->result, $signature->domain, $signature->result_detail), "\n";
}
"""

# Folded and padded headers, blank lines and trailing white space: canonicalization matters.
MESSAGE = (b"From: Alice Example <alice@example.test>\r\n"
           b"To: <user@test.example.org>\r\n"
           b"Subject:   cross-check   of\r\n\t  a folded   subject \r\n"
           b"Date: Thu, 26 Nov 2026 03:00:00 +0000\r\n"
           b"Message-ID: <crosscheck@example.test>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=us-ascii\r\n"
           b"\r\n"
           b"A message signed by one implementation, verified by another.  \r\n"
           b"\r\n"
           b".. a dot-stuffed line, and a line with\ttabs \t \r\n"
           b"\r\n"
           b"\r\n")


def unstuffed(data: bytes) -> bytes:
    return data.replace(b"\r\n..", b"\r\n.")


def rsa_key(tmp_path, bits: int = 1024) -> tuple[str, str]:
    """(path of the PEM private key, base64 DER public key)."""
    private = subprocess.run(["openssl", "genrsa", "-traditional", str(bits)], capture_output=True, check=True,
                             timeout=60).stdout
    public = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=private,
                            capture_output=True, check=True, timeout=60).stdout
    path = tmp_path / f"key-{len(list(tmp_path.glob('key-*')))}.pem"
    path.write_bytes(private)
    return str(path), base64.b64encode(public).decode()


def txt(name: str, text: str) -> str:
    chunks = " ".join(f'"{text[i:i + 200]}"' for i in range(0, len(text), 200))
    return f"{name} 300 IN TXT {chunks}\n"


def perl_sign(message: bytes, keyfile: str, domain: str, selector: str, kind: str) -> bytes:
    result = subprocess.run(["perl", "-e", SIGN, keyfile, domain, selector, kind], input=message,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def perl_verify(message: bytes, port: int) -> list[str]:
    result = subprocess.run(["perl", "-e", VERIFY, str(port)], input=message, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode().splitlines()


def send(daemon, data: bytes, sender: str = "alice@example.test") -> tuple[int, list[str]]:
    with daemon.connect(timeout=5) as client:
        assert client.reply()[0] == 220
        assert client.command("EHLO client.test")[0] == 250
        assert client.command(f"MAIL FROM:<{sender}>")[0] == 250
        assert client.command("RCPT TO:<user@test.example.org>")[0] == 250
        assert client.command("DATA")[0] == 354
        client.send(data + b".\r\n")
        reply = client.reply()
        assert client.command("QUIT")[0] == 221
    return reply


def auth_results(message: bytes) -> str:
    header = message.split(b"\n\n", 1)[0].decode().replace("\n ", " ").replace("\n\t", " ")
    [results] = [line for line in header.split("\n") if line.startswith("Authentication-Results:")]
    return results


@pytest.mark.parametrize("kind", ["dkim-relaxed", "dkim-simple"])
def test_mail_dkim_signature_passes_in_dkim_plugin(daemon_factory, tmp_path, kind):
    keyfile, public = rsa_key(tmp_path)
    signature = perl_sign(unstuffed(MESSAGE), keyfile, "example.test", "perl", kind)
    assert signature.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=" + kind.split("-")[1].encode())
    with FakeDNS(txt("perl._domainkey.example", f"v=DKIM1; k=rsa; p={public}")) as server:
        daemon = daemon_factory(files={"dns_servers": server.address}, extra_plugins=["dkim timeout 2"])
        assert send(daemon, signature + MESSAGE)[0] == 250
        # the same signature on an altered body is refused
        altered = signature + MESSAGE.replace(b"by another", b"by nobody")
        assert send(daemon, altered) == (552, ["DKIM signature invalid (example.test)"])
        assert server.count("perl._domainkey.example.test", "TXT") >= 1
    [message] = daemon.messages()
    assert "; dkim=pass header.i=@example.test header.b=" in auth_results(message)


def test_dkim_plugin_signature_verifies_with_mail_dkim(daemon_factory, tmp_path):
    keyfile, public = rsa_key(tmp_path)
    private = open(keyfile).read()
    daemon = daemon_factory(files={"relayclients": ["127.0.0.1"], "dkim/example.test/selector": "ours\n",
                                   "dkim/example.test/private": private},
                            extra_plugins=["relay", "dkim"])
    assert send(daemon, MESSAGE)[0] == 250
    [message] = daemon.messages()
    assert b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.test;" in message
    with FakeDNS(txt("ours._domainkey.example", f"v=DKIM1; k=rsa; p={public}")) as server:
        lines = perl_verify(message, server.port)
        assert lines == ["pass", "pass example.test pass"], lines
        # Mail::DKIM sees an altered copy fail: the check is not vacuous
        lines = perl_verify(message.replace(b"by another", b"by nobody"), server.port)
        assert lines[0] == "fail" and lines[1].startswith("fail example.test fail"), lines
        assert "body has been altered" in lines[1], lines
        assert server.count("ours._domainkey.example.test", "TXT") >= 1


@pytest.mark.parametrize("kind", ["dk-nofws", "dk-simple"])
def test_mail_dkim_domainkeys_signature_is_good_in_domainkeys_plugin(daemon_factory, tmp_path, kind):
    keyfile, public = rsa_key(tmp_path)
    signature = perl_sign(unstuffed(MESSAGE), keyfile, "example.test", "dk", kind)
    assert signature.startswith(b"DomainKey-Signature: a=rsa-sha1; c=" + kind.split("-")[1].encode())
    zone = txt("dk._domainkey.example", f"k=rsa; p={public}") + txt("_domainkey.example", "o=-")
    with FakeDNS(zone) as server:
        daemon = daemon_factory(files={"dns_servers": server.address}, extra_plugins=["domainkeys timeout 2"])
        assert send(daemon, signature + MESSAGE)[0] == 250
        altered = signature + MESSAGE.replace(b"by another", b"by nobody")
        assert send(daemon, altered) == (552, ["DomainKeys signature validation failed"])
        # Mail::DKIM agrees on both
        assert perl_verify(unstuffed(signature + MESSAGE), server.port)[0] == "pass"
        assert perl_verify(unstuffed(altered), server.port)[0] == "fail"
    [message] = daemon.messages()
    assert "domainkey=good" in auth_results(message)
