"""The daemon-wide object plugins know as `qp`: config, hooks, logging, spool.

One exists per daemon (built in the master, inherited by every child); per
session state lives in smtp.SMTPSession, per message state in Transaction.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .config import ConfigError, ConfigReader
from .constants import DECLINED, LOGDEBUG, LOGWARN, OK
from .hooks import HookRegistry, HookRunner
from .log import Logger, current_session
from .paths import bundled_plugin_dir
from .plugin import Plugin, load_plugins

if TYPE_CHECKING:
    from .tls import ServerTLS

SOFTWARE = "qpsmtpd-py"
NUMERIC_SETTINGS = {
    "databytes": (r"\d+", "a size in bytes (0 = no limit)"),
    "timeout": (r"\d+", "a number of seconds"),
    "timeoutsmtpd": (r"\d+", "a number of seconds"),
    "size_threshold": (r"\d+", "a size in bytes"),
    "plugin_timeout": (r"\d+", "a number of seconds"),
    "max_data_line_length": (r"\d+", "a length in bytes"),
    "loglevel": (r"[0-7]", "a log level from 0 to 7"),
    "forbid_bare_newline": (r"[01]", "0 or 1"),
    "tls_before_auth": (r"[01]", "0 or 1"),
    "auth_max_failures": (r"\d+", "a number of failed AUTH attempts (0 = no limit)"),
    "spool_perms": (r"[0-7]{3,4}", "an octal mode such as 0700"),
}
DEFAULT_PLUGIN_TIMEOUT = 300.0
# Bodies up to this size stay in memory (qpsmtpd's default 0 spools every
# message to disk; the setting only trades memory for file writes).
DEFAULT_SIZE_THRESHOLD = 128 * 1024


class Qpsmtpd:
    version = __version__
    software = SOFTWARE

    def __init__(self, config: ConfigReader, debug: bool = False) -> None:
        self.config_reader = config
        self.logger = Logger(LOGDEBUG if debug else self._config_int("loglevel", LOGWARN))
        self.hooks = HookRegistry()
        self.runner = HookRunner(self.hooks, self.logger.log,
                                 float(self._config_int("plugin_timeout", int(DEFAULT_PLUGIN_TIMEOUT))))
        self.plugins: list[Plugin] = []
        self.tls: ServerTLS | None = None  # set by the tls plugin when it has a certificate
        self.spool_dir = Path(".")
        self.size_threshold = self._config_int("size_threshold", DEFAULT_SIZE_THRESHOLD)

    # -- config ------------------------------------------------------------------------
    def config(self, name: str) -> str | None:
        """First value of config `name` (the `config` hook first, then the file, then the default)."""
        values = self.config_list(name)
        return values[0] if values else None

    def config_list(self, name: str) -> list[str]:
        if "config" in self.hooks:
            result = self.runner.run_sync(current_session.get(), "config", name)
            if result.code == OK:
                return list(result.messages)
        return list(self.config_reader.get(name))

    def user_config(self, address: object, name: str) -> list[str]:
        """Per-recipient config (qpsmtpd's `$rcpt->config(name)`): `user_config` hooks, then `config_list`."""
        if "user_config" in self.hooks:
            result = self.runner.run_sync(current_session.get(), "user_config", address, name)
            if result.code == OK:
                return list(result.messages)
        return self.config_list(name)

    def _config_int(self, name: str, default: int) -> int:
        value = self.config_reader.first(name)
        try:
            return int(value) if value is not None else default
        except ValueError:
            return default

    def log(self, level: int, message: str) -> None:
        self.logger.log(level, message)

    # -- start-up ------------------------------------------------------------------------
    def plugin_dirs(self) -> list[Path]:
        """config/plugin_dirs, then the bundled plugins (so ours are found beside an admin's)."""
        dirs = [Path(d) for d in self.config_reader.get("plugin_dirs")]
        bundled = bundled_plugin_dir()
        if bundled not in dirs:
            dirs.append(bundled)
        return dirs

    def load(self) -> list[ConfigError]:
        """Prepare the spool and load every plugin; returns all problems found."""
        errors = self._check_numbers()
        try:
            self.spool_dir = self._prepare_spool_dir()
        except ConfigError as error:
            errors.append(error)
        try:
            # qpsmtpd loads every line of config/logging (logging plugins) before the others.
            logging_lines = self._plugin_lines("logging")
            lines = self._plugin_lines("plugins")
        except ConfigError as error:
            return errors + [error]
        loggers, logging_errors = load_plugins(self, logging_lines, self.plugin_dirs())
        plugins, plugin_errors = load_plugins(self, lines, self.plugin_dirs())
        self.plugins = loggers + plugins
        if "logging" in self.hooks:
            self.logger.hook_runner = self._run_logging_hook
        return errors + logging_errors + plugin_errors

    def _plugin_lines(self, name: str) -> list[tuple[str, Path | None, int | None]]:
        path = self.config_reader.path_for(name)
        numbered = line_numbers(path)
        return [(line, path, numbered.get(line)) for line in self.config_reader.get(name)]

    def _check_numbers(self) -> list[ConfigError]:
        """Core settings must be plain numbers: `10M` would silently mean no limit."""
        errors = []
        for name, (pattern, meaning) in NUMERIC_SETTINGS.items():
            value = self.config_reader.first(name)
            if value is None or re.fullmatch(pattern, value):
                continue
            path = self.config_reader.path_for(name)
            errors.append(ConfigError(str(path or name), line_numbers(path).get(value),
                                      f"{name} must be {meaning}, not {value!r}", "write a plain number"))
        return errors

    def _prepare_spool_dir(self) -> Path:
        configured = self.config_reader.first("spool_dir")
        if configured:
            spool = Path(configured).expanduser()
        else:
            spool = Path(os.environ.get("HOME") or os.environ.get("LOGDIR") or os.path.expanduser("~")) / "tmp"
        spool = spool.resolve()
        setting = self.config_reader.first("spool_perms") or "0700"
        perms = int(setting, 8) if re.fullmatch(r"[0-7]{3,4}", setting) else 0o700  # else reported by _check_numbers
        where = self.config_reader.path_for("spool_dir") or "spool_dir"
        try:
            spool.mkdir(mode=perms, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(str(where), None, f"cannot create spool_dir {spool}: {exc.strerror}",
                              "create it, writable by the daemon's user") from exc
        if not os.access(spool, os.W_OK | os.X_OK):
            raise ConfigError(str(where), None, f"spool_dir {spool} is not writable",
                              "chown it to the daemon's user")
        actual = spool.stat().st_mode & 0o777
        if actual != perms:
            self.logger.log(LOGWARN, f"Permissions on spool_dir {spool} are not {perms:o}")
        remove_orphan_spool_files(spool)
        return spool

    def _run_logging_hook(self, level: int, hook: str | None, plugin: str | None, message: str) -> bool:
        result = self.runner.run_sync(current_session.get(), "logging", level, hook, plugin, message)
        return result.code in (OK, DECLINED)


def line_numbers(path: Path | None) -> dict[str, int]:
    """value -> the line it is on, to point the admin at the right line."""
    numbered: dict[str, int] = {}
    if path is not None and path.is_file():
        for number, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
            numbered.setdefault(text.strip(), number)
    return numbered


def remove_orphan_spool_files(spool: Path) -> None:
    """Spool files (`<epoch>:<pid>:<n>`) of processes that are gone: a killed child's leftovers."""
    for path in spool.iterdir():
        parts = path.name.split(":")
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except PermissionError:
            pass  # a live process of another user
