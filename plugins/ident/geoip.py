"""ident/geoip - where the client is: country, continent, city, AS number, distance.

Hook: connect (the lookups); data_post (the headers, unless `add_headers false`).

The client's address is looked up in MaxMind's GeoIP2 databases (the free
GeoLite2 ones or the commercial GeoIP2 ones, `.mmdb` files) in `db_dir`:
- a city database, `GeoIP2-City.mmdb` or `GeoLite2-City.mmdb`;
- else, or when the city database does not know the address, a country
  database, `GeoIP2-Country.mmdb` or `GeoLite2-Country.mmdb`;
- and an AS database, `GeoIP2-ISP.mmdb` or `GeoLite2-ASN.mmdb`, if present.
At least one city or country database must be there. IPv4 and IPv6 clients
are looked up alike; loopback clients (127.0.0.0/8, ::1) are skipped.

Connection notes set, for other plugins (greylisting, karma, naughty...) to
read, under qpsmtpd's names:
    geoip_country       two-letter country code (US)
    geoip_country_name  the country's English name
    geoip_continent     two-letter continent code (NA)
    geoip_city          the city's English name (city database only)
    geoip_asn           the AS number (an int)
    geoip_distance      km from us to the client (with `distance`, an int)
and a log line like `NA, US, Mountain View, 1319 km`.

Arguments (key/value pairs):
- `db_dir <dir>`: where the .mmdb files are (default /usr/local/share/GeoIP;
  Debian's geoipupdate writes to /var/lib/GeoIP).
- `distance <where we are>`: compute the great-circle distance to the
  client, the earth taken as a sphere of radius 6378 km. Either our public
  IP address, looked up in the city database (as qpsmtpd), or our position
  as `latitude,longitude` in degrees (`48.86,2.35`). Default: none.
- `too_far <km>`: -1 karma for clients farther than this (needs `distance`).
- `add_headers true|false`: add X-GeoIP-Country, X-GeoIP-Continent,
  X-GeoIP-City and X-GeoIP-ASN to each message, replacing any the message
  had (default true).

Example config/plugins line:
    ident/geoip db_dir /var/lib/GeoIP distance 192.0.2.5 too_far 9000

The databases are memory-mapped, so a lookup is a few page reads and runs in
the session. Each child opens them at its first connection; the master opens
them only to check them at start-up. After an update (geoipupdate), HUP: the
new children open the new files.

Differences from qpsmtpd: GeoIP2 only (the legacy GeoIP `.dat` format and its
Geo::IP fallback are gone: MaxMind stopped publishing it, as qpsmtpd's own
issues #290 and #334 concluded). qpsmtpd's GeoIP2 code computed neither the
distance nor `too_far` and read no AS number; here they work with GeoIP2. The
position may be given as coordinates. A missing database or a `distance`
address that the city database cannot place stops the start-up with a
message, where qpsmtpd logged an error and went on without the plugin.
"""

import ipaddress
import math
import re
from pathlib import Path

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGERROR, LOGINFO
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_DB_DIR = "/usr/local/share/GeoIP"
KNOWN_ARGUMENTS = ("db_dir", "distance", "too_far", "add_headers", "loglevel")
# Preferred file first: the commercial database where the site has one.
DATABASE_FILES = {
    "city": ("GeoIP2-City.mmdb", "GeoLite2-City.mmdb"),
    "country": ("GeoIP2-Country.mmdb", "GeoLite2-Country.mmdb"),
    "asn": ("GeoIP2-ISP.mmdb", "GeoLite2-ASN.mmdb"),
}
EARTH_RADIUS_KM = 6378  # qpsmtpd's figure: results stay comparable with its logs
HEADER_NOTES = (("X-GeoIP-Country", "geoip_country"), ("X-GeoIP-Continent", "geoip_continent"),
                ("X-GeoIP-City", "geoip_city"), ("X-GeoIP-ASN", "geoip_asn"))
_COORDINATES = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*$")


def great_circle_km(here: tuple[float, float], there: tuple[float, float]) -> int:
    """Kilometres between two (latitude, longitude) points in degrees (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*here, *there))
    a = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return round(2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a))))


def english_name(record: dict, key: str) -> str | None:
    return (record.get(key) or {}).get("names", {}).get("en")


def location_of(record: dict | None) -> tuple[float, float] | None:
    location = (record or {}).get("location") or {}
    latitude, longitude = location.get("latitude"), location.get("longitude")
    if latitude is None or longitude is None:
        return None
    return latitude, longitude


class GeoIP(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError("arguments are key/value pairs: ident/geoip [db_dir DIR] [distance IP|LAT,LONG] "
                              "[too_far KM] [add_headers true|false]")
        self.warn_unknown_arguments(KNOWN_ARGUMENTS)
        db_dir = Path(self.args.get("db_dir") or DEFAULT_DB_DIR)
        self.paths = {kind: next((db_dir / name for name in names if (db_dir / name).is_file()), None)
                      for kind, names in DATABASE_FILES.items()}
        if not (self.paths["city"] or self.paths["country"]):
            wanted = ", ".join(DATABASE_FILES["city"] + DATABASE_FILES["country"])
            raise PluginError(f"no GeoIP2 city or country database in {db_dir} (looked for {wanted}): "
                              "install them (geoipupdate) or set db_dir")
        for path in filter(None, self.paths.values()):
            self.open_database(path).close()  # a broken file fails here, not in every session
        self.readers = None  # opened in each child, at its first lookup
        self.here = self.parse_distance(self.args.get("distance"))
        self.too_far = self.parse_too_far(self.args.get("too_far"))
        if not re.search("false", self.args.get("add_headers") or "true", re.IGNORECASE):
            self.register_hook("data_post", "add_headers")

    def open_database(self, path: Path) -> maxminddb.Reader:
        try:
            return maxminddb.open_database(str(path))
        except (OSError, ValueError, InvalidDatabaseError) as exc:
            raise PluginError(f"cannot read GeoIP2 database {path}: {exc}") from None

    def parse_distance(self, text: str | None) -> tuple[float, float] | None:
        """Our (latitude, longitude), from coordinates or from our IP in the city database."""
        if text is None:
            return None
        match = _COORDINATES.match(text)
        if match:
            latitude, longitude = float(match.group(1)), float(match.group(2))
            if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
                raise PluginError(f"distance {text!r}: latitude must be within ±90, longitude within ±180")
            return latitude, longitude
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise PluginError(f"distance must be our public IP address or LATITUDE,LONGITUDE, "
                              f"not {text!r}") from None
        if not self.paths["city"]:
            raise PluginError(f"distance {text}: placing an address needs a city database; "
                              "give LATITUDE,LONGITUDE instead")
        with self.open_database(self.paths["city"]) as reader:
            here = location_of(reader.get(text))
        if here is None:
            raise PluginError(f"distance {text}: {self.paths['city']} has no location for it; "
                              "give LATITUDE,LONGITUDE instead")
        return here

    def parse_too_far(self, text: str | None) -> float | None:
        if text is None:
            return None
        try:
            km = float(text)
        except ValueError:
            raise PluginError(f"too_far must be a number of km, not {text!r}") from None
        if km <= 0:
            raise PluginError(f"too_far must be more than 0 km, not {text!r}")
        if self.here is None:
            raise PluginError("too_far needs distance (our IP address or LATITUDE,LONGITUDE)")
        return km

    # -- the hooks --------------------------------------------------------------------------
    def hook_connect(self, transaction):
        ip = self.connection.remote_ip
        try:
            if ipaddress.ip_address(ip).is_loopback:
                self.log(LOGDEBUG, "skip, localhost")
                return DECLINED
            found = self.lookup(ip)
        except (ValueError, InvalidDatabaseError) as exc:  # e.g. an IPv6 client, IPv4-only database
            self.log(LOGERROR, f"skip, lookup of {ip} failed: {exc}")
            return DECLINED
        if not found:
            self.log(LOGINFO, "skip, no results")
            return DECLINED
        notes = self.connection.notes
        notes.update(found)
        parts = [notes.get(key) for key in ("geoip_continent", "geoip_country", "geoip_city")]
        if "geoip_distance" in found:
            parts.append(f"{found['geoip_distance']} km")
            if self.too_far is not None and found["geoip_distance"] > self.too_far:
                self.adjust_karma(-1)
        self.log(LOGINFO, ", ".join(str(part) for part in parts if part))
        return DECLINED

    def add_headers(self, transaction):
        header = transaction.header
        for name, note in HEADER_NOTES:
            value = self.connection.notes.get(note)
            if value is None or value == "":
                continue
            header.delete(name)
            header.add(name, str(value), 0)
        return DECLINED

    # -- the lookups ------------------------------------------------------------------------
    def lookup(self, ip: str) -> dict:
        """The notes for `ip` (only those the databases know)."""
        if self.readers is None:
            self.readers = {kind: self.open_database(path) for kind, path in self.paths.items() if path}
        found = {}
        record = self.readers["city"].get(ip) if "city" in self.readers else None
        if record is None and "country" in self.readers:
            record = self.readers["country"].get(ip)
        if record is not None:
            found["geoip_country"] = (record.get("country") or {}).get("iso_code")
            found["geoip_country_name"] = english_name(record, "country")
            found["geoip_continent"] = (record.get("continent") or {}).get("code")
            found["geoip_city"] = english_name(record, "city")
            found["geoip_asn"] = (record.get("traits") or {}).get("autonomous_system_number")
            there = location_of(record)
            if self.here is not None and there is not None:
                found["geoip_distance"] = great_circle_km(self.here, there)
        asn = self.readers["asn"].get(ip) if "asn" in self.readers else None
        if asn and asn.get("autonomous_system_number") is not None:
            found["geoip_asn"] = asn["autonomous_system_number"]
        return {note: value for note, value in found.items() if value is not None}
