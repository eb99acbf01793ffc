"""The pieces of a message: MessageHeader, DataReader (fed directly) and Transaction's body spool."""

import io
import os
import re
import stat

import pytest

from qpsmtpd_py.data_reader import DataReader
from qpsmtpd_py.header import MessageHeader, fold, is_header_line
from qpsmtpd_py.transaction import Transaction, spool_name

HEAD = (b"Received: from a by b;\n\tThu, 1 Jan 2026 00:00:00 +0000\n"
        b"Subject: Hello  world \n"
        b"received: second\n"
        b"X-Empty:\n"
        b"Content-Type : text/plain\n")


# -- MessageHeader ----------------------------------------------------------------------------

def test_parse_keeps_field_order_names_and_original_text():
    header = MessageHeader.parse(HEAD)
    assert header.names() == ["Received", "Subject", "received", "X-Empty", "Content-Type"]
    assert header.as_bytes() == HEAD
    assert header.as_string() == HEAD.decode()


def test_get_is_case_insensitive_and_keeps_folding():
    header = MessageHeader.parse(HEAD)
    assert header.get("RECEIVED") == "from a by b;\n\tThu, 1 Jan 2026 00:00:00 +0000"
    assert header.get("received", 1) == "second"
    assert header.get("Received", 2) is None
    assert header.get("Subject") == "Hello  world "
    assert header.get("x-empty") == ""
    assert header.get("content-type") == "text/plain"
    assert header.get("Missing") is None


def test_get_all_count_and_contains():
    header = MessageHeader.parse(HEAD)
    assert header.get_all("Received") == ["from a by b;\n\tThu, 1 Jan 2026 00:00:00 +0000", "second"]
    assert header.get_all("nope") == []
    assert header.count("RECEIVED") == 2
    assert "subject" in header
    assert "Nope" not in header


def test_add_on_top_or_at_the_end():
    header = MessageHeader.parse(b"Subject: x\n")
    header.add("Received", "from top\n by us", 0)
    header.add("X-Last", "end")
    header.add("X-Middle", "mid", 1)
    assert header.names() == ["Received", "X-Middle", "Subject", "X-Last"]
    assert header.as_string() == "Received: from top\n by us\nX-Middle: mid\nSubject: x\nX-Last: end\n"


def test_add_folds_unindented_continuation_lines():
    header = MessageHeader()
    header.add("X-Multi", "one\ntwo\n  three\n")
    assert header.as_string() == "X-Multi: one\n\ttwo\n  three\n"
    assert header.get("X-Multi") == "one\n\ttwo\n  three"
    assert fold("a\nb") == "a\n\tb"
    assert fold("a\n b") == "a\n b"


def test_delete_all_or_one():
    header = MessageHeader.parse(HEAD)
    assert header.delete("RECEIVED", 1) == 1
    assert header.get_all("Received") == ["from a by b;\n\tThu, 1 Jan 2026 00:00:00 +0000"]
    assert header.delete("received") == 1
    assert "Received" not in header
    assert header.delete("received") == 0
    assert header.delete("Subject", 5) == 0
    assert header.names() == ["Subject", "X-Empty", "Content-Type"]


def test_replace_in_place_or_append():
    header = MessageHeader.parse(HEAD)
    header.replace("subject", "new subject")
    assert header.names()[1] == "subject"
    assert header.get("Subject") == "new subject"
    header.replace("Received", "replaced second", 1)
    assert header.get_all("Received") == ["from a by b;\n\tThu, 1 Jan 2026 00:00:00 +0000", "replaced second"]
    header.replace("X-New", "appended")
    assert header.names()[-1] == "X-New"


def test_iteration_gives_fields_with_name_raw_and_value():
    fields = list(MessageHeader.parse(b"A: 1\nB:2\n  cont\n"))
    assert [(f.name, f.raw, f.value) for f in fields] == [("A", "A: 1\n", "1"), ("B", "B:2\n  cont\n", "2\n  cont")]


def test_mbox_from_line_becomes_mail_from():
    header = MessageHeader.parse(b"From someone@example.com Thu Jan  1 00:00:00 2026\nSubject: x\n")
    assert header.names() == ["Mail-From", "Subject"]
    assert header.get("Mail-From") == "someone@example.com Thu Jan  1 00:00:00 2026"


def test_from_header_is_not_an_mbox_line():
    header = MessageHeader.parse(b"From: <a@b.example>\n")
    assert header.names() == ["From"]
    assert header.get("from") == "<a@b.example>"


def test_continuation_before_any_field_and_non_header_lines_are_dropped():
    header = MessageHeader.parse(b" orphan continuation\nnot a header\nSubject: x\n\n")
    assert header.names() == ["Subject"]


def test_eight_bit_bytes_round_trip():
    raw = b"Subject: caf\xc3\xa9 \xff\xfe\nX-Latin1: \xe9t\xe9\n"
    header = MessageHeader.parse(raw)
    assert header.as_bytes() == raw
    assert header.get("Subject") == "caf\u00e9 \udcff\udcfe"


def test_empty_header():
    header = MessageHeader.parse(b"")
    assert header.names() == []
    assert header.as_bytes() == b""
    assert header.get("Subject") is None


@pytest.mark.parametrize(("line", "expected"), [
    (b"Subject: x", True),
    (b"X-Weird-Name_1.2: y", True),
    (b"Name :spaced", True),
    (b" continuation", True),
    (b"\tcontinuation", True),
    (b"no colon here", False),
    (b"", False),
    (b":no name", False),
    (b"Bad Name: x", False),
    (b"From someone@example.com", False),
])
def test_is_header_line(line, expected):
    assert is_header_line(line) is expected


# -- DataReader -------------------------------------------------------------------------------

def make_reader(tmp_path, max_line=1000, databytes=0, threshold=1 << 20):
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    transaction = Transaction(spool, threshold)
    return DataReader(transaction, max_line, databytes), transaction


def feed_all(reader, data):
    """Feed like the session does: consume, keep the rest, stop when nothing is consumed."""
    buffer = bytearray(data)
    ended = []
    while buffer and not reader.complete:
        consumed, headers_ended = reader.feed(buffer)
        del buffer[:consumed]
        ended.append(headers_ended)
        if consumed == 0:
            break
    return buffer, ended


def test_feed_consumes_whole_lines_only(tmp_path):
    reader, txn = make_reader(tmp_path)
    buffer = bytearray(b"Subject: x\r\nX-Partial: no end yet")
    assert reader.feed(buffer) == (12, False)
    assert reader.feed(bytearray(b"X-Partial: no end yet")) == (0, False)
    assert not reader.complete and not reader.headers_done


def test_feed_reports_headers_ended_once_at_the_blank_line(tmp_path):
    reader, txn = make_reader(tmp_path)
    assert reader.feed(bytearray(b"Subject: x\r\n")) == (12, False)
    assert reader.feed(bytearray(b"\r\nbody\r\n")) == (8, True)
    assert reader.headers_done
    assert txn.header.get("Subject") == "x"
    assert reader.feed(bytearray(b"more\r\n")) == (6, False)
    assert reader.feed(bytearray(b".\r\n")) == (3, False)
    assert reader.complete
    assert txn.body_bytes() == b"body\nmore\n"


def test_feed_reports_headers_ended_when_headers_and_terminator_come_together(tmp_path):
    reader, txn = make_reader(tmp_path)
    data = b"Subject: x\r\n\r\nbody\r\n.\r\n"
    assert reader.feed(bytearray(data)) == (len(data), True)


def test_feed_stops_at_the_terminator_and_leaves_pipelined_commands(tmp_path):
    reader, txn = make_reader(tmp_path)
    buffer = bytearray(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    consumed, _ = reader.feed(buffer)
    assert bytes(buffer[consumed:]) == b"QUIT\r\n"
    assert reader.complete
    assert txn.body_bytes() == b"body\n"


def test_terminator_at_buffer_start_ends_an_empty_message(tmp_path):
    reader, txn = make_reader(tmp_path)
    assert reader.feed(bytearray(b".\r\nNOOP\r\n")) == (3, True)
    assert reader.complete
    assert txn.header is not None and txn.header.names() == []
    assert reader.size == 0


def test_terminator_split_byte_by_byte(tmp_path):
    reader, txn = make_reader(tmp_path)
    assert reader.feed(bytearray(b"Subject: x\r\n\r\nbody\r")) == (14, True)
    assert reader.feed(bytearray(b"body\r")) == (0, False)
    assert reader.feed(bytearray(b"body\r\n")) == (6, False)
    assert reader.feed(bytearray(b".")) == (0, False)
    assert reader.feed(bytearray(b".\r")) == (0, False)
    assert reader.feed(bytearray(b".\r\n")) == (3, False)
    assert reader.complete
    assert txn.body_bytes() == b"body\n"


@pytest.mark.parametrize("fake", [b"\n.\r\n", b"\r.\r", b"\n.\n", b"\r\n.\n"])
def test_only_crlf_dot_crlf_ends_the_message(tmp_path, fake):
    reader, txn = make_reader(tmp_path)
    rest, _ = feed_all(reader, b"Subject: x\r\n\r\nhello" + fake + b"MAIL FROM:<x@y>\r\n")
    assert not reader.complete
    assert rest == b""
    assert reader.bare_newline
    feed_all(reader, b".\r\n")
    assert reader.complete
    assert b"MAIL FROM:<x@y>\n" in txn.body_bytes()


def test_dot_unstuffing_only_at_crlf_line_starts(tmp_path):
    reader, txn = make_reader(tmp_path)
    feed_all(reader, b"\r\n..a\r\n.b\r\n...c\r\nd.\r\nx\n..e\r\n.\r\n")
    assert reader.complete
    assert txn.body_bytes() == b".a\nb\n..c\nd.\nx\n..e\n"


def test_crlf_becomes_lf_and_size_counts_lf_as_one(tmp_path):
    reader, txn = make_reader(tmp_path)
    feed_all(reader, b"A: 1\r\n\r\nbody\r\n.\r\n")
    assert reader.size == len(b"A: 1\n\nbody\n")
    assert txn.data_size == reader.size
    assert not reader.bare_newline


def test_bare_lf_and_cr_become_line_breaks_and_are_flagged(tmp_path):
    reader, txn = make_reader(tmp_path)
    feed_all(reader, b"A: 1\nB: 2\r\n\r\none\rtwo\nthree\r\n.\r\n")
    assert reader.bare_newline
    assert txn.header.names() == ["A", "B"]
    assert txn.body_bytes() == b"one\ntwo\nthree\n"


def test_databytes_flags_too_big_and_stores_nothing_more(tmp_path):
    reader, txn = make_reader(tmp_path, databytes=20)
    feed_all(reader, b"A: 1\r\n\r\n0123456789\r\n")
    assert not reader.too_big
    feed_all(reader, b"0123456789\r\n")
    assert reader.too_big
    body_before = txn.body_bytes()
    feed_all(reader, b"more more more\r\n.\r\n")
    assert reader.complete
    assert txn.body_bytes() == body_before


def test_overlong_line_is_flagged_and_discarded_while_reading(tmp_path):
    reader, txn = make_reader(tmp_path, max_line=50)
    feed_all(reader, b"A: 1\r\n\r\n")
    rest, _ = feed_all(reader, b"x" * 200)
    assert reader.line_too_long
    assert len(rest) == 1  # the last byte might be the CR of the line's CRLF
    rest, _ = feed_all(reader, bytes(rest) + b"x\r\nQUIT\r\n.\r\n")
    assert reader.complete
    assert b"QUIT" not in txn.body_bytes()


def test_line_at_the_limit_is_fine_one_over_is_not(tmp_path):
    reader, _ = make_reader(tmp_path, max_line=50)
    feed_all(reader, b"\r\n" + b"x" * 50 + b"\r\n")
    assert not reader.line_too_long
    feed_all(reader, b"y" * 51 + b"\r\n")
    assert reader.line_too_long


def test_headers_end_at_the_first_non_header_line(tmp_path):
    reader, txn = make_reader(tmp_path)
    _, ended = feed_all(reader, b"Subject: x\r\nnot a header\r\nX-Late: y\r\n")
    assert ended == [True]
    assert txn.header.names() == ["Subject"]
    feed_all(reader, b".\r\n")
    assert txn.body_bytes() == b"not a header\nX-Late: y\n"


def test_message_without_headers(tmp_path):
    reader, txn = make_reader(tmp_path)
    feed_all(reader, b"\r\nbody only\r\n.\r\n")
    assert txn.header.names() == []
    assert txn.body_bytes() == b"body only\n"


def test_folded_header_across_feeds(tmp_path):
    reader, txn = make_reader(tmp_path)
    feed_all(reader, b"Subject: one\r\n")
    feed_all(reader, b"\ttwo\r\n")
    feed_all(reader, b"\r\n.\r\n")
    assert txn.header.get("Subject") == "one\n\ttwo"


# -- Transaction ------------------------------------------------------------------------------

def make_transaction(tmp_path, threshold):
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    return Transaction(spool, threshold), spool


def test_small_body_stays_in_memory(tmp_path):
    txn, spool = make_transaction(tmp_path, 10)
    txn.body_write(b"0123456789")
    assert txn.body_size == 10
    assert os.listdir(spool) == []
    assert txn.body_bytes() == b"0123456789"


def test_body_over_threshold_goes_to_a_private_spool_file(tmp_path):
    txn, spool = make_transaction(tmp_path, 10)
    txn.body_write(b"0123456789")
    txn.body_write(b"A")
    (name,) = os.listdir(spool)
    assert re.fullmatch(r"\d+:\d+:\d+", name)
    assert stat.S_IMODE(os.stat(spool / name).st_mode) == 0o600
    txn.body_write(b"BC")
    assert txn.body_size == 13
    assert txn.body_filename() == spool / name
    assert (spool / name).read_bytes() == b"0123456789ABC"
    assert txn.body_bytes() == b"0123456789ABC"


def test_threshold_zero_spools_every_body(tmp_path):
    txn, spool = make_transaction(tmp_path, 0)
    txn.body_write(b"x")
    assert len(os.listdir(spool)) == 1


def test_body_filename_spools_a_small_body(tmp_path):
    txn, spool = make_transaction(tmp_path, 1000)
    txn.body_write(b"small\n")
    path = txn.body_filename()
    assert path.parent == spool
    assert path.read_bytes() == b"small\n"
    txn.body_write(b"more\n")
    assert txn.body_bytes() == b"small\nmore\n"


def test_body_file_readers_have_their_own_position(tmp_path):
    txn, _ = make_transaction(tmp_path, 4)
    txn.body_write(b"abcdefgh")
    with txn.body_file() as first, txn.body_file() as second:
        assert first.read(3) == b"abc"
        assert second.read() == b"abcdefgh"
        assert first.read() == b"defgh"


@pytest.mark.parametrize("threshold", [0, 1 << 20])
def test_write_message_and_iter_body(tmp_path, threshold):
    txn, _ = make_transaction(tmp_path, threshold)
    txn.header = MessageHeader.parse(b"Subject: x\nTo: y\n")
    txn.body_write(b"line one\n")
    txn.body_write(b"line two\n")
    out = io.BytesIO()
    txn.write_message(out)
    assert out.getvalue() == b"Subject: x\nTo: y\n\nline one\nline two\n"
    assert b"".join(txn.iter_body(chunk_size=4)) == b"line one\nline two\n"
    assert txn.header_bytes() == b"Subject: x\nTo: y\n"


def test_write_message_without_header(tmp_path):
    txn, _ = make_transaction(tmp_path, 100)
    txn.body_write(b"body\n")
    out = io.BytesIO()
    txn.write_message(out)
    assert out.getvalue() == b"\nbody\n"


def test_close_removes_spool_file_and_temp_files(tmp_path):
    txn, spool = make_transaction(tmp_path, 0)
    txn.body_write(b"spooled")
    body_path = txn.body_filename()
    temp = txn.temp_file()
    temp.write_text("plugin scratch")
    unused = txn.temp_file()
    directory = txn.temp_dir()
    (directory / "inner").write_text("x")
    assert temp.parent == spool and directory.parent == spool and unused != temp
    txn.close()
    assert os.listdir(spool) == []
    assert not body_path.exists()
    txn.close()  # twice is fine


def test_close_of_in_memory_body_touches_no_files(tmp_path):
    txn, spool = make_transaction(tmp_path, 100)
    txn.body_write(b"in memory")
    (spool / "other").write_text("not ours")
    txn.close()
    assert os.listdir(spool) == ["other"]
    assert txn.body_size == 0


def test_spool_names_are_unique(tmp_path):
    names = {spool_name(tmp_path) for _ in range(100)}
    assert len(names) == 100


def test_new_transaction_is_empty(tmp_path):
    txn, _ = make_transaction(tmp_path, 100)
    assert txn.sender is None and txn.recipients == [] and txn.notes == {}
    assert txn.header is None and txn.data_size == 0 and txn.body_size == 0
    assert txn.header_bytes() == b""


def test_leading_indented_line_is_not_lost(tmp_path):
    reader, txn = make_reader(tmp_path)
    feed_all(reader, b" indented first line\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    out = io.BytesIO()
    txn.write_message(out)
    assert b" indented first line\n" in out.getvalue()


def test_header_block_without_end_is_cut_at_max_header_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr("qpsmtpd_py.data_reader.MAX_HEADER_BYTES", 100)
    reader, txn = make_reader(tmp_path)
    _, ended = feed_all(reader, b"X-Header: 0123456789\r\n" * 4)
    assert not reader.headers_done
    _, ended = feed_all(reader, b"X-Header: 0123456789\r\n" * 2)
    assert ended == [True]
    assert txn.header.count("X-Header") == 6
    feed_all(reader, b"X-After: y\r\n.\r\n")
    assert txn.body_bytes() == b"X-After: y\n"


def test_header_scanning_is_linear_in_the_header_size(tmp_path, monkeypatch):
    import qpsmtpd_py.data_reader as data_reader

    scanned = []

    class CountingPattern:
        """Counts the bytes a header-block pattern is asked to look at."""

        def __init__(self, real):
            self.real = real

        def fullmatch(self, string, pos=0, endpos=None):
            end = len(string) if endpos is None else min(endpos, len(string))
            scanned.append(end - pos)
            return self.real.fullmatch(string, pos, end)

        def match(self, string, pos=0, endpos=None):
            end = len(string) if endpos is None else min(endpos, len(string))
            scanned.append(end - pos)
            return self.real.match(string, pos, end)

    monkeypatch.setattr(data_reader, "_HEADER_BLOCK", CountingPattern(data_reader._HEADER_BLOCK))
    reader, txn = make_reader(tmp_path)
    line = b"X-Header: " + b"v" * 20 + b"\r\n"
    count = 400
    for _ in range(count):
        feed_all(reader, line)
    feed_all(reader, b"\r\n.\r\n")
    assert reader.complete and txn.header.count("X-Header") == count
    header_bytes = count * (len(line) - 1)
    assert sum(scanned) < 4 * header_bytes, f"scanned {sum(scanned)} bytes for a {header_bytes}-byte header"


def test_spool_files_of_dead_processes_are_removed_at_start(tmp_path):
    import os

    from harness import make_qp

    spool = tmp_path / "spool"
    spool.mkdir()
    dead = spool / "1700000000:999999:1"
    dead.write_bytes(b"left by a killed child")
    alive = spool / f"1700000000:{os.getpid()}:1"
    alive.write_bytes(b"still in use")
    other = spool / "not-a-spool-file"
    other.write_bytes(b"")
    make_qp(tmp_path, files={"spool_dir": str(spool)})
    assert not dead.exists() and alive.exists() and other.exists()
