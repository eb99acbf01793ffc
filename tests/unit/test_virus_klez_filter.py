"""virus/klez_filter: its heuristic on the first lines of big messages."""

from __future__ import annotations

from harness import SessionDriver, make_qp

EXECUTABLE = "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def deliver(tmp_path, body_lines):
    qp = make_qp(tmp_path, plugins=["rcpt_ok", "virus/klez_filter", "queue/discard"])
    driver = SessionDriver(qp)
    driver.take()
    for command in ["HELO x.example", "MAIL FROM:<a@example.com>", "RCPT TO:<u@test.example.org>", "DATA"]:
        driver.command(command)
    driver.send(("Subject: hi\r\n\r\n" + "".join(line + "\r\n" for line in body_lines) + ".\r\n").encode())
    return driver.take()[-1]


def padding(count):
    return ["A" * 76] * count


def test_big_message_with_executable_after_application_type_is_rejected(tmp_path):
    lines = ["--x", "Content-Type: application/x-msdownload", "", EXECUTABLE, *padding(1000)]
    assert deliver(tmp_path, lines) == "552 Klez Virus Detected"


def test_audio_type_counts_too(tmp_path):
    lines = ["content-type: audio/x-wav; name=a.exe", EXECUTABLE, *padding(1000)]
    assert deliver(tmp_path, lines) == "552 Klez Virus Detected"


def test_small_message_is_not_looked_at(tmp_path):
    lines = ["Content-Type: application/x-msdownload", EXECUTABLE, *padding(10)]
    assert deliver(tmp_path, lines).startswith("250 ")


def test_executable_without_attachment_type_passes(tmp_path):
    assert deliver(tmp_path, [EXECUTABLE, *padding(1000)]).startswith("250 ")


def test_signature_past_the_first_41_lines_is_not_seen(tmp_path):
    lines = [*padding(41), "Content-Type: application/x-msdownload", EXECUTABLE, *padding(1000)]
    assert deliver(tmp_path, lines).startswith("250 ")
