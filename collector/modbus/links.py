"""Links: one connection per TCP device, gateway or serial line, requests serialised on it.

A bus (RS-485, or the RTU side of a TCP gateway) answers one request at a time, so every device
behind one link shares its lock. Devices on separate links never wait for each other. pymodbus'
own retries and automatic reconnects are off: the poller retries and backs off itself so that
every timeout is counted and a dead device never hides behind a library loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from collector.modbus.settings import ModbusDeviceConfig

log = logging.getLogger(__name__)

ErrorKind = Literal["exception", "timeout", "connection", "decode"]

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ModbusReadError(Exception):
    def __init__(self, kind: ErrorKind, detail: str, code: int | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.code = code
        self.detail = detail

    @property
    def label(self) -> str:
        """Short label for counters: timeout, connection, exception_02..."""
        return f"exception_{self.code:02d}" if self.kind == "exception" and self.code is not None else self.kind


class Link:
    """One connection. `read` is the only way out, and it can only read (FC 1-4)."""

    def __init__(self, cfg: ModbusDeviceConfig) -> None:
        self.key = cfg.link_key
        self.transport = cfg.transport
        self.lock = asyncio.Lock()
        self.requests = 0
        self.connects = 0
        self.timeout_s = cfg.timeout_s
        self.client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if cfg.transport == "rtu":
            assert cfg.serial is not None
            s = cfg.serial
            self.client = AsyncModbusSerialClient(
                s.port,
                framer=FramerType.RTU,
                baudrate=s.baudrate,
                bytesize=s.bytesize,
                parity=s.parity,
                stopbits=s.stopbits,
                timeout=cfg.timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        else:
            assert cfg.host is not None
            self.client = AsyncModbusTcpClient(
                cfg.host,
                port=cfg.port,
                framer=FramerType.RTU if cfg.transport == "rtu_over_tcp" else FramerType.SOCKET,
                timeout=cfg.timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        # A timeout is handled by the poller (retry, back off); never let pymodbus drop the link on its own.
        self.client.set_max_no_responses(1_000_000)

    @property
    def connected(self) -> bool:
        return self.client.connected

    async def connect(self, timeout_s: float) -> None:
        """Open the connection if it is not; raises ModbusReadError(kind='connection')."""
        if self.client.connected:
            return
        self.client.comm_params.timeout_connect = timeout_s
        try:
            ok = await asyncio.wait_for(self.client.connect(), timeout_s + 1)
        except (TimeoutError, OSError, ModbusException) as exc:
            raise ModbusReadError("connection", f"cannot connect to {self.key}: {exc}") from None
        if not ok:
            raise ModbusReadError("connection", f"cannot connect to {self.key} (refused or unreachable)")
        self.connects += 1

    async def read(self, fc: int, address: int, count: int, unit: int, timeout_s: float) -> list[int]:
        """Registers (fc 3/4) or bits as 0/1 (fc 1/2). Raises ModbusReadError."""
        if fc not in (1, 2, 3, 4):  # read-only by construction: nothing else can leave this process
            raise ValueError(f"function code {fc} is not a read; GridSentry never writes to field equipment")
        async with self.lock:
            await self.connect(timeout_s)
            # Devices sharing a link may have their own timeouts; pymodbus waits on its transaction copy.
            self.client.ctx.comm_params.timeout_connect = timeout_s
            self.requests += 1
            try:
                if fc == 3:
                    rr = await self.client.read_holding_registers(address, count=count, device_id=unit)
                elif fc == 4:
                    rr = await self.client.read_input_registers(address, count=count, device_id=unit)
                elif fc == 1:
                    rr = await self.client.read_coils(address, count=count, device_id=unit)
                else:
                    rr = await self.client.read_discrete_inputs(address, count=count, device_id=unit)
            except ModbusIOException as exc:
                self._drop_after_timeout()
                raise ModbusReadError("timeout", f"no answer within {timeout_s:g} s: {exc}") from None
            except (ConnectionException, OSError) as exc:
                self.close()
                raise ModbusReadError("connection", f"connection to {self.key} lost: {exc}") from None
            except ModbusException as exc:
                self._drop_after_timeout()
                raise ModbusReadError("decode", f"unusable response: {exc}") from None
            if rr.isError():
                code = getattr(rr, "exception_code", None)
                name = EXCEPTION_NAMES.get(code or 0, "unknown")
                raise ModbusReadError("exception", f"exception {code:02d} ({name})", code)
            if fc in (1, 2):
                bits = list(rr.bits)[:count]
                if len(bits) < count:
                    raise ModbusReadError("decode", f"asked for {count} bits, got {len(bits)}")
                return [1 if b else 0 for b in bits]
            regs = list(rr.registers)
            if len(regs) != count:
                raise ModbusReadError("decode", f"asked for {count} registers, got {len(regs)}")
            return regs

    def _drop_after_timeout(self) -> None:
        # A late answer would arrive as the answer to the next request: start the next one on a fresh
        # connection instead. A serial line has no connection to drop; its framer resynchronises.
        if self.transport != "rtu":
            self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


class LinkPool:
    """Links by key: devices behind one gateway or on one serial line share one."""

    def __init__(self) -> None:
        self.links: dict[str, Link] = {}

    def get(self, cfg: ModbusDeviceConfig) -> Link:
        link = self.links.get(cfg.link_key)
        if link is None:
            link = self.links[cfg.link_key] = Link(cfg)
        return link

    def close(self) -> None:
        for link in self.links.values():
            link.close()
