"""Envelope addresses: RFC 5321 path parsing and formatting, as qpsmtpd does it.

`canonify()` splits a ``<...>`` path from MAIL FROM / RCPT TO into local part
and domain with qpsmtpd's exact (and in places lenient) rules, and `Address`
is the value object handed to plugins: it formats back to a canonical path,
and compares and sorts by domain first, then local part.
"""

import re
from functools import total_ordering

_SUBDOMAIN = r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?"
# Address literals are only checked for shape: octets are not range-checked
# and IPv6 literals are any run of hex digits, colons and dots.
_ADDRESS_LITERAL = (
    r"\[(?:[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|IPv6:[0-9A-Fa-f:.]+)\]"
)
# Labels are joined by a literal dot.  qpsmtpd builds this pattern in a Perl
# double-quoted string that eats the backslash, so there any character
# (spaces, "!", "_", control characters) separates labels; that accident is
# deliberately not reproduced.
_DOMAIN = rf"(?:{_ADDRESS_LITERAL}|{_SUBDOMAIN}(?:\.{_SUBDOMAIN})*)"

# Like Perl's, Python's `$` also matches before a final newline, so this
# accepts exactly the paths qpsmtpd accepts.
_DELIMITED = re.compile(r"<(.*)>$")
_SOURCE_ROUTE = re.compile(rf"@{_DOMAIN}(?:,@{_DOMAIN})*:")
# ASCII-only case folding: Unicode folding would let e.g. U+017F (long s)
# stand in for "s", which qpsmtpd, working on bytes, never does.
_POSTMASTER = re.compile("postmaster", re.IGNORECASE | re.ASCII)
# The greedy local part makes the last "@" followed by a valid domain the split.
_MAILBOX = re.compile(rf"(.*)@({_DOMAIN})")
# qpsmtpd's dot-atom pattern has no end anchor, so only the first character
# decides: "ask @perl.org" and non-ASCII local parts are accepted as atoms.
_ATOM_START = re.compile(r"[a-zA-Z0-9!#%&*+=?^_`{|}~$'/-]")
_QTEXT = r"[\x01-\x08\x0b\x0c\x0e-\x1f\x21\x23-\x5b\x5d-\x7f]"
_TEXT = r"[\x01-\x09\x0b\x0c\x0e-\x7f]"
_QUOTED_STRING = re.compile(rf'"((?:{_QTEXT}|\\{_TEXT})*)"')
_QUOTED_PAIR = re.compile(rf"\\({_TEXT})")

_NEEDS_QUOTING = re.compile(r"[^a-zA-Z0-9!#$%&'*+\-/=?^_`{|}~.]")
_BARE_ADDRESS = re.compile(r"(.*)@(.*)")
# qpsmtpd's comparison deletes these with tr/[<>]//, whose list holds the
# square brackets literally, so address-literal brackets go as well.
_CMP_DROP = str.maketrans("", "", "[]<>")


def canonify(path: str) -> tuple[str | None, str | None, str]:
    """Split a ``<...>`` path into (local part, domain, reason).

    The local part is None when the path is not acceptable; the domain is None
    for the empty path and for bare ``<postmaster>``.  A quoted local part is
    returned unquoted.  The reason is a short diagnostic and is empty where
    qpsmtpd gives none (no valid domain, or a quoted local part).
    """
    delimited = _DELIMITED.match(path)
    if delimited is None:
        return None, None, "missing delimiters"
    path = delimited.group(1)

    # RFC 5321 says source routes must be accepted and should be ignored.
    route = _SOURCE_ROUTE.match(path)
    if route is not None:
        path = path[route.end() :]

    if not path:
        return "", None, "empty path"
    # RFC 5321 4.5.1 requires accepting the bare mailbox name.
    if _POSTMASTER.fullmatch(path):
        return "postmaster", None, "bare postmaster"

    mailbox = _MAILBOX.fullmatch(path)
    if mailbox is None:
        return None, None, ""
    local, domain = mailbox.groups()

    if _ATOM_START.match(local):
        return local, domain, "local matches atom"
    quoted = _QUOTED_STRING.fullmatch(local)
    if quoted is not None:
        return _QUOTED_PAIR.sub(r"\1", quoted.group(1)), domain, ""
    return None, None, "fall through"


@total_ordering
class Address:
    """An envelope address; ``user`` None is the null path ``<>``.

    Equality, ordering and hashing follow qpsmtpd's ``cmp`` overload: the
    formatted address is inverted to ``host=user``, so addresses sort by
    domain and then by local part.  A plain string compared with an Address
    is read the way qpsmtpd coerces it (a ``<...>`` path, or ``user@host``).
    """

    __slots__ = ("_notes", "host", "user")

    def __init__(self, user: str | None = None, host: str | None = None) -> None:
        self.user = user
        self.host = host
        self._notes: dict | None = None

    @classmethod
    def parse(cls, path: str) -> "Address | None":
        """Address from a ``<...>`` path, or None when it does not canonify."""
        user, host, _ = canonify(path)
        if user is None:
            return None
        # qpsmtpd keeps "" as the local part of <>; None makes the null
        # path a single value for plugins to test.
        if not user and host is None:
            return cls()
        return cls(user, host)

    @classmethod
    def null(cls) -> "Address":
        """The null reverse-path ``<>``."""
        return cls()

    @property
    def notes(self) -> dict:
        """Free-form per-address data shared between plugins."""
        if self._notes is None:
            self._notes = {}
        return self._notes

    @property
    def is_null(self) -> bool:
        """True when this formats as ``<>``."""
        return self.user is None or (not self.user and self.host is None)

    def address(self) -> str:
        """``user@host`` without brackets or quoting ('' for the null path)."""
        user = self.user or ""
        return user if self.host is None else f"{user}@{self.host}"

    def format(self) -> str:
        """The canonical path, in angle brackets, quoting the local part if needed."""
        user = self.user
        if user is None:
            return "<>"
        if _NEEDS_QUOTING.search(user):
            quoted = '"' + _NEEDS_QUOTING.sub(r"\\\g<0>", user) + '"'
            return f"<{quoted}>" if self.host is None else f"<{quoted}@{self.host}>"
        return f"<{self.address()}>"

    __str__ = format

    def __repr__(self) -> str:
        return f"Address(user={self.user!r}, host={self.host!r})"

    def _cmp_key(self) -> str:
        return "=".join(reversed(self.format().split("@"))).translate(_CMP_DROP)

    def __eq__(self, other: object) -> bool:
        other = _coerce(other)
        if other is None:
            return NotImplemented
        return self._cmp_key() == other._cmp_key()

    def __lt__(self, other: object) -> bool:
        other = _coerce(other)
        if other is None:
            return NotImplemented
        return self._cmp_key() < other._cmp_key()

    # Only consistent with __eq__ among Address objects: a string that compares
    # equal does not hash alike.
    def __hash__(self) -> int:
        return hash(self._cmp_key())


def _coerce(other: object) -> Address | None:
    if isinstance(other, Address):
        return other
    if not isinstance(other, str):
        return None
    if _DELIMITED.match(other):
        return Address.parse(other)
    bare = _BARE_ADDRESS.search(other)
    return Address() if bare is None else Address(*bare.groups())
