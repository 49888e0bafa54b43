"""The latest reading per (device, metric), fed with committed batches and read by /metrics and the wall.

`update` runs on the event loop after every commit, so it only appends the batch (no per-reading work).
Pending batches are folded into one Polars frame when somebody reads (a scrape, the wall screen), or on a
background thread when they pile up between reads, so the event loop never folds; Polars does the folding
without holding the GIL, so ingest keeps running meanwhile.
"""

from __future__ import annotations

import threading

import polars as pl
import pyarrow as pa

LATEST_SCHEMA = pl.Schema(
    {
        "device_id": pl.String(),
        "metric": pl.String(),
        "ts": pl.Datetime("us", "UTC"),
        "value": pl.Float64(),
        "quality": pl.UInt8(),
    }
)
_COLUMNS = list(LATEST_SCHEMA)
_KEYS = ["device_id", "metric"]


class LatestValues:
    """Newest value per device and metric; out-of-order readings never replace a newer one."""

    def __init__(self, fold_after_rows: int = 1_000_000) -> None:
        self._fold_after_rows = fold_after_rows
        self._lock = threading.Lock()  # guards _pending and _frame
        self._fold_lock = threading.Lock()  # one fold at a time; readers of the old frame never wait
        self._frame = pl.DataFrame(schema=LATEST_SCHEMA)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._folding = False
        self.version = 0

    def update(self, readings: pa.Table) -> None:
        """Take a committed batch (columns ts, device_id, metric, value, quality)."""
        if readings.num_rows == 0:
            return
        with self._lock:
            self._pending.append(readings.select(_COLUMNS))
            self._pending_rows += readings.num_rows
            self.version += 1
            fold_now = self._pending_rows >= self._fold_after_rows and not self._folding
            if fold_now:
                self._folding = True
        if fold_now:
            threading.Thread(target=self._background_fold, name="latest-values-fold", daemon=True).start()

    def _background_fold(self) -> None:
        try:
            self.snapshot()
        finally:
            with self._lock:
                self._folding = False

    def snapshot(self) -> pl.DataFrame:
        """The current state: one row per (device_id, metric), each key at the row it first got."""
        with self._fold_lock:
            with self._lock:
                pending, self._pending, self._pending_rows = self._pending, [], 0
                frame = self._frame
            if not pending:
                return frame
            fresh = pl.DataFrame(pa.concat_tables(pending, promote_options="permissive")).cast(LATEST_SCHEMA)
            # The newest of the pending readings per key (at equal timestamps the one committed last); held values
            # are replaced in place only by readings not older than them (a late reading never wins), and new keys
            # are appended. Rows never move, so the exposition can keep its per-series text between scrapes.
            fresh = fresh.sort("ts", maintain_order=True).unique(subset=_KEYS, keep="last")
            located = fresh.join(frame.select(_KEYS).with_row_index("row"), on=_KEYS, how="left")
            held = located.filter(pl.col("row").is_not_null())
            held = held.filter(pl.col("ts") >= frame["ts"].gather(held["row"]))
            columns = {name: frame[name] for name in _KEYS}
            for name in ("ts", "value", "quality"):
                column = frame[name].clone()
                if held.height:
                    column.scatter(held["row"], held[name])
                columns[name] = column
            merged = pl.concat(
                [pl.DataFrame(columns), located.filter(pl.col("row").is_null()).select(_COLUMNS)], how="vertical"
            )
            with self._lock:
                self._frame = merged
            return merged

    def __len__(self) -> int:
        return self.snapshot().height
