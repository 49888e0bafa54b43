"""`gridsentry modbus ...`: scan a device for SunSpec models, read a device with a map, check maps."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from collector.modbus.maps import MapError, builtin_maps, load_map_file, resolve_map
from collector.modbus.settings import ModbusDeviceConfig

if TYPE_CHECKING:  # pymodbus is imported by the commands that talk to devices, not by every CLI start
    from collector.modbus.poller import DevicePoller, PollOutput

modbus_app = typer.Typer(help="Modbus devices: SunSpec scan, one-off reads, register-map checks.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


def _endpoint(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":") if target.count(":") == 1 else (target, "", "")
    if not host:
        host, port = target, ""
    try:
        return host, int(port) if port else 502
    except ValueError:
        raise typer.BadParameter(f"{target!r} is not HOST or HOST:PORT") from None


@modbus_app.command("scan")
def scan(
    target: Annotated[str, typer.Argument(help="HOST or HOST:PORT of the device or gateway (port 502 by default).")],
    unit: Annotated[int, typer.Option(help="Unit (slave) id.")] = 1,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer.")] = 2.0,
    gateway: Annotated[bool, typer.Option(help="RTU frames through a TCP gateway (rtu_over_tcp).")] = False,
) -> None:
    """Find a SunSpec device: marker, model chain, nameplate, and one decoded poll."""
    host, port = _endpoint(target)
    cfg = ModbusDeviceConfig(
        transport="rtu_over_tcp" if gateway else "tcp", host=host, port=port, unit=unit, timeout_s=timeout, retries=0
    )
    code = asyncio.run(_scan(cfg))
    raise typer.Exit(code)


async def _scan(cfg: ModbusDeviceConfig) -> int:
    import collector.modbus.collector  # noqa: F401  (quietens pymodbus' own logging)
    from collector.modbus.links import Link, ModbusReadError
    from collector.modbus.poller import DevicePoller
    from collector.modbus.sunspec import SunSpecNotFoundError, discover

    link = Link(cfg)
    try:

        async def read(address: int, count: int) -> list[int]:
            return await link.read(3, address, count, cfg.unit, cfg.timeout_s)

        try:
            device = await discover(read)
        except SunSpecNotFoundError as exc:
            err_console.print(f"[bold red]{cfg.endpoint}:[/] {exc}")
            return 1
        except ModbusReadError as exc:
            err_console.print(f"[bold red]{cfg.endpoint}:[/] {exc.detail}")
            return 1
        c = device.common
        console.print(
            f"[green]SunSpec device[/] at {cfg.endpoint}, marker at register {device.base}: "
            f"{c.get('manufacturer', '?')} {c.get('model', '?')}, serial {c.get('serial', '?')}, "
            f"version {c.get('version', '?')}"
        )
        table = Table("model", "name", "address", "length", "decoded")
        for m in device.models:
            table.add_row(str(m.id), m.name, str(m.address), str(m.length), "yes" if m.decoded else "no (skipped)")
        console.print(table)
        outputs: list[PollOutput] = []
        poller = DevicePoller("scan", cfg, link, device.register_map(), lambda _d, out: outputs.append(out))
        if not await poller.poll_once():
            err_console.print("[bold red]the device stopped answering after discovery[/]")
            return 1
        _print_poll(poller, outputs)
        return 0
    finally:
        link.close()


@modbus_app.command("read")
def read(
    target: Annotated[str, typer.Argument(help="HOST or HOST:PORT of the device or gateway.")],
    map_name: Annotated[str, typer.Option("--map", help="Shipped map name, a .yaml path, or sunspec.")] = "sunspec",
    unit: Annotated[int, typer.Option(help="Unit (slave) id.")] = 1,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer.")] = 2.0,
    gateway: Annotated[bool, typer.Option(help="RTU frames through a TCP gateway (rtu_over_tcp).")] = False,
) -> None:
    """Poll a device once with a register map and print the decoded readings and events."""
    host, port = _endpoint(target)
    cfg = ModbusDeviceConfig(
        transport="rtu_over_tcp" if gateway else "tcp",
        host=host,
        port=port,
        unit=unit,
        map=map_name,
        timeout_s=timeout,
        retries=0,
    )
    register_map = None
    if map_name != "sunspec":
        try:
            register_map = load_map_file(resolve_map(map_name))
        except MapError as exc:
            for issue in exc.issues:
                err_console.print(f"  {issue}")
            raise typer.Exit(2) from None
    raise typer.Exit(asyncio.run(_read(cfg, register_map)))


async def _read(cfg: ModbusDeviceConfig, register_map: object) -> int:
    import collector.modbus.collector  # noqa: F401  (quietens pymodbus' own logging)
    from collector.modbus.links import Link
    from collector.modbus.poller import DevicePoller

    link = Link(cfg)
    outputs: list[PollOutput] = []
    try:
        poller = DevicePoller("read", cfg, link, register_map, lambda _d, out: outputs.append(out))  # type: ignore[arg-type]
        ok = await poller.poll_once()
        if not ok:
            err_console.print(f"[bold red]{cfg.endpoint} did not answer:[/] {dict(poller.health.errors)}")
            return 1
        _print_poll(poller, outputs)
        return 0
    finally:
        link.close()


def _print_poll(poller: DevicePoller, outputs: list[PollOutput]) -> None:
    assert poller.register_map is not None
    units = {p.metric: p.unit or "" for p in poller.register_map.points}
    table = Table("metric", "value", "unit", "quality")
    for out in outputs:
        for metric, value, quality in zip(out.metric, out.value, out.quality, strict=True):
            table.add_row(
                metric,
                "" if value is None else f"{value:.6g}",
                units.get(metric, ""),
                "good" if quality == 0 else "suspect",
            )
    console.print(table)
    for out in outputs:
        for kind, code, text in zip(out.ev_kind, out.ev_code, out.ev_text, strict=True):
            console.print(f"event \\[{kind}] {code}: {text}", highlight=False)
    h = poller.health
    console.print(
        f"[dim]{h.requests} requests ({', '.join(r.describe() for r in poller.requests)}); "
        f"errors: {dict(h.errors) or 'none'}[/]"
    )


@modbus_app.command("check-map")
def check_map(files: Annotated[list[Path], typer.Argument(help="Register map files to validate.")]) -> None:
    """Validate register maps; print every problem with file and line."""
    bad = 0
    for f in files:
        try:
            m = load_map_file(f)
        except MapError as exc:
            bad += 1
            err_console.print(f"[bold red]{f}: {len(exc.issues)} problem(s)[/]")
            for issue in exc.issues:
                err_console.print(f"  {issue}")
            continue
        console.print(f"[green]{f} is valid[/]: {len(m.points)} points")
    raise typer.Exit(1 if bad else 0)


@modbus_app.command("maps")
def maps() -> None:
    """List the shipped register maps."""
    for name in builtin_maps():
        m = load_map_file(resolve_map(name))
        console.print(f"{name}: {m.description} ({len(m.points)} points)")
