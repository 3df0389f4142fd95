"""Every node's and router's full command line and environment, for `up --local`, bare nodes with default
flags and each example cluster file, on each simulated host (`core.host.PLATFORMS`): the dtype and KV buffer
device are what the host calls for, the KV bytes per token are what `disagg kv-size` says for the model's
config.json, and both nodes of a cluster agree on what shapes the KV. The same command lines go through
vLLM's own parser in `test_vllm_args.py`. Clusters and fixtures: `tests.support.cluster_launches`.
"""

from __future__ import annotations

import json

import pytest

from core.cluster_token import CLUSTER_TOKEN_ENV
from core.host import PLATFORMS
from node.launch import VLLM_SERVER_MODULE
from tests.support.cluster_launches import (
    CLUSTERS, EXAMPLE_FILES, LLAMA, ROLES, SMOLLM2, kv_size_bytes_per_token, node_launch, node_settings, processes,
    router_config,
)

pytestmark = pytest.mark.timeout(60)

MODEL = {"local-smollm2": SMOLLM2, "local-llama": LLAMA, "node-defaults": LLAMA, "spark-pair": LLAMA,
         "two-linux-tcp": SMOLLM2}
# (cluster, host): (--dtype vLLM gets, KV buffer device, KV cache dtype `disagg kv-size` is asked for).
# `auto` on a GPU: bf16 for a bf16 model; a float32 model (the converted SmolLM2) runs in 2-byte floats (vLLM
# 0.32 picks bf16 on compute capability >= 8.0, fp16 below; the bytes are the same).
# The peer is on this host for up --local and bare nodes, remote in the cluster files; spark-pair sets
# dtype = "bfloat16" and kv_buffer_device = "cpu" itself.
EXPECTED = {
    ("local-smollm2", "cpu"): ("float32", "cpu", "fp32"),
    ("local-smollm2", "dgx-spark"): ("auto", "cpu", "fp16"),
    ("local-smollm2", "h100-gpudirect"): ("auto", "cuda", "fp16"),
    ("local-smollm2", "cuda-no-gpudirect"): ("auto", "cuda", "fp16"),
    ("local-llama", "cpu"): ("float32", "cpu", "fp32"),
    ("local-llama", "dgx-spark"): ("auto", "cpu", "bf16"),
    ("local-llama", "h100-gpudirect"): ("auto", "cuda", "bf16"),
    ("local-llama", "cuda-no-gpudirect"): ("auto", "cuda", "bf16"),
    ("node-defaults", "cpu"): ("float32", "cpu", "fp32"),
    ("node-defaults", "dgx-spark"): ("auto", "cpu", "bf16"),
    ("node-defaults", "h100-gpudirect"): ("auto", "cuda", "bf16"),
    ("node-defaults", "cuda-no-gpudirect"): ("auto", "cuda", "bf16"),
    ("spark-pair", "cpu"): ("bfloat16", "cpu", "bf16"),
    ("spark-pair", "dgx-spark"): ("bfloat16", "cpu", "bf16"),
    ("spark-pair", "h100-gpudirect"): ("bfloat16", "cpu", "bf16"),
    ("spark-pair", "cuda-no-gpudirect"): ("bfloat16", "cpu", "bf16"),
    ("two-linux-tcp", "cpu"): ("float32", "cpu", "fp32"),
    ("two-linux-tcp", "dgx-spark"): ("auto", "cpu", "fp16"),
    ("two-linux-tcp", "h100-gpudirect"): ("auto", "cuda", "fp16"),
    ("two-linux-tcp", "cuda-no-gpudirect"): ("auto", "cpu", "fp16"),
}
NODE_CASES = [(cluster, host, role) for cluster in CLUSTERS for host in PLATFORMS for role in ROLES]


def test_the_matrix_covers_every_example_file_and_simulated_host():
    assert set(EXAMPLE_FILES) == {"spark-pair", "two-linux-tcp"}  # a new example needs its row in EXPECTED
    assert set(EXPECTED) == {(cluster, host) for cluster in CLUSTERS for host in PLATFORMS}


def the_node(cluster: str, role: str, tmp_path):
    [process] = [p for p in processes(cluster, tmp_path) if p.role == role]
    return process


@pytest.mark.parametrize("cluster, host, role", NODE_CASES)
def test_node_command_line_and_environment(cluster, host, role, tmp_path):
    process = the_node(cluster, role, tmp_path)
    node = node_launch(process, host)
    dtype, kv_device, kv_dtype = EXPECTED[cluster, host]
    cmd, env = node.vllm_command(), node.vllm_env({"PATH": "/usr/bin"})
    assert cmd[1:3] == ["-m", VLLM_SERVER_MODULE]
    assert cmd[cmd.index("--model") + 1] == str(MODEL[cluster]) and cmd[cmd.index("--dtype") + 1] == dtype
    assert node.link.kv_buffer_device == kv_device
    assert node.geometry.kv_bytes_per_token == kv_size_bytes_per_token(MODEL[cluster], kv_dtype)
    transfer = json.loads(cmd[cmd.index("--kv-transfer-config") + 1])
    assert transfer["kv_role"] == ROLES[role].kv_role and transfer == node.kv_transfer_config()
    if node.transport.name == "nixl":
        assert transfer["kv_buffer_device"] == kv_device
        assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == str(node.settings.kv_port)
        assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == node.settings.kv_host
    else:
        assert "kv_buffer_device" not in transfer  # the tcp connector stages GPU KV itself
    gpu = PLATFORMS[host].cuda
    assert ("--enforce-eager" in cmd) is not gpu
    assert ("VLLM_CPU_KVCACHE_SPACE" in env) is not gpu and ("VLLM_CPU_OMP_THREADS_BIND" in env) is not gpu
    assert env["PATH"] == "/usr/bin"
    if node.cluster_token:
        assert env[CLUSTER_TOKEN_ENV] == node.cluster_token and node.cluster_token not in " ".join(cmd)


def test_llama_3_1_8b_bf16_on_a_dgx_spark_pair(tmp_path):
    """The first GPU user's cluster: Llama-3.1-8B in bf16, 131,072 KV bytes per token, KV through pinned host
    memory, UCX over RoCE on the ConnectX-7 port the file names (without UCX_NET_DEVICES UCX may probe every
    device and hang at start)."""
    for role in ROLES:
        node = node_launch(the_node("spark-pair", role, tmp_path), "dgx-spark")
        assert node.geometry.kv_bytes_per_token == 131_072 == kv_size_bytes_per_token(LLAMA, "bf16")
        env = node.vllm_env({})
        assert env["UCX_NET_DEVICES"] == "rocep1s0f1:1" and env["UCX_TLS"] == "rc,sm,self,tcp"
        assert node.link.kv_buffer_device == "cpu" and not node.link.peer_is_local


def test_gpu_memory_on_one_host_leaves_ucx_to_pick_its_cuda_transports(tmp_path):
    """kv_link auto sets no UCX_TLS (UCX picks shared memory and cuda_ipc itself; UCX's shared-memory-only
    setting lacks the peer-failure handling NIXL asks for), whatever the buffer device."""
    node = node_launch(the_node("local-llama", "decode", tmp_path), "cuda-no-gpudirect")
    assert node.link.peer_is_local and node.link.kv_buffer_device == "cuda" and "UCX_TLS" not in node.vllm_env({})
    spark = node_launch(the_node("local-llama", "decode", tmp_path), "dgx-spark")
    assert spark.link.kv_buffer_device == "cpu" and "UCX_TLS" not in spark.vllm_env({})


@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("host", PLATFORMS)
def test_both_nodes_agree_on_what_shapes_the_kv(cluster, host, tmp_path):
    """Prefill and decode must hold the same KV layout (vllm#26744, #42895: block size and count mismatches
    between nodes): same model geometry and dtype, same vLLM arguments beyond the node's own."""
    prefill, decode = [node_launch(p, host) for p in processes(cluster, tmp_path) if p.role in ROLES]
    assert prefill.geometry == decode.geometry and prefill.dtype == decode.dtype
    assert prefill.settings.engine == decode.settings.engine
    assert prefill.transport.name == decode.transport.name
    assert prefill.link.kv_buffer_device == decode.link.kv_buffer_device


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_router_command_lines_point_at_the_nodes(cluster, tmp_path):
    procs = processes(cluster, tmp_path)
    nodes = {p.role: node_settings(p) for p in procs if p.role in ROLES}
    routers = [p for p in procs if p.role == "router"]
    assert len(routers) == (0 if cluster == "node-defaults" else 1 + (cluster == "two-linux-tcp"))
    for process in routers:
        config = router_config(process)
        expected = {role: (f"http://{s.host}:{s.info_port}",) for role, s in nodes.items()}
        assert config.decode_urls == expected["decode"]
        assert config.prefill_urls == (expected["prefill"] if config.mode == "disagg" else ())
        assert (config.cluster_token is not None) == ("--cluster-token-file" in process.args)
