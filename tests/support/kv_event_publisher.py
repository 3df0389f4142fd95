"""A stand-in for a vLLM node's KV event publisher (pyzmq only), speaking vLLM 0.32's wire format: PUB frames
(topic, seq u64 big endian, msgpack batch) and a ROUTER replay socket that streams buffered batches from a
requested sequence number and ends with seq -1. Unlike vLLM's, it numbers batches as told, so tests can make
gaps and restarts; tests/unit/test_kv_event_stream.py also runs vLLM's own publisher."""

from __future__ import annotations

import threading
import time
from typing import Any

import msgspec
import zmq

from tests.support.threaded_server import free_port


def stored(hashes: list[int], block_size: int, token_ids: list[int] | None = None,
           parent: int | None = None) -> dict[str, Any]:
    return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent,
            "token_ids": token_ids if token_ids is not None else [0] * (block_size * len(hashes)),
            "block_size": block_size, "lora_id": None, "medium": "GPU", "lora_name": None, "group_idx": 0}


def removed(hashes: list[int]) -> dict[str, Any]:
    return {"type": "BlockRemoved", "block_hashes": hashes, "medium": "GPU", "group_idx": 0}


class FakePublisher:
    def __init__(self, topic: str = "kv", replay: bool = True) -> None:
        self.port, self.replay_port = free_port(), free_port()
        self.topic = topic.encode()
        self.context = zmq.Context()
        self.pub = self.context.socket(zmq.PUB)
        self.pub.bind(f"tcp://127.0.0.1:{self.port}")
        self.buffer: list[tuple[int, bytes]] = []
        self.next_seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_replay, daemon=True) if replay else None
        if self._thread is not None:
            self._thread.start()

    @property
    def sources(self) -> dict[str, Any]:
        """What vLLM's GET /kv_event_sources would answer for this publisher (with a wildcard host)."""
        replay = f"tcp://*:{self.replay_port}" if self._thread is not None else None
        return {"0": {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{self.port}",
                      "replay_endpoint": replay, "topic": self.topic.decode()}}

    def publish(self, events: list[dict[str, Any]], seq: int | None = None, send: bool = True) -> int:
        """Buffer (and, unless `send` is false, publish) one batch; its sequence number."""
        with self._lock:
            seq = self.next_seq if seq is None else seq
            self.next_seq = seq + 1
            payload = msgspec.msgpack.encode([time.time(), events, 0])
            self.buffer.append((seq, payload))
            if send:
                self.pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])
        return seq

    def _serve_replay(self) -> None:
        router = self.context.socket(zmq.ROUTER)
        router.bind(f"tcp://127.0.0.1:{self.replay_port}")
        try:
            while not self._stop.is_set():
                if not router.poll(50):
                    continue
                client, _, start = router.recv_multipart()
                with self._lock:
                    batches = [b for b in self.buffer if b[0] >= int.from_bytes(start, "big")]
                for seq, payload in batches:
                    router.send_multipart([client, b"", self.topic, seq.to_bytes(8, "big"), payload])
                router.send_multipart([client, b"", b"", (-1).to_bytes(8, "big", signed=True), b""])
        finally:
            router.close(linger=0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.pub.close(linger=0)
        self.context.term()
