"""Request planning: the fewest reads that cover a map's points.

Points of one table (function code) merge into one read while the span stays within the protocol
cap (125 registers, 2000 bits) and the map's own cap, and the hole between two neighbours is at
most the map's `max_gap`. Devices that refuse a merged read (exception 02 when the span touches an
undefined register) are read point by point instead: `split` gives the per-point plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector.modbus.maps import Point, RegisterMap


@dataclass(frozen=True, slots=True)
class Slot:
    """One point inside a read: its index in the map and its offset from the read's start."""

    index: int
    offset: int


@dataclass(frozen=True, slots=True)
class ReadRequest:
    fc: int
    address: int
    count: int
    slots: tuple[Slot, ...]

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.fc, self.address, self.count)

    def describe(self) -> str:
        table = {1: "coils", 2: "discrete inputs", 3: "holding", 4: "input"}[self.fc]
        return f"fc {self.fc} ({table}) {self.address}+{self.count}"


def plan(register_map: RegisterMap, indices: list[int] | None = None) -> list[ReadRequest]:
    """Merged reads for the given points (all by default), in table then address order."""
    points = register_map.points
    chosen = range(len(points)) if indices is None else indices
    by_fc: dict[int, list[tuple[int, int, int]]] = {}
    for i in chosen:
        p = points[i]
        by_fc.setdefault(p.fc, []).append((register_map.protocol_address(p), p.register_count, i))
    out: list[ReadRequest] = []
    for fc in sorted(by_fc):
        bits = fc in (1, 2)
        cap = register_map.max_bits_per_read if bits else register_map.max_registers_per_read
        gap = register_map.max_gap * (16 if bits else 1)
        spans = sorted(by_fc[fc])
        start, end, slots = spans[0][0], spans[0][0] + spans[0][1], [Slot(spans[0][2], 0)]
        for addr, length, i in spans[1:]:
            if addr - end <= gap and addr + length - start <= cap:
                slots.append(Slot(i, addr - start))
                end = max(end, addr + length)
                continue
            out.append(ReadRequest(fc, start, end - start, tuple(slots)))
            start, end, slots = addr, addr + length, [Slot(i, 0)]
        out.append(ReadRequest(fc, start, end - start, tuple(slots)))
    return out


def split(register_map: RegisterMap, request: ReadRequest) -> list[ReadRequest]:
    """One read per point of a merged read (for devices that refuse merged reads)."""
    points: list[Point] = register_map.points
    return [
        ReadRequest(
            request.fc,
            register_map.protocol_address(points[s.index]),
            points[s.index].register_count,
            (Slot(s.index, 0),),
        )
        for s in request.slots
    ]
