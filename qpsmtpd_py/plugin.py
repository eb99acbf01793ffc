"""Plugins: the base class every plugin extends, and the loader.

The contract for plugin authors (see also man/qpsmtpd-py-plugins.7):

* A plugin is one Python file under a plugin dir, named as in qpsmtpd:
  `config/plugins` line `queue/smtp-forward 10.0.0.2 25` loads
  `plugins/queue/smtp-forward.py`. The file defines one subclass of `Plugin`,
  and opens with a docstring that is its manual (arguments, defaults, example).
* Lifecycle, once per config line: `__init__` -> `init(qp, *args)` -> every
  `hook_<name>` method is registered -> `register(qp, *args)`. Raise
  `PluginError("what is wrong and what to do")` from either for a bad argument:
  start-up stops with that message, the config file and the line.
* A hook method gets `(transaction, *hook_args)` and returns a return code, or
  `(code, "message")`; it may return a Deferred or be `async def`.
  `self.connection`, `self.transaction` and `self.session` are the current
  session's, valid inside hooks.
* Per-connection data goes in `self.connection.notes`, per-message data in
  `transaction.notes`; `self.qp.config("name")` reads config; `self.log(level, msg)`.
* Plugins are loaded in the master before it forks, and a reactor must not
  cross fork(): there `twisted.internet.reactor` is a placeholder that works
  only once a child installed the real one (eventloop.py). Import it where you
  like, use it only in hooks (or post-fork), never in `init`/`register`.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError
from .constants import (
    DECLINED,
    DENY,
    DENY_DISCONNECT,
    DENYSOFT,
    DENYSOFT_DISCONNECT,
    LOGDEBUG,
    LOGINFO,
    LOGWARN,
)
from .hooks import HOOK_BY_METHOD
from .log import current_hook, current_session

if TYPE_CHECKING:
    from .qp import Qpsmtpd

REJECT_TYPES = {
    "perm": DENY,
    "hard": DENY,
    "temp": DENYSOFT,
    "soft": DENYSOFT,
    "disconnect": DENY_DISCONNECT,
    "temp_disconnect": DENYSOFT_DISCONNECT,
}
_LOGLEVEL_ARG = re.compile(r"^(?:[0-7]|[+-]\d)$")


STANDARD_ARGUMENTS = ("loglevel", "reject", "reject_type")


def standard_args(args: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The standard `key value` pairs among positional arguments (`loop 50 loglevel 6`)."""
    return {key: value for key, value in zip(args, args[1:], strict=False) if key in STANDARD_ARGUMENTS}


class PluginError(Exception):
    """A plugin cannot start: bad argument, missing file, ... (message says what to do)."""


_HOST = re.compile(r"^[-.\w:]+$")


def host_argument(name: str, value: str) -> str:
    """A host name or an IP address (nothing a connect call would misread), or PluginError naming `name`."""
    if not _HOST.match(value):
        raise PluginError(f"{name} must be a host name or an address, not {value!r}")
    return value


def port_argument(name: str, value: str) -> int:
    """A TCP port number 1-65535, or PluginError naming `name`."""
    if not (value.isdigit() and 0 < int(value) < 65536):
        raise PluginError(f"{name} must be a number 1-65535, not {value!r}")
    return int(value)


class Plugin:
    """Base class of every plugin."""

    # What `reject` may be. A plugin whose `reject` is a score or a hook name
    # (spamassassin, naughty) sets its own pattern.
    reject_values = re.compile(r"^(?:0|1|naughty)$")
    reject_help = "0, 1 or naughty"

    def __init__(self, qp: Qpsmtpd, name: str, args: list[str]) -> None:
        self.qp = qp
        self.name = name  # qpsmtpd's escaped plugin name: keys notes and log lines
        self.arguments = list(args)
        # qpsmtpd's convention `$self->{_args} = {@args}`: key/value arguments.
        self.args: dict[str, str] = (dict(zip(args[::2], args[1::2], strict=True)) if len(args) % 2 == 0
                                     else standard_args(args))
        loglevel = self.args.get("loglevel")
        if loglevel is not None and not _LOGLEVEL_ARG.match(loglevel):
            raise PluginError(f"loglevel must be 0-7, +N or -N, not {loglevel!r}")
        reject = self.args.get("reject")
        if reject is not None and not self.reject_values.match(reject):
            raise PluginError(f"reject must be {self.reject_help}, not {reject!r}")
        reject_type = self.args.get("reject_type")
        if reject_type is not None and reject_type.lower() not in REJECT_TYPES:
            raise PluginError(f"reject_type must be one of {', '.join(REJECT_TYPES)}, not {reject_type!r}")

    # -- lifecycle hooks for subclasses -------------------------------------------
    def init(self, qp: Qpsmtpd, *args: str) -> None:
        """Called before hooks are registered."""

    def register(self, qp: Qpsmtpd, *args: str) -> None:
        """Called after the hook_* methods are registered: parse and check arguments."""

    def register_hook(self, hook: str, method: str | Callable[..., Any], unshift: bool = False) -> None:
        """Register `method` (a name or a callable) for `hook`; unshift runs it first."""
        function = getattr(self, method) if isinstance(method, str) else method
        self.qp.hooks.register(hook, self, function, unshift)

    def register_auth_hooks(self, *mechanisms: str) -> None:
        """An AUTH plugin's `check` for each mechanism: `plain`, `login` (the default) or `cram-md5`."""
        for mechanism in mechanisms or ("plain", "login"):
            self.register_hook(f"auth-{mechanism}", self.check)

    # -- the current session ---------------------------------------------------------
    @property
    def session(self) -> Any:
        return current_session.get()

    @property
    def connection(self) -> Any:
        return current_session.get().connection

    @property
    def transaction(self) -> Any:
        return current_session.get().transaction

    reactor: Any = None  # tests put their own reactor (or a Clock) here; None is the child's real one

    def get_reactor(self) -> Any:
        """The reactor this plugin's hooks run on (imported late: see the module docstring)."""
        if self.reactor is None:
            from twisted.internet import reactor

            return reactor
        return self.reactor

    @property
    def running_hook(self) -> str | None:
        return current_hook.get()

    # -- logging -----------------------------------------------------------------------
    def log(self, level: int, *message: Any) -> None:
        if self.qp.logger.in_hook:
            return  # a logging plugin's own lines would recurse
        self.qp.logger.log(self._adjust_level(level), " ".join(str(m) for m in message),
                           hook=current_hook.get(), plugin=self.name)

    def log_enabled(self, level: int) -> bool:
        """Would `log(level, ...)` be written? For messages that cost something to build."""
        return self.qp.logger.enabled(self._adjust_level(level))

    def _adjust_level(self, level: int) -> int:
        setting = self.args.get("loglevel")
        if setting is None:
            return level
        if setting.isdigit():
            return int(setting)  # qpsmtpd: an absolute level replaces the message's level
        return max(0, min(7, level + int(setting)))

    def warn_unknown_arguments(self, known: tuple[str, ...]) -> None:
        """Log (not refuse, as qpsmtpd ignores them) key/value arguments the plugin does not know."""
        for key in self.args:
            if key not in known:
                self.log(LOGWARN, f"ignoring unknown argument {key!r}")

    def seconds_argument(self, name: str, default: float, non_positive: str = "default") -> float:
        """A time-out argument in seconds; `non_positive` says what 0 or less means:
        "default" (qpsmtpd: `timeout 0` is the default), "error", or "allow"."""
        text = self.args.get(name)
        try:
            seconds = float(text or default)
        except ValueError:
            raise PluginError(f"{name} must be a number of seconds, not {text!r}") from None
        if seconds <= 0 and non_positive == "default":
            return default
        if seconds <= 0 and non_positive == "error":
            raise PluginError(f"{name} must be more than 0 seconds, not {text!r}")
        return seconds

    # -- qpsmtpd's helpers for policy plugins ------------------------------------------
    def get_reject_type(self, default: int = DENY, setting: str | None = None) -> int:
        setting = setting or self.args.get("reject_type")
        if not setting:
            return default
        return REJECT_TYPES.get(setting.lower(), default)

    def get_reject(self, smtp_message: str = "unspecified error", log_message: str = "") -> int | tuple[int, str]:
        """Apply the `reject` argument: 0 tolerates, `naughty` defers, else rejects."""
        suffix = f", {log_message}" if log_message else ""
        reject = self.args.get("reject")
        if reject is not None and reject in ("0", ""):
            self.log(LOGINFO, "fail, tolerated" + suffix)
            return DECLINED
        if reject == "naughty":
            self.log(LOGINFO, "fail, NAUGHTY" + suffix)
            return self.store_deferred_reject(f"({self.name}) {smtp_message}")
        self.log(LOGINFO, "fail" + suffix)
        return self.get_reject_type(), smtp_message

    def store_deferred_reject(self, smtp_message: str) -> int:
        notes = self.connection.notes
        previous = notes.get("naughty")
        notes["naughty"] = f"{previous}\r\n{smtp_message}" if previous else smtp_message
        if not notes.get("naughty_reject_type"):
            notes["naughty_reject_type"] = self.args.get("reject_type")
        return DECLINED

    def store_auth_results(self, result: str) -> None:
        """Add e.g. `spf=pass smtp.mailfrom=x` to this message's Authentication-Results.

        Results known before MAIL (iprev, auth) belong to the connection; those
        found during a transaction belong to that message only (qpsmtpd mixes
        them up across messages: its issue #320).
        """
        session = current_session.get()
        session.add_auth_result(result)
        self.log(LOGDEBUG, f"auth-results: {result}")

    def is_immune(self) -> bool:
        connection = self.connection
        if connection.relay_client:
            self.log(LOGINFO, "skip, relay client")
            return True
        if connection.notes.get("whitelisthost"):
            self.log(LOGINFO, "skip, whitelisted host")
            return True
        if self.transaction.notes.get("whitelistsender"):
            self.log(LOGINFO, "skip, whitelisted sender")
            return True
        return False

    def is_naughty(self, value: Any = None) -> Any:
        notes = self.connection.notes
        if value is None:
            return notes.get("naughty")
        notes["naughty"] = value
        notes["rejected"] = value
        if value:
            self.log(LOGINFO, "skip, naughty")
            return True
        return False

    def adjust_karma(self, value: int) -> int:
        notes = self.connection.notes
        karma = notes.get("karma", 0) + value
        notes["karma"] = karma
        self.log(LOGINFO, f"karma {value} ({karma})")
        return value


# -- loading ------------------------------------------------------------------------------

_NAME_CHAR = re.compile(r"[^A-Za-z0-9_/]")
_DIR_PART = re.compile(r"(/+)(\d?)")


def escape_plugin_name(name: str) -> str:
    """qpsmtpd's plugin_name(): `queue/qmail-queue` -> `queue::qmail_2dqueue`."""
    escaped = _NAME_CHAR.sub(lambda m: f"_{ord(m.group(0)):2x}", name)
    return _DIR_PART.sub(lambda m: "::" + (f"_{ord(m.group(2)):2x}" if m.group(2) else ""), escaped)


def find_plugin_file(name: str, plugin_dirs: list[Path]) -> Path:
    """The .py file for `name` (without any `:N` instance suffix)."""
    for directory in plugin_dirs:
        candidate = directory / f"{name}.py"
        if candidate.is_file():
            return candidate
    for directory in plugin_dirs:
        if (directory / name).is_file():
            raise PluginError(
                f"{directory / name} is a Perl qpsmtpd plugin; qpsmtpd-py runs Python plugins "
                f"({name}.py): port it, or remove the line")
    searched = ", ".join(str(d) for d in plugin_dirs)
    raise PluginError(f"plugin {name!r} not found in the plugin dirs ({searched}); "
                      "check the spelling or add its directory to config/plugin_dirs")


_MODULE_PREFIX = "qpsmtpd_plugin."


def forget_loaded_plugins() -> None:
    """Drop imported plugin modules, so a reload (HUP) reads edited plugin files."""
    for name in [n for n in sys.modules if n.startswith(_MODULE_PREFIX)]:
        del sys.modules[name]


def plugin_class(name: str, plugin_dirs: list[Path]) -> type[Plugin]:
    """Import plugin `name` once and return its Plugin subclass (qpsmtpd's isa_plugin)."""
    path = find_plugin_file(name, plugin_dirs)
    module_name = _MODULE_PREFIX + escape_plugin_name(name).replace("::", ".")
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "__file__", None) != str(path):
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            del sys.modules[module_name]
            raise
    classes = [obj for obj in vars(module).values()
               if isinstance(obj, type) and issubclass(obj, Plugin) and obj.__module__ == module_name]
    if len(classes) != 1:
        raise PluginError(f"{path} must define exactly one Plugin subclass, found {len(classes)}")
    return classes[0]


def instantiate(qp: Qpsmtpd, line: str, plugin_dirs: list[Path]) -> Plugin:
    """One `config/plugins` line -> a registered plugin instance (raises PluginError)."""
    if not all(" " <= ch <= "~" for ch in line):
        raise PluginError("unsafe characters in config line (only printable ASCII is allowed)")
    words = line.split()
    instance_name, args = words[0], words[1:]
    file_name = re.sub(r":\d+$", "", instance_name)
    cls = plugin_class(file_name, plugin_dirs)
    plugin = cls(qp, escape_plugin_name(instance_name), args)
    plugin.init(qp, *args)
    for attribute in dir(cls):
        if not attribute.startswith("hook_"):
            continue
        hook = HOOK_BY_METHOD.get(attribute)
        if hook is None:
            raise PluginError(f"method {attribute} names no hook qpsmtpd knows (see man qpsmtpd-py-plugins)")
        plugin.register_hook(hook, attribute)
    plugin.register(qp, *args)
    return plugin


def load_plugins(qp: Qpsmtpd, lines: list[tuple[str, Path | None, int | None]],
                 plugin_dirs: list[Path]) -> tuple[list[Plugin], list[ConfigError]]:
    """Load every (line, file, line number); returns the plugins and every error found."""
    plugins: list[Plugin] = []
    errors: list[ConfigError] = []
    for text, path, number in lines:
        try:
            plugins.append(instantiate(qp, text, plugin_dirs))
        except Exception as exc:  # every failure becomes a startup error naming file and line
            name = text.split()[0] if text.split() else text
            message = str(exc) if isinstance(exc, (PluginError, ValueError)) else f"{type(exc).__name__}: {exc}"
            errors.append(ConfigError(str(path or "plugins"), number, f"plugin {name}: {message}",
                                      None))
        else:
            qp.logger.log(LOGDEBUG, f"loaded plugin {text}")
    return plugins, errors
