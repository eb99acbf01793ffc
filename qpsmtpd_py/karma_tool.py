"""karma_tool: look at and edit the karma plugin's history; import qpsmtpd's DBM files.

\b
    karma_tool list                      every client: penalty start, naughty, nice, connects
    karma_tool search naughty|nice|both  the clients with naughty / nice / both kinds of sessions
    karma_tool search IP                 one client
    karma_tool capture IP                put a client in the penalty box now (one more naughty)
    karma_tool release IP                take it out (its naughty sessions forgotten)
    karma_tool prune [DAYS]              delete entries whose penalty started DAYS (7) or more days
                                         ago, and those never boxed, as qpsmtpd's did
    karma_tool import FILE               copy qpsmtpd's karma.dbm or greylist.dbm into the store

The store is found as the daemon finds it: `--redis` or `--db-dir` if given,
else the `redis`/`db_dir` arguments of the karma (or, for a greylist import,
greylisting) line in config/plugins of `--config-dir`, else `var/db` beside
the spool dir.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .config import ConfigReader, search_path
from .paths import bundled_config_dir
from .state import StateStore, StoreError, StoreSettings
from .state.dbm_import import DBMImportError, read_dbm, store_key, store_name

DAY = 86400
GREYLIST_WHITE_TIMEOUT = 36 * DAY
PLUGIN_OF_STORE = {"karma": "karma", "greylist": "greylisting"}


def store_settings(name: str, options: dict[str, Any]) -> StoreSettings:
    """Where store `name` lives, by the options or the daemon's config (see the module doc)."""
    args: dict[str, str] = {}
    if options.get("redis"):
        args["redis"] = options["redis"]
    elif options.get("db_dir"):
        args["db_dir"] = options["db_dir"]
    reader = ConfigReader(search_path(options.get("config_dir"), install_config_dir=bundled_config_dir()))
    if not args:
        args = plugin_store_args(reader.get("plugins"), PLUGIN_OF_STORE[name])
    spool = reader.first("spool_dir") or str(Path(os.environ.get("HOME") or os.path.expanduser("~")) / "tmp")
    try:
        return StoreSettings.from_args(name, args, Path(spool).expanduser().resolve())
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def plugin_store_args(lines: list[str], plugin: str) -> dict[str, str]:
    """The db_dir / redis arguments of the first config/plugins line of `plugin`."""
    for line in lines:
        words = line.split()
        if words and words[0].split(":")[0] == plugin:
            args = dict(zip(words[1::2], words[2::2], strict=False))
            return {key: args[key] for key in ("db_dir", "redis") if key in args}
    return {}


def ip_of_key(key: str) -> str:
    number = int(key)
    return str(ipaddress.IPv4Address(number) if number < 2**32 else ipaddress.IPv6Address(number))


def key_of_ip(text: str) -> str:
    try:
        return str(int(ipaddress.ip_address(text)))
    except ValueError:
        raise click.BadParameter(f"not an IP address: {text}") from None


def parse_record(value: str | None) -> list[int]:
    parts = ((value or "").split(":") + ["0"] * 4)[:4]
    return [int(float(part)) if part.replace(".", "", 1).isdigit() else 0 for part in parts]


def run_with_store(settings: StoreSettings, work: Callable[[StateStore], Any]) -> None:
    """Run `work(store)` (a coroutine function) on a reactor; a StoreError ends the command with its message."""
    from twisted.internet import defer, task

    failures: list[str] = []

    async def main(reactor: Any) -> None:
        store = settings.open(reactor)
        try:
            await work(store)
        except StoreError as exc:
            failures.append(str(exc))
        finally:
            await store.close()

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as exit_:
        if exit_.code:
            raise
    if failures:
        raise click.ClickException(failures[0])


# -- the commands ---------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["--help", "-h"]}, help=__doc__)
@click.option("--config-dir", type=click.Path(file_okay=False), help="qpsmtpd config directory (as the daemon's).")
@click.option("--db-dir", type=click.Path(file_okay=False), help="Directory of the SQLite files (karma.sqlite).")
@click.option("--redis", metavar="HOST[:PORT]", help="A Redis server instead (also redis://host:port/db).")
@click.pass_context
def main(context: click.Context, config_dir: str | None, db_dir: str | None, redis: str | None) -> None:
    context.obj = {"config_dir": config_dir, "db_dir": db_dir, "redis": redis}


def karma_store(context: click.Context) -> StoreSettings:
    settings = store_settings("karma", context.obj)
    click.echo(f"using karma db at {settings.description}", err=True)
    return settings


def print_rows(rows: list[tuple[str, list[int]]]) -> None:
    click.echo(f" {'IP Address':<39}  {'Penalty':<16}  {'Naughty':>7}  {'Nice':>5}  {'Connects':>8}")
    totals = [0, 0, 0]
    for ip, (penalty, naughty, nice, connects) in rows:
        when = time.strftime("%a %b %e %H:%M", time.localtime(penalty)) if penalty else ""
        click.echo(f" {ip:<39}  {when:<16}  {naughty:>7}  {nice:>5}  {connects:>8}")
        totals = [totals[0] + naughty, totals[1] + nice, totals[2] + connects]
    click.echo(f" {'total':<39}  {'':<16}  {totals[0]:>7}  {totals[1]:>5}  {totals[2]:>8}")


@main.command("list", help="Every client in the karma history.")
@click.pass_context
def list_command(context: click.Context) -> None:
    show(context, lambda record: True)


@main.command(help="Clients with naughty, nice or both kinds of sessions, or one IP.")
@click.argument("what")
@click.pass_context
def search(context: click.Context, what: str) -> None:
    filters = {"naughty": lambda r: r[1] > 0, "nice": lambda r: r[2] > 0, "both": lambda r: r[1] > 0 and r[2] > 0}
    if what in filters:
        show(context, filters[what])
    else:
        show(context, lambda record: True, only=key_of_ip(what))


def show(context: click.Context, wanted: Callable[[list[int]], bool], only: str | None = None) -> None:
    async def work(store: StateStore) -> None:
        if only is not None:
            value = await store.get(only)
            entries = {only: value} if value else {}
        else:
            entries = await store.scan()
        rows = [(ip_of_key(key), parse_record(value)) for key, value in entries.items() if key.isdigit()]
        print_rows(sorted((row for row in rows if wanted(row[1])),
                          key=lambda row: int(ipaddress.ip_address(row[0]))))

    run_with_store(karma_store(context), work)


@main.command(help="Put IP in the penalty box from now on.")
@click.argument("ip")
@click.pass_context
def capture(context: click.Context, ip: str) -> None:
    key = key_of_ip(ip)

    async def work(store: StateStore) -> None:
        _, naughty, nice, connects = parse_record(await store.get(key))
        await store.set(key, f"{int(time.time())}:{naughty + 1}:{nice}:{connects}")
        click.echo(f"{ip} captured")

    run_with_store(karma_store(context), work)


@main.command(help="Take IP out of the penalty box; its naughty sessions are forgotten.")
@click.argument("ip")
@click.pass_context
def release(context: click.Context, ip: str) -> None:
    key = key_of_ip(ip)

    async def work(store: StateStore) -> None:
        _, _, nice, connects = parse_record(await store.get(key))
        await store.set(key, f"0:0:{nice}:{connects}")
        click.echo(f"{ip} released")

    run_with_store(karma_store(context), work)


@main.command(help="Delete entries whose penalty started DAYS or more days ago (and those never boxed).")
@click.argument("days", type=float, default=7)
@click.pass_context
def prune(context: click.Context, days: float) -> None:
    async def work(store: StateStore) -> None:
        entries = await store.scan()
        now = time.time()
        old = [key for key, value in entries.items() if (now - parse_record(value)[0]) / DAY >= days]
        for key in old:
            await store.delete(key)
        click.echo(f"pruned {len(old)} of {len(entries)} DB entries")

    run_with_store(karma_store(context), work)


@main.command("import", help="Copy qpsmtpd's karma.dbm or greylist.dbm (FILE as qpsmtpd named it) into the store.")
@click.argument("file", type=click.Path(exists=False, dir_okay=False))
@click.option("--store", "name", type=click.Choice(["karma", "greylist"]),
              help="Which store (default: from the file name).")
@click.option("--white-timeout", type=float, default=GREYLIST_WHITE_TIMEOUT, show_default=True,
              help="greylisting's white_timeout: greylist entries older than this are skipped.")
@click.pass_context
def import_command(context: click.Context, file: str, name: str | None, white_timeout: float) -> None:
    path = Path(file)
    name = name or store_name(path)
    if name is None:
        raise click.UsageError(f"cannot tell from the name {path.name} which store it is: give --store")
    try:
        entries = list(read_dbm(path))
    except DBMImportError as exc:
        raise click.ClickException(str(exc)) from None
    settings = store_settings(name, context.obj)
    click.echo(f"importing {path} into {name} at {settings.description}", err=True)

    async def work(store: StateStore) -> None:
        imported = skipped = 0
        now = time.time()
        for key, value in entries:
            new_key = store_key(key)
            ttl = None
            if name == "greylist":
                ttl = parse_record(value)[0] + white_timeout - now
            if new_key is None or (ttl is not None and ttl <= 0):
                skipped += 1
                continue
            await store.set(new_key, value, ttl=ttl)
            imported += 1
        click.echo(f"imported {imported} entries, skipped {skipped} (expired or without an IP key)")

    run_with_store(settings, work)


if __name__ == "__main__":
    main()
