"""Perl regular expressions, as admins wrote them in qpsmtpd config files.

badmailfrom, badrcptto, rcpt_regexp (and later badhelo, ...) read patterns
written for Perl. Most mean the same in Python's re; this translates the
Perl-only syntax that does appear in such files (\\Q...\\E, \\z, \\Z, POSIX
classes, named groups and back-references) and compiles with ASCII classes,
as Perl matches bytes. A pattern that still does not compile raises re.error:
callers log it and skip the entry.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

from .constants import LOGERROR, LOGWARN

_POSIX_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "space": r" \t\n\r\f\v", "blank": r" \t", "punct": r"!-/:-@\[-`{-~", "xdigit": "0-9A-Fa-f",
    "word": r"\w", "cntrl": r"\x00-\x1f\x7f", "print": " -~", "graph": "!-~", "ascii": r"\x00-\x7f",
}
_PERL_SYNTAX = re.compile(
    r"\\Q(?P<quoted>.*?)(?:\\E|\Z)"
    r"|\[:(?P<posix>\^?\w+):\]"
    r"|\(\?(?:<(?P<named>[A-Za-z_]\w*)>|'(?P<named_q>[A-Za-z_]\w*)')"
    r"|\\k(?:<(?P<ref>\w+)>|\{(?P<ref_b>\w+)\}|'(?P<ref_q>\w+)')"
    r"|\\g\{?(?P<number>\d+)\}?"
    r"|\\(?P<escape>.)",
    re.DOTALL)
_PERL_ESCAPES = {"z": r"\Z", "Z": r"(?=\n?\Z)"}


def _translate(match: re.Match) -> str:
    if match.group("quoted") is not None:
        return re.escape(match.group("quoted"))
    posix = match.group("posix")
    if posix is not None:
        if posix not in _POSIX_CLASSES:
            raise re.error(f"POSIX class [:{posix}:] is not supported")
        return _POSIX_CLASSES[posix]
    named = match.group("named") or match.group("named_q")
    if named:
        return f"(?P<{named}>"
    ref = match.group("ref") or match.group("ref_b") or match.group("ref_q")
    if ref:
        return f"(?P={ref})"
    if match.group("number"):
        return f"(?:\\{match.group('number')})"
    escape = match.group("escape")
    return _PERL_ESCAPES.get(escape, "\\" + escape)


def perl_regex(pattern: str, flags: int = 0) -> re.Pattern:
    """Compile a Perl pattern with Python's re (ASCII classes, as Perl on bytes); re.error if it cannot."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # `[[` is a plain `[` in Perl; Python only warns about it
        return re.compile(_PERL_SYNTAX.sub(_translate, pattern), flags | re.ASCII)


# -- address lists with patterns: config/badmailfrom, config/badrcptto ---------------------------
# qpsmtpd takes an entry for a regular expression when it holds one of these.
PATTERN_CHARS = re.compile(r"[/^$*+!%?\\]")


class AddressEntry:
    """One line of an address list: an address or `@host`, or a pattern, and its reason."""

    __slots__ = ("bad", "pattern", "reason")

    def __init__(self, bad: str, pattern: re.Pattern | None, reason: str) -> None:
        self.bad = bad
        self.pattern = pattern
        self.reason = reason


def parse_address_list(lines: Iterable[str], name: str, flags: int = 0, lower: bool = False,
                       no_at_level: int = LOGWARN) -> tuple[list[AddressEntry], list[tuple[int, str]]]:
    """The entries of config/<name>, and (log level, text) for each line that is skipped.

    `flags` compile the patterns; `lower` lower-cases plain entries.
    """
    entries: list[AddressEntry] = []
    errors: list[tuple[int, str]] = []
    for line in lines:
        words = line.split(None, 1)
        if not words:
            continue
        bad, reason = words[0], (words[1] if len(words) > 1 else "")
        if PATTERN_CHARS.search(bad):
            try:
                entries.append(AddressEntry(bad, perl_regex(bad, flags), reason))
            except re.error as exc:
                errors.append((LOGERROR, f"ignoring a line of {name}: pattern {bad!r} does not compile: {exc}"))
            continue
        if "@" not in bad:
            errors.append((no_at_level, f"{name}: bad config: no @ sign in {bad.lower()}"))
            continue
        entries.append(AddressEntry(bad.lower() if lower else bad, None, reason))
    return entries, errors
