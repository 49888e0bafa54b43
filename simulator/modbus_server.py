"""Simulated Modbus devices: pymodbus servers serving a register map's points, with fault injection.

Each device encodes its current values into the registers its map describes (TCP, or RTU on a
serial port such as one end of a socat pty pair). Faults: an exception on chosen addresses,
silence (requests go unanswered, as a hung device), and kill/restart. Every function code a
server receives is recorded, so tests can prove GridSentry never sends anything but reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from collector.modbus.maps import Point, RegisterMap

ValueSource = Callable[[str, float], float | int | str]  # (metric, elapsed seconds) -> physical value

_PACK = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}
_BITFIELD = {1: ">H", 2: ">I", 4: ">Q"}


def encode_point(point: Point, value: float | int | str) -> list[int]:
    """Registers for one value as the device would send them (raw = (value - offset) / scale)."""
    if point.type == "string":
        data = str(value).encode("latin-1")[: 2 * point.register_count].ljust(2 * point.register_count, b"\x00")
        if point.byte_order in ("BADC", "DCBA"):
            data = bytes(b for pair in zip(data[1::2], data[0::2], strict=True) for b in pair)
        return list(struct.unpack(f">{point.register_count}H", data))
    if point.type == "bitfield":
        raw: float | int = int(value)
        fmt = _BITFIELD[point.register_count]
    else:
        fmt = _PACK[point.type]
        physical = (float(value) - point.offset) / point.scale
        raw = physical if point.type.startswith("float") else round(physical)
        if point.enum is not None or point.bits is not None:
            raw = int(value)
    data = struct.pack(fmt, raw)
    if point.byte_order in ("BADC", "DCBA"):
        data = bytes(b for pair in zip(data[1::2], data[0::2], strict=True) for b in pair)
    words = list(struct.unpack(f">{len(data) // 2}H", data))
    if point.byte_order in ("CDAB", "DCBA"):
        words.reverse()
    return words


class SimulatedModbusDevice:
    """One unit id's register image, refreshed from a value source on every read."""

    def __init__(self, register_map: RegisterMap, values: ValueSource, unit: int = 1) -> None:
        self.map = register_map
        self.values = values
        self.unit = unit
        self.t0 = time.monotonic()
        self.exception_at: set[tuple[int, int]] = set()  # (fc, protocol address) answering exception 02
        self.silent = False
        self.overrides: dict[str, float | int | str] = {}
        self.raw_overrides: dict[tuple[int, int], int] = {}  # (fc, address) -> register, e.g. a marker
        self.not_implemented: set[str] = set()  # metrics served as their point's "not implemented" sentinel
        self.reads = 0

    def image(self, fc: int) -> dict[int, int]:
        """Current registers (fc 3/4) or bits (fc 1/2) by protocol address."""
        elapsed = time.monotonic() - self.t0
        # Fixed registers first (markers, headers, pads); the points' live values go on top.
        out: dict[int, int] = {addr: word for (f, addr), word in self.raw_overrides.items() if f == fc}
        for p in self.map.points:
            if p.fc != fc:
                continue
            addr = self.map.protocol_address(p)
            value = self.overrides.get(p.metric)
            if value is None:
                value = self.values(p.metric, elapsed)
            if p.type == "bit":
                out[addr] = 1 if value else 0
            elif p.metric in self.not_implemented and p.sentinel is not None:
                n = p.register_count
                for i in range(n):
                    out[addr + i] = (p.sentinel >> (16 * (n - 1 - i))) & 0xFFFF
            else:
                for i, word in enumerate(encode_point(p, value)):
                    out[addr + i] = word
        return out

    def sim_device(self) -> SimDevice:
        """One contiguous block per table, as most devices have: holes between points read as 0."""
        blocks: list[list[SimData]] = [[], [], [], []]
        for fc in (1, 2, 3, 4):
            spans = [(self.map.protocol_address(p), p.register_count) for p in self.map.points if p.fc == fc]
            spans += [(a, 1) for (f, a) in self.raw_overrides if f == fc]
            bits = fc in (1, 2)
            dtype = DataType.BITS if bits else DataType.REGISTERS
            if not spans:  # pymodbus wants every table; an unused one answers exception 02
                spans = [(65000, 16 if bits else 1)]
            start = min(a for a, _n in spans)
            count = max(a + n for a, n in spans) - start
            values: Any = [False] * count if bits else [0] * count
            blocks[fc - 1].append(SimData(start, values=values, datatype=dtype))
        return SimDevice(self.unit, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]), action=self._action)

    async def _action(
        self,
        fc: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.reads += 1
        if self.silent:
            raise NoSuchIdException("simulated silent device")  # with ignore_missing_devices: no answer at all
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # the simulated field equipment is read-only too
        span = range(address, address + count)
        if fc in (1, 2):
            bits = self.image(fc)
            if any((fc, a) in self.exception_at for a in span):
                return ExcCodes.ILLEGAL_ADDRESS
            for j in range(len(registers) - 1):
                word = 0
                base = (start_address + j) * 16
                for b in range(16):
                    if bits.get(base + b):
                        word |= 1 << b
                registers[j] = word
            return None
        if any((fc, a) in self.exception_at for a in span):
            return ExcCodes.ILLEGAL_ADDRESS
        image = self.image(fc)
        for a in span:
            if a in image:
                registers[a - start_address] = image[a]
        return None


class SimulatedModbusServer:
    """A TCP (or serial RTU) server for one or more simulated units (a gateway or RS-485 line)."""

    def __init__(
        self,
        devices: list[SimulatedModbusDevice],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        serial_port: str | None = None,
        framer: FramerType | None = None,
    ) -> None:
        self.devices = devices
        self.host = host
        self.port = port
        self.serial_port = serial_port
        self.framer = framer
        self.function_codes: Counter[int] = Counter()
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.function_codes[pdu.function_code] += 1
        return pdu

    async def start(self) -> None:
        context = [d.sim_device() for d in self.devices]
        if self.serial_port is not None:
            self._server = ModbusSerialServer(
                context,
                framer=self.framer or FramerType.RTU,
                port=self.serial_port,
                baudrate=115200,
                ignore_missing_devices=True,
                trace_pdu=self._trace,
            )
        else:
            if self.port == 0:
                self.port = free_port(self.host)
            self._server = ModbusTcpServer(
                context,
                framer=self.framer or FramerType.SOCKET,
                address=(self.host, self.port),
                ignore_missing_devices=True,
                trace_pdu=self._trace,
            )
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
            await asyncio.sleep(0)

    @property
    def running(self) -> bool:
        return self._server is not None


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wave(mean: float, amplitude: float, period_s: float = 60.0, phase: float = 0.0) -> Callable[[float], float]:
    """A slow sine around a mean: plausible, deterministic values for simulated registers."""
    return lambda t: mean + amplitude * math.sin(2 * math.pi * t / period_s + phase)
