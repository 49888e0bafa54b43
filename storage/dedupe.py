"""The de-duplication window: keys of recently committed messages.

A message committed just before a crash, but not yet acknowledged, is redelivered by the broker
after the restart. Its key (a 64-bit hash of topic and payload, computed by the collector) is
stored in `ingest_state` in the same transaction as its readings, so after a restart the window is
reloaded and the redelivery is dropped instead of stored twice.

The window is bounded by count, not by wall time: what can be redelivered is what was in flight at
the crash, however long GridSentry stayed down.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from storage.batch import IngestBatch

log = logging.getLogger(__name__)


class DedupeWindow:
    def __init__(self, max_keys: int = 200_000) -> None:
        self.max_keys = max_keys
        self._keys: set[int] = set()
        self._batches: deque[tuple[datetime, list[int]]] = deque()
        self.duplicates_dropped = 0
        self._commits_since_prune = 0

    def __len__(self) -> int:
        return len(self._keys)

    def load(self, con: duckdb.DuckDBPyConnection) -> None:
        rows = con.execute(
            "SELECT key, seen_at FROM ingest_state ORDER BY seen_at DESC LIMIT ?", [self.max_keys]
        ).fetchall()
        for key, seen_at in reversed(rows):
            self._remember(seen_at, [int(key)])
        if rows:
            log.info("de-duplication window reloaded: %d message keys", len(rows))

    def filter(self, batch: IngestBatch) -> tuple[IngestBatch, list[int]]:
        """Drop messages already committed (or repeated within the batch). Returns the batch and the new keys."""
        if batch.message_keys is None:
            return batch, []
        drop: list[int] = []
        fresh: list[int] = []
        seen_now: set[int] = set()
        for i, key in enumerate(batch.message_keys.to_pylist()):
            if key is None:
                continue
            if key in self._keys or key in seen_now:
                drop.append(i)
            else:
                seen_now.add(key)
                fresh.append(key)
        if drop:
            self.duplicates_dropped += len(drop)
            log.info("dropped %d redelivered messages already stored (de-duplication window)", len(drop))
        return batch.without_messages(drop), fresh

    def record(self, con: duckdb.DuckDBPyConnection, keys: list[int]) -> datetime:
        """Store the batch's keys inside the batch's transaction. Call `committed` after COMMIT:
        a rolled-back batch must not leave its keys in memory, or its retry would be dropped."""
        now = datetime.now(UTC)
        if not keys:
            return now
        con.register("_dedupe_keys", pa.table({"key": pa.array(keys, pa.uint64())}))
        try:
            con.execute("INSERT INTO ingest_state SELECT key, ? FROM _dedupe_keys", [now])
        finally:
            con.unregister("_dedupe_keys")
        self._commits_since_prune += 1
        if self._commits_since_prune >= 100 and self._batches:
            self._commits_since_prune = 0
            con.execute("DELETE FROM ingest_state WHERE seen_at < ?", [self._batches[0][0]])
        return now

    def committed(self, ts: datetime, keys: list[int]) -> None:
        if keys:
            self._remember(ts, keys)

    def _remember(self, ts: datetime, keys: list[int]) -> None:
        if self._batches and self._batches[-1][0] == ts:
            self._batches[-1][1].extend(keys)
        else:
            self._batches.append((ts, list(keys)))
        self._keys.update(keys)
        while len(self._keys) > self.max_keys and len(self._batches) > 1:
            _, old = self._batches.popleft()
            self._keys.difference_update(old)
