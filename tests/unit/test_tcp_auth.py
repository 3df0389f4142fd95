"""The cluster token on the TCP transport: PULL and RELEASE prove it, a prefill node with a token refuses
frames that do not, before it sends anything or touches a lease; the node option hands it to vLLM through
the environment, never the command line."""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.kv_arrays import kv_arrays
from transport.tcp import auth, wire
from transport.tcp.blocks import RegionBlockStore
from transport.tcp.client import pull_blocks, release_blocks
from transport.tcp.lease import LeaseTable
from transport.tcp.server import BlockServer
from transport.tcp.settings import TcpConnectorSettings
from transport.tcp.wire import ErrorCode, FrameType, PullRequest

pytestmark = pytest.mark.timeout(20)

LAYERS, BLOCKS, BLOCK_SHAPE = 2, 6, (2, 8, 8)


def arrays(seed: int | None) -> list[np.ndarray]:
    return kv_arrays(LAYERS, BLOCKS, BLOCK_SHAPE, seed)


@pytest.fixture
def serve():
    """serve(token) -> (server, leases, src arrays, served list, refusal codes); servers stopped after."""
    servers = []

    def start(token: bytes | None):
        src, leases, served, refused = arrays(seed=1), LeaseTable(), [], []
        server = BlockServer(RegionBlockStore.from_arrays(src, layout_id=7), leases, "127.0.0.1", 0,
                             transfer_timeout_s=5.0, publish_wait_s=0.1, token=token,
                             on_served=lambda *a: served.append(a), on_refused=refused.append)
        server.start()
        servers.append(server)
        return server, leases, src, served, refused

    yield start
    for server in servers:
        server.stop()


def pull(server, request_id: str, token: bytes | None, local_blocks=(0, 1), dst=None):
    dst = arrays(seed=None) if dst is None else dst
    store = RegionBlockStore.from_arrays(dst, layout_id=7)
    views, commit = store.write_views(list(local_blocks))
    pull_blocks("127.0.0.1", server.port, request_id, PullRequest(0, len(local_blocks), store.block_nbytes, 7),
                views, connect_timeout_s=2.0, transfer_timeout_s=5.0, token=token)
    commit()
    return dst


@pytest.mark.parametrize("server_token, client_token", [(b"s3cret", b"s3cret"), (None, None), (None, b"x")],
                         ids=["same-token", "no-token-anywhere", "token-on-decode-only-prefill-has-none"])
def test_pull_and_release_work_when_the_prefill_node_accepts(serve, server_token, client_token):
    server, leases, src, served, refused = serve(server_token)
    leases.publish("req-ok", [4, 2], lease_s=30)
    dst = pull(server, "req-ok", client_token)
    for layer in range(LAYERS):
        np.testing.assert_array_equal(dst[layer][[0, 1]], src[layer][[4, 2]])
    assert leases.drain_finished() == ({"req-ok"}, set())  # the RELEASE with its proof was accepted
    leases.publish("req-rel", [3], lease_s=30)
    release_blocks("127.0.0.1", server.port, "req-rel", token=client_token)
    assert leases.drain_finished() == ({"req-rel"}, set())
    assert len(served) == 1 and refused == []


@pytest.mark.parametrize("client_token", [None, b"s3cres", b"s3cret "], ids=["missing", "wrong", "longer"])
def test_pull_without_the_token_is_refused_and_nothing_is_sent(serve, client_token):
    server, leases, _, served, refused = serve(b"s3cret")
    leases.publish("req-a", [4, 2], lease_s=30)
    dst = arrays(seed=None)
    with pytest.raises(wire.RemoteError) as error:
        pull(server, "req-a", client_token, dst=dst)
    assert error.value.code == ErrorCode.UNAUTHORIZED
    assert not any(layer.any() for layer in dst)
    assert served == [] and refused == [ErrorCode.UNAUTHORIZED]
    assert leases.pending() == 1 and leases.drain_finished() == (set(), set())  # blocks stay for a real pull
    with pytest.raises(wire.RemoteError) as error:
        release_blocks("127.0.0.1", server.port, "req-a", token=client_token)
    assert error.value.code == ErrorCode.UNAUTHORIZED and leases.pending() == 1
    assert refused == [ErrorCode.UNAUTHORIZED] * 2
    pull(server, "req-a", b"s3cret")  # the right token still gets them


def test_token_on_decode_refused_by_a_prefill_with_another(serve):
    server, leases, _, served, refused = serve(b"cluster-A")
    leases.publish("req-b", [1], lease_s=30)
    with pytest.raises(wire.RemoteError, match="UNAUTHORIZED"):
        pull(server, "req-b", b"cluster-B", local_blocks=(0,))
    assert served == [] and leases.pending() == 1


def send_raw(port: int, frame: bytes) -> wire.RemoteError:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(frame)
        header, rid = wire.read_header(sock, time.monotonic() + 5)
        assert header.frame_type is FrameType.ERROR
        error = wire.decode_error(wire.read_control_payload(sock, header, rid, time.monotonic() + 5))
        assert sock.recv(1) == b""
    return error


def test_a_proof_opens_only_its_own_request_and_range(serve):
    server, leases, _, served, _ = serve(b"t")
    leases.publish("req-c", [1, 2, 3], lease_s=30)
    block_nbytes = server.store.block_nbytes
    asked, other = PullRequest(0, 1, block_nbytes, 7), PullRequest(0, 3, block_nbytes, 7)
    proof_for_d = auth.proof(b"t", FrameType.PULL, b"req-d", asked.encode())
    proof_for_one = auth.proof(b"t", FrameType.PULL, b"req-c", asked.encode())
    for payload in (asked.encode() + proof_for_d, other.encode() + proof_for_one):
        assert send_raw(server.port, wire.encode_frame(FrameType.PULL, "req-c", payload)).code == ErrorCode.UNAUTHORIZED
    release_proof = auth.proof(b"t", FrameType.RELEASE, b"req-d")
    assert send_raw(server.port, wire.encode_frame(FrameType.RELEASE, "req-c", release_proof)).code \
        == ErrorCode.UNAUTHORIZED
    pull_proof_as_release = auth.proof(b"t", FrameType.PULL, b"req-c")
    assert send_raw(server.port, wire.encode_frame(FrameType.RELEASE, "req-c", pull_proof_as_release)).code \
        == ErrorCode.UNAUTHORIZED
    assert served == [] and leases.pending() == 1


def test_pull_frame_layout_and_proof():
    pull = PullRequest(1, 2, 4096, 9)
    frame = wire.encode_pull("r", pull, b"k")
    header = wire.decode_header(frame[:20])
    payload = frame[21:]
    assert header.payload_nbytes == 21 + auth.PROOF_NBYTES == len(payload)  # v4: + the wire dtype byte
    assert wire.split_pull(payload) == (pull, auth.proof(b"k", FrameType.PULL, b"r", pull.encode()))
    assert wire.split_pull(wire.encode_pull("r", pull, None)[21:]) == (pull, b"")
    with pytest.raises(wire.ProtocolError):
        wire.split_pull(payload[:-1])
    assert auth.verify(None, FrameType.PULL, b"r", b"", b"anything")
    assert not auth.verify(b"k", FrameType.PULL, b"r", pull.encode(), b"")


def test_settings_take_the_token_from_the_environment_only():
    settings = TcpConnectorSettings.from_extra_config({"port": 1}, {auth.CLUSTER_TOKEN_ENV: " tok\n"})
    assert settings.cluster_token == b"tok" and "tok" not in repr(settings)
    assert TcpConnectorSettings.from_extra_config({}, {auth.CLUSTER_TOKEN_ENV: "  "}).cluster_token is None
    assert TcpConnectorSettings.from_extra_config({}).cluster_token is None
    with pytest.raises(ValueError, match="environment"):
        TcpConnectorSettings.from_extra_config({"cluster_token": "tok"})


# ---- the node option -----------------------------------------------------------------------------------

def node_config(tmp_path: Path, monkeypatch, *argv: str):
    from core.host import Platform
    from node.cli import add_node_parser, settings_from_args
    from node.launch import resolve
    from prefill_node.role import ROLE

    (tmp_path / "model").mkdir(parents=True, exist_ok=True)
    (tmp_path / "model" / "config.json").write_text(json.dumps(
        {"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}))
    parser = argparse.ArgumentParser()
    add_node_parser(parser.add_subparsers(), ROLE)
    args = parser.parse_args(["prefill", "--model", str(tmp_path / "model"), "--transport", "tcp", *argv])
    return resolve(settings_from_args(ROLE, args), ROLE, Platform(cuda=False, cores=(0, 1)))


def test_token_file_reaches_vllm_through_its_environment_only(tmp_path, monkeypatch):
    from core.errors import ConfigError

    monkeypatch.delenv(auth.CLUSTER_TOKEN_ENV, raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("file-secret\n")
    token_file.chmod(0o600)
    config = node_config(tmp_path, monkeypatch, "--cluster-token-file", str(token_file))
    assert config.vllm_env({})[auth.CLUSTER_TOKEN_ENV] == "file-secret"
    assert "file-secret" not in " ".join(config.vllm_command()) and "file-secret" not in repr(config)
    monkeypatch.setenv(auth.CLUSTER_TOKEN_ENV, "env-secret")
    assert node_config(tmp_path / "b", monkeypatch).cluster_token == "env-secret"
    monkeypatch.delenv(auth.CLUSTER_TOKEN_ENV)
    assert auth.CLUSTER_TOKEN_ENV not in node_config(tmp_path / "c", monkeypatch).vllm_env({})
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        node_config(tmp_path / "d", monkeypatch, "--cluster-token-file", str(token_file))
