"""Registers to values: every type, byte and word order of the register-map schema.

A register is 16 bits sent high byte first. For a value whose big-endian bytes are A B C D the
device may send the registers as [AB][CD] (ABCD, the Modbus norm), [CD][AB] (CDAB, word-swapped),
[BA][DC] (BADC, byte-swapped) or [DC][BA] (DCBA, little-endian). 64-bit values generalise the same
two swaps (word order reversed, bytes within each word swapped). pymodbus' own converter only
swaps whole words, so the byte swaps are done here with `struct`, once per point.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

from collector.modbus.maps import Point

_STRUCT = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}
_UNSIGNED_BY_REGISTERS = {1: ">H", 2: ">I", 4: ">Q"}


class PointDecodeError(ValueError):
    """Registers that do not make a usable value (a float NaN/Inf, too few registers)."""


def normalise(registers: Sequence[int], byte_order: str) -> bytes:
    """The big-endian bytes of the value, whatever order the device sent them in."""
    words = list(registers)
    if byte_order in ("CDAB", "DCBA"):
        words.reverse()
    data = struct.pack(f">{len(words)}H", *words)
    if byte_order in ("BADC", "DCBA"):
        swapped = bytearray(len(data))
        swapped[0::2] = data[1::2]
        swapped[1::2] = data[0::2]
        data = bytes(swapped)
    return data


def decode_string(registers: Sequence[int], byte_order: str) -> str:
    data = struct.pack(f">{len(registers)}H", *registers)
    if byte_order in ("BADC", "DCBA"):  # strings only ever swap the two characters of a register
        swapped = bytearray(len(data))
        swapped[0::2] = data[1::2]
        swapped[1::2] = data[0::2]
        data = bytes(swapped)
    return data.split(b"\x00", 1)[0].decode("latin-1").strip()


RawDecoder = Callable[[Sequence[int]], int | float | str]


def raw_decoder(point: Point) -> RawDecoder:
    """A function from the point's registers to its raw value (int, float or str)."""
    order = point.byte_order
    if point.type == "string":
        return lambda regs: decode_string(regs, order)
    fmt = _UNSIGNED_BY_REGISTERS[point.register_count] if point.type == "bitfield" else _STRUCT[point.type]
    unpack = struct.Struct(fmt).unpack
    if order == "ABCD":
        count = point.register_count
        pack = struct.Struct(f">{count}H").pack

        def fast(regs: Sequence[int]) -> int | float:
            return unpack(pack(*regs))[0]  # type: ignore[no-any-return]

        return fast

    def ordered(regs: Sequence[int]) -> int | float:
        return unpack(normalise(regs, order))[0]  # type: ignore[no-any-return]

    return ordered


def scaled(point: Point, raw: float, sf: int | None = None) -> float:
    """Physical value; raises PointDecodeError for a float that is not a number."""
    value = float(raw)
    if not math.isfinite(value):
        raise PointDecodeError(f"{point.metric}: the device sent {raw!r}")
    if sf is not None:
        value *= 10.0**sf
    return value * point.scale + point.offset
