"""The `disk` backend: one file per entry in a directory, local or shared by the prefill nodes.

Layout: `<path>/<namespace>/<first 2 hex of the hash>/<hash hex>.kvb`, each file a sealed entry. Writes go to
a temporary file in the same folder and are renamed into place (`os.replace`: atomic on POSIX, so a reader
sees a whole entry or none, and two nodes writing the same block are harmless); an existing entry is not
written again. A read refreshes the file's mtime, which is what eviction and the TTL go by.

The cap: whenever this process's estimate of the directory's size passes `max_bytes` (and every
`RESCAN_S` it writes), it scans the whole directory (every node's files), deletes entries older than
`ttl_s` (expired) and then the least recently used ones until the directory is at `LOW_WATER` of the cap,
and counts them (`evicted_total`, `expired_total`). Nodes sharing a directory each enforce the same cap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from transport.kv_tier.backend import TierBackend, TierError
from transport.kv_tier.keys import split_key
from transport.kv_tier.settings import KvTierSettings

SUFFIX = ".kvb"
LOW_WATER = 0.9  # after an eviction pass the directory holds at most this share of max_bytes
RESCAN_S = 30.0  # rescan at least this often while writing (other nodes write into a shared directory too)


class DiskTier(TierBackend):
    name = "disk"
    hit_source = "disk"

    def __init__(self, settings: KvTierSettings, *, timeout_s: float, password: str | None = None) -> None:
        assert settings.path is not None
        self.root = Path(settings.path).expanduser()
        self.max_bytes, self.ttl_s = settings.max_bytes, settings.ttl_s
        self._usage_bytes: int | None = None  # the last scan's total plus what this process wrote since
        self._scanned_at_s = 0.0
        self._lock = threading.Lock()
        self._evicted = self._expired = 0

    def path_of(self, key: bytes) -> Path:
        namespace, block_hex = split_key(key)
        return self.root / namespace / block_hex[:2] / f"{block_hex}{SUFFIX}"

    def contains(self, keys: Sequence[bytes], budget_s: float) -> list[bool]:
        started_s, found = time.monotonic(), []
        try:
            for key in keys:
                found.append(self._fresh(self.path_of(key)) is not None)
                if time.monotonic() - started_s > budget_s:
                    break
        except OSError as exc:
            raise TierError(f"disk tier {self.root}: {exc}") from None
        return found

    def get(self, key: bytes) -> bytes | None:
        path = self.path_of(key)
        try:
            if self._fresh(path) is None:
                return None
            data = path.read_bytes()
            os.utime(path)  # recently used: evicted last
            return data
        except FileNotFoundError:
            return None  # evicted or replaced meanwhile
        except OSError as exc:
            raise TierError(f"disk tier read {path}: {exc}") from None

    def put(self, key: bytes, value: bytes | bytearray) -> bool:
        path = self.path_of(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            if self._fresh(path) is not None:
                return False
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as file:
                file.write(value)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            why = "no space left" if exc.errno == errno.ENOSPC else str(exc)
            raise TierError(f"disk tier write {path}: {why}") from None
        self._account(len(value))
        return True

    def delete(self, key: bytes) -> None:
        try:
            self.path_of(key).unlink(missing_ok=True)
        except OSError as exc:
            raise TierError(f"disk tier delete: {exc}") from None

    def evicted_total(self) -> int | None:
        return self._evicted

    def expired_total(self) -> int:
        return self._expired

    def usage_bytes(self) -> int:
        """The directory's size now (a full scan)."""
        return sum(size for _, size, _ in self._scan())

    def _fresh(self, path: Path) -> os.stat_result | None:
        """The file's stat when it exists and is younger than the TTL; an expired file is removed."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        if time.time() - stat.st_mtime > self.ttl_s:
            path.unlink(missing_ok=True)
            return None
        return stat

    def _account(self, nbytes: int) -> None:
        with self._lock:
            now_s = time.monotonic()
            if self._usage_bytes is not None:
                self._usage_bytes += nbytes
            if self._usage_bytes is None or self._usage_bytes > self.max_bytes or now_s - self._scanned_at_s > RESCAN_S:
                self._enforce_cap(now_s)

    def _enforce_cap(self, now_s: float) -> None:
        files = self._scan()
        wall_s, total, kept = time.time(), 0, []
        for path, size, mtime in files:
            if wall_s - mtime > self.ttl_s and _unlink(path):
                self._expired += 1
            else:
                kept.append((mtime, size, path))
                total += size
        if total > self.max_bytes:
            for mtime, size, path in sorted(kept):
                if total <= self.max_bytes * LOW_WATER:
                    break
                if _unlink(path):
                    self._evicted += 1
                    total -= size
        self._usage_bytes, self._scanned_at_s = total, now_s

    def _scan(self) -> list[tuple[Path, int, float]]:
        """(path, bytes, mtime) of every entry under the root, all namespaces."""
        found = []
        for folder, _, names in os.walk(self.root):
            for name in names:
                if name.endswith(SUFFIX) and not name.startswith("."):
                    path = Path(folder) / name
                    try:
                        stat = path.stat()
                    except FileNotFoundError:
                        continue
                    found.append((path, stat.st_size, stat.st_mtime))
        return found


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
