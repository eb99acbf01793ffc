"""Reading qpsmtpd's greylisting and karma DBM files, to carry them over into a state store.

qpsmtpd tied its databases with AnyDBM_File, which means Berkeley DB (DB_File)
wherever that Perl module was installed, else GDBM, NDBM, SDBM or ODBM.
Python reads only some of those, so the file is read by Perl itself, trying
each of those modules in qpsmtpd's order (the machine that ran qpsmtpd has
them); without Perl, Python's `dbm` module is tried. Blocking: for the
`karma_tool import` command, never for the daemon.
"""

from __future__ import annotations

import dbm
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

# Tries each DBM module AnyDBM_File could have used; prints "hex(key) hex(value)" lines.
_PERL_DUMP = r"""
use strict; use Fcntl;
my ($path) = @ARGV; my %db; my $tied;
for my $module (qw(DB_File GDBM_File NDBM_File SDBM_File ODBM_File)) {
    eval "require $module; 1" or next;
    $tied = eval { tie(%db, $module, $path, O_RDONLY, 0) } and last;
}
$tied or die "no Perl DBM module can read $path\n";
while (my ($k, $v) = each %db) { print unpack('H*', $k), ' ', unpack('H*', defined $v ? $v : ''), "\n" }
"""


class DBMImportError(Exception):
    """The file cannot be read as a DBM database (message says why)."""


def read_dbm(path: Path) -> Iterator[tuple[str, str]]:
    """Every (key, value) of a qpsmtpd DBM file, as text."""
    perl = shutil.which("perl")
    if perl is not None:
        done = subprocess.run([perl, "-e", _PERL_DUMP, str(path)], capture_output=True, timeout=600)
        if done.returncode == 0:
            for line in done.stdout.decode().splitlines():
                key, _, value = line.partition(" ")
                yield _text(bytes.fromhex(key)), _text(bytes.fromhex(value))
            return
        perl_error = done.stderr.decode(errors="replace").strip()
    else:
        perl_error = "perl is not installed"
    try:
        with dbm.open(str(path), "r") as db:
            for key in db.keys():
                yield _text(key), _text(db[key])
    except Exception as exc:  # dbm.error, an unknown format, a missing module: all "cannot read"
        raise DBMImportError(f"cannot read {path}: {perl_error}; Python's dbm: {exc}") from None


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def store_key(key: str) -> str | None:
    """qpsmtpd's key with its IP part as an integer (keys before 0.12 held dotted IPs); None if it has none."""
    first, sep, rest = key.partition(":")
    if not first.isdigit():
        try:
            first = str(int(ipaddress.ip_address(first)))
        except ValueError:
            return None
    return first + sep + rest


def store_name(path: Path) -> str | None:
    """greylist or karma, from qpsmtpd's file names (greylist.dbm, denysoft_greylist.dbm, karma.dbm)."""
    stem = path.name.split(".")[0]
    if stem in ("greylist", "denysoft_greylist"):
        return "greylist"
    if stem == "karma":
        return "karma"
    return None
