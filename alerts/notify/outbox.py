"""The outbox worker: delivers `notifications` rows with retries, backoff, fallback and an idempotency key.

Rows are written in the same transaction as the alert transition they announce, so a committed transition
always has its messages waiting here, also after a crash. The worker picks due rows (status pending,
next_try_at reached), sends them concurrently (a slow receiver holds only its own row), and records each
outcome through the single writer. A row is marked sent only after the receiver accepted it: a crash in
between sends it again with the same idempotency key, so receivers can drop the repeat.

Failures back off exponentially (`backoff_initial` doubling up to `backoff_max`). After `fallback_after`
failed attempts to a person, a copy goes to their next contact (e-mail after DingTalk...), with the same
key. After `give_up_after` a row is marked failed: counted, logged, visible in `gridsentry alerts outbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import orjson

from alerts.notify.channels import Channel, DeliveryResult
from alerts.oncall import Person
from alerts.settings import DeliveryConfig
from storage.writer import StorageWriter

log = logging.getLogger("gridsentry.notify")

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class OutboxWorker:
    def __init__(
        self,
        writer: StorageWriter,
        channels: Mapping[str, Channel],
        people: Mapping[str, Person],
        cfg: DeliveryConfig,
        *,
        clock: Clock = _utcnow,
    ) -> None:
        self.writer = writer
        self.channels = dict(channels)
        self.people = dict(people)
        self.cfg = cfg
        self.clock = clock
        self._wake = asyncio.Event()
        self._inflight: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(cfg.concurrency)
        self.sent: Counter[str] = Counter()
        self.attempt_failures: Counter[str] = Counter()
        self.given_up: Counter[str] = Counter()
        self.fallbacks = 0
        self.on_pick: Callable[[dict[str, Any]], None] | None = None  # benchmarks: the hand-over moment

    def wake(self) -> None:
        """Called after a commit that queued rows: look now instead of at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            try:
                await self.pump()
            except Exception:
                log.exception("the notification outbox could not be read; retrying")
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, timeout=self.cfg.poll_interval, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
        await self.drain(timeout=5)

    async def drain(self, timeout: float) -> None:
        """Let deliveries in flight finish (they are retried after a restart if they do not)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for t in list(self._tasks):
            t.cancel()

    async def pump(self) -> int:
        """Start delivering every due row not already in flight. Returns how many were started."""
        room = self.cfg.concurrency * 4 - len(self._inflight)
        if room <= 0:
            return 0
        rows = await asyncio.to_thread(self._due, self.clock(), room)
        started = 0
        for row in rows:
            nid = int(row["notification_id"])
            if nid in self._inflight:
                continue
            self._inflight.add(nid)
            if self.on_pick is not None:
                self.on_pick(row)
            task = asyncio.create_task(self._deliver(row), name=f"notify-{nid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        return started

    def _due(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        con = self.writer.reader()
        try:
            skip = list(self._inflight) or [-1]
            cur = con.execute(
                "SELECT notification_id, alert_id, channel, recipient, payload, created_at, attempts, contact, "
                "idempotency_key, kind, fallback_sent FROM notifications WHERE status = 'pending' AND next_try_at <= ? "
                "AND NOT list_contains(?, notification_id) ORDER BY next_try_at, notification_id LIMIT ?",
                [now, skip, limit],
            )
            cols = [d[0] for d in cur.description or []]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        finally:
            con.close()

    async def _deliver(self, row: dict[str, Any]) -> None:
        nid = int(row["notification_id"])
        try:
            async with self._sem:
                result = await self._send(row)
            await self._record(row, result)
        except Exception:
            log.exception("notification %d: delivery bookkeeping failed; it will be retried", nid)
        finally:
            self._inflight.discard(nid)

    async def _send(self, row: dict[str, Any]) -> DeliveryResult:
        channel = self.channels.get(str(row["channel"]))
        if channel is None:
            return DeliveryResult(False, False, f"channel {row['channel']!r} is no longer configured")
        contact = None
        if row["recipient"] is not None:
            person = self.people.get(str(row["recipient"]))
            if person is None:
                return DeliveryResult(False, False, f"{row['recipient']} is no longer in alerts.oncall.people")
            idx = int(row["contact"])
            contact = person.contacts[idx] if idx < len(person.contacts) else None
        payload = orjson.loads(row["payload"])
        try:
            return await channel.send(payload, str(row["idempotency_key"]), contact)
        except Exception as exc:  # a channel bug must not stop the worker
            log.exception("channel %s raised while sending notification %d", row["channel"], row["notification_id"])
            return DeliveryResult(False, True, f"{type(exc).__name__}: {exc}")

    def backoff(self, attempts: int) -> timedelta:
        base = min(self.cfg.backoff_max, self.cfg.backoff_initial * 2 ** max(attempts - 1, 0))
        return timedelta(seconds=base * (1 + random.random() * 0.1))  # noqa: S311 - jitter, not crypto

    async def _record(self, row: dict[str, Any], result: DeliveryResult) -> None:
        now = self.clock()
        channel = str(row["channel"])
        nid = int(row["notification_id"])
        attempts = int(row["attempts"]) + 1
        if result.ok:
            self.sent[channel] += 1
            await self.writer.run(
                lambda con: con.execute(
                    "UPDATE notifications SET status = 'sent', sent_at = ?, attempts = ?, last_error = NULL "
                    "WHERE notification_id = ?",
                    [now, attempts, nid],
                )
            )
            return
        self.attempt_failures[channel] += 1
        expired = now - row["created_at"] >= timedelta(seconds=self.cfg.give_up_after)
        give_up = not result.retryable or expired
        next_try = now + self.backoff(attempts)
        fallback = (
            row["recipient"] is not None
            and not row["fallback_sent"]
            and attempts >= self.cfg.fallback_after
            and int(row["contact"]) + 1 < len(self._contacts(row["recipient"]))
        )
        if give_up:
            self.given_up[channel] += 1
            log.error(
                "notification %d (%s, alert #%s, %s) FAILED for good after %d attempts: %s",
                nid,
                row["kind"],
                row["alert_id"],
                row["recipient"] or channel,
                attempts,
                result.error,
            )
        else:
            log.warning(
                "notification %d via %s failed (attempt %d), retry at %s: %s",
                nid,
                channel,
                attempts,
                next_try.isoformat(timespec="seconds"),
                result.error,
            )

        def job(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(
                "UPDATE notifications SET attempts = ?, last_error = ?, next_try_at = ?, status = ?, "
                "fallback_sent = fallback_sent OR ? WHERE notification_id = ?",
                [attempts, result.error, next_try, "failed" if give_up else "pending", fallback, nid],
            )
            if fallback:
                con.execute(
                    "INSERT INTO notifications (notification_id, alert_id, channel, recipient, payload, created_at, "
                    "next_try_at, kind, idempotency_key, contact) SELECT nextval('notification_id_seq'), alert_id, "
                    "channel, recipient, payload, ?, ?, kind, idempotency_key, contact + 1 FROM notifications "
                    "WHERE notification_id = ?",
                    [now, now, nid],
                )

        await self.writer.run(job)
        if fallback:
            self.fallbacks += 1
            log.warning("notification %d: trying %s's next contact as well", nid, row["recipient"])
            self.wake()

    def _contacts(self, person_id: Any) -> tuple[str, ...]:
        person = self.people.get(str(person_id))
        return person.contacts if person is not None else ()

    async def close(self) -> None:
        for ch in self.channels.values():
            closer = getattr(ch, "close", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()


def outbox_counts(con: duckdb.DuckDBPyConnection, now: datetime) -> dict[str, Any]:
    """Pending rows by channel and the age of the oldest, for /metrics and the CLI."""
    rows = con.execute("SELECT channel, status, count(*), min(created_at) FROM notifications GROUP BY 1, 2").fetchall()
    pending: dict[str, int] = {}
    failed: dict[str, int] = {}
    oldest = 0.0
    for channel, status, n, first in rows:
        if status == "pending":
            pending[channel] = int(n)
            oldest = max(oldest, (now - first).total_seconds())
        elif status == "failed":
            failed[channel] = int(n)
    return {"pending": pending, "failed": failed, "oldest_pending_s": oldest}
