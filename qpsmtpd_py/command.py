"""Argument parsing for SMTP commands, with qpsmtpd's Qpsmtpd::Command rules.

MAIL and RCPT arguments are split into the path and the RFC 1869 ESMTP
parameters that follow it; every other command's arguments are split on
spaces.  Results are ``(OK, values)`` or ``(DENY, [message for the client])``.
"""

import re

from .constants import DENY, OK

# Perl's \s on byte strings.  Python's own notion of whitespace (str.split(),
# str.strip()) also covers \x1c-\x1f, \x85 and \xa0, which qpsmtpd keeps.
_WHITESPACE_CHARS = " \t\n\r\f\v"
_WHITESPACE = re.compile(r"\s", re.ASCII)
_WHITESPACE_RUN = re.compile(r"(\s+)", re.ASCII)
_SPACES = re.compile(" +")
_PATH_PREFIX = {
    "mail": re.compile(r"from:\s*", re.IGNORECASE | re.ASCII),
    "rcpt": re.compile(r"to:\s*", re.IGNORECASE | re.ASCII),
}
# RFC 1869 esmtp-parameter: keyword ["=" value], the value free of "=", space
# and control characters.
_ESMTP_PARAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?:=[^= \x00-\x1f]+)?")


def parse(cmd: str, line: str) -> tuple[int, list[str]]:
    """Parse the arguments ``line`` of SMTP command ``cmd``."""
    cmd = cmd.lower()
    prefix = _PATH_PREFIX.get(cmd)
    if prefix is None:
        words = _SPACES.split(line)
        # Perl's split drops trailing empty fields but keeps a leading one.
        while words and not words[-1]:
            words.pop()
        return OK, words
    head = prefix.match(line)
    if head is None:
        return DENY, ["Syntax error in command"]
    return _path_and_params(cmd, line[head.end() :])


def _path_and_params(cmd: str, rest: str) -> tuple[int, list[str]]:
    rest = rest.rstrip(_WHITESPACE_CHARS)
    # Only a really empty path is missing: qpsmtpd's Perl truth test also
    # took a lone "0" for one, turning "MAIL FROM:0" into the null sender.
    if not rest:
        if cmd == "mail":
            return OK, ["<>"]
        return DENY, ["Syntax error in address"]

    # Peel well-formed parameters off the right end; what is left of the
    # line, possibly unbracketed or with spaces, is the path.  The prefix
    # took all leading whitespace, so the first word always stays.  Working
    # on the split words keeps this linear on long lines.
    words = _WHITESPACE_RUN.split(rest)
    params = []
    while len(words) > 1 and _ESMTP_PARAM.fullmatch(words[-1]):
        params.append(words.pop())
        words.pop()
    params.reverse()
    path = "".join(words)

    # Whitespace anywhere after an "@" means parameters were left unpeeled.
    # (qpsmtpd's /@.*\s/ can always reach the first whitespace after the "@",
    # a newline being whitespace itself.)
    at = path.find("@")
    if at >= 0 and _WHITESPACE.search(path, at + 1):
        return DENY, ["Syntax error in parameters"]
    return OK, [path, *params]


def params_dict(params: list[str]) -> dict[str, str | None]:
    """Map ESMTP parameters to lower-cased keys; a bare keyword maps to None."""
    result: dict[str, str | None] = {}
    for param in params:
        key, sep, value = param.partition("=")
        result[key.lower()] = value if sep else None
    return result
