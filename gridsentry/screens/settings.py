"""The `screens:` config section: what /metrics exports about the fleet and how the wall screen looks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class WallConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field("GridSentry 监控中心 · Monitoring centre", description="Heading of the wall screen at /.")
    refresh_s: float = Field(
        5.0, ge=1, le=300, description="How often the wall screen asks for fresh figures, in seconds."
    )
    sla_warn_s: float = Field(
        300.0,
        ge=0,
        description="A countdown turns amber when this many seconds or fewer are left before an SLA deadline.",
    )


class ScreensConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reading_max_age_s: float = Field(
        900.0,
        gt=0,
        description="Readings older than this (seconds) leave /metrics, so a silent device's last value does not "
        "look current; gridsentry_device_up and last-seen age show the silence instead.",
    )
    offline_after_intervals: float = Field(
        3.0,
        gt=0,
        description="A device counts as offline after this many of its expected reporting intervals without data.",
    )
    wall: WallConfig = Field(default_factory=WallConfig, description="The built-in wall screen at /.")
