"""The one place that decides which Twisted reactor runs, and when it exists.

A reactor must never cross fork(): its epoll set and waker pipe would be shared
by every child. Yet the master must import plugins (and twisted.mail.smtp, which
imports the reactor at load time) before it forks, so that children start fast
and share that memory copy-on-write. So the master puts a placeholder module in
the reactor's place; modules that grab `reactor` at import time get the
placeholder, which forwards to the real reactor once a child has installed it,
and fails loudly if anything uses it in the master.

The epoll reactor is the cheapest on Linux (reference/reactor-bench.md).
"""

from __future__ import annotations

import sys
import types
from typing import Any

_REACTOR_MODULE = "twisted.internet.reactor"


class _ReactorPlaceholder(types.ModuleType):
    real: Any = None

    def __getattr__(self, name: str) -> Any:
        real = type(self).real
        if real is None:
            raise RuntimeError(
                f"the Twisted reactor was used ({name}) in the master process, before a child "
                "installed it; plugins must use the reactor inside hooks, not at load time")
        return getattr(real, name)


def defer_reactor() -> None:
    """Master, before importing plugins: make `reactor` importable but not yet real."""
    if _REACTOR_MODULE in sys.modules:
        return
    import twisted.internet

    placeholder = _ReactorPlaceholder(_REACTOR_MODULE)
    sys.modules[_REACTOR_MODULE] = placeholder
    twisted.internet.reactor = placeholder  # type: ignore[attr-defined]


def install_reactor() -> Any:
    """Child, first thing after fork: install the real reactor and return it."""
    import twisted.internet

    current = sys.modules.get(_REACTOR_MODULE)
    if current is not None and not isinstance(current, _ReactorPlaceholder):
        return current
    sys.modules.pop(_REACTOR_MODULE, None)
    if hasattr(twisted.internet, "reactor"):
        del twisted.internet.reactor
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    _ReactorPlaceholder.real = reactor
    return reactor
