"""Prefill side: the block server, a thread that serves published KV blocks to decode nodes over TCP.

One connection carries one exchange (PULL -> DATA, then RELEASE -> RELEASED) or a lone RELEASE. Blocks are
sent straight from the KV memory the `BlockStore` points at, or, when the PULL asks for another wire dtype,
converted frame by frame (`transport.tcp.codec`, about 1 MiB of KV per frame, so converting the next frame
overlaps sending the last) into one staging buffer per connection. Anything unexpected (unknown or expired
request, blocks outside what was published, a different KV layout, a frame over the limits, a bad
checksum, a PULL or RELEASE that does not prove the cluster token when this node has one) is answered
with an ERROR frame and the connection is closed. A test-only fault hook (`transport.tcp.faults`, off
unless given a fault file) corrupts or cuts a transfer on purpose.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from transport.tcp import auth, stream, wire
from transport.tcp.blocks import BlockStore
from transport.tcp.faults import Fault, FaultFile, corrupted, cut
from transport.tcp.lease import LeaseTable, UnknownRequestError
from transport.tcp.wire import ErrorCode, FrameType, PullRequest
from transport.tcp.wire_dtype import WireDtype, effective

logger = logging.getLogger(__name__)

ServedCallback = Callable[[str, int, float], None]  # request id, bytes, seconds
RefusedCallback = Callable[[ErrorCode], None]
ACCEPT_POLL_S = 0.5
CODEC_FRAME_KV_NBYTES = 2**20  # KV converted per DATA frame when the wire dtype is not native


class _Refused(Exception):
    def __init__(self, code: ErrorCode, message: str, request_id: str = "", reply_version: int = wire.VERSION) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.reply_version = reply_version


class _HangUp(Exception):
    """Close the connection now, without an ERROR frame (an injected truncation)."""


class BlockServer:
    """Serves the blocks published in `leases` from `store` on host:port (port 0: any free port).

    `token`: the cluster token every PULL and RELEASE must prove (None: not checked). `fault_file`: tests
    only, see `transport.tcp.faults`. `on_refused` hears the code of every ERROR frame sent.
    """

    def __init__(self, store: BlockStore, leases: LeaseTable, host: str, port: int, *,
                 transfer_timeout_s: float = 30.0, publish_wait_s: float = 2.0,
                 on_served: ServedCallback | None = None, token: bytes | None = None,
                 fault_file: str | None = None, on_refused: RefusedCallback | None = None) -> None:
        self.store = store
        self.leases = leases
        self.transfer_timeout_s = transfer_timeout_s
        self.publish_wait_s = publish_wait_s
        self._on_served = on_served
        self._on_refused = on_refused
        self._token = token
        self._faults = FaultFile(fault_file) if fault_file else None
        self._address = (host, port)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        return self._address[1]

    def start(self) -> int:
        """Bind, listen and start the accept thread; returns the bound port."""
        listener = socket.create_server(self._address, reuse_port=False, backlog=64)
        listener.settimeout(ACCEPT_POLL_S)
        self._listener = listener
        self._address = listener.getsockname()[:2]
        self._thread = threading.Thread(target=self._accept_loop, name="disagg-tcp-kv-server", daemon=True)
        self._thread.start()
        logger.info("TCP KV block server listening on %s:%d (cluster token %s)", *self._address,
                    "required" if self._token else "not required")
        if self._faults is not None:
            logger.warning("TCP KV block server: FAULT INJECTION enabled from %s (tests only)", self._faults.path)
        return self.port

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread at once (Linux)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5 * ACCEPT_POLL_S)
        if self._listener is not None:
            self._listener.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self._stopping.is_set():
                    logger.exception("TCP KV block server: accept failed")
                return
            threading.Thread(target=self._serve_connection, args=(conn, peer), daemon=True,
                             name="disagg-tcp-kv-conn").start()

    def _serve_connection(self, conn: socket.socket, peer: tuple) -> None:
        with conn:
            stream.make_blocking(conn)
            while not self._stopping.is_set():
                try:
                    if not self._serve_frame(conn):
                        return
                except _Refused as refusal:
                    logger.warning("refused %s: %s", peer, refusal.message)
                    if self._on_refused is not None:
                        self._on_refused(refusal.code)
                    _send_quietly(conn, wire.encode_error(refusal.request_id, refusal.code, refusal.message,
                                                          refusal.reply_version))
                    return
                except _HangUp:
                    return
                except (wire.TruncatedError, wire.TransferTimeoutError, OSError) as exc:
                    logger.debug("connection from %s ended: %s", peer, exc)
                    return

    def _serve_frame(self, conn: socket.socket) -> bool:
        """Serve one frame; False when the connection is done."""
        deadline_s = time.monotonic() + self.transfer_timeout_s
        try:
            got = wire.read_header(conn, deadline_s)
            if got is None:
                return False
            header, rid = got
            payload = wire.read_control_payload(conn, header, rid, deadline_s)
            request_id = rid.decode()
        except wire.VersionMismatchError as exc:
            version = exc.peer_version if exc.peer_version in wire.ERROR_COMPATIBLE_VERSIONS else wire.VERSION
            raise _Refused(ErrorCode.BAD_FRAME, f"this prefill node speaks TCP KV wire version {wire.VERSION}, the "
                           f"decode node sent version {exc.peer_version}: run the same disagg release on both nodes",
                           reply_version=version) from None
        except wire.FrameTooLargeError as exc:
            raise _Refused(ErrorCode.FRAME_TOO_LARGE, str(exc)) from None
        except (wire.ProtocolError, wire.ChecksumError, UnicodeDecodeError) as exc:
            raise _Refused(ErrorCode.BAD_FRAME, str(exc)) from None
        if header.frame_type is FrameType.PULL:
            try:
                pull, proof = wire.split_pull(payload)
            except wire.ProtocolError as exc:
                raise _Refused(ErrorCode.BAD_FRAME, str(exc)) from None
            self._check_proof(FrameType.PULL, request_id, pull.encode(), proof)
            self._serve_pull(conn, request_id, pull, deadline_s)
            return True
        if header.frame_type is FrameType.RELEASE:
            self._check_proof(FrameType.RELEASE, request_id, b"", payload)
            if not self.leases.release(request_id, self.publish_wait_s):
                raise _Refused(ErrorCode.UNKNOWN_REQUEST, f"release of unpublished request {request_id}",
                              request_id)
            stream.send_buffers(conn, [wire.encode_frame(FrameType.RELEASED, request_id)], deadline_s)
            return True
        raise _Refused(ErrorCode.BAD_FRAME, f"unexpected {header.frame_type.name} frame")

    def _check_proof(self, frame_type: FrameType, request_id: str, fields: bytes, proof: bytes) -> None:
        if not auth.verify(self._token, frame_type, request_id.encode(), fields, proof):
            what = "without a" if not proof else "with a wrong"
            raise _Refused(ErrorCode.UNAUTHORIZED, f"{frame_type.name} {what} cluster token proof", request_id)

    def _serve_pull(self, conn: socket.socket, request_id: str, pull: PullRequest, deadline_s: float) -> None:
        try:
            block_ids = self.leases.checkout(request_id, self.publish_wait_s)
        except UnknownRequestError as exc:
            raise _Refused(ErrorCode.UNKNOWN_REQUEST, str(exc.args[0]), request_id) from None
        try:
            selected = self._select_blocks(request_id, block_ids, pull)
            fault = self._faults.take() if self._faults is not None else None
            started_s = time.perf_counter()
            nbytes = self._send_blocks(conn, request_id.encode(), selected, deadline_s, fault, pull.wire_dtype)
            seconds = time.perf_counter() - started_s
        finally:
            self.leases.checkin(request_id)
        logger.debug("served %s: %d blocks, %d bytes in %.1f ms", request_id, len(selected), nbytes,
                     seconds * 1e3)
        if self._on_served is not None:
            self._on_served(request_id, nbytes, seconds)

    def _select_blocks(self, request_id: str, block_ids: list[int], pull: PullRequest) -> list[int]:
        if pull.layout_id != self.store.layout_id or pull.block_nbytes != self.store.block_nbytes:
            raise _Refused(ErrorCode.LAYOUT_MISMATCH,
                           f"peer layout {pull.layout_id:#x}/{pull.block_nbytes} B per block, "
                           f"here {self.store.layout_id:#x}/{self.store.block_nbytes} B", request_id)
        if effective(pull.wire_dtype, self.store.kv_dtype) is not pull.wire_dtype:
            raise _Refused(ErrorCode.LAYOUT_MISMATCH, f"wire dtype {pull.wire_dtype.label} does not apply to this "
                                                      f"node's KV ({self.store.kv_dtype or 'untyped bytes'})", request_id)
        end = pull.first_block + pull.num_blocks
        if pull.num_blocks == 0 or end > len(block_ids):
            raise _Refused(ErrorCode.BAD_RANGE, f"blocks {pull.first_block}..{end - 1} of request "
                                                f"{request_id}, which has {len(block_ids)}", request_id)
        return block_ids[pull.first_block:end]

    def _send_blocks(self, conn: socket.socket, rid: bytes, block_ids: list[int], deadline_s: float,
                     fault: Fault | None = None, wire_dtype: WireDtype = WireDtype.NATIVE) -> int:
        """Send the blocks as DATA frames, each (header and pieces) in one system call; returns the bytes sent.

        An injected fault (tests only) flips a byte of the first frame after its checksum, or hangs up
        after half the bytes, or goes silent after half the bytes until the peer gives up.
        """
        views = self.store.read_views(block_ids)
        nbytes, frames = self._frames(views, wire_dtype)
        budget_nbytes = nbytes // 2 if fault in (Fault.TRUNCATE, Fault.STALL) else nbytes + 1
        first = True
        for chunk in frames:
            chunk_nbytes = sum(len(piece) for piece in chunk)
            header = wire.encode_header(FrameType.DATA, rid, chunk_nbytes, wire.checksum(rid, chunk))
            if fault is Fault.CORRUPT and first:
                chunk = corrupted(chunk)
            first = False
            if chunk_nbytes >= budget_nbytes:
                stream.send_buffers(conn, [header, *cut(chunk, budget_nbytes)], deadline_s)
                if fault is Fault.STALL:
                    _wait_for_peer_to_leave(conn, deadline_s)
                raise _HangUp()
            budget_nbytes -= chunk_nbytes
            stream.send_buffers(conn, [header, *chunk], deadline_s)
        return nbytes

    def _frames(self, views: Sequence[memoryview], wire_dtype: WireDtype) -> tuple[int, Iterator[list[memoryview]]]:
        """(bytes on the wire, the DATA frames' payloads): the KV views themselves, or their conversion."""
        cursor = wire.ByteCursor(views)
        if wire_dtype is WireDtype.NATIVE:
            def native() -> Iterator[list[memoryview]]:
                while cursor.remaining:
                    yield cursor.take(min(cursor.remaining, wire.MAX_DATA_PAYLOAD_BYTES))
            return cursor.remaining, native()
        codec = self._codec(wire_dtype)
        frame_kv_nbytes = max(1, CODEC_FRAME_KV_NBYTES // codec.kv_row_nbytes) * codec.kv_row_nbytes
        staging = memoryview(bytearray(codec.wire_nbytes(min(frame_kv_nbytes, cursor.remaining))))

        def converted() -> Iterator[list[memoryview]]:  # each payload is valid until the next is asked for
            while cursor.remaining:
                written = codec.encode(cursor.take(min(cursor.remaining, frame_kv_nbytes)), staging)
                yield [staging[:written]]
        return codec.wire_nbytes(cursor.remaining), converted()

    def _codec(self, wire_dtype: WireDtype):  # -> transport.tcp.codec.Codec (imports torch and numba)
        try:
            from transport.tcp.codec import Codec
        except ImportError as exc:
            raise _Refused(ErrorCode.INTERNAL, f"cannot convert to wire dtype {wire_dtype.label}: {exc}") from None
        assert self.store.kv_dtype is not None and self.store.row_elements is not None
        return Codec(wire_dtype, self.store.kv_dtype, self.store.row_elements)


def _wait_for_peer_to_leave(conn: socket.socket, deadline_s: float) -> None:
    """The stall fault: send nothing until the peer closes the connection or our deadline passes."""
    try:
        conn.settimeout(max(0.01, deadline_s - time.monotonic()))
        while conn.recv(4096):
            pass
    except OSError:  # includes the timeout
        pass


def _send_quietly(conn: socket.socket, frame: bytes) -> None:
    try:
        stream.send_buffers(conn, [frame], time.monotonic() + 1.0)
    except (wire.KvTransferError, OSError):
        pass
