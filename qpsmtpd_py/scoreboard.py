"""The scoreboard: which client IP every session of every child is serving.

One anonymous shared memory map, made by the master before it forks, holds a
16-byte slot per possible session: `regions` child regions of
`sessions_per_child` slots each. A child writes only the slots of its own
region (no lock needed); the master reads them to see how busy the children
are, and `pre-connection` plugins get every session's IP from it (qpsmtpd's
`child_addrs`), so `--max-from-ip` holds across all children. Addresses are
stored as IPv6 (IPv4 as ::ffff:a.b.c.d), so IPv4 clients count the same on a
`[::]` listener as on a `0.0.0.0` one (qpsmtpd issue #315).
"""

from __future__ import annotations

import ipaddress
import mmap

SLOT = 16
_FREE = bytes(SLOT)


def pack_ip(ip: str) -> bytes:
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if address.version == 4:
        address = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
    return address.packed


def unpack_ip(packed: bytes) -> str:
    address = ipaddress.IPv6Address(packed)
    return str(address.ipv4_mapped or address)


class Scoreboard:
    def __init__(self, regions: int, sessions_per_child: int) -> None:
        self.regions = regions
        self.sessions_per_child = sessions_per_child
        self.region_size = sessions_per_child * SLOT
        self.memory = mmap.mmap(-1, regions * self.region_size)  # MAP_SHARED: survives fork
        self._empty_region = bytes(self.region_size)

    def _region(self, index: int) -> tuple[int, int]:
        start = index * self.region_size
        return start, start + self.region_size

    def take(self, index: int, ip: str) -> int:
        """Record a session of child `index`; returns its slot (-1 if the region is full)."""
        start, end = self._region(index)
        offset = self.memory.find(_FREE, start, end)
        while offset >= 0:
            if (offset - start) % SLOT == 0:
                self.memory[offset:offset + SLOT] = pack_ip(ip)
                return offset
            # Zeros straddling two slots (an address ending in zeros): look further.
            offset = self.memory.find(_FREE, offset + SLOT - (offset - start) % SLOT, end)
        return -1

    def release(self, slot: int) -> None:
        if slot >= 0:
            self.memory[slot:slot + SLOT] = _FREE

    def clear(self, index: int) -> None:
        """Free every slot of a child that is gone (it may have died holding some)."""
        start, end = self._region(index)
        self.memory[start:end] = bytes(end - start)

    def busy(self, index: int) -> int:
        start, end = self._region(index)
        return len(self._busy_slots(start, end))

    def _busy_slots(self, start: int, end: int) -> list[int]:
        """Offsets of the used slots in [start, end), a whole number of regions.

        An empty region is skipped with one memcmp; only busy ones are walked.
        """
        memory, size, slots = self.memory, self.region_size, []
        for region in range(start, end, size):
            if memory[region:region + size] == self._empty_region:
                continue
            slots.extend(offset for offset in range(region, region + size, SLOT)
                         if memory[offset:offset + SLOT] != _FREE)
        return slots

    def count(self, ip: str) -> int:
        """Sessions from `ip` in all children."""
        key = pack_ip(ip)
        return sum(1 for slot in self._busy_slots(0, len(self.memory)) if self.memory[slot:slot + SLOT] == key)

    def addresses(self, skip_slot: int = -1) -> list[str]:
        """Every busy slot's IP, except `skip_slot` (qpsmtpd's child_addrs)."""
        return [unpack_ip(self.memory[slot:slot + SLOT]) for slot in self._busy_slots(0, len(self.memory))
                if slot != skip_slot]
