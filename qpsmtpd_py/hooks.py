"""The hook engine: run one hook over the registered plugins, in order.

The contract is qpsmtpd's (reference §3): plugins run in registration order, the
first result that is not DECLINED wins, a plugin that raises is logged at LOGCRIT
and skipped, a missing or unknown return code is logged at LOGERROR and skipped,
every result is recorded in the notes under the plugin's name, and the `deny`
and `ok` notification hooks hear about each result.

A hook method may return a value, a Deferred, or be `async def`. The engine
stays synchronous until a plugin answers asynchronously, so a session whose
plugins are all plain pays for no Deferred at all. `run()` therefore returns
either a HookResult or a Deferred that fires with one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from twisted.internet import defer
from twisted.python.failure import Failure

from .constants import DECLINED, DENY_CODES, LOGCRIT, LOGERROR, RETURN_CODES
from .log import current_hook, current_session

if TYPE_CHECKING:
    from .plugin import Plugin

# Every hook qpsmtpd knows; registering anything else is an error.
HOOK_NAMES = (
    "logging config user_config post-fork pre-connection connect ehlo_parse ehlo "
    "helo_parse helo auth_parse auth auth-plain auth-login auth-cram-md5 rcpt_parse "
    "rcpt_pre rcpt mail_parse mail mail_pre data data_headers_end data_post_headers "
    "data_post queue_pre queue queue_post vrfy noop quit reset_transaction disconnect "
    "post-connection unrecognized_command deny ok received_line help"
).split()

# Answers that are certainly not awaitable: checked first, it saves an ABC lookup per call.
_PLAIN_ANSWERS = frozenset((int, tuple, list, type(None)))


def method_name(hook: str) -> str:
    """`pre-connection` -> `hook_pre_connection`, as qpsmtpd maps \\W to _."""
    return "hook_" + hook.replace("-", "_")


HOOK_BY_METHOD = {method_name(hook): hook for hook in HOOK_NAMES}


class HookResult(NamedTuple):
    code: int
    messages: list  # reply lines; a *_parse hook may put a callable here

    @property
    def message(self) -> str:
        return self.messages[0] if self.messages else ""


NO_RESULT = HookResult(DECLINED, [])


class HookTimeout(Exception):
    """A plugin did not answer within `plugin_timeout` seconds."""

    def __init__(self, plugin: str, hook: str, seconds: float) -> None:
        super().__init__(f"plugin {plugin} did not answer hook {hook} within {seconds:g}s")
        self.plugin = plugin


class Entry(NamedTuple):
    plugin: Plugin
    method: Callable[..., Any]
    name: str  # the plugin's escaped name: the key for notes and log prefixes


class HookRegistry:
    """hook name -> the plugins' methods, in the order they must run."""

    def __init__(self) -> None:
        self._entries: dict[str, list[Entry]] = {}

    def register(self, hook: str, plugin: Plugin, method: Callable[..., Any], unshift: bool = False) -> None:
        if hook not in HOOK_NAMES:
            raise ValueError(f"{plugin.name}: Invalid hook: {hook}")
        entries = self._entries.setdefault(hook, [])
        entry = Entry(plugin, method, plugin.name)
        if unshift:
            entries.insert(0, entry)
        else:
            entries.append(entry)

    def entries(self, hook: str) -> list[Entry]:
        return self._entries.get(hook, [])

    def __contains__(self, hook: str) -> bool:
        return hook in self._entries

    def hook_names(self) -> list[str]:
        return list(self._entries)


class HookRunner:
    """Runs hooks for sessions; one per daemon, shared by every session."""

    def __init__(self, registry: HookRegistry, log: Callable[..., None], plugin_timeout: float = 300.0) -> None:
        self.registry = registry
        self.log = log
        self.plugin_timeout = plugin_timeout
        self.clock: Any = None  # the reactor, unless a test sets a task.Clock

    def run(self, session: Any, hook: str, *args: Any) -> HookResult | defer.Deferred[HookResult]:
        """Run `hook`; returns a HookResult, or a Deferred firing with one."""
        entries = self.registry.entries(hook)
        if not entries:
            return NO_RESULT
        return self._run_from(session, hook, args, entries, 0, NO_RESULT)

    def run_sync(self, session: Any, hook: str, *args: Any) -> HookResult:
        """Run a hook whose answer is needed now (config, logging, deny, ok, *_parse, post-fork)."""
        entries = self.registry.entries(hook)
        if not entries:
            return NO_RESULT
        result = self._run_from(session, hook, args, entries, 0, NO_RESULT, sync_only=True)
        assert isinstance(result, HookResult)
        return result

    def _run_from(self, session: Any, hook: str, args: tuple, entries: list[Entry], start: int,
                  declined: HookResult, sync_only: bool = False) -> HookResult | defer.Deferred[HookResult]:
        """Run entries[start:]; `declined` is the last DECLINED answer so far.

        qpsmtpd answers with the last plugin's message even when all declined
        (e.g. a quit plugin's farewell, authdeny's reason), so it is kept.
        """
        for index in range(start, len(entries)):
            entry = entries[index]
            current_session.set(session)
            # The hook name is set only while the plugin runs (an async def plugin
            # keeps it: its coroutine starts in a copy of this context).
            hook_token = current_hook.set(hook)
            try:
                raw = entry.method(session.transaction if session is not None else None, *args)
                waiting = raw.__class__ not in _PLAIN_ANSWERS and (
                    isinstance(raw, defer.Deferred) or inspect.isawaitable(raw))
                if waiting and not sync_only and not isinstance(raw, defer.Deferred):
                    raw = defer.ensureDeferred(raw)
            except Exception as exc:  # a broken plugin must not break the session
                self._log_crash(entry, exc)
                continue
            finally:
                current_hook.reset(hook_token)
            if waiting:
                if sync_only:
                    self.log(LOGERROR, f"Plugin {entry.name}, hook {hook} must answer at once; ignored")
                    continue
                return self._wait(raw, session, hook, args, entries, index, declined)
            result = self._accept(session, hook, entry, raw, quiet=sync_only)
            if result is not None:
                if result.code != DECLINED:
                    return result
                declined = result
        return declined

    def _wait(self, d: defer.Deferred, session: Any, hook: str, args: tuple, entries: list[Entry],
              index: int, declined: HookResult) -> defer.Deferred:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        entry = entries[index]
        seconds = self.plugin_timeout

        def timed_out(value: Any, _timeout: float) -> Any:
            raise HookTimeout(entry.name, hook, seconds)

        d.addTimeout(seconds, self.clock, onTimeoutCancel=timed_out)

        def answered(raw: Any) -> HookResult | defer.Deferred[HookResult]:
            current_session.set(session)
            result = self._accept(session, hook, entry, raw)
            if result is not None and result.code != DECLINED:
                return result
            return self._run_from(session, hook, args, entries, index + 1, result or declined)

        def failed(failure: Failure) -> HookResult | defer.Deferred[HookResult]:
            if failure.check(HookTimeout):
                self.log(LOGERROR, f"Plugin {entry.name}, hook {hook}: {failure.value}")
                return failure
            current_session.set(session)
            self._log_crash(entry, failure.value)
            return self._run_from(session, hook, args, entries, index + 1, declined)

        return d.addCallbacks(answered, failed)

    def _accept(self, session: Any, hook: str, entry: Entry, raw: Any, quiet: bool = False) -> HookResult | None:
        """Check and record one plugin's answer; None when it must be skipped.

        `quiet` hooks (logging, config, deny, ok: qpsmtpd's run_hooks_no_respond)
        leave no note and notify no deny/ok hook.
        """
        result = normalize(raw)
        if result is None:
            shown = "undef!" if raw is None or raw == () else repr(raw)
            self.log(LOGERROR, f"Plugin {entry.name}, hook {hook} returned {shown}")
            return None
        if session is not None and not quiet:
            session.record_hook_result(entry.name, hook, result.code)
            if result.code in DENY_CODES:
                if hook != "deny" and "deny" in self.registry:
                    self.run_sync(session, "deny", entry.name, result.code, result.message)
            elif hook != "ok" and "ok" in self.registry:
                self.run_sync(session, "ok", entry.name, result.code, result.message)
        return result

    def _log_crash(self, entry: Entry, exc: BaseException) -> None:
        self.log(LOGCRIT, f"FATAL PLUGIN ERROR [{entry.name}]: {type(exc).__name__}: {exc}")


def is_deferred(value: Any) -> bool:
    """isinstance(value, Deferred), without the ABC check on the common paths."""
    cls = value.__class__
    if cls is defer.Deferred:
        return True
    if cls is HookResult or value is None:
        return False
    return isinstance(value, defer.Deferred)



def normalize(raw: Any) -> HookResult | None:
    """A plugin's answer -> HookResult; None for a missing or unknown code.

    Accepted: CODE, (CODE,), (CODE, "msg"), (CODE, "line1\\nline2", ...), and
    (CODE, callable) from *_parse hooks.
    """
    if isinstance(raw, HookResult):
        return raw
    if isinstance(raw, int):
        code, rest = raw, ()
    elif isinstance(raw, (tuple, list)) and raw and isinstance(raw[0], int):
        code, rest = raw[0], raw[1:]
    else:
        return None
    if code not in RETURN_CODES:
        return None
    messages: list = []
    for item in rest:
        if item is None:
            continue
        if callable(item):
            messages.append(item)
        else:
            messages.extend(str(item).split("\n"))
    return HookResult(code, messages)
