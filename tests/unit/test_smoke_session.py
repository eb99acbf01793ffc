from harness import SessionDriver, make_qp


def test_greeting_helo_and_quit(tmp_path):
    driver = SessionDriver(make_qp(tmp_path))
    assert driver.take() == ["220 test.example.org ESMTP qpsmtpd-py 0.1.0 ready; send us your mail, but not your spam."]
    assert driver.command("HELO localhost") == [
        "250 test.example.org Hi [127.0.0.1] [127.0.0.1]; I am so happy to meet you."]
    assert driver.command("QUIT") == ["221 test.example.org closing connection. Have a wonderful day."]
    assert driver.closed
