"""Small GeoIP2 databases for the ident/geoip tests, written with the `mmdb-writer` package.

Laid out as MaxMind's GeoLite2 files (same file names, same record shape), with
documentation networks only: IPv4 and IPv6 addresses, a city with its
coordinates, a country-only network, and AS numbers.
"""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

PARIS_V4 = "203.0.113.0/24"
TOKYO_V6 = "2001:db8:1::/48"
GERMANY_ONLY_V4 = "198.51.100.0/24"  # in the country database only
PARIS = (48.8566, 2.3522)
TOKYO = (35.6895, 139.6917)
ASN = {PARIS_V4: 64500, TOKYO_V6: 64501}
CONTINENTS = {"EU": "Europe", "AS": "Asia"}


def city_record(country: tuple[str, str], continent: str, city: str, where: tuple[float, float]) -> dict:
    return {"continent": {"code": continent, "names": {"en": CONTINENTS[continent]}},
            "country": {"iso_code": country[0], "names": {"en": country[1]}},
            "city": {"names": {"en": city}},
            "location": {"latitude": where[0], "longitude": where[1]}}


def write_database(path: Path, database_type: str, networks: dict[str, dict], ip_version: int = 6) -> Path:
    writer = MMDBWriter(ip_version=ip_version, ipv4_compatible=ip_version == 6, database_type=database_type,
                        languages=["en"], description="test data")
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def write_geolite2(directory: Path, city: bool = True, country: bool = True, asn: bool = True) -> Path:
    """GeoLite2-City, -Country and -ASN .mmdb files in `directory` (made if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    paris = city_record(("FR", "France"), "EU", "Paris", PARIS)
    tokyo = city_record(("JP", "Japan"), "AS", "Tokyo", TOKYO)
    if city:
        write_database(directory / "GeoLite2-City.mmdb", "GeoLite2-City", {PARIS_V4: paris, TOKYO_V6: tokyo})
    if country:
        germany = {"continent": {"code": "EU"}, "country": {"iso_code": "DE", "names": {"en": "Germany"}}}
        write_database(directory / "GeoLite2-Country.mmdb", "GeoLite2-Country",
                       {GERMANY_ONLY_V4: germany, PARIS_V4: {key: paris[key] for key in ("continent", "country")}})
    if asn:
        write_database(directory / "GeoLite2-ASN.mmdb", "GeoLite2-ASN",
                       {network: {"autonomous_system_number": number,
                                  "autonomous_system_organization": f"Test AS {number}"}
                        for network, number in ASN.items()})
    return directory
