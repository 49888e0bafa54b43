"""Per-device sequence numbers: find messages that never arrived.

Devices that number their messages (`"seq": 17`) let GridSentry tell a quiet device from a lost
message. A gap is held open for a grace period, since redeliveries after a reconnect arrive out of
order; if it is still open then, it is reported (an `ingest/sequence_gap` event with the device
and the missing range, and a counter) and the collector reconnects once, because a broker that
holds in-flight messages releases them only on reconnect (shared/reliability.md §1.6).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: A sequence that drops by more than this is a device restart, not a late message.
RESTART_DROP = 1000
#: Never track more than this many open gaps per device (a device that skips wildly is reported once).
MAX_OPEN_GAPS = 100


@dataclass
class Gap:
    device_id: str
    first: int  # first missing sequence number
    last: int  # last missing sequence number
    opened_at: float

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def describe(self) -> str:
        if self.first == self.last:
            return f"message {self.first} never arrived"
        return f"messages {self.first}-{self.last} never arrived ({self.size} messages)"


class SequenceTracker:
    def __init__(self, grace_s: float = 10.0) -> None:
        self.grace_s = grace_s
        self._next: dict[str, int] = {}
        self._open: dict[str, list[Gap]] = {}
        self.gaps_reported = 0
        self.messages_missing = 0
        self.restarts = 0

    def observe(self, seqs: Iterable[tuple[str, int]], now: float) -> None:
        """Feed (device, seq) pairs in arrival order."""
        for device, seq in seqs:
            expected = self._next.get(device)
            if expected is None or seq == expected:
                self._next[device] = seq + 1
                continue
            if seq > expected:
                gaps = self._open.setdefault(device, [])
                if len(gaps) < MAX_OPEN_GAPS:
                    gaps.append(Gap(device, expected, seq - 1, now))
                self._next[device] = seq + 1
                continue
            if expected - seq > RESTART_DROP:
                self.restarts += 1
                self._open.pop(device, None)
                self._next[device] = seq + 1
                continue
            self._fill(device, seq)  # a late message: it may close (part of) a gap

    def _fill(self, device: str, seq: int) -> None:
        gaps = self._open.get(device)
        if not gaps:
            return  # a repeat of something already seen
        for i, g in enumerate(gaps):
            if g.first <= seq <= g.last:
                parts = []
                if g.first < seq:
                    parts.append(Gap(device, g.first, seq - 1, g.opened_at))
                if seq < g.last:
                    parts.append(Gap(device, seq + 1, g.last, g.opened_at))
                gaps[i : i + 1] = parts
                break
        if not gaps:
            del self._open[device]

    def expired(self, now: float) -> list[Gap]:
        """Gaps still open after the grace period; they are reported once and forgotten."""
        out: list[Gap] = []
        for device in list(self._open):
            keep: list[Gap] = []
            for g in self._open[device]:
                (out if now - g.opened_at >= self.grace_s else keep).append(g)
            if keep:
                self._open[device] = keep
            else:
                del self._open[device]
        self.gaps_reported += len(out)
        self.messages_missing += sum(g.size for g in out)
        return out

    @property
    def open_gaps(self) -> int:
        return sum(len(g) for g in self._open.values())
