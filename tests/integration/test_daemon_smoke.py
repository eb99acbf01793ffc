import signal
import smtplib


def test_message_is_delivered_to_maildir_and_term_exits_cleanly(daemon_factory):
    daemon = daemon_factory()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        client.sendmail("a@example.com", ["postmaster@test.example.org"], b"Subject: x\r\n\r\nbody\r\n")
    [message] = daemon.messages()
    assert b"Delivered-To: postmaster@test.example.org\n" in message
    assert message.endswith(b"\nbody\n")
    daemon.signal(signal.SIGTERM)
    assert daemon.stop() == 0
