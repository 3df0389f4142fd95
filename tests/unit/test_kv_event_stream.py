"""A node's KV event stream kept in order: replay after a late start, duplicates skipped, gaps replayed (or the
node forgotten when they cannot be), restarts detected by a sequence reset; with vLLM's own publisher and
with a stand-in that numbers batches as told. The subscriber finds publishers at /kv_event_sources."""

from __future__ import annotations

import asyncio
from typing import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry

from core.messages import NodeInfo
from router.kv_event_stream import EventSource, NodeEventStream, Sequencer, new_context
from router.kv_events import KvEventSubscriber, source_from
from router.prefix_index import PrefixIndex
from router.prefix_metrics import PrefixMetrics
from router.registry import Node, NodeRegistry
from tests.support.kv_event_publisher import FakePublisher, removed, stored
from tests.support.threaded_server import free_port

pytestmark = pytest.mark.timeout(120)
NODE = "http://node-a:8100"


def test_sequencer_applies_in_order_skips_replayed_duplicates_and_tells_gaps_from_restarts():
    seq = Sequencer()
    assert seq.classify(5) == "apply"  # the first one seen, without a replay
    seq.applied(5)
    seq.seen_live(5)
    assert (seq.classify(6), seq.classify(9), seq.classify(5), seq.classify(0)) == ("apply", "gap", "reset", "reset")
    seq = Sequencer()
    seq.replayed(3)  # batches 0..3 came by replay; SUB may hand them over again
    assert (seq.classify(2), seq.classify(3), seq.classify(4)) == ("duplicate", "duplicate", "apply")
    seq.seen_live(2)
    assert seq.classify(3) == "duplicate" and seq.classify(1) == "reset"  # SUB delivers in order: 1 after 2 is new
    seq.replayed(9)  # a gap replayed up to 9
    seq.seen_live(4)
    assert seq.classify(7) == "duplicate" and seq.classify(0) == "reset"


async def _until(condition: Callable[[], bool], what: str, poke: Callable[[], None] | None = None,
                 timeout_s: float = 20.0) -> None:
    """Wait for `condition`; `poke` (e.g. publish once more: a SUB connects late) runs every 0.3 s."""
    loop = asyncio.get_running_loop()
    deadline_s = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline_s, what
        if poke is not None:
            poke()
        await asyncio.sleep(0.3)


def _stream(source: EventSource) -> tuple[NodeEventStream, PrefixIndex, PrefixMetrics]:
    metrics = PrefixMetrics(CollectorRegistry())
    index = PrefixIndex(on_clear=lambda node, reason: metrics.resets.labels(node, reason).inc())
    return NodeEventStream(NODE, source, index, metrics, new_context()), index, metrics


def _source(pub: FakePublisher) -> EventSource:
    return source_from(pub.sources, "http://127.0.0.1:8100")


def test_a_late_subscriber_replays_then_follows_and_fills_a_gap_from_the_replay_buffer():
    async def scenario() -> None:
        pub = FakePublisher()
        pub.publish([stored([1, 2], 4)])  # before the router subscribed: only the replay has it
        stream, index, metrics = _stream(_source(pub))
        task = asyncio.create_task(stream.run())
        try:
            await _until(lambda: index.matched_blocks(NODE, [1, 2]) == 2, "replayed batch applied")
            pub.publish([removed([2])])
            await _until(lambda: index.matched_blocks(NODE, [1, 2]) == 1, "live batch applied",
                         poke=lambda: None)
            pub.publish([stored([3], 4)], send=False)  # lost on the way (ZMQ's high-water mark)
            pub.publish([stored([4], 4)])
            await _until(lambda: index.matched_blocks(NODE, [3]) == 1 and index.matched_blocks(NODE, [4]) == 1,
                         "the gap replayed")
            assert metrics.resets._metrics == {}  # nothing forgotten
        finally:
            task.cancel()
            pub.close()

    asyncio.run(scenario())


def test_a_gap_the_replay_cannot_fill_forgets_the_node_and_a_sequence_reset_means_a_restart():
    async def scenario() -> None:
        pub = FakePublisher()
        stream, index, metrics = _stream(_source(pub))
        task = asyncio.create_task(stream.run())
        try:
            await _until(lambda: index.num_blocks(NODE) > 0, "subscribed",
                         poke=lambda: pub.publish([stored([pub.next_seq + 100], 4)]))
            pub.buffer.clear()  # the node's replay buffer rolled over
            pub.publish([stored([7], 4)], seq=pub.next_seq + 5)
            await _until(lambda: index.matched_blocks(NODE, [7]) == 1 and index.num_blocks(NODE) == 1,
                         "forgotten, then the new batch applied")
            assert metrics.resets.labels(NODE, "events_lost")._value.get() == 1

            pub.buffer.clear()
            pub.publish([stored([8], 4)], seq=0)  # the node restarted: it numbers from 0 again
            await _until(lambda: index.num_blocks(NODE) == 1 and index.matched_blocks(NODE, [8]) == 1,
                         "forgotten on the restart, then the new process's batch applied")
            assert metrics.resets.labels(NODE, "sequence_reset")._value.get() == 1
        finally:
            task.cancel()
            pub.close()

    asyncio.run(scenario())


def test_vllms_own_publisher_through_replay_live_and_a_restart_on_the_same_ports():
    pytest.importorskip("vllm")
    from vllm.config.kv_events import KVEventsConfig
    from vllm.distributed.kv_events import BlockStored, EventPublisherFactory, KVEventBatch

    ports = (free_port(), free_port())
    config = KVEventsConfig(enable_kv_cache_events=True, publisher="zmq", endpoint=f"tcp://*:{ports[0]}",
                            replay_endpoint=f"tcp://*:{ports[1]}", topic="kv")

    def batch(*hashes: int) -> KVEventBatch:
        return KVEventBatch(ts=0.0, events=[BlockStored(block_hashes=list(hashes), parent_block_hash=None,
                                                        token_ids=[0] * 4 * len(hashes), block_size=4, lora_id=None,
                                                        medium="GPU", lora_name=None)])

    async def scenario() -> None:
        first = EventPublisherFactory.create(config, data_parallel_rank=0)
        first.publish(batch(1))
        await asyncio.sleep(0.3)
        source = EventSource(f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}", "kv")
        stream, index, metrics = _stream(source)
        task = asyncio.create_task(stream.run())
        second = None
        try:
            await _until(lambda: index.matched_blocks(NODE, [1]) == 1, "replayed from vLLM's buffer")
            await _until(lambda: index.matched_blocks(NODE, [2]) == 1, "live", poke=lambda: first.publish(batch(2)))
            await asyncio.sleep(0.5)
            first.shutdown()
            second = await _restarted(lambda: EventPublisherFactory.create(config, data_parallel_rank=0))
            await _until(lambda: index.matched_blocks(NODE, [3]) == 1 and index.matched_blocks(NODE, [1]) == 0,
                         "the restart seen", poke=lambda: second.publish(batch(3)))
            assert metrics.resets.labels(NODE, "sequence_reset")._value.get() >= 1
        finally:
            task.cancel()
            for publisher in (first, second):
                if publisher is not None:
                    publisher.shutdown()

    asyncio.run(scenario())


async def _restarted(create: Callable[[], object], tries: int = 20) -> object:
    """A new publisher on the ports the old one just closed (ZMQ releases them a moment later)."""
    import zmq

    for _ in range(tries):
        try:
            return create()
        except zmq.ZMQError:
            await asyncio.sleep(0.25)
    return create()


def test_sources_are_read_from_kv_event_sources_with_wildcards_made_reachable():
    assert source_from({}, NODE) is None  # a node without KV events
    found = source_from({"0": {"endpoint": "tcp://*:5557", "replay_endpoint": "tcp://0.0.0.0:5558", "topic": "t"}},
                        NODE)
    assert found == EventSource("tcp://node-a:5557", "tcp://node-a:5558", "t")
    assert source_from({"0": {"endpoint": "tcp://10.0.0.2:40001", "replay_endpoint": None}}, NODE) == \
        EventSource("tcp://10.0.0.2:40001", None, "")
    assert source_from({"0": {"endpoint": "ipc:///tmp/kv"}}, NODE) is None


def test_the_subscriber_follows_each_nodes_publisher_and_restarts_with_the_node():
    async def scenario() -> None:
        pub = FakePublisher()
        answers = {"sources": pub.sources}

        def handler(request: httpx.Request) -> httpx.Response:
            assert request.url.path == "/kv_event_sources"
            return httpx.Response(200, json=answers["sources"])

        node = Node("prefill", "http://127.0.0.1:9", healthy=True,
                    info=NodeInfo(role="prefill", vllm_url="http://127.0.0.1:9", model_path="m", served_model_name="m",
                                  transport="tcp", transport_reason="", kv_host="h", kv_port=1, kv_bytes_per_token=1,
                                  kv_role="kv_producer", engine_ready=True, pid=100))
        metrics = PrefixMetrics(CollectorRegistry())
        index = PrefixIndex(on_clear=lambda url, reason: metrics.resets.labels(url, reason).inc())
        subscriber = KvEventSubscriber(NodeRegistry([node, Node("decode", "http://d", healthy=True)]), ("prefill",),
                                       index, metrics)
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            task = asyncio.create_task(subscriber.run(client, 0.1))
            try:
                await _until(lambda: index.num_blocks(node.url) == 1, "subscribed",
                             poke=lambda: pub.publish([stored([pub.next_seq + 1], 4)]))
                assert not subscriber.streaming("http://d")  # decode nodes are not routed by prefix here
                node.info = node.info.model_copy(update={"pid": 101})  # the supervisor restarted vLLM
                await _until(lambda: subscriber.metrics.resets.labels(node.url, "node_restarted")._value.get() == 1,
                             "forgotten on the new pid")
                answers["sources"] = {}  # restarted without events: no stream
                node.info = node.info.model_copy(update={"pid": 102})
                await _until(lambda: not subscriber.streaming(node.url), "no stream for a node without events")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                pub.close()

    asyncio.run(scenario())
