"""The `alerts:` section of the config: SLA policy, standby, maintenance, escalation, on-call rota, channels.

Durations are written like rule durations (`30s`, `5m`, `2h`, `3d`) or as seconds. Every model forbids
unknown keys, so a misspelt key is an error with its line, not a silently ignored setting.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rules.model import parse_duration


def _seconds(v: object) -> object:
    return parse_duration(v) if isinstance(v, str | int | float) else v


Seconds = Annotated[float, BeforeValidator(_seconds)]
EventClass = Literal["I", "II", "III"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassDeadlines(_Model):
    acknowledge: Seconds = Field(description="Respond (acknowledge) within this, e.g. 5m.")
    on_site: Seconds = Field(description="Engineer on site within this, e.g. 2h.")
    restore: Seconds = Field(description="Operation restored / fault cleared within this, e.g. 12h.")


class SlaPolicyConfig(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="Policy name, referred to by alerts.sla.policy.")
    description: str = Field("", description="Where the figures come from (contract, clause).")
    classes: dict[EventClass, ClassDeadlines] = Field(description="Deadlines for event classes I, II and III.")

    @model_validator(mode="after")
    def _all_classes(self) -> SlaPolicyConfig:
        missing = [c for c in ("I", "II", "III") if c not in self.classes]
        if missing:
            raise ValueError(f"SLA policy {self.name!r} has no deadlines for class {', '.join(missing)}")
        return self


class StandbyConfig(_Model):
    window: Literal["7x24", "5x8", "5x10"] = Field(
        "7x24",
        description="Contracted standby (service hours): 7x24 round the clock, 5x8 or 5x10 on working days.",
    )
    start: str = Field(
        "08:30",
        pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
        description="Start of the working day for 5x8 / 5x10 (local time).",
    )
    timezone: str = Field("Asia/Shanghai", description="IANA time zone of the standby hours and the rota.")
    pause_outside: bool = Field(
        True,
        description="SLA clocks stop outside the standby hours (true) or keep running (false). No effect on 7x24.",
    )
    holidays: list[date] = Field(default_factory=list, description="Public holidays without standby (5x8 / 5x10).")

    @field_validator("start", mode="before")
    @classmethod
    def _sexagesimal(cls, v: object) -> object:
        # YAML 1.1 reads an unquoted 10:00 as the base-60 integer 600.
        return f"{v // 60:02d}:{v % 60:02d}" if isinstance(v, int) and not isinstance(v, bool) else v

    @property
    def start_time(self) -> time:
        return time.fromisoformat(self.start)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{v!r} is not an IANA time zone (e.g. Asia/Shanghai)") from exc
        return v


class MaintenanceWindowConfig(_Model):
    id: str = Field(description="Reference of the announcement, e.g. the change ticket.")
    start: datetime = Field(description="When the planned work starts (ISO 8601 with offset).")
    end: datetime = Field(description="When it ends.")
    announced_at: datetime = Field(description="When the customer was notified; must be the contract's notice ahead.")
    devices: list[str] = Field(default_factory=list, description="Devices under maintenance.")
    sites: list[str] = Field(default_factory=list, description="...or whole sites.")
    reason: str = Field("", description="What is being done, shown on suppressed alerts.")

    @model_validator(mode="after")
    def _sane(self) -> MaintenanceWindowConfig:
        for name in ("start", "end", "announced_at"):
            if getattr(self, name).tzinfo is None:
                raise ValueError(f"maintenance window {self.id!r}: {name} needs a UTC offset, e.g. +08:00")
        if self.end <= self.start:
            raise ValueError(f"maintenance window {self.id!r} ends before it starts")
        if not self.devices and not self.sites:
            raise ValueError(f"maintenance window {self.id!r} lists no devices and no sites")
        return self


class EscalationLevelConfig(_Model):
    name: str = Field(description="Shown to people, e.g. 'on-call engineer', 'second line', 'manager'.")
    rota: str = Field(description="The rota (alerts.oncall.rotas[].name) whose current member is paged.")
    after: Seconds = Field(
        description="Paged when the alert is still unacknowledged this long after it fired (SLA-clock time)."
    )


class PersonConfig(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Short id, e.g. wang.fang.")
    name: str = Field(description="Full name shown on screens.")
    phone: str | None = Field(None, description="Phone number for the duty desk.")
    contacts: list[SecretStr] = Field(
        default_factory=list,
        description="Apprise URLs tried in order (the next one when one keeps failing): mailto://, dingtalk://, "
        "wecombot://, feishu://, tgram://, ntfy://... Write ${ENV} for tokens.",
    )


class OverrideConfig(_Model):
    person: str = Field(description="Who covers.")
    start: datetime = Field(description="From (ISO 8601 with offset).")
    end: datetime = Field(description="Until.")

    @model_validator(mode="after")
    def _aware(self) -> OverrideConfig:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError(f"override for {self.person}: start and end need a UTC offset, e.g. +08:00")
        if self.end <= self.start:
            raise ValueError(f"override for {self.person} ends before it starts")
        return self


class RotaConfig(_Model):
    name: str = Field(description="Rota name, referred to by escalation levels.")
    people: list[str] = Field(min_length=1, description="Person ids in rotation order.")
    rotate_every: Seconds = Field(7 * 86400.0, gt=0, description="Shift length: 7d for weekly rotation.")
    handover: str = Field(
        "mon 09:00", description="First hand-over (weekday and local time), e.g. 'mon 09:00'; shifts count from it."
    )
    since: date = Field(date(2026, 1, 5), description="The week the first person in `people` started.")
    overrides: list[OverrideConfig] = Field(default_factory=list, description="Holiday cover and swaps.")

    @field_validator("handover")
    @classmethod
    def _handover(cls, v: str) -> str:
        if not re.fullmatch(r"(mon|tue|wed|thu|fri|sat|sun) ([01]\d|2[0-3]):[0-5]\d", v.strip().lower()):
            raise ValueError(f"{v!r} is not a hand-over time; write a weekday and time, e.g. 'mon 09:00'")
        return v.strip().lower()


class OncallConfig(_Model):
    people: list[PersonConfig] = Field(default_factory=list, description="Who can be paged.")
    rotas: list[RotaConfig] = Field(default_factory=list, description="Rotas: on-call engineers, second line...")

    @model_validator(mode="after")
    def _known_people(self) -> OncallConfig:
        ids = {p.id for p in self.people}
        for r in self.rotas:
            unknown = [p for p in [*r.people, *(o.person for o in r.overrides)] if p not in ids]
            if unknown:
                raise ValueError(f"rota {r.name!r} names people not in oncall.people: {', '.join(unknown)}")
        return self


class WebhookConfig(_Model):
    name: str = Field(description="Channel name, shown in metrics.")
    url: SecretStr = Field(description="Receiver URL; gets every alert transition as JSON (POST).")
    secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key: the body is signed in the X-GridSentry-Signature header."
    )
    timeout: Seconds = Field(10.0, gt=0, description="Per-request timeout.")


class AlertmanagerConfig(_Model):
    name: str = Field("alertmanager", description="Channel name, shown in metrics.")
    url: str = Field(description="Alertmanager base URL, e.g. http://127.0.0.1:9093 (API v2 is used).")
    resend_every: Seconds = Field(
        30.0, gt=0, description="Firing alerts are pushed again this often (Alertmanager forgets them otherwise)."
    )
    timeout: Seconds = Field(10.0, gt=0, description="Per-request timeout.")


class DeliveryConfig(_Model):
    backoff_initial: Seconds = Field(2.0, gt=0, description="First retry after this.")
    backoff_max: Seconds = Field(300.0, gt=0, description="Retries back off exponentially up to this.")
    fallback_after: int = Field(
        3, ge=1, description="After this many failed attempts the person's next contact is tried as well."
    )
    give_up_after: Seconds = Field(
        86400.0, gt=0, description="A message still undelivered after this is marked failed (and counted)."
    )
    concurrency: int = Field(8, ge=1, le=64, description="Deliveries in flight at once.")
    poll_interval: Seconds = Field(1.0, gt=0, description="How often the outbox is checked for due retries.")


class SlaConfig(_Model):
    policy: str = Field(
        "standard-table-1",
        description="Preset standard-table-1 (the O&M standard's table 1: 5 min / 2 h / 12-6-4 h) or bid-tiers "
        "(the bid's graded response), or the name of a policy under alerts.sla.policies.",
    )
    policies: list[SlaPolicyConfig] = Field(default_factory=list, description="Your own contract's deadlines.")
    prewarn_share: float = Field(
        0.8, gt=0, lt=1, description="Pre-warn when this share of a deadline's time has passed (0.8 = 80 %)."
    )
    standby: StandbyConfig = Field(default_factory=StandbyConfig, description="Contracted standby hours.")


class AlertsConfig(_Model):
    sla: SlaConfig = Field(default_factory=SlaConfig, description="Deadlines per event class and standby hours.")
    maintenance_notice: Seconds = Field(
        3 * 86400.0, ge=0, description="Windows announced less than this ahead are refused (contract: 3 days)."
    )
    maintenance: list[MaintenanceWindowConfig] = Field(
        default_factory=list, description="Planned maintenance windows: alerts for these devices are suppressed."
    )
    escalation: list[EscalationLevelConfig] = Field(
        default_factory=list,
        description="Escalation chain in order, e.g. on-call engineer (0m), second line (10m), manager (30m).",
    )
    oncall: OncallConfig = Field(default_factory=OncallConfig, description="People and rotas.")
    webhooks: list[WebhookConfig] = Field(default_factory=list, description="Signed JSON webhooks.")
    alertmanagers: list[AlertmanagerConfig] = Field(
        default_factory=list, description="Prometheus Alertmanagers to push open alerts to."
    )
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig, description="Retries, backoff, fallback.")
    hold: Seconds = Field(
        0.0, ge=0, description="An alert stays pending this long before it fires and pages (0: fires at once)."
    )
    flap_window: Seconds = Field(
        600.0, ge=0, description="A fire within this time after a resolve re-opens the same alert."
    )
    flap_threshold: int = Field(
        3, ge=1, description="After this many re-opens the alert is flapping: no more pages until it settles."
    )
    auto_close_after: Seconds | None = Field(
        None, description="Close resolved alerts after this (default: an operator closes them)."
    )
    heartbeat_every: Seconds | None = Field(
        None, description="Send a dead-man heartbeat through the webhooks this often (e.g. 5m); off when unset."
    )
    tick: Seconds = Field(1.0, gt=0, description="How often deadlines, escalation and resends are checked.")
    public_url: str | None = Field(
        None, description="Base URL operators open on their phone for the ack link, e.g. https://noc.example.com."
    )

    @model_validator(mode="after")
    def _references(self) -> AlertsConfig:
        names = [p.name for p in self.sla.policies]
        if self.sla.policy not in {*names, *PRESET_NAMES}:
            raise ValueError(
                f"alerts.sla.policy {self.sla.policy!r} is neither a preset ({', '.join(PRESET_NAMES)}) "
                "nor one of alerts.sla.policies"
            )
        rotas = {r.name for r in self.oncall.rotas}
        for lvl in self.escalation:
            if lvl.rota not in rotas:
                raise ValueError(f"escalation level {lvl.name!r} pages rota {lvl.rota!r}, which is not in oncall.rotas")
        afters = [lvl.after for lvl in self.escalation]
        if afters != sorted(afters):
            raise ValueError("escalation levels must be listed in order of their 'after' delay")
        return self

    @field_validator("maintenance")
    @classmethod
    def _announced_in_time(
        cls, windows: list[MaintenanceWindowConfig], info: ValidationInfo
    ) -> list[MaintenanceWindowConfig]:
        notice = timedelta(seconds=info.data.get("maintenance_notice", 3 * 86400.0))
        for w in windows:
            ahead = w.start - w.announced_at
            if ahead < notice:
                raise ValueError(
                    f"maintenance window {w.id!r} starting {w.start.isoformat()} was announced only "
                    f"{_human(ahead)} ahead; the contract needs {_human(notice)} (alerts.maintenance_notice). "
                    "Move the window or announce it earlier"
                )
        return windows


PRESET_NAMES = ("standard-table-1", "bid-tiers")


def _human(d: timedelta) -> str:
    hours = d.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if abs(hours) >= 24 else f"{hours:.1f} h"


WEEKDAY_INDEX = {d: i for i, d in enumerate(WEEKDAYS)}
