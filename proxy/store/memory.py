"""In-process store: plain dicts, atomic because no operation awaits midway. Lost on exit;
for tests and single-process experiments. Also the reference for the other implementations."""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Sequence

from .base import (
    USAGE_KEEP,
    Account,
    Hold,
    Progress,
    RateResult,
    account_seeded,
    key_record,
    ledger_entry,
    usage_sample,
    usage_values,
)


class MemoryStore:
    def __init__(self) -> None:
        self.tokens: dict[str, tuple[dict, float, bool]] = {}
        self.windows: dict[str, tuple[float, int]] = {}
        self.slots: dict[str, dict[str, float]] = {}
        self.accounts: dict[str, list[int]] = {}  # account -> [balance, held, spent]
        self.holds: dict[str, Hold] = {}
        self.settled: set[str] = set()
        self.ledgers: dict[str, list[dict]] = {}
        self.usage: dict[tuple[str, str], deque[int]] = {}
        self.keys: dict[str, dict] = {}  # id -> record, in insertion order
        self.version = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    # --- tokens
    async def put_token(self, token_hash: str, record: dict, expires_at: float) -> None:
        self.tokens[token_hash] = (dict(record), expires_at, False)

    async def consume_token(self, token_hash: str, now: float | None = None) -> tuple[str, dict | None]:
        now = time.time() if now is None else now
        found = self.tokens.get(token_hash)
        if found is None:
            return "unknown", None
        record, expires_at, used = found
        if expires_at <= now:
            return "expired", None
        if used:
            return "used", None
        self.tokens[token_hash] = (record, expires_at, True)
        return "ok", dict(record)

    # --- rate limits
    async def rate_hit(self, bucket: str, limit: int, window_s: int, now: float | None = None) -> RateResult:
        now = time.time() if now is None else now
        start, count = self.windows.get(bucket, (now, 0))
        if now >= start + window_s:
            start, count = now, 0
        retry = start + window_s - now
        if count >= limit:
            self.windows[bucket] = (start, count)
            return RateResult(False, limit, 0, retry)
        self.windows[bucket] = (start, count + 1)
        return RateResult(True, limit, limit - count - 1, retry)

    async def slot_acquire(self, bucket: str, limit: int, job_id: str, expires_at: float,
                           now: float | None = None) -> RateResult:
        now = time.time() if now is None else now
        slots = {j: e for j, e in self.slots.get(bucket, {}).items() if e > now}
        self.slots[bucket] = slots
        if job_id not in slots and len(slots) >= limit:
            return RateResult(False, limit, 0, max(0.0, min(slots.values()) - now))
        slots[job_id] = expires_at
        return RateResult(True, limit, limit - len(slots), 0.0)

    async def slot_release(self, bucket: str, job_id: str) -> None:
        self.slots.get(bucket, {}).pop(job_id, None)

    # --- credits
    async def seed_account(self, account: str, initial: int) -> None:
        self.accounts.setdefault(account, [initial, 0, 0])

    def _account(self, account: str, initial: int) -> list[int]:
        acct = self.accounts.get(account)
        if acct is None:
            acct = self.accounts[account] = [initial, 0, 0]
            account_seeded(account, initial)
        return acct

    async def grant(self, account: str, amount: int, initial: int = 0) -> int:
        acct = self._account(account, initial)
        acct[0] += amount
        return acct[0]

    async def get_account(self, account: str, initial: int = 0) -> Account:
        return Account(*self.accounts.get(account, [initial, 0, 0]))

    async def open_hold(self, job_id: str, account: str, want: int, expires_at: float, meta: dict,
                        minimum: int = 1, initial: int = 0) -> int:
        if job_id in self.holds:
            return self.holds[job_id].amount
        if job_id in self.settled:
            return 0
        acct = self._account(account, initial)
        available = acct[0] - acct[1]
        if available <= 0 or available < minimum:
            return 0
        granted = min(want, available)
        acct[1] += granted
        self.holds[job_id] = Hold(job_id, account, granted, expires_at=expires_at, meta=dict(meta))
        return granted

    async def grow_hold(self, job_id: str, account: str, want: int, expires_at: float,
                        reopen: dict | None = None, initial: int = 0) -> int:
        hold = self.holds.get(job_id)
        if hold is None:  # lost with the store's data: opened again (no await: still atomic)
            return 0 if reopen is None else await self.open_hold(job_id, account, want, expires_at, reopen,
                                                                  initial=initial)
        acct = self._account(account, initial)
        granted = max(0, min(want, acct[0] - acct[1]))
        acct[1] += granted
        hold.amount += granted
        hold.expires_at = expires_at
        return granted

    async def checkpoint(self, progress: Sequence[Progress]) -> None:
        for p in progress:
            hold = self.holds.get(p.job_id)
            if hold is not None:
                hold.metered, hold.input_tokens, hold.output_tokens = p.metered, p.input_tokens, p.output_tokens
                hold.expires_at = p.expires_at

    async def settle(self, job_id: str, account: str, charge: int | None, entry: dict,
                     now: float | None = None, initial: int = 0) -> dict | None:
        now = time.time() if now is None else now
        if job_id in self.settled:
            return None
        hold = self.holds.pop(job_id, None)
        acct = self._account(account, initial)
        if charge is None:
            charge = hold.metered if hold is not None else 0
        if hold is not None:
            acct[1] = max(0, acct[1] - hold.amount)
        acct[0] -= charge
        acct[2] += charge
        self.settled.add(job_id)
        result = ledger_entry(hold, job_id, account, charge, entry, now)
        self.ledgers.setdefault(account, []).append(result)
        sample = usage_sample(entry)
        if sample is not None:
            self.usage.setdefault((account, sample[0]), deque(maxlen=USAGE_KEEP)).appendleft(sample[1])
        return copy.deepcopy(result)

    async def recent_usage(self, account: str, flow: str, limit: int) -> list[int]:
        return usage_values(list(self.usage.get((account, flow), ()))[:limit])

    async def expired_holds(self, accounts: list[str], now: float | None = None, limit: int = 100) -> list[Hold]:
        now = time.time() if now is None else now
        wanted = set(accounts)
        out = [copy.deepcopy(h) for h in self.holds.values() if h.expires_at < now and h.account in wanted]
        return out[:limit]

    async def ledger(self, account: str, since: float | None = None, limit: int | None = None) -> list[dict]:
        entries = sorted(self.ledgers.get(account, []), key=lambda e: e["ended_at"])
        if since is not None:
            entries = [e for e in entries if e["ended_at"] >= since]
        return copy.deepcopy(entries[:limit] if limit is not None else entries)

    async def ledger_entry(self, account: str, job_id: str) -> dict | None:
        for entry in self.ledgers.get(account, []):
            if entry["job_id"] == job_id:
                return copy.deepcopy(entry)
        return None

    # --- keys made through the admin API
    async def put_key(self, record: dict) -> str:
        record = key_record(record)
        if record["id"] in self.keys:
            return "id_taken"
        if any(r["sha256"] == record["sha256"] for r in self.keys.values()):
            return "hash_taken"
        self.keys[record["id"]] = record
        self.version += 1
        return "ok"

    async def delete_key(self, key_id: str) -> bool:
        if self.keys.pop(key_id, None) is None:
            return False
        self.version += 1
        return True

    async def list_keys(self) -> list[dict]:
        return copy.deepcopy(list(self.keys.values()))

    async def keys_version(self) -> int:
        return self.version
