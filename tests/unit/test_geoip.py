"""ident/geoip: lookups in small GeoIP2 databases the tests write (tests/geoip_databases.py)."""

from __future__ import annotations

import math

import pytest
from geoip_databases import ASN, PARIS, TOKYO, write_database, write_geolite2
from harness import SessionDriver, make_qp, plugin_source
from reactor_helpers import capture_log

from qpsmtpd_py.constants import LOGERROR, LOGINFO

BERLIN = (52.52, 13.405)
CAPTURE = plugin_source("""
    class Capture(Plugin):
        def hook_queue(self, transaction):
            self.qp.captured_header = transaction.header.as_string()
            return OK, "captured"
""")


def law_of_cosines_km(here, there, radius=6378):
    """The distance as qpsmtpd's Math::Trig computes it: a second formula to check the plugin's."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*here, *there))
    return radius * math.acos(math.sin(lat1) * math.sin(lat2)
                              + math.cos(lat1) * math.cos(lat2) * math.cos(lon2 - lon1))


def geoip_qp(tmp_path, arguments="", databases=None, extra=()):
    db_dir = databases or write_geolite2(tmp_path / "GeoIP")
    line = f"ident/geoip db_dir {db_dir} {arguments}".strip()
    return make_qp(tmp_path, plugins=[line, *extra, "rcpt_ok", "capture"], plugin_files={"capture": CAPTURE})


def connect(qp, ip):
    driver = SessionDriver(qp, remote_ip=ip)
    assert driver.take()[0].startswith("220")
    return driver


def geoip_notes(driver):
    return {key: value for key, value in driver.session.connection.notes.items() if key.startswith("geoip_")}


def test_ipv4_client_gets_country_continent_city_and_asn_notes(tmp_path):
    driver = connect(geoip_qp(tmp_path), "203.0.113.7")
    assert geoip_notes(driver) == {"geoip_country": "FR", "geoip_country_name": "France", "geoip_continent": "EU",
                                   "geoip_city": "Paris", "geoip_asn": ASN["203.0.113.0/24"]}


def test_ipv6_client_is_looked_up_too(tmp_path):
    driver = connect(geoip_qp(tmp_path), "2001:db8:1::25")
    notes = geoip_notes(driver)
    assert (notes["geoip_country"], notes["geoip_city"], notes["geoip_continent"]) == ("JP", "Tokyo", "AS")
    assert notes["geoip_asn"] == ASN["2001:db8:1::/48"]


def test_country_database_answers_when_the_city_database_does_not_know_the_address(tmp_path):
    driver = connect(geoip_qp(tmp_path), "198.51.100.20")
    assert geoip_notes(driver) == {"geoip_country": "DE", "geoip_country_name": "Germany",
                                   "geoip_continent": "EU"}


def test_country_database_alone_is_enough(tmp_path):
    databases = write_geolite2(tmp_path / "GeoIP", city=False, asn=False)
    driver = connect(geoip_qp(tmp_path, databases=databases), "203.0.113.7")
    assert geoip_notes(driver) == {"geoip_country": "FR", "geoip_country_name": "France", "geoip_continent": "EU"}


def test_unknown_address_sets_no_notes_and_logs_no_results(tmp_path):
    qp = geoip_qp(tmp_path)
    log = capture_log(qp)
    driver = connect(qp, "192.0.2.77")
    assert geoip_notes(driver) == {}
    assert (LOGINFO, "skip, no results") in log


def test_loopback_clients_are_skipped(tmp_path):
    qp = geoip_qp(tmp_path)
    assert geoip_notes(connect(qp, "127.0.0.1")) == {}
    assert geoip_notes(connect(qp, "::1")) == {}


def test_ipv6_client_with_an_ipv4_only_database_is_logged_not_fatal(tmp_path):
    db_dir = tmp_path / "v4only"
    db_dir.mkdir()
    write_database(db_dir / "GeoLite2-Country.mmdb", "GeoLite2-Country",
                   {"203.0.113.0/24": {"country": {"iso_code": "FR"}}}, ip_version=4)
    qp = geoip_qp(tmp_path, databases=db_dir)
    log = capture_log(qp)
    driver = connect(qp, "2001:db8:1::25")
    assert geoip_notes(driver) == {}
    assert any(level == LOGERROR and "lookup of 2001:db8:1::25 failed" in text for level, text in log)
    assert geoip_notes(connect(qp, "203.0.113.9")) == {"geoip_country": "FR"}


def test_distance_from_coordinates_is_the_great_circle_in_km(tmp_path):
    driver = connect(geoip_qp(tmp_path, f"distance {BERLIN[0]},{BERLIN[1]}"), "203.0.113.7")
    distance = driver.session.connection.notes["geoip_distance"]
    assert isinstance(distance, int)
    assert abs(distance - law_of_cosines_km(BERLIN, PARIS)) < 1
    assert 850 < distance < 900  # Berlin-Paris as the atlas has it


def test_distance_from_our_ip_address_uses_the_city_database(tmp_path):
    driver = connect(geoip_qp(tmp_path, "distance 203.0.113.1"), "2001:db8:1::25")
    distance = driver.session.connection.notes["geoip_distance"]
    assert abs(distance - law_of_cosines_km(PARIS, TOKYO)) < 1


def test_log_line_has_continent_country_city_and_distance(tmp_path):
    qp = geoip_qp(tmp_path, f"distance {BERLIN[0]},{BERLIN[1]}")
    log = capture_log(qp)
    driver = connect(qp, "203.0.113.7")
    distance = driver.session.connection.notes["geoip_distance"]
    assert (LOGINFO, f"EU, FR, Paris, {distance} km") in log


def test_client_farther_than_too_far_loses_karma(tmp_path):
    qp = geoip_qp(tmp_path, f"distance {BERLIN[0]},{BERLIN[1]} too_far 5000")
    far = connect(qp, "2001:db8:1::25")
    near = connect(qp, "203.0.113.7")
    assert far.session.connection.notes["karma"] == -1
    assert "karma" not in near.session.connection.notes


def send_message(driver, message="Subject: hi\r\n\r\nbody\r\n"):
    for command in ("EHLO client.example.com", "MAIL FROM:<a@example.com>", "RCPT TO:<postmaster@test.example.org>"):
        assert driver.command(command)[-1].startswith("250")
    assert driver.command("DATA")[-1].startswith("354")
    return driver.command(message.encode() + b".")


def test_headers_are_added_on_top_and_replace_the_message_s_own(tmp_path):
    qp = geoip_qp(tmp_path)
    driver = connect(qp, "203.0.113.7")
    assert send_message(driver, "X-GeoIP-Country: XX\r\nSubject: hi\r\n\r\nbody\r\n") == ["250 captured"]
    lines = qp.captured_header.splitlines()
    assert lines[:4] == ["X-GeoIP-ASN: 64500", "X-GeoIP-City: Paris", "X-GeoIP-Continent: EU",
                         "X-GeoIP-Country: FR"]
    assert "X-GeoIP-Country: XX" not in lines


def test_add_headers_false_adds_none(tmp_path):
    qp = geoip_qp(tmp_path, "add_headers false")
    driver = connect(qp, "203.0.113.7")
    assert send_message(driver) == ["250 captured"]
    assert "X-GeoIP" not in qp.captured_header
    assert driver.session.connection.notes["geoip_country"] == "FR"


def test_databases_are_opened_at_the_first_lookup_not_at_load(tmp_path):
    qp = geoip_qp(tmp_path)
    [plugin] = [p for p in qp.plugins if p.name == "ident::geoip"]
    assert plugin.readers is None  # the master forks its children with nothing open
    connect(qp, "203.0.113.7")
    assert sorted(plugin.readers) == ["asn", "city", "country"]


@pytest.mark.parametrize(("arguments", "message"), [
    ("distance somewhere", "distance must be our public IP address or LATITUDE,LONGITUDE"),
    ("distance 95,10", "latitude must be within ±90"),
    ("distance 192.0.2.1", "has no location for it"),
    ("too_far 100", "too_far needs distance"),
    ("distance 1,2 too_far far", "too_far must be a number of km"),
    ("distance 1,2 too_far -5", "too_far must be more than 0 km"),
    ("add_headers", "arguments are key/value pairs"),
])
def test_bad_arguments_stop_the_start(tmp_path, arguments, message):
    with pytest.raises(AssertionError, match=message):
        geoip_qp(tmp_path, arguments)


def test_missing_databases_stop_the_start(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssertionError, match="no GeoIP2 city or country database in"):
        geoip_qp(tmp_path, databases=tmp_path / "empty")


def test_a_broken_database_file_stops_the_start(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "GeoLite2-City.mmdb").write_bytes(b"not a database")
    with pytest.raises(AssertionError, match="cannot read GeoIP2 database .*GeoLite2-City.mmdb"):
        geoip_qp(tmp_path, databases=tmp_path / "broken")

