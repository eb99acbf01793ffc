"""queue/maildir's delivery (called directly, as its worker thread does) and its group fsync."""

import threading
import time

import pytest
from harness import make_qp

from qpsmtpd_py.address import Address
from qpsmtpd_py.constants import OK
from qpsmtpd_py.header import MessageHeader
from qpsmtpd_py.transaction import Transaction


def maildir_plugin(tmp_path, line):
    qp = make_qp(tmp_path, plugins=["rcpt_ok", line])
    return next(p for p in qp.plugins if p.name == "queue::maildir")


def transaction(tmp_path, *recipients):
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    txn = Transaction(spool, 1 << 16)
    txn.sender = Address("a", "example.com")
    txn.recipients = [Address(*r.split("@")) for r in recipients]
    txn.header = MessageHeader.parse(b"Subject: hi\nMessage-Id: <1@x>\n")
    txn.body_write(b"body\n")
    return txn


def test_one_copy_with_return_path_and_the_header(tmp_path):
    plugin = maildir_plugin(tmp_path, f"queue/maildir {tmp_path / 'Maildir'}")
    code, message = plugin.deliver(transaction(tmp_path, "u@example.com"), [(tmp_path / "Maildir", None)])
    [stored] = list((tmp_path / "Maildir" / "new").iterdir())
    assert code == OK and message == f"Queued! {stored.name} <1@x>"
    assert stored.read_bytes() == b"Return-Path: <a@example.com>\nSubject: hi\nMessage-Id: <1@x>\n\nbody\n"
    assert list((tmp_path / "Maildir" / "tmp").iterdir()) == []


def test_per_recipient_copies_are_all_or_nothing(tmp_path, monkeypatch):
    plugin = maildir_plugin(tmp_path, f"queue/maildir {tmp_path / 'M'} %d/%l")
    txn = transaction(tmp_path, "one@example.com", "two@example.org")
    targets = [(tmp_path / "M" / plugin.subdir_for(r), r) for r in txn.recipients]
    real_write = plugin.write_copy
    calls = []

    def fail_second(path, txn, recipient):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write(path, txn, recipient)

    monkeypatch.setattr(plugin, "write_copy", fail_second)
    with pytest.raises(OSError):
        plugin.deliver(txn, targets)
    for maildir, _ in targets:
        for sub in ("new", "tmp"):
            directory = maildir / sub
            assert not directory.exists() or list(directory.iterdir()) == []
    monkeypatch.setattr(plugin, "write_copy", real_write)
    plugin.deliver(txn, targets)
    assert [len(list((m / "new").iterdir())) for m, _ in targets] == [1, 1]
    assert b"Delivered-To: two@example.org\n" in next((targets[1][0] / "new").iterdir()).read_bytes()


def test_directory_fsyncs_are_shared_by_concurrent_deliveries(tmp_path, monkeypatch):
    plugin = maildir_plugin(tmp_path, f"queue/maildir {tmp_path / 'Maildir'}")
    import importlib
    module = importlib.import_module(type(plugin).__module__)
    fsyncs = []  # (start, end)

    def slow_fsync(path):
        start = time.monotonic()
        time.sleep(0.05)
        fsyncs.append((start, time.monotonic()))

    monkeypatch.setattr(module, "fsync_dir", slow_fsync)
    syncer = module.DirectorySync()
    returns = []

    def deliver():
        asked = time.monotonic()
        syncer.sync(tmp_path)
        returns.append((asked, time.monotonic()))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(returns) == 8
    assert len(fsyncs) < 8  # shared, not one each
    for asked, returned in returns:
        # covered by an fsync that began after it asked and ended before it returned
        assert any(start >= asked and end <= returned for start, end in fsyncs)
