"""Domain helpers shared by plugins: the organizational domain of DMARC (RFC 7489 3.2)."""

from __future__ import annotations

import threading

from publicsuffixlist import PublicSuffixList

_PSL: PublicSuffixList | None = None
_lock = threading.Lock()


def public_suffix_list() -> PublicSuffixList:
    """The Public Suffix List that the `publicsuffixlist` package bundles (loaded once)."""
    global _PSL
    if _PSL is None:
        with _lock:
            if _PSL is None:
                _PSL = PublicSuffixList()
    return _PSL


def organizational_domain(domain: str) -> str:
    """The registered domain of `domain` per the Public Suffix List (the domain itself for a suffix)."""
    domain = domain.lower().rstrip(".")
    return public_suffix_list().privatesuffix(domain) or domain
