"""The qpsmtpd config-directory reader: format, search path, includes, cache."""

import os
import socket
from pathlib import Path

import pytest
from reactor_helpers import FakeClock

from qpsmtpd_py.cdb import write_cdb
from qpsmtpd_py.config import DEFAULTS, ConfigError, ConfigReader, search_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def bump_mtime(path: Path) -> None:
    # Filesystems with coarse timestamps could hide an edit made in the same tick.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


@pytest.fixture
def config_dir(tmp_path):
    return tmp_path / "config"


@pytest.fixture
def reader(tmp_path, config_dir):
    config_dir.mkdir()
    return ConfigReader([config_dir, tmp_path / "qmail" / "control"])


# --- file format --------------------------------------------------------------


def test_comments_blank_lines_and_surrounding_whitespace_are_dropped(
    reader, config_dir
):
    write(
        config_dir / "test_config_file",
        "# a comment line to drop\n"
        " # an indented comment line to drop\n"
        " \n"
        "  1st line with content  \n",
    )

    assert reader.get("test_config_file") == ("1st line with content",)
    assert reader.first("test_config_file") == "1st line with content"


def test_one_value_per_line_in_order_without_inline_comments(reader, config_dir):
    write(
        config_dir / "relayclients",
        "127.0.0.1\r\n\t192.0. \n\n2001:DB8::1 # not a comment\n",
    )

    assert reader.get("relayclients") == (
        "127.0.0.1",
        "192.0.",
        "2001:DB8::1 # not a comment",
    )


def test_lines_split_only_on_newlines_and_trim_ascii_whitespace(reader, config_dir):
    write(config_dir / "smtpgreeting", "\u00a0hello\x1cworld\u2028\n")

    assert reader.get("smtpgreeting") == ("\u00a0hello\x1cworld\u2028",)


def test_bytes_that_are_not_utf8_pass_through(reader, config_dir):
    (config_dir / "badhelo").write_bytes(b"# caf\xe9\nexample.com\nna\xefve\n")

    (comment_free, raw) = reader.get("badhelo")
    assert comment_free == "example.com"
    assert raw.encode("utf-8", "surrogateescape") == b"na\xefve"


def test_first_returns_default_argument_when_there_is_no_value(reader, config_dir):
    write(config_dir / "empty", "# only a comment\n")

    assert reader.get("empty") == ()
    assert reader.first("empty") is None
    assert reader.first("empty", "0") == "0"
    assert reader.first("absent", "x") == "x"


def test_values_are_a_tuple_callers_cannot_change(reader, config_dir):
    write(config_dir / "rcpthosts", "example.com\n")

    values = reader.get("rcpthosts")
    assert isinstance(values, tuple)
    assert reader.get("rcpthosts") == ("example.com",)


def test_a_setting_that_is_a_directory_has_no_values(reader, config_dir):
    (config_dir / "dkim").mkdir()

    assert reader.get("dkim") == ()


def test_unreadable_file_is_an_error_naming_it(reader, config_dir, monkeypatch):
    path = write(config_dir / "badmailfrom", "x\n")
    real_read_bytes = Path.read_bytes

    def read_bytes(self):
        if self == path:  # what a mode-000 file gives a non-root daemon
            raise PermissionError(13, "Permission denied")
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(ConfigError) as info:
        reader.get("badmailfrom")
    assert info.value.path == path
    assert str(info.value) == (
        f"{path}: cannot read: Permission denied"
        " (make it readable by the user the daemon runs as)"
    )


# --- defaults -----------------------------------------------------------------


def test_defaults_are_only_me_and_timeout():
    assert dict(DEFAULTS) == {"me": socket.gethostname(), "timeout": "1200"}


def test_absent_me_and_timeout_give_the_builtin_defaults(reader):
    assert reader.get("me") == (socket.gethostname(),)
    assert reader.first("timeout") == "1200"
    assert reader.get("databytes") == ()
    assert reader.first("databytes") is None


def test_a_file_without_values_falls_back_to_the_default_like_qpsmtpd(
    reader, config_dir
):
    write(config_dir / "timeout", "# set me\n\n")

    assert reader.get("timeout") == ("1200",)


def test_a_file_overrides_the_default(reader, config_dir):
    write(config_dir / "me", "mx.example.org\n")

    assert reader.get("me") == ("mx.example.org",)


# --- search path --------------------------------------------------------------


def test_search_path_order_env_then_config_dir_then_qmail_control():
    env = {"QPSMTPD_CONFIG": "/etc/qp", "QMAIL": "/opt/qmail"}

    assert search_path("cfg", env, Path("/usr/share/qp/config")) == [
        Path("/etc/qp"),
        Path("cfg"),
        Path("/opt/qmail/control"),
    ]


def test_search_path_uses_install_dir_without_config_dir_and_default_qmail():
    assert search_path(None, {}, Path("/usr/share/qp/config")) == [
        Path("/usr/share/qp/config"),
        Path("/var/qmail/control"),
    ]
    assert search_path(None, {"QMAIL": "", "QPSMTPD_CONFIG": ""}) == [
        Path("/var/qmail/control")
    ]


def test_each_file_comes_from_the_best_directory_that_has_it(tmp_path):
    env_dir, cfg, qmail = tmp_path / "env", tmp_path / "cfg", tmp_path / "qmail"
    write(env_dir / "me", "from-env\n")
    write(cfg / "me", "from-config-dir\n")
    write(cfg / "rcpthosts", "cfg.example\n")
    write(qmail / "control" / "me", "from-qmail\n")
    write(qmail / "control" / "rcpthosts", "qmail.example\n")
    write(qmail / "control" / "locals", "localhost\n")
    dirs = search_path(str(cfg), {"QPSMTPD_CONFIG": str(env_dir), "QMAIL": str(qmail)})
    reader = ConfigReader(dirs)

    assert reader.first("me") == "from-env"
    assert reader.first("rcpthosts") == "cfg.example"
    assert reader.first("locals") == "localhost"
    assert reader.directory_for("me") == env_dir
    assert reader.directory_for("rcpthosts") == cfg
    assert reader.directory_for("absent") == qmail / "control"


def test_path_for_names_the_file_or_none(reader, config_dir):
    write(config_dir / "plugins", "rcpt_ok\n")

    assert reader.path_for("plugins") == config_dir / "plugins"
    assert reader.path_for("absent") is None


def test_directory_choice_is_kept_until_clear(tmp_path):
    first, last = tmp_path / "first", tmp_path / "last"
    write(last / "rcpthosts", "last.example\n")
    reader = ConfigReader([first, last], recheck_interval=0)
    assert reader.first("rcpthosts") == "last.example"

    write(first / "rcpthosts", "first.example\n")
    assert reader.first("rcpthosts") == "last.example"

    reader.clear()
    assert reader.first("rcpthosts") == "first.example"


def test_reader_needs_a_directory():
    with pytest.raises(ValueError):
        ConfigReader([])


# --- $include -----------------------------------------------------------------


def test_include_splices_a_file_in_place(reader, config_dir, tmp_path):
    other = write(tmp_path / "elsewhere" / "extra", "b\nc\n")
    write(config_dir / "badhelo", f"a\n  $include   {other}  \nd\n")

    assert reader.get("badhelo") == ("a", "b", "c", "d")


def test_relative_include_is_looked_up_like_a_setting(tmp_path):
    cfg, qmail = tmp_path / "cfg", tmp_path / "qmail"
    write(cfg / "rcpthosts", "one\n$include morehosts\n$include sub/hosts\n")
    write(qmail / "morehosts", "two\n")  # found only in the fallback directory
    write(cfg / "sub" / "hosts", "three\n")
    reader = ConfigReader([cfg, qmail])

    assert reader.get("rcpthosts") == ("one", "two", "three")


def test_include_of_a_directory_reads_regular_non_dot_files_sorted(reader, config_dir):
    parts = config_dir / "plugins.d"
    write(parts / "20-rcpt", "rcpt_ok\n")
    write(parts / "10-relay", "relay\n$include nested\n")
    write(parts / ".hidden", "never\n")
    (parts / "30-dir").mkdir()
    write(config_dir / "nested", "nested_plugin\n")
    write(config_dir / "plugins", "hosts_allow\n$include plugins.d\nqueue/maildir\n")

    assert reader.get("plugins") == (
        "hosts_allow",
        "relay",
        "nested_plugin",
        "rcpt_ok",
        "queue/maildir",
    )


def test_include_line_with_extra_words_is_an_ordinary_value(reader, config_dir):
    write(config_dir / "badmailfrom", "$include a b\n$include\n")

    assert reader.get("badmailfrom") == ("$include a b", "$include")


def test_same_file_included_twice_is_not_a_loop(reader, config_dir):
    write(config_dir / "common", "x\n")
    write(config_dir / "list", "$include common\n$include common\n")

    assert reader.get("list") == ("x", "x")


def test_circular_include_names_file_line_and_cycle(reader, config_dir):
    write(config_dir / "a", "one\n# comment\n$include b\n")
    write(config_dir / "b", "two\n\n\n$include a\n")

    with pytest.raises(ConfigError) as info:
        reader.get("a")
    error = info.value
    assert error.path == config_dir / "b"
    assert error.line == 4
    assert "circular $include" in error.message
    assert error.fix
    b, a = config_dir / "b", config_dir / "a"
    assert str(error) == (f"{b}:4: circular $include: {a} -> {b} -> {a} ({error.fix})")


def test_file_including_itself_through_a_directory_is_a_loop(reader, config_dir):
    write(config_dir / "parts" / "x", "$include parts\n")

    with pytest.raises(ConfigError, match=r"parts/x:1: circular \$include"):
        reader.get("parts/x")


def test_include_of_a_missing_path_is_an_error_with_file_and_line(reader, config_dir):
    write(config_dir / "dnsbl_zones", "zen.spamhaus.org\n$include /nonexistent/zones\n")

    with pytest.raises(ConfigError) as info:
        reader.get("dnsbl_zones")
    assert info.value.path == config_dir / "dnsbl_zones"
    assert info.value.line == 2
    assert "/nonexistent/zones" in str(info.value)
    assert str(info.value).startswith(f"{config_dir / 'dnsbl_zones'}:2: ")


def test_config_error_text_without_line_or_fix():
    assert str(ConfigError("/c/x", None, "broken")) == "/c/x: broken"
    assert str(ConfigError("/c/x", 3, "broken", "fix it")) == "/c/x:3: broken (fix it)"


# --- cache ----------------------------------------------------------------------


def test_edit_is_seen_only_after_the_recheck_interval(tmp_path):
    clock = FakeClock(1000.0)
    path = write(tmp_path / "databytes", "1000\n")
    reader = ConfigReader([tmp_path], recheck_interval=5, clock=clock)
    assert reader.first("databytes") == "1000"

    path.write_text("2000\n")
    bump_mtime(path)
    clock.now += 4
    assert reader.first("databytes") == "1000"

    clock.now += 1
    assert reader.first("databytes") == "2000"


def test_edit_of_an_included_file_is_seen(tmp_path):
    clock = FakeClock(1000.0)
    write(tmp_path / "badhelo", "$include more\n")
    more = write(tmp_path / "more", "a\n")
    reader = ConfigReader([tmp_path], recheck_interval=1, clock=clock)
    assert reader.get("badhelo") == ("a",)

    more.write_text("a\nb\n")
    bump_mtime(more)
    clock.now += 1
    assert reader.get("badhelo") == ("a", "b")


def test_file_added_to_an_included_directory_is_seen(tmp_path):
    clock = FakeClock(1000.0)
    write(tmp_path / "plugins", "$include plugins.d\n")
    write(tmp_path / "plugins.d" / "a", "relay\n")
    reader = ConfigReader([tmp_path], recheck_interval=1, clock=clock)
    assert reader.get("plugins") == ("relay",)

    write(tmp_path / "plugins.d" / "b", "rcpt_ok\n")
    bump_mtime(tmp_path / "plugins.d")
    clock.now += 1
    assert reader.get("plugins") == ("relay", "rcpt_ok")


def test_new_file_is_noticed_after_the_interval(tmp_path):
    clock = FakeClock(1000.0)
    reader = ConfigReader([tmp_path], recheck_interval=2, clock=clock)
    assert reader.first("timeout") == "1200"
    assert reader.get("rcpthosts") == ()

    write(tmp_path / "timeout", "60\n")
    write(tmp_path / "rcpthosts", "example.com\n")
    assert reader.first("timeout") == "1200"

    clock.now += 2
    assert reader.first("timeout") == "60"
    assert reader.get("rcpthosts") == ("example.com",)


def test_deleted_file_falls_back_to_the_default(tmp_path):
    clock = FakeClock(1000.0)
    path = write(tmp_path / "me", "mx.example\n")
    reader = ConfigReader([tmp_path], recheck_interval=1, clock=clock)
    assert reader.first("me") == "mx.example"

    path.unlink()
    clock.now += 1
    assert reader.first("me") == socket.gethostname()


def test_unchanged_files_are_not_reparsed(tmp_path):
    clock = FakeClock(1000.0)
    write(tmp_path / "rcpthosts", "example.com\n")
    reader = ConfigReader([tmp_path], recheck_interval=1, clock=clock)
    first = reader.get("rcpthosts")
    clock.now += 10

    assert reader.get("rcpthosts") is first


def test_clear_drops_cached_values(tmp_path):
    clock = FakeClock(1000.0)
    path = write(tmp_path / "loglevel", "4\n")
    reader = ConfigReader([tmp_path], recheck_interval=3600, clock=clock)
    assert reader.first("loglevel") == "4"

    path.write_text("7\n")
    bump_mtime(path)
    assert reader.first("loglevel") == "4"
    reader.clear()
    assert reader.first("loglevel") == "7"


def test_broken_include_is_reported_again_not_cached(reader, config_dir):
    write(config_dir / "x", "$include missing\n")

    for _ in range(2):
        with pytest.raises(ConfigError):
            reader.get("x")
    write(config_dir / "missing", "ok\n")
    reader.clear()
    assert reader.get("x") == ("ok",)


# --- cdb maps -------------------------------------------------------------------


def test_map_reads_the_compiled_cdb(reader, config_dir):
    write_cdb(
        config_dir / "morercpthosts.cdb", [(b"example.net", b""), (b"b.example", b"")]
    )

    hosts = reader.map("morercpthosts")
    assert b"example.net" in hosts
    assert hosts.get(b"b.example") == b""
    assert b"other.example" not in hosts
    assert reader.path_for("morercpthosts.cdb") == config_dir / "morercpthosts.cdb"


def test_map_of_an_absent_file_is_empty(reader):
    hosts = reader.map("morerelayclients")
    assert len(hosts) == 0
    assert b"127.0.0.1" not in hosts


def test_map_comes_from_the_directory_holding_the_cdb(tmp_path):
    cfg, qmail = tmp_path / "cfg", tmp_path / "qmail"
    write(cfg / "morercpthosts", "text file, ignored by map()\n")
    qmail.mkdir()
    write_cdb(qmail / "morercpthosts.cdb", [(b"example.org", b"")])
    reader = ConfigReader([cfg, qmail])

    assert list(reader.map("morercpthosts")) == [b"example.org"]


def test_map_rebuild_is_seen_after_the_interval(tmp_path):
    clock = FakeClock(1000.0)
    path = tmp_path / "morerelayclients.cdb"
    reader = ConfigReader([tmp_path], recheck_interval=1, clock=clock)
    assert len(reader.map("morerelayclients")) == 0

    write_cdb(path, [(b"192.0.2.1", b"")])
    assert len(reader.map("morerelayclients")) == 0
    clock.now += 1
    assert b"192.0.2.1" in reader.map("morerelayclients")

    write_cdb(path, [(b"192.0.2.2", b"")])
    bump_mtime(path)
    clock.now += 1
    assert list(reader.map("morerelayclients")) == [b"192.0.2.2"]


def test_malformed_map_is_a_config_error_with_the_fix(reader, config_dir):
    write(config_dir / "morercpthosts.cdb", "not a cdb\n")

    with pytest.raises(ConfigError) as info:
        reader.map("morercpthosts")
    assert info.value.path == config_dir / "morercpthosts.cdb"
    assert "not a valid cdb file" in info.value.message
    assert "rebuild" in info.value.fix
