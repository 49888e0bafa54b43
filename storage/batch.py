"""The typed batches every stage hands to the next.

Readings travel as one Arrow table per batch, never as a Python object per reading: the
per-reading Python loop is the first thing that kills throughput on two cores
(shared/performance.md). Status changes and fault codes travel as events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum

import pyarrow as pa
import pyarrow.compute as pc


class Quality(IntEnum):
    """How far a stored value can be trusted. Stored as a small int in `readings.quality`."""

    GOOD = 0
    SUSPECT = 1
    OUT_OF_RANGE = 2
    STALE = 3
    SUBSTITUTED = 4


TS_TYPE = pa.timestamp("us", tz="UTC")

READING_SCHEMA = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("quality", pa.uint8(), nullable=False),
    ]
)

EVENT_SCHEMA = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("code", pa.string(), nullable=False),
        pa.field("text", pa.string()),
    ]
)

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("topic", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("payload", pa.binary()),
    ]
)

#: At most this many payload bytes are kept with a dead letter, so one huge bad message
#: cannot fill the database.
DEAD_LETTER_PAYLOAD_LIMIT = 4096


def empty_readings() -> pa.Table:
    return READING_SCHEMA.empty_table()


def empty_events() -> pa.Table:
    return EVENT_SCHEMA.empty_table()


def empty_dead_letters() -> pa.Table:
    return DEAD_LETTER_SCHEMA.empty_table()


def readings_from_columns(
    ts_us: Sequence[int],
    device_id: Sequence[str],
    metric: Sequence[str],
    value: Sequence[float | None],
    quality: Sequence[int] | None = None,
) -> pa.Table:
    """Build a readings table from column lists (timestamps as microseconds since the epoch)."""
    n = len(ts_us)
    return pa.Table.from_arrays(
        [
            pa.array(ts_us, type=pa.int64()).cast(TS_TYPE),
            pa.array(device_id, type=pa.string()),
            pa.array(metric, type=pa.string()),
            pa.array(value, type=pa.float64()),
            pa.array(quality if quality is not None else [0] * n, type=pa.uint8()),
        ],
        schema=READING_SCHEMA,
    )


def events_from_columns(
    ts_us: Sequence[int],
    device_id: Sequence[str],
    kind: Sequence[str],
    code: Sequence[str],
    text: Sequence[str | None],
) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array(ts_us, type=pa.int64()).cast(TS_TYPE),
            pa.array(device_id, type=pa.string()),
            pa.array(kind, type=pa.string()),
            pa.array(code, type=pa.string()),
            pa.array(text, type=pa.string()),
        ],
        schema=EVENT_SCHEMA,
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be decoded: kept with its reason, never silently dropped."""

    source: str
    topic: str | None
    reason: str
    detail: str
    payload: bytes
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))


def dead_letters_table(letters: Sequence[DeadLetter]) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array([d.ts for d in letters], type=TS_TYPE),
            pa.array([d.source for d in letters], type=pa.string()),
            pa.array([d.topic for d in letters], type=pa.string()),
            pa.array([d.reason for d in letters], type=pa.string()),
            pa.array([d.detail[:1000] for d in letters], type=pa.string()),
            pa.array([d.payload[:DEAD_LETTER_PAYLOAD_LIMIT] for d in letters], type=pa.binary()),
        ],
        schema=DEAD_LETTER_SCHEMA,
    )


@dataclass(slots=True)
class IngestBatch:
    """What a collector hands to storage: readings, events and dead letters of one flush.

    Stored in one transaction; the collector acknowledges its sources only after it commits.
    """

    readings: pa.Table = field(default_factory=empty_readings)
    events: pa.Table = field(default_factory=empty_events)
    dead_letters: pa.Table = field(default_factory=empty_dead_letters)
    source: str = "mqtt"
    #: De-duplication: a 64-bit key per source message (null where the message cannot be told apart
    #: from a new one), and for each reading and event the index of its message in `message_keys`.
    message_keys: pa.Array | None = None
    reading_message: pa.Array | None = None
    event_message: pa.Array | None = None

    @property
    def reading_count(self) -> int:
        return int(self.readings.num_rows)

    @property
    def event_count(self) -> int:
        return int(self.events.num_rows)

    @property
    def dead_letter_count(self) -> int:
        return int(self.dead_letters.num_rows)

    def without_messages(self, drop: Sequence[int]) -> IngestBatch:
        """The same batch minus the readings and events of the given message indices."""
        if not drop or self.message_keys is None:
            return self
        gone = pa.array(drop, type=pa.int32())
        return self.filter_rows(
            pc.invert(pc.is_in(self.reading_message, value_set=gone)),
            pc.invert(pc.is_in(self.event_message, value_set=gone)),
        )

    def filter_rows(self, keep_readings: pa.Array, keep_events: pa.Array) -> IngestBatch:
        """Keep the readings and events where the masks are true (message bookkeeping follows)."""
        return IngestBatch(
            readings=self.readings.filter(keep_readings),
            events=self.events.filter(keep_events),
            dead_letters=self.dead_letters,
            source=self.source,
            message_keys=self.message_keys,
            reading_message=None if self.reading_message is None else pc.filter(self.reading_message, keep_readings),
            event_message=None if self.event_message is None else pc.filter(self.event_message, keep_events),
        )

    def is_empty(self) -> bool:
        return self.reading_count == 0 and self.event_count == 0 and self.dead_letter_count == 0
