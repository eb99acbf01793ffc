"""Transaction: one message, from MAIL to the end of DATA (or RSET).

The body is streamed: it stays in memory up to `size_threshold` bytes and then
goes to a spool file in `spool_dir`, so a 50 MB message costs a few KB of RAM.
Stored line endings are LF, as in qpsmtpd; queue plugins write them out as the
next hop needs. The spool file and any temp files die with the transaction.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .address import Address
from .header import MessageHeader

_spool_counter = itertools.count(1)
_COPY_CHUNK = 1 << 16


def spool_name(spool_dir: Path) -> Path:
    """qpsmtpd's spool names: `<epoch>:<pid>:<counter>`."""
    return spool_dir / f"{int(time.time())}:{os.getpid()}:{next(_spool_counter)}"


class Transaction:
    """Envelope, notes, header and body of one message."""

    def __init__(self, spool_dir: Path, size_threshold: int) -> None:
        self.spool_dir = spool_dir
        self.size_threshold = size_threshold
        self.mail_started = False  # MAIL was given: results found now belong to this message
        self.sender: Address | None = None
        self.recipients: list[Address] = []
        self.notes: dict[str, Any] = {}
        self.header: MessageHeader | None = None
        self.data_size = 0  # bytes of DATA received (LF counted as 1, like qpsmtpd's databytes)
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._temp_paths: list[Path] = []

    def add_recipient(self, recipient: Address) -> None:
        self.recipients.append(recipient)

    # -- body ------------------------------------------------------------------------
    def body_write(self, data: bytes) -> None:
        if self._file is not None:
            self._file.write(data)
            return
        self._memory += data
        if len(self._memory) > self.size_threshold:
            self._spool()

    def _spool(self) -> None:
        path = spool_name(self.spool_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._path = path
        self._file = os.fdopen(fd, "w+b")
        self._file.write(self._memory)
        self._memory = bytearray()

    @property
    def body_size(self) -> int:
        if self._file is not None:
            self._file.flush()
            return os.fstat(self._file.fileno()).st_size
        return len(self._memory)

    def body_filename(self) -> Path:
        """The spool file holding the body (spools a small body first)."""
        if self._file is None:
            self._spool()
        assert self._file is not None and self._path is not None
        self._file.flush()
        return self._path

    def body_file(self) -> IO[bytes]:
        """A readable binary file of the body, positioned at its start."""
        if self._file is None:
            return io.BytesIO(bytes(self._memory))
        self._file.flush()
        reader = open(self._path, "rb")  # its own position: plugins may read in turn
        return reader

    def body_bytes(self) -> bytes:
        with self.body_file() as body:
            return body.read()

    def iter_body(self, chunk_size: int = _COPY_CHUNK) -> Iterator[bytes]:
        if self._file is None:
            yield bytes(self._memory)
            return
        with self.body_file() as body:
            while chunk := body.read(chunk_size):
                yield chunk

    def header_bytes(self) -> bytes:
        return self.header.as_bytes() if self.header is not None else b""

    def write_message(self, out: IO[bytes]) -> None:
        """Header, blank line, body: the message as queue plugins hand it on."""
        out.write(self.header_bytes())
        out.write(b"\n")
        if self._file is None:
            out.write(self._memory)
            return
        with self.body_file() as body:
            shutil.copyfileobj(body, out, _COPY_CHUNK)

    def replace_body(self, path: Path) -> None:
        """Make the file at `path` (a `temp_file()`, LF line endings) the body, e.g. a milter's new body."""
        if self._file is not None:
            self._file.close()
            if self._path is not None:
                self._path.unlink(missing_ok=True)
        if path in self._temp_paths:
            self._temp_paths.remove(path)  # it is the spool file now, removed as such
        self._memory = bytearray()
        self._path = path
        self._file = open(path, "r+b")  # noqa: SIM115  (closed by close() or the next replace)
        self._file.seek(0, os.SEEK_END)

    # -- temp files for plugins, removed with the transaction -------------------------------
    def temp_file(self) -> Path:
        path = spool_name(self.spool_dir)
        self._temp_paths.append(path)
        return path

    def temp_dir(self) -> Path:
        path = spool_name(self.spool_dir)
        path.mkdir(mode=0o700)
        self._temp_paths.append(path)
        return path

    def close(self) -> None:
        """Remove the spool file and temp files; the transaction is over."""
        if self._file is not None:
            self._file.close()
            self._file = None
        for path in ([self._path] if self._path else []) + self._temp_paths:
            try:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                pass
        self._path = None
        self._temp_paths = []
        self._memory = bytearray()
