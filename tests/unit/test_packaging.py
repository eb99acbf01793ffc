"""An installed copy must find every plugin: setup.cfg lists each plugin directory."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_plugin_directory_is_installed_as_data():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    installed = {key.strip(): value.strip() for key, value in setup["options.data_files"].items()}
    plugin_dirs = {path.parent for path in (ROOT / "plugins").rglob("*.py")}
    for directory in plugin_dirs:
        relative = directory.relative_to(ROOT).as_posix()
        assert installed.get(f"share/qpsmtpd-py/{relative}") == f"{relative}/*.py", relative


def test_embedded_config_is_installed_as_data():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["options.data_files"]["share/qpsmtpd-py/config"].strip() == "config/*"
    assert not [p for p in (ROOT / "config").iterdir() if p.is_dir()], "config/* does not install subdirectories"
