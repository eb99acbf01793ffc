"""The state store's contract, run against both backends: SQLite (a temp file) and a real redis-server."""

from __future__ import annotations

import socket

import pytest
from reactor_helpers import FakeClock, reactor, run  # noqa: F401  (reactor is a fixture)
from redis_server import redis_server  # noqa: F401  (a fixture)
from twisted.internet import defer

from qpsmtpd_py.state import RedisAddress, StoreError, StoreSettings, parse_redis_address
from qpsmtpd_py.state.redis import RedisStore, parse_reply
from qpsmtpd_py.state.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request, tmp_path, reactor):  # noqa: F811
    """open_store(name) -> a store of that name on the backend under test (same data for the same name)."""
    opened = []
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        settings = {"redis": server.url}
    else:
        settings = {"db_dir": str(tmp_path / "db")}

    def make(name="test"):
        store = StoreSettings.from_args(name, settings, tmp_path / "spool").open(reactor)
        opened.append(store)
        return store

    yield make
    for store in opened:  # the reactor ran once already: stop the worker threads directly
        if isinstance(store, SQLiteStore) and store._pool is not None and not store._pool.joined:
            store._pool.stop()


def test_get_of_a_missing_key_is_none(reactor, open_store):  # noqa: F811
    store = open_store()
    assert run(reactor, lambda: store.get("nothing")) is None


def test_set_then_get_returns_the_value(reactor, open_store):  # noqa: F811
    store = open_store()

    async def go():
        await store.set("2130706433", "1700000000:1:0:0")
        await store.set("2130706433", "1700000000:1:1:0")
        return await store.get("2130706433")

    assert run(reactor, go) == "1700000000:1:1:0"


def test_incr_counts_from_zero_and_returns_the_new_value(reactor, open_store):  # noqa: F811
    store = open_store()

    async def go():
        return [await store.incr("hits"), await store.incr("hits", 5), await store.incr("hits", -2, ttl=60),
                await store.get("hits")]

    assert run(reactor, go) == [1, 6, 4, "4"]


def test_concurrent_increments_from_two_clients_are_all_counted(reactor, open_store):  # noqa: F811
    first, second = open_store(), open_store()

    async def go():
        await defer.gatherResults([store.incr("shared") for _ in range(40) for store in (first, second)])
        return await first.get("shared")

    assert run(reactor, go) == "80"


def test_delete_removes_and_counts(reactor, open_store):  # noqa: F811
    store = open_store()

    async def go():
        await store.set("a", "1")
        return [await store.delete("a"), await store.delete("a"), await store.get("a")]

    assert run(reactor, go) == [1, 0, None]


def test_scan_returns_only_keys_with_the_prefix(reactor, open_store):  # noqa: F811
    store = open_store()

    async def go():
        for key in ("10:a@x", "10:b@x", "11:a@x", "1*:glob", "100"):
            await store.set(key, f"v{key}")
        return await store.scan("10:"), await store.scan("1*"), len(await store.scan())

    matching, literal, everything = run(reactor, go)
    assert matching == {"10:a@x": "v10:a@x", "10:b@x": "v10:b@x"}
    assert literal == {"1*:glob": "v1*:glob"}
    assert everything == 5


def test_stores_of_different_names_do_not_see_each_other(reactor, open_store):  # noqa: F811
    greylist, karma = open_store("greylist"), open_store("karma")

    async def go():
        await greylist.set("2130706433", "grey")
        await karma.set("2130706433", "0:1:0:1")
        return await greylist.get("2130706433"), await karma.get("2130706433"), await karma.scan()

    assert run(reactor, go) == ("grey", "0:1:0:1", {"2130706433": "0:1:0:1"})


def test_a_second_store_object_sees_the_first_ones_writes(reactor, open_store):  # noqa: F811
    writer, reader = open_store(), open_store()

    async def go():
        await writer.set("k", "v", ttl=3600)
        return await reader.get("k")

    assert run(reactor, go) == "v"


# -- time to live ----------------------------------------------------------------------------

def test_sqlite_entry_expires_after_its_ttl(tmp_path, reactor):  # noqa: F811
    clock = FakeClock()
    store = SQLiteStore(tmp_path / "t.sqlite", reactor, clock=clock)

    async def go():
        await store.set("k", "v", ttl=60)
        await store.incr("n", ttl=60)
        clock.now += 59
        before = await store.get("k"), await store.scan()
        clock.now += 2
        after = await store.get("k"), await store.scan(), await store.incr("n", ttl=60)
        await store.close()
        return before, after

    before, after = run(reactor, go)
    assert before == ("v", {"k": "v", "n": "1"})
    assert after == (None, {}, 1)  # an expired counter starts again


def test_redis_set_and_incr_give_the_key_a_ttl(reactor, redis_server):  # noqa: F811
    store = RedisStore("t", parse_redis_address(redis_server.url), reactor)

    async def go():
        await store.set("k", "v", ttl=100)
        await store.incr("n", ttl=50.2)
        await store.set("forever", "v")
        ttls = [await store._command("TTL", f"t:{key}") for key in ("k", "n", "forever")]
        await store.close()
        return ttls

    k, n, forever = run(reactor, go)
    assert 90 < k <= 100 and 40 < n <= 51 and forever == -1


# -- failures become StoreError ----------------------------------------------------------------

def test_unreachable_redis_is_a_store_error(reactor):  # noqa: F811
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        store = RedisStore("t", RedisAddress("127.0.0.1", port), reactor, timeout=2)
        with pytest.raises(StoreError, match="cannot connect to redis"):
            run(reactor, lambda: store.get("k"))


def test_silent_redis_times_out_as_a_store_error(reactor):  # noqa: F811
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        store = RedisStore("t", RedisAddress("127.0.0.1", sock.getsockname()[1]), reactor, timeout=0.3)
        with pytest.raises(StoreError, match="did not answer within 0.3s"):
            run(reactor, lambda: store.get("k"))


def test_redis_error_reply_is_a_store_error(reactor, redis_server):  # noqa: F811
    store = RedisStore("t", parse_redis_address(redis_server.url), reactor)

    async def go():
        await store.set("text", "not a number")
        try:
            await store.incr("text", ttl=10)
        finally:
            await store.close()

    with pytest.raises(StoreError, match="not an integer"):
        run(reactor, go)


def test_unusable_sqlite_file_is_a_store_error(tmp_path, reactor):  # noqa: F811
    (tmp_path / "dir.sqlite").mkdir()
    store = SQLiteStore(tmp_path / "dir.sqlite", reactor)

    async def go():
        try:
            await store.get("k")
        finally:
            await store.close()

    with pytest.raises(StoreError, match="dir.sqlite"):
        run(reactor, go)


# -- settings -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("localhost", RedisAddress("localhost", 6379, 0)),
    ("10.0.0.5:6380", RedisAddress("10.0.0.5", 6380, 0)),
    ("redis://127.0.0.1:7000/3", RedisAddress("127.0.0.1", 7000, 3)),
    ("redis://[::1]:7000", RedisAddress("::1", 7000, 0)),
])
def test_redis_address_accepts_qpsmtpd_form_and_urls(text, expected):
    assert parse_redis_address(text) == expected


@pytest.mark.parametrize("text", ["redis://", "host:port", "host:70000", "a b"])
def test_bad_redis_address_says_what_form_is_expected(text):
    with pytest.raises(ValueError, match="redis"):
        parse_redis_address(text)


def test_default_db_dir_is_var_db_beside_the_spool(tmp_path):
    settings = StoreSettings.from_args("greylist", {}, tmp_path / "spool")
    assert settings.sqlite_path == (tmp_path / "var" / "db" / "greylist.sqlite").resolve()
    assert settings.sqlite_path.parent.is_dir()


def test_uncreatable_db_dir_is_refused_with_a_fix(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cannot create db_dir .*give db_dir"):
        StoreSettings.from_args("karma", {"db_dir": str(tmp_path / "file" / "db")}, tmp_path)


def test_resp_parser_waits_for_a_whole_reply():
    assert parse_reply(b"*2\r\n$3\r\nabc\r\n$-1") is None
    assert parse_reply(b"*2\r\n$3\r\nabc\r\n$-1\r\n:5\r\n") == (["abc", None], 18)
