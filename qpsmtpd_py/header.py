"""The message header: parsed once at end of headers, original lines kept.

Fields keep their exact original text (folding, spacing, 8-bit bytes), because a
gateway must not alter existing Received lines (RFC 5321 3.7.2 (3.8.2 in 2821))
and DKIM signatures cover the header bytes. Text is decoded as UTF-8 with
surrogateescape, so any byte sequence round-trips unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_FIELD_START = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def is_header_line(line: bytes) -> bool:
    """A field start (`Name:`) or a folded continuation (leading space or tab)."""
    return line[:1] in (b" ", b"\t") or _FIELD_START.match(line) is not None


class Field:
    __slots__ = ("name", "raw")

    def __init__(self, name: str, raw: str) -> None:
        self.name = name  # as written in the message
        self.raw = raw  # the whole field, `Name: value` with its folding, lines end in \n

    @property
    def value(self) -> str:
        """The value after the colon, folding kept, no trailing newline."""
        return self.raw.split(":", 1)[1].lstrip(" \t").rstrip("\n")


class MessageHeader:
    """Ordered header fields; lookups are case-insensitive."""

    def __init__(self, fields: list[Field] | None = None) -> None:
        self.fields: list[Field] = fields or []

    @classmethod
    def parse(cls, block: bytes) -> MessageHeader:
        """Parse header lines (LF-terminated, no blank separator line)."""
        fields: list[Field] = []
        for line in block.split(b"\n"):
            if not line:
                continue
            if line[:1] in (b" ", b"\t") and fields:
                fields[-1].raw += decode(line) + "\n"
                continue
            match = _FIELD_START.match(line)
            if match is None:
                if line.startswith(b"From "):
                    # An mbox separator: qpsmtpd (Mail::Header COERCE) keeps it as Mail-From.
                    fields.append(Field("Mail-From", "Mail-From: " + decode(line[5:]) + "\n"))
                continue
            fields.append(Field(decode(match.group(1)), decode(line) + "\n"))
        return cls(fields)

    def _matching(self, name: str) -> list[int]:
        lower = name.lower()
        return [i for i, field in enumerate(self.fields) if field.name.lower() == lower]

    def get(self, name: str, index: int = 0) -> str | None:
        positions = self._matching(name)
        if index >= len(positions):
            return None
        return self.fields[positions[index]].value

    def get_all(self, name: str) -> list[str]:
        return [self.fields[i].value for i in self._matching(name)]

    def count(self, name: str) -> int:
        return len(self._matching(name))

    def __contains__(self, name: str) -> bool:
        return bool(self._matching(name))

    def add(self, name: str, value: str, index: int | None = None) -> None:
        """Add a field; index 0 puts it on top, None at the end (as Mail::Header)."""
        field = Field(name, f"{name}: {fold(value)}\n")
        if index is None:
            self.fields.append(field)
        else:
            self.fields.insert(index, field)

    def delete(self, name: str, index: int | None = None) -> int:
        """Delete every `name` field, or only its index-th one; returns how many."""
        positions = self._matching(name)
        if index is not None:
            positions = positions[index:index + 1]
        for position in reversed(positions):
            del self.fields[position]
        return len(positions)

    def replace(self, name: str, value: str, index: int = 0) -> None:
        positions = self._matching(name)
        field = Field(name, f"{name}: {fold(value)}\n")
        if index < len(positions):
            self.fields[positions[index]] = field
        else:
            self.fields.append(field)

    def names(self) -> list[str]:
        return [field.name for field in self.fields]

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def as_string(self) -> str:
        return "".join(field.raw for field in self.fields)

    def as_bytes(self) -> bytes:
        return encode(self.as_string())


def fold(value: str) -> str:
    """Make every continuation line of a multi-line value start with whitespace."""
    lines = value.rstrip("\n").split("\n")
    return "\n".join([lines[0]] + [line if line[:1] in (" ", "\t") else "\t" + line for line in lines[1:]])
