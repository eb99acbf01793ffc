"""DATA framing: from raw bytes after `354` to a header object and a body spool.

Rules (DESIGN.md §3):
* Only `<CR><LF>.<CR><LF>` ends the message. `<LF>.<LF>`, `<LF>.<CR><LF>` and
  `<CR>.<CR>` are ordinary content, so no SMTP smuggling through us (qpsmtpd
  and Haraka both accept `<LF>.<CR><LF>`; qpsmtpd issue #317).
* A bare LF or CR inside the message is stored as a line break (like Postfix's
  normalisation) and remembered, so the session can refuse such a message when
  the admin asks for it (`config/forbid_bare_newline`).
* Dot-stuffing is undone at real (CRLF) line starts only.
* Lines longer than the limit and messages over `databytes` are noted while
  reading, the rest is read and discarded up to the terminator, and the
  session answers with an error: the body never falls back into command mode.
* Work is done on whole buffers with bytes methods, not per line in Python.
"""

from __future__ import annotations

import re

from .header import MessageHeader
from .transaction import Transaction

TERMINATOR = b"\r\n.\r\n"
# Header lines: a field (`Name: value`) or a folded continuation (leading blank).
_HEADER_BLOCK = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+[ \t]*:[^\n]*\n|[ \t][^\n]*\n)*")
# Header blocks larger than this end there; the rest is body. Keeps a header
# that never ends from being held in memory.
MAX_HEADER_BYTES = 1 << 20


class DataReader:
    """Consumes DATA bytes for one transaction."""

    def __init__(self, transaction: Transaction, max_line_length: int, databytes: int) -> None:
        self.transaction = transaction
        self.max_line_length = max_line_length
        self.databytes = databytes
        self.size = 0
        self.bare_newline = False
        self.line_too_long = False
        self.too_big = False
        self.complete = False
        self.headers_done = False
        # Set when the message is refused before its end (a plugin failed):
        # the rest is read and dropped, and this reply is given after the dot.
        self.rejection: tuple[int, str] | None = None
        self._head = bytearray()
        self._head_checked = 0  # bytes of _head already known to be header lines
        self._at_line_start = True  # False after a bare LF or a cut overlong line

    def reject(self, code: int, message: str) -> None:
        if self.rejection is None:
            self.rejection = (code, message)

    @property
    def storing(self) -> bool:
        return not (self.too_big or self.line_too_long or self.rejection)

    def feed(self, buffer: bytearray) -> tuple[int, bool]:
        """Consume from `buffer`; returns (bytes consumed, headers ended just now).

        Consumption stops at line ends, so every call starts at a line start
        (or is known not to) and a terminator split across reads is still found.
        """
        headers_before = self.headers_done
        consumed = self._consume(buffer)
        return consumed, self.headers_done and not headers_before

    def _consume(self, buffer: bytearray) -> int:
        if self._at_line_start and buffer[:3] == b".\r\n":
            self._finish()
            return 3
        end = buffer.find(TERMINATOR)
        if end >= 0:
            self._store(bytes(buffer[:end + 2]))
            self._finish()
            return end + 5
        last = buffer.rfind(b"\r\n")
        if last >= 0:
            self._store(bytes(buffer[:last + 2]))
            return last + 2
        # No CRLF: store up to the last bare LF (a line break for us, never a
        # line start for dot handling), and watch the length of what remains.
        consumed = buffer.rfind(b"\n") + 1
        if consumed:
            self._store(bytes(buffer[:consumed]))
            self._at_line_start = False
        pending = len(buffer) - consumed - (1 if buffer.endswith(b"\r") else 0)
        if pending > self.max_line_length:
            # An endless line: drop all but the last byte (it may be the CR of
            # the next CRLF) and remember that the message is unacceptable.
            self.line_too_long = True
            self._at_line_start = False
            return len(buffer) - 1
        return consumed

    def _finish(self) -> None:
        self.complete = True
        if not self.headers_done:
            self._end_headers(bytes(self._head), b"")

    def _store(self, chunk: bytes) -> None:
        if not self._at_line_start:
            self._at_line_start = True
        elif chunk[:1] == b".":
            chunk = chunk[1:]
        chunk = chunk.replace(b"\r\n.", b"\r\n")
        crlf = chunk.count(b"\r\n")
        if chunk.count(b"\n") != crlf or chunk.count(b"\r") != crlf:
            self.bare_newline = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            chunk = chunk.replace(b"\r\n", b"\n")
        if len(chunk) > self.max_line_length and max(map(len, chunk.split(b"\n"))) > self.max_line_length:
            self.line_too_long = True
        self.size += len(chunk)
        self.transaction.data_size = self.size
        if self.databytes and self.size > self.databytes:
            self.too_big = True
        if not self.storing:
            return  # keep reading to the terminator, store nothing more
        if self.headers_done:
            self.transaction.body_write(chunk)
            return
        self._head += chunk
        self._split_head()

    def _split_head(self) -> None:
        """End the header block at its blank line, or at the first line that is no header.

        Only the bytes added since the last call are scanned, so a big header
        arriving in many small reads costs linear time.
        """
        head = self._head
        if self._head_checked == 0:
            if head[:1] in (b"\n", b" ", b"\t"):
                # No header at all: a blank first line, or text that only looks folded.
                self._end_headers(b"", bytes(head[1:] if head[:1] == b"\n" else head))
                return
            if head.startswith(b"From "):
                self._head_checked = head.find(b"\n") + 1  # an mbox separator line
        blank = head.find(b"\n\n", max(0, self._head_checked - 1))
        scan_to = blank + 1 if blank >= 0 else len(head)
        if _HEADER_BLOCK.fullmatch(head, self._head_checked, scan_to) is None:
            end = _HEADER_BLOCK.match(head, self._head_checked, scan_to).end()
            self._end_headers(bytes(head[:end]), bytes(head[end:]))
            return
        self._head_checked = scan_to
        if blank >= 0:
            self._end_headers(bytes(head[:blank + 1]), bytes(head[blank + 2:]))
        elif len(head) > MAX_HEADER_BYTES:
            self._end_headers(bytes(head), b"")

    def _end_headers(self, block: bytes, body: bytes) -> None:
        self.headers_done = True
        self._head = bytearray()
        self.transaction.header = MessageHeader.parse(block)
        if body:
            self.transaction.body_write(body)
