"""`qpsmtpd-py-prefork`: options -> Settings -> a running daemon.

Option names and defaults are Perl qpsmtpd-prefork's, so a daemontools `run`
script only changes the program name. Additions are new options, never renames.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import sys

import click

from . import __version__
from .config import ConfigError, ConfigReader, search_path
from .log import startup_message
from .paths import bundled_config_dir
from .settings import ListenAddress, Settings

_LISTEN = re.compile(r"^(\[.*\]|[\w\-.]+)(?::(\d+))?$")


def parse_listen_address(text: str, default_port: int) -> ListenAddress:
    """`addr`, `addr:port`, `[ipv6]` or `[ipv6]:port`, as qpsmtpd-prefork accepts."""
    match = _LISTEN.match(text)
    if match is None:
        raise click.BadParameter(f"Malformed listen address '{text}' (IPv6 must be bracketed: [::1]:25)")
    host = match.group(1).strip("[]")
    port = int(match.group(2)) if match.group(2) else default_port
    return ListenAddress(host, port)


def default_listen_host() -> str:
    import socket

    return "::" if socket.has_ipv6 else "0.0.0.0"


def drop_privileges(user: str) -> None:
    """setgroups/setgid/setuid to `user`, after binding and before any plugin runs."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise click.UsageError(f"--user {user}: no such user") from None
    if os.getuid() == entry.pw_uid:
        return
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    os.setgroups(sorted({entry.pw_gid, *groups}))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir  # spool_dir defaults to ~/tmp/ of the daemon user


def build_qp(settings: Settings):  # -> Qpsmtpd (imported late: after defer_reactor)
    from .prefork import StartupError
    from .qp import Qpsmtpd

    reader = ConfigReader(search_path(settings.config_dir, install_config_dir=bundled_config_dir()))
    qp = Qpsmtpd(reader, debug=settings.debug)
    errors = qp.load()
    if errors:
        raise StartupError("\n".join(str(error) for error in errors))
    if settings.tls_listen and qp.tls is None:
        raise StartupError("--tls-listen-address needs a certificate: add the tls plugin to config/plugins "
                           "and make one with qpsmtpd-py-tls-cert")
    return qp


def _help_plugin(name: str) -> str:
    import ast

    from .paths import bundled_plugin_dir
    from .plugin import PluginError, find_plugin_file

    try:
        path = find_plugin_file(name, [bundled_plugin_dir()])
    except PluginError as exc:
        raise click.UsageError(str(exc)) from None
    doc = ast.get_docstring(ast.parse(path.read_text()))
    return doc or f"{name}: no documentation"


@click.command(context_settings={"help_option_names": ["--help", "-h"]})
@click.option("--listen-address", "--interface", "listen", multiple=True, metavar="ADDR[:PORT]",
              help="Address to listen on; repeatable; IPv6 in brackets. Default [::] (or 0.0.0.0).")
@click.option("--tls-listen-address", "tls_listen", multiple=True, metavar="ADDR:PORT",
              help="Also listen here with implicit TLS (SMTPS, like port 465); needs the tls plugin.")
@click.option("--port", default=25, show_default=True, help="Port for addresses given without one.")
@click.option("--children", default=15, show_default=True, help="Maximum number of child processes.")
@click.option("--idle-children", default=5, show_default=True,
              help="Children kept ready (0, or more than --children, means --children).")
@click.option("--max-from-ip", default=10, show_default=True,
              help="Concurrent connections from one IP (0 = --children), given to pre-connection plugins.")
@click.option("--sessions-per-child", default=100, show_default=True,
              help="Concurrent sessions one child serves (1 = exact qpsmtpd-prefork behaviour).")
@click.option("--child-lifetime", default=100, show_default=True,
              help="Sessions a child serves before it is replaced (qpsmtpd hard-codes 100).")
@click.option("--shutdown-timeout", default=30.0, show_default=True,
              help="Seconds sessions may take to finish after TERM/INT.")
@click.option("--pretty-child", is_flag=True, help="Show each child's state and clients in its process title.")
@click.option("--user", help="Run as this user after binding (needed when started as root).")
@click.option("--pid-file", type=click.Path(dir_okay=False), help="Write the master's PID here.")
@click.option("--renice-parent", type=int, default=None,
              help="Run the master N nice levels above the children (needs root)  [default: 5]")
@click.option("--detach", is_flag=True,
              help="Run in the background (default: foreground, for supervise/runsv/systemd).")
@click.option("--config-dir", type=click.Path(file_okay=False),
              help="qpsmtpd config directory (default: the bundled config/).")
@click.option("--check-config", is_flag=True, help="Load config and plugins, print every problem, exit.")
@click.option("--help-plugin", metavar="NAME", help="Print a plugin's documentation and exit.")
@click.option("--debug", is_flag=True, help="Log at LOGDEBUG and log the master's supervision.")
@click.option("--quiet", is_flag=True, help="Accepted for compatibility with qpsmtpd-prefork.")
@click.version_option(__version__, message="qpsmtpd-py Daemon - version %(version)s")
def main(listen: tuple[str, ...], tls_listen: tuple[str, ...], port: int, children: int, idle_children: int,
         max_from_ip: int, sessions_per_child: int, child_lifetime: int, shutdown_timeout: float, pretty_child: bool,
         user: str | None, pid_file: str | None, renice_parent: int | None, detach: bool, config_dir: str | None,
         check_config: bool, help_plugin: str | None, debug: bool, quiet: bool) -> None:
    """Start the qpsmtpd-py SMTP daemon (a pre-forking server, like qpsmtpd-prefork)."""
    if help_plugin:
        click.echo(_help_plugin(help_plugin))
        return
    if idle_children == 0 or idle_children > children or idle_children < -1:
        idle_children = children  # qpsmtpd-prefork's rule
    settings = Settings(
        listen=[parse_listen_address(a, port) for a in listen] or [ListenAddress(default_listen_host(), port)],
        tls_listen=[parse_listen_address(a, 465) for a in tls_listen],
        port=port, children=children, idle_children=idle_children,
        max_from_ip=max_from_ip or children, sessions_per_child=max(1, sessions_per_child),
        child_lifetime=max(1, child_lifetime), shutdown_timeout=shutdown_timeout, user=user,
        pid_file=pid_file, detach=detach, pretty_child=pretty_child,
        renice_parent=5 if renice_parent is None else renice_parent, renice_explicit=renice_parent is not None,
        debug=debug, quiet=quiet, config_dir=config_dir)
    sys.exit(run(settings, check_config))


def run(settings: Settings, check_only: bool = False) -> int:
    from .eventloop import defer_reactor
    from .pidfile import PidFile, PidFileError
    from .prefork import Master, StartupError, bind_sockets, renice_master

    defer_reactor()
    pid_file = None
    try:
        if check_only:
            build_qp(settings)
            startup_message("config OK")
            return 0
        # Order as qpsmtpd-prefork: pid file (fail fast), bind (port 25 needs root),
        # renice, drop privileges, and only then run any plugin code.
        pid_file = PidFile(settings.pid_file) if settings.pid_file else None
        sockets = bind_sockets(settings.listen + settings.tls_listen)
        child_nice = renice_master(settings.renice_parent, explicit=settings.renice_explicit)
        preload()
        if settings.user:
            drop_privileges(settings.user)
        elif os.getuid() == 0:
            startup_message("warning: running as root; use --user to run as an unprivileged user")
        qp = build_qp(settings)
    except (StartupError, ConfigError, PidFileError) as exc:
        startup_message(str(exc))
        return 1
    if settings.detach:
        detach(keep=[sock.fileno() for sock in sockets] + ([pid_file.fd] if pid_file else []))
    if pid_file:
        pid_file.write()
    try:
        return Master(settings, sockets, lambda: build_qp(settings), qp, pid_file, child_nice).run()
    finally:
        if pid_file:
            pid_file.remove()


def preload() -> None:
    """Import the whole core before forking (children share it, copy-on-write) and
    before dropping privileges (the daemon user need not read the Python install;
    only plugin code is imported after the switch)."""
    import setproctitle  # noqa: F401
    import twisted.internet.epollreactor  # noqa: F401  (a module import; the child installs it)
    import twisted.internet.process  # noqa: F401

    import qpsmtpd_py.child  # noqa: F401
    import qpsmtpd_py.qp  # noqa: F401
    import qpsmtpd_py.smtp  # noqa: F401


def detach(keep: list[int]) -> None:
    """Become a daemon (python-daemon): new session, no terminal, stdio to /dev/null.

    The working directory and umask stay as they were, so relative paths in
    the config mean the same as in the foreground.
    """
    import daemon

    umask = os.umask(0)
    os.umask(umask)
    context = daemon.DaemonContext(working_directory=os.getcwd(), umask=umask, detach_process=True,
                                   files_preserve=keep, signal_map={}, prevent_core=False)
    context.open()
