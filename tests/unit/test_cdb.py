"""The cdb reader and writer: round trips, duplicate keys, malformed files."""

import struct

import pytest

from qpsmtpd_py.cdb import CDB, MalformedCDB, cdb_hash, write_cdb


def test_hash_matches_the_reference_algorithm():
    assert cdb_hash(b"") == 5381
    assert cdb_hash(b"a") == ((5381 << 5) + 5381) ^ ord("a")
    # long keys wrap at 32 bits
    assert cdb_hash(b"x" * 100) < 2**32


def test_round_trip_gives_back_every_key_and_value(tmp_path):
    path = tmp_path / "morercpthosts.cdb"
    items = [(f"host{i}.example".encode(), b"") for i in range(1000)]
    items.append((b"key", b"value"))
    write_cdb(path, items)

    db = CDB(path)
    assert len(db) == 1001
    assert list(db) == [key for key, _ in items]
    assert db[b"key"] == b"value"
    assert db[b"host999.example"] == b""
    assert b"host0.example" in db
    assert b"host1000.example" not in db
    assert db.get(b"missing") is None
    assert db.get(b"missing", b"fallback") == b"fallback"
    with pytest.raises(KeyError):
        db[b"missing"]


def test_duplicate_keys_get_returns_first_and_get_all_returns_all(tmp_path):
    path = tmp_path / "dup.cdb"
    write_cdb(path, [(b"k", b"1"), (b"other", b"x"), (b"k", b"2"), (b"k", b"3")])

    db = CDB(path)
    assert db.get(b"k") == b"1"
    assert db.get_all(b"k") == [b"1", b"2", b"3"]
    assert db.get_all(b"nope") == []
    assert len(db) == 2
    assert list(db) == [b"k", b"other"]


def test_empty_database_is_a_valid_empty_mapping(tmp_path):
    path = tmp_path / "empty.cdb"
    write_cdb(path, [])

    assert path.stat().st_size == 2048
    db = CDB(path)
    assert len(db) == 0
    assert b"" not in db


def test_empty_key_and_binary_data_round_trip(tmp_path):
    path = tmp_path / "bin.cdb"
    write_cdb(path, [(b"", b"-"), (b"\x00\xff", b"\r\n\x00")])

    db = CDB(path)
    assert db[b""] == b"-"
    assert db[b"\x00\xff"] == b"\r\n\x00"


def test_str_keys_are_refused_rather_than_never_matching(tmp_path):
    path = tmp_path / "m.cdb"
    write_cdb(path, [(b"example.com", b"")])

    with pytest.raises(TypeError):
        "example.com" in CDB(path)  # noqa: B015


def test_writer_replaces_the_file_and_keeps_its_mode(tmp_path):
    path = tmp_path / "m.cdb"
    write_cdb(path, [(b"old", b"")])
    path.chmod(0o640)
    write_cdb(path, [(b"new", b"")])

    assert (path.stat().st_mode & 0o777) == 0o640
    assert list(CDB(path)) == [b"new"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.cdb"]


def test_new_file_is_world_readable_for_the_daemon_user(tmp_path):
    path = tmp_path / "m.cdb"
    write_cdb(path, [(b"k", b"v")])

    assert (path.stat().st_mode & 0o777) == 0o644


def test_file_shorter_than_the_header_is_malformed(tmp_path):
    path = tmp_path / "short.cdb"
    path.write_bytes(b"\x00" * 100)

    with pytest.raises(MalformedCDB, match="short.cdb") as info:
        CDB(path)
    assert isinstance(info.value, ValueError)
    assert info.value.path == path


def test_hash_table_outside_the_file_is_malformed(tmp_path):
    path = tmp_path / "bad.cdb"
    write_cdb(path, [(b"k", b"v")])
    data = bytearray(path.read_bytes())
    index = cdb_hash(b"k") & 0xFF
    struct.pack_into("<II", data, index * 8, 10**6, 2)
    path.write_bytes(bytes(data))

    with pytest.raises(ValueError, match="bad.cdb.*hash table outside"):
        CDB(path)


def test_truncated_record_is_malformed(tmp_path):
    path = tmp_path / "trunc.cdb"
    write_cdb(path, [(b"key", b"value")])
    data = bytearray(path.read_bytes())
    struct.pack_into("<II", data, 2048, 3, 1000)  # data length past the records
    path.write_bytes(bytes(data))

    with pytest.raises(ValueError, match="trunc.cdb.*runs past"):
        CDB(path)


def test_text_file_is_malformed(tmp_path):
    path = tmp_path / "morercpthosts.cdb"
    path.write_text("example.com\n" * 300)

    with pytest.raises(ValueError, match="morercpthosts.cdb"):
        CDB(path)
