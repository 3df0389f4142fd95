"""The TCP KV transport's wire format and settings: frames, limits, checksums, no pickle."""

from __future__ import annotations

import ast
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from transport.tcp import wire
from transport.tcp.settings import TcpConnectorSettings
from transport.tcp.wire import ErrorCode, FrameType, PullRequest

pytestmark = pytest.mark.timeout(30)

TCP_PACKAGE = Path(__file__).resolve().parents[2] / "transport" / "tcp"


def _deadline(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_control_frame_round_trip(pair):
    a, b = pair
    pull = PullRequest(first_block=2, num_blocks=3, block_nbytes=46080 * 128, layout_id=0xDEADBEEF)
    a.sendall(wire.encode_frame(FrameType.PULL, "cmpl-abc-0", pull.encode()))
    header, rid = wire.read_header(b, _deadline())
    assert header.frame_type is FrameType.PULL and rid == b"cmpl-abc-0"
    assert PullRequest.decode(wire.read_control_payload(b, header, rid, _deadline())) == pull
    assert pull.payload_nbytes == 3 * 46080 * 128


def test_header_is_twenty_bytes_big_endian():
    frame = wire.encode_frame(FrameType.RELEASE, "r1")
    assert len(frame) == 20 + 2
    magic, version, kind, rid_len, crc, payload_len = struct.unpack("!4sBBHIQ", frame[:20])
    assert (magic, version, kind, rid_len, payload_len) == (b"DKVT", wire.VERSION, FrameType.RELEASE, 2, 0)
    assert crc == wire.checksum(b"r1")


@pytest.mark.parametrize("patch, message", [
    (lambda h: b"XXXX" + h[4:], "magic"),
    (lambda h: h[:4] + bytes([99]) + h[5:], "version"),
    (lambda h: h[:5] + bytes([77]) + h[6:], "frame type"),
])
def test_bad_headers_are_refused(patch, message):
    header = wire.encode_frame(FrameType.RELEASE, "r1")[:20]
    with pytest.raises(wire.ProtocolError, match=message):
        wire.decode_header(patch(header))


def test_oversize_request_id_refused():
    header = struct.pack("!4sBBHIQ", b"DKVT", wire.VERSION, FrameType.PULL, wire.MAX_REQUEST_ID_BYTES + 1, 0, 0)
    with pytest.raises(wire.FrameTooLargeError):
        wire.decode_header(header)


def test_oversize_control_payload_refused_unread(pair):
    a, b = pair
    rid = b"r1"
    a.sendall(wire.encode_header(FrameType.PULL, rid, wire.MAX_CONTROL_PAYLOAD_BYTES + 1, 0))
    header, got_rid = wire.read_header(b, _deadline())
    with pytest.raises(wire.FrameTooLargeError):
        wire.read_control_payload(b, header, got_rid, _deadline(0.5))


def test_corrupted_control_payload_detected(pair):
    a, b = pair
    frame = bytearray(wire.encode_frame(FrameType.PULL, "r1", PullRequest(0, 1, 8, 1).encode()))
    frame[-1] ^= 0x01
    a.sendall(bytes(frame))
    header, rid = wire.read_header(b, _deadline())
    with pytest.raises(wire.ChecksumError):
        wire.read_control_payload(b, header, rid, _deadline())


def test_truncated_frame_detected(pair):
    a, b = pair
    a.sendall(wire.encode_frame(FrameType.PULL, "r1", PullRequest(0, 1, 8, 1).encode())[:-5])
    a.shutdown(socket.SHUT_WR)
    header, rid = wire.read_header(b, _deadline())
    with pytest.raises(wire.TruncatedError):
        wire.read_control_payload(b, header, rid, _deadline())


def test_clean_close_between_frames_is_not_an_error(pair):
    a, b = pair
    a.shutdown(socket.SHUT_WR)
    assert wire.read_header(b, _deadline()) is None


def test_silence_times_out(pair):
    _, b = pair
    with pytest.raises(wire.TransferTimeoutError):
        wire.recv_exact(b, 10, time.monotonic() + 0.2)


def test_error_frame_round_trip(pair):
    a, b = pair
    a.sendall(wire.encode_error("r9", ErrorCode.UNKNOWN_REQUEST, "request r9 is not published"))
    header, rid = wire.read_header(b, _deadline())
    assert header.frame_type is FrameType.ERROR and rid == b"r9"
    error = wire.decode_error(wire.read_control_payload(b, header, rid, _deadline()))
    assert error.code == ErrorCode.UNKNOWN_REQUEST and "not published" in error.message


def test_pull_payload_of_wrong_size_refused():
    with pytest.raises(wire.ProtocolError):
        PullRequest.decode(PullRequest(0, 1, 8, 1).encode() + b"\0")


def test_checksum_covers_request_id_and_payload():
    base = wire.checksum(b"r1", [memoryview(b"abc"), b"def"])
    assert base == wire.checksum(b"r1", [b"abcdef"])
    assert base != wire.checksum(b"r2", [b"abcdef"])
    assert base != wire.checksum(b"r1", [b"abcdeg"])


FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "json"}
FORBIDDEN_CALLS = {"eval", "exec", "loads"}


@pytest.mark.parametrize("path", sorted(TCP_PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_pickle_no_code_from_the_wire(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = {(node.module or "").split(".")[0]}
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            assert name not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno} calls {name}"
            continue
        else:
            continue
        assert not names & FORBIDDEN_MODULES, f"{path.name}:{node.lineno} imports {names & FORBIDDEN_MODULES}"


def test_tcp_package_files_found():
    assert len(list(TCP_PACKAGE.glob("*.py"))) >= 5  # the parametrized scan above is not vacuous


def test_settings_from_extra_config():
    settings = TcpConnectorSettings.from_extra_config(
        {"host": "10.0.0.1", "port": "5750", "lease_s": 12, "transfer_timeout_s": "3.5"})
    got = (settings.host, settings.port, settings.lease_s, settings.transfer_timeout_s)
    assert got == ("10.0.0.1", 5750, 12.0, 3.5)
    assert settings.listen_host == "10.0.0.1"
    assert TcpConnectorSettings.from_extra_config({"bind_host": "0.0.0.0"}).listen_host == "0.0.0.0"
    assert TcpConnectorSettings.from_extra_config(None) == TcpConnectorSettings()


@pytest.mark.parametrize("extra, message", [
    ({"lease": 30}, "unknown"),
    ({"port": 70000}, "port"),
    ({"lease_s": 0}, "lease_s"),
    ({"max_concurrent_pulls": 0}, "max_concurrent_pulls"),
])
def test_settings_refuse_bad_values(extra, message):
    with pytest.raises(ValueError, match=message):
        TcpConnectorSettings.from_extra_config(extra)


def test_byte_cursor_slices_across_views():
    a, b = bytearray(b"abcd"), bytearray(b"efghij")
    cursor = wire.ByteCursor([memoryview(a), memoryview(b)])
    assert cursor.remaining == 10
    assert [bytes(s) for s in cursor.take(3)] == [b"abc"]
    assert [bytes(s) for s in cursor.take(5)] == [b"d", b"efgh"]
    with pytest.raises(ValueError):
        cursor.take(3)
    assert [bytes(s) for s in cursor.take(2)] == [b"ij"] and cursor.remaining == 0


def test_many_buffers_cross_in_batches(pair):
    """More buffers than one system call takes, with partial transfers in between: every byte in order."""
    from transport.tcp import stream

    a, b = pair
    count = stream.IOV_BATCH * 3 + 7
    sent = [bytes([i % 251]) * (1 + i % 5) * 300 for i in range(count)]  # > the socket buffers
    received = [bytearray(len(s)) for s in sent]
    sender = threading.Thread(target=stream.send_buffers, args=(a, sent, _deadline()))
    sender.start()
    assert stream.recv_into_buffers(b, [memoryview(r) for r in received], _deadline()) == sum(map(len, sent))
    sender.join()
    assert [bytes(r) for r in received] == sent


def test_advance_drops_sent_buffers_and_slices_the_partial_one():
    from transport.tcp.stream import _advance

    views = [memoryview(b"abc"), memoryview(b"de"), memoryview(b"fgh")]
    assert [bytes(v) for v in _advance(views, 4)] == [b"e", b"fgh"]
    assert [bytes(v) for v in _advance(views, 5)] == [b"fgh"]
    assert _advance(views, 8) == []


def test_checksum_is_crc32c_over_request_id_then_payload():
    # The standard CRC-32C check value: "123456789" -> 0xE3069283, also when fed in pieces.
    assert wire.checksum(b"123456789") == 0xE3069283
    assert wire.checksum(b"1234", [memoryview(bytearray(b"56")), b"789"]) == 0xE3069283
