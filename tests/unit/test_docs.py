"""The manual pages and the README keep up with the code: plugins, options, roff syntax."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from qpsmtpd_py.cli import main

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"
PLUGIN_DIR = ROOT / "plugins"
PAGES = ["qpsmtpd-py-prefork.8", "qpsmtpd-py-config.5", "qpsmtpd-py-plugins.7"]
PLUGIN_FILES = sorted(PLUGIN_DIR.rglob("*.py"))


def roff_text(name: str) -> str:
    """A page's source with the escapes that hide plain words undone (`\\-` -> `-`, fonts)."""
    text = (MAN / name).read_text()
    text = re.sub(r"\\f(?:\[[^\]]*\]|\(..|.)", "", text)  # \fB, \fR, \f(CW, \f[B]
    return text.replace("\\-", "-").replace("\\&", "").replace("\\(hy", "-")


def plugin_name(path: Path) -> str:
    return path.relative_to(PLUGIN_DIR).with_suffix("").as_posix()


def mentions(text: str, word: str) -> bool:
    """`word` appears on its own, not as part of a longer name or option."""
    return re.search(rf"(?<![\w/-]){re.escape(word)}(?![\w/-])", text) is not None


def cli_options() -> list[str]:
    params = main.get_params(click.Context(main))
    return sorted({opt for param in params for opt in (*param.opts, *param.secondary_opts)
                   if opt.startswith("--")})


def test_there_are_plugins_and_options():
    # Guards the parametrized tests below against passing on an empty list.
    assert PLUGIN_FILES
    assert "--listen-address" in cli_options() and "--help" in cli_options()


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=plugin_name)
def test_plugin_is_in_plugins_page(path: Path):
    name = plugin_name(path)
    assert mentions(roff_text("qpsmtpd-py-plugins.7"), name), f"{name} missing from qpsmtpd-py-plugins.7"


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=plugin_name)
def test_plugin_opens_with_a_manual_with_an_example(path: Path):
    name = plugin_name(path)
    module = ast.parse(path.read_text())
    first = module.body[0] if module.body else None
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
        and isinstance(first.value.value, str), f"{path.name} does not start with a docstring"
    doc = ast.get_docstring(module) or ""
    # An example config/plugins line: an indented line that starts with the plugin's name.
    example_line = any(line[:1].isspace() and line.split()[0] == name
                       for line in doc.splitlines() if line.strip())
    assert "Example" in doc or example_line, f"the docstring of {name} shows no example"


@pytest.mark.parametrize("option", cli_options())
def test_option_is_documented(option: str):
    assert mentions(roff_text("qpsmtpd-py-prefork.8"), option), f"{option} missing from qpsmtpd-py-prefork.8"
    assert mentions((ROOT / "README.md").read_text(), option), f"{option} missing from README.md"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("page", PAGES)
def test_page_formats_without_warnings(page: str):
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN / page)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
