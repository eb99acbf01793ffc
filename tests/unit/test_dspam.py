"""dspam against tests/programs/fake_dspam, a stand-in for DSPAM's command-line client.

DSPAM is not packaged for Debian 12. The stand-in takes dspam's options,
prints dspam's documented summary line, and does what the message's
`X-Fake-Dspam:` field says (a class and scores, fail, silent, sleep); each
run is logged to FAKE_DSPAM_LOG, so a test sees every classification and
training run. Each test runs its own Twisted reactor.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from reactor_helpers import capture_log, hand_over
from spam_helpers import after_scan, filter_qp, load_errors, message

from qpsmtpd_py.constants import LOGERROR
from qpsmtpd_py.spam_scan import process_user

FAKE_DSPAM = Path(__file__).resolve().parent.parent / "programs" / "fake_dspam"


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """The stand-in's runs so far: one dict per run (args, bytes, sha256, first_line)."""
    path = tmp_path / "dspam-runs"
    monkeypatch.setenv("FAKE_DSPAM_LOG", str(path))
    monkeypatch.delenv("TEST_CONNECTION_NOTES", raising=False)
    monkeypatch.delenv("TEST_TRANSACTION_NOTES", raising=False)
    return lambda: [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def check(tmp_path, reactor, args: str = "", text: str | None = None, recipients=("User@Test.example.org",),
          files=None, before=("rcpt_ok",)):
    """One message through `dspam dspam_bin <fake> <args>`: the reply, and the message after it."""
    qp = filter_qp(tmp_path, reactor, f"dspam dspam_bin {FAKE_DSPAM} {args}", files, before)
    reply = hand_over(reactor, qp, text or message(), recipients=recipients)
    return reply, after_scan(qp)


def fake_says(verdict: str) -> str:
    return message(extra=f"X-Fake-Dspam: {verdict}\r\n")


# -- classification ------------------------------------------------------------------------------------

def test_innocent_message_gets_result_and_signature_headers_and_note(tmp_path, reactor, runs):
    reply, seen = check(tmp_path, reactor)
    assert reply.startswith("250 ")
    header = seen["header"]
    assert header.startswith("X-DSPAM-Signature: ")
    assert "\nX-DSPAM-Result: Innocent, probability=0.0023, confidence=1.00\n" in header
    note = seen["notes"]["dspam"]
    assert (note["class"], note["result"], note["probability"], note["confidence"]) == (
        "Innocent", "Innocent", "0.0023", "1.00")


def test_dspam_runs_for_the_lower_cased_recipient_and_reads_the_whole_message(tmp_path, reactor, runs):
    body = "".join(f"line {n} of a long body that gets spooled to disk\r\n" for n in range(5000))
    check(tmp_path, reactor, "size_limit 1000000", message(body=body), files={"size_threshold": "1000"})
    run = runs()[0]
    assert run["args"] == ["--user", "user@test.example.org", "--mode=tum", "--process", "--deliver=summary",
                           "--stdout"]
    assert run["first_line"] == "X-Envelope-From: <a@example.com>"
    assert run["bytes"] > len(body.replace("\r\n", "\n"))


def test_message_reaches_dspam_byte_for_byte(tmp_path, reactor, runs):
    _, seen = check(tmp_path, reactor)
    # The header dspam read is the one after the check, without the fields the plugin added.
    header = "".join(line + "\n" for line in seen["header"].splitlines() if not line.startswith("X-DSPAM-"))
    sent = f"X-Envelope-From: <a@example.com>\n{header}\nHello, lunch tomorrow?\n".encode()
    assert runs()[0]["sha256"] == hashlib.sha256(sent).hexdigest()


def test_several_recipients_run_dspam_as_the_daemons_user(tmp_path, reactor, runs):
    check(tmp_path, reactor, recipients=("user@test.example.org", "other@test.example.org"))
    assert runs()[0]["args"][:2] == ["--user", process_user()]


def test_forged_dspam_fields_are_replaced(tmp_path, reactor, runs):
    forged = "X-DSPAM-Result: Innocent, probability=0.0000, confidence=1.00\r\nX-DSPAM-Signature: forged\r\n"
    _, seen = check(tmp_path, reactor, text=message(body="DSPAM-TEST-SPAM", extra=forged))
    assert seen["header"].count("X-DSPAM-Result:") == 1 and "forged" not in seen["header"]
    assert "X-DSPAM-Result: Spam, probability=1.0000, confidence=1.00" in seen["header"]


# -- the verdict ------------------------------------------------------------------------------------------

def test_sure_spam_over_the_reject_probability_is_refused(tmp_path, reactor, runs):
    reply, _ = check(tmp_path, reactor, "reject 0.95", message(body="DSPAM-TEST-SPAM"))
    assert reply == "552 dspam says, no spam please (#5.6.1)"


def test_spam_is_deferred_with_reject_type_temp(tmp_path, reactor, runs):
    reply, _ = check(tmp_path, reactor, "reject 0.95 reject_type temp", message(body="DSPAM-TEST-SPAM"))
    assert reply == "452 dspam says, no spam please (#4.6.1)"


def test_spam_below_the_reject_probability_passes(tmp_path, reactor, runs):
    reply, _ = check(tmp_path, reactor, "reject 0.95", fake_says("Spam 0.9400 1.00"))
    assert reply.startswith("250 ")


def test_spam_without_full_confidence_passes(tmp_path, reactor, runs):
    reply, _ = check(tmp_path, reactor, "reject 0.95", fake_says("Spam 0.9900 0.80"))
    assert reply.startswith("250 ")


def test_default_reject_of_one_never_refuses(tmp_path, reactor, runs):
    reply, seen = check(tmp_path, reactor, "", message(body="DSPAM-TEST-SPAM"))
    assert reply.startswith("250 ") and seen["notes"]["dspam"]["class"] == "Spam"


def test_reject_agree_refuses_when_spamassassin_also_says_spam(tmp_path, reactor, runs, monkeypatch):
    monkeypatch.setenv("TEST_TRANSACTION_NOTES", json.dumps({"spamassassin": {"is_spam": "Yes"}}))
    reply, _ = check(tmp_path, reactor, "reject agree", message(body="DSPAM-TEST-SPAM"))
    assert reply == "552 we agree, no spam please"


def test_reject_agree_passes_when_spamassassin_disagrees(tmp_path, reactor, runs, monkeypatch):
    monkeypatch.setenv("TEST_TRANSACTION_NOTES", json.dumps({"spamassassin": {"is_spam": "No"}}))
    reply, _ = check(tmp_path, reactor, "reject agree", message(body="DSPAM-TEST-SPAM"))
    assert reply.startswith("250 ")


def test_reject_agree_on_ham_raises_karma(tmp_path, reactor, runs, monkeypatch):
    monkeypatch.setenv("TEST_TRANSACTION_NOTES", json.dumps({"spamassassin": {"is_spam": "No"}}))
    _, seen = check(tmp_path, reactor, "reject agree")
    assert seen["karma"] == 1


# -- autolearn ----------------------------------------------------------------------------------------------

def training(runs) -> list[list[str]]:
    return [run["args"] for run in runs() if "--mode=toe" in run["args"]]


def test_spamassassin_autolearned_spam_trains_dspam_as_spam(tmp_path, reactor, runs, monkeypatch):
    monkeypatch.setenv("TEST_TRANSACTION_NOTES", json.dumps({"spamassassin": {"is_spam": "Yes",
                                                                              "autolearn": "spam"}}))
    check(tmp_path, reactor, "autolearn spamassassin")
    assert training(runs) == [["--user", "user@test.example.org", "--mode=toe", "--source=error", "--class=spam",
                               "--deliver=summary", "--stdout"]]


def test_spamassassin_autolearned_ham_trains_dspam_as_innocent(tmp_path, reactor, runs, monkeypatch):
    monkeypatch.setenv("TEST_TRANSACTION_NOTES", json.dumps({"spamassassin": {"is_spam": "No",
                                                                              "autolearn": "ham"}}))
    check(tmp_path, reactor, "autolearn spamassassin", message(body="DSPAM-TEST-SPAM"))
    assert "--class=innocent" in training(runs)[0]


def test_no_training_when_the_filters_agree(tmp_path, reactor, runs, monkeypatch):
    monkeypatch.setenv("TEST_TRANSACTION_NOTES", json.dumps({"spamassassin": {"is_spam": "No",
                                                                              "autolearn": "ham"}}))
    check(tmp_path, reactor, "autolearn any")
    assert training(runs) == [] and len(runs()) == 1


def test_bad_karma_trains_a_missed_spam(tmp_path, reactor, runs, monkeypatch):
    monkeypatch.setenv("TEST_CONNECTION_NOTES", json.dumps({"karma": -3}))
    check(tmp_path, reactor, "autolearn karma")
    assert "--class=spam" in training(runs)[0]


def test_naughty_connection_trains_a_missed_spam_once(tmp_path, reactor, runs, monkeypatch):
    monkeypatch.setenv("TEST_CONNECTION_NOTES", json.dumps({"naughty": "bad helo", "karma": -5}))
    check(tmp_path, reactor, "autolearn any")
    assert len(training(runs)) == 1


def test_failed_training_is_logged_and_the_message_passes(tmp_path, reactor, runs, monkeypatch):
    monkeypatch.setenv("TEST_CONNECTION_NOTES", json.dumps({"karma": 5}))
    qp = filter_qp(tmp_path, reactor, f"dspam dspam_bin {FAKE_DSPAM} autolearn karma")
    lines = capture_log(qp)
    reply = hand_over(reactor, qp, fake_says("Spam 0.5 0.5 train-fails"))
    assert reply.startswith("250 ") and "--class=innocent" in training(runs)[0]
    assert any(level == LOGERROR and "training as innocent failed: dspam failed (1): dspam: training failed"
               in text for level, text in lines)


# -- failures and skips ---------------------------------------------------------------------------------------

def test_dspam_failure_defers_with_its_error(tmp_path, reactor, runs):
    reply, _ = check(tmp_path, reactor, "", fake_says("fail"))
    assert reply == ("452 Unable to check the message for spam (dspam failed (1): dspam: storage driver error: "
                     "unable to open the database), try again later")


def test_dspam_without_a_summary_defers(tmp_path, reactor, runs):
    reply, _ = check(tmp_path, reactor, "", fake_says("silent"))
    assert reply == "452 Unable to check the message for spam (dspam printed no result), try again later"


def test_slow_dspam_is_killed_at_the_timeout_and_defers(tmp_path, reactor, runs):
    reply, _ = check(tmp_path, reactor, "timeout 0.5", fake_says("sleep 30"))
    assert reply == "452 Unable to check the message for spam (no verdict within 0.5s), try again later"


def test_dspam_failure_passes_with_defer_on_error_no(tmp_path, reactor, runs):
    reply, seen = check(tmp_path, reactor, "defer_on_error no", fake_says("fail"))
    assert reply.startswith("250 ") and "dspam" not in seen["notes"]


def test_relay_clients_are_not_classified(tmp_path, reactor, runs):
    reply, _ = check(tmp_path, reactor, "reject 0.5", message(body="DSPAM-TEST-SPAM"),
                     files={"relayclients": "127.0.0.1"}, before=("relay", "rcpt_ok"))
    assert reply.startswith("250 ") and runs() == []


def test_message_over_size_limit_is_not_classified(tmp_path, reactor, runs):
    reply, _ = check(tmp_path, reactor, "size_limit 100", message(body="x" * 200))
    assert reply.startswith("250 ") and runs() == []


# -- arguments --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "complaint"), [
    ("autolearn always", "autolearn must be one of naughty, karma, spamassassin, any"),
    ("reject 2", "reject must be a probability from 0 to 1"),
    ("reject maybe", "reject must be a probability from 0 to 1"),
    ("max_scans 0", "max_scans must be a whole number above 0"),
    ("autolearn", "arguments must be key value pairs"),
])
def test_bad_arguments_stop_the_start_with_a_reason(tmp_path, args, complaint):
    errors = load_errors(tmp_path, f"dspam dspam_bin {FAKE_DSPAM} {args}")
    assert len(errors) == 1 and complaint in errors[0], errors


def test_missing_dspam_bin_stops_the_start(tmp_path):
    errors = load_errors(tmp_path, f"dspam dspam_bin {tmp_path}/dspam")
    assert len(errors) == 1 and "is not an executable file: install dspam" in errors[0]
