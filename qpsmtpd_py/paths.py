"""Where the bundled plugins and the embedded default config live.

From a git checkout they sit beside the package; an installed copy has them
under `<prefix>/share/qpsmtpd-py/` (setup.cfg's data_files).
"""

from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent
_INSTALLED = Path(sys.prefix) / "share" / "qpsmtpd-py"


def _first_existing(name: str) -> Path:
    for base in (_CHECKOUT, _INSTALLED):
        try:
            if (base / name).is_dir():
                return base / name
        except PermissionError:
            continue  # not readable by the daemon's user (--user): as if absent
    return _INSTALLED / name


def bundled_plugin_dir() -> Path:
    return _first_existing("plugins")


def bundled_config_dir() -> Path:
    return _first_existing("config")
