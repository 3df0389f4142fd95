"""Worker-side half of the TCP KV connector (runs in the vLLM worker process, next to the KV tensors).

Prefill: a `BlockServer` thread serves blocks the scheduler published; released and expired requests are
reported as `finished_sending` so the scheduler frees their blocks. Decode: each planned pull runs on a
small thread pool, straight into the KV tensors; the request is reported as `finished_recving` when the pull
ends, and a failed pull also as `failed_recving` with its blocks as load errors, so vLLM recomputes or fails
the request (`kv_load_failure_policy`) and never decodes from partial or corrupted KV.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from transport.tcp.blocks import BlockStore
from transport.tcp.client import pull_blocks, release_blocks
from transport.tcp.kv_tensors import build_block_store
from transport.tcp.lease import LeaseTable
from transport.tcp.metadata import PullSpec, TcpConnectorMetadata
from transport.tcp.server import BlockServer
from transport.tcp.settings import TcpConnectorSettings
from transport.tcp.stats import TcpKVConnectorStats
from transport.tcp.wire import ChecksumError, ErrorCode, KvTransferError, PullRequest, RemoteError
from transport.tcp.wire_codecs import WireCodecs

logger = logging.getLogger(__name__)


class TcpConnectorWorker:
    def __init__(self, settings: TcpConnectorSettings, serve_blocks: bool, head_size: int | None = None) -> None:
        self.settings = settings
        self.serve_blocks = serve_blocks
        self.head_size = head_size  # a row of the wire codec (`transport.tcp.codec`)
        self.wire: WireCodecs | None = None
        self.leases = LeaseTable()
        self.store: BlockStore | None = None
        self.server: BlockServer | None = None
        self._pool = ThreadPoolExecutor(settings.max_concurrent_pulls, thread_name_prefix="disagg-tcp-kv-pull")
        self._done_pulls: queue.SimpleQueue[tuple[str, bool, list[int]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._invalid_block_ids: set[int] = set()
        self._stats = TcpKVConnectorStats()
        self._last_meta: TcpConnectorMetadata | None = None

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        """Map the KV tensors; a prefill node starts serving them."""
        self.store = build_block_store(kv_caches, self.head_size)
        self.wire = WireCodecs(self.settings, self.store)
        try:
            self.wire.warm_up()
        except ImportError as exc:  # numba and torch come with vLLM: not expected
            logger.warning("TCP KV wire codecs unavailable (%s): pulls will be native", exc)
        if self.settings.gil_switch_interval_s is not None:
            logger.info("GIL switch interval %.4f s -> %.4f s", sys.getswitchinterval(),
                        self.settings.gil_switch_interval_s)
            sys.setswitchinterval(self.settings.gil_switch_interval_s)
        if self.server is not None:  # KV cache re-created (e.g. after sleep mode): serve the new tensors
            self.server.store = self.store
        elif self.serve_blocks:
            self.server = BlockServer(self.store, self.leases, self.settings.listen_host, self.settings.port,
                                      transfer_timeout_s=self.settings.transfer_timeout_s,
                                      publish_wait_s=self.settings.publish_wait_s, on_served=self._record_serve,
                                      token=self.settings.cluster_token, fault_file=self.settings.fault_file,
                                      on_refused=self._record_refusal)
            self.server.start()

    def start_transfers(self, meta: TcpConnectorMetadata) -> None:
        """Publish newly finished prefills; start this step's pulls in the background (once per metadata)."""
        if meta is self._last_meta:
            return
        self._last_meta = meta
        for request_id, block_ids in meta.reqs_to_send.items():
            self.leases.publish(request_id, block_ids, meta.lease_s)
        for request_id, spec in meta.reqs_to_recv.items():
            self._pool.submit(self._pull, request_id, spec)

    def get_transfer_results(self) -> tuple[set[str], set[str], set[str]]:
        """(finished sending, finished receiving, failed receiving) since the last call."""
        released, expired = self.leases.drain_finished()
        finished_recving: set[str] = set()
        failed_recving: set[str] = set()
        with self._lock:
            for _ in expired:
                self._stats.record_expired_lease()
            while True:
                try:
                    request_id, ok, block_ids = self._done_pulls.get_nowait()
                except queue.Empty:
                    break
                finished_recving.add(request_id)
                if not ok:
                    failed_recving.add(request_id)
                    self._invalid_block_ids.update(block_ids)
        return released | expired, finished_recving, failed_recving

    def get_block_ids_with_load_errors(self) -> set[int]:
        with self._lock:
            invalid, self._invalid_block_ids = self._invalid_block_ids, set()
        return invalid

    def get_kv_connector_stats(self) -> TcpKVConnectorStats | None:
        with self._lock:
            return None if self._stats.is_empty() else self._stats.clone_and_reset()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.server is not None:
            self.server.stop()

    def _pull(self, request_id: str, spec: PullSpec) -> None:
        ok = False
        try:
            if spec.local_block_ids:
                ok = self._pull_into_cache(request_id, spec)
            else:
                self._release_quietly(request_id, spec)
        except Exception:  # never lose a completion: the scheduler waits for it
            logger.exception("KV pull of %s crashed", request_id)
        finally:
            if spec.awaiting:
                self._done_pulls.put((request_id, ok, list(spec.local_block_ids)))

    def _pull_into_cache(self, request_id: str, spec: PullSpec) -> bool:
        assert self.store is not None and self.wire is not None, "register_kv_caches was not called"
        try:
            wire_dtype = self.wire.wire_for(spec.wire_dtype, len(spec.local_block_ids) * self.store.block_nbytes)
            pull = PullRequest(spec.first_remote_block, len(spec.local_block_ids), self.store.block_nbytes,
                               self.store.layout_id, wire_dtype)
            views, commit = self.store.write_views(spec.local_block_ids)
            result = pull_blocks(spec.remote_host, spec.remote_port, spec.remote_request_id, pull, views,
                                 connect_timeout_s=self.settings.connect_timeout_s,
                                 transfer_timeout_s=self.settings.transfer_timeout_s,
                                 token=self.settings.cluster_token, codec=self.wire.codec(wire_dtype))
            commit()
        except (KvTransferError, OSError, ValueError) as exc:
            logger.warning("KV pull for %s (remote request %s at %s:%d) failed: %s", request_id,
                           spec.remote_request_id, spec.remote_host, spec.remote_port, exc)
            with self._lock:
                self._stats.record_failed_pull()
            already_gone = isinstance(exc, ChecksumError) or (
                isinstance(exc, RemoteError) and exc.code == ErrorCode.UNKNOWN_REQUEST)
            refused = isinstance(exc, RemoteError) and exc.code == ErrorCode.UNAUTHORIZED  # so would a release
            if not (already_gone or refused):
                self._release_quietly(request_id, spec)
            return False
        logger.debug("KV pull for %s (remote request %s at %s:%d): %d blocks, %d KV bytes as %d %s bytes in %.2f ms "
                     "(%.1f MB/s on the wire)", request_id, spec.remote_request_id, spec.remote_host, spec.remote_port,
                     result.num_blocks, result.nbytes, result.wire_nbytes, wire_dtype.label, result.seconds * 1e3,
                     result.wire_nbytes / 2**20 / max(result.seconds, 1e-9))
        with self._lock:
            self._stats.record_pull(result.wire_nbytes, result.seconds, result.nbytes)
        return True

    def _release_quietly(self, request_id: str, spec: PullSpec) -> None:
        try:
            release_blocks(spec.remote_host, spec.remote_port, spec.remote_request_id,
                           connect_timeout_s=self.settings.connect_timeout_s,
                           transfer_timeout_s=self.settings.transfer_timeout_s,
                           token=self.settings.cluster_token)
        except (KvTransferError, OSError) as exc:
            if isinstance(exc, RemoteError) and exc.code == ErrorCode.UNKNOWN_REQUEST:
                logger.debug("remote request %s for %s was already freed", spec.remote_request_id, request_id)
            else:
                logger.warning("release of remote request %s for %s failed (its lease will free it): %s",
                               spec.remote_request_id, request_id, exc)

    def _record_serve(self, request_id: str, nbytes: int, seconds: float) -> None:
        with self._lock:
            self._stats.record_serve(nbytes, seconds)

    def _record_refusal(self, code: ErrorCode) -> None:
        if code == ErrorCode.UNAUTHORIZED:
            with self._lock:
                self._stats.record_unauthorized()
