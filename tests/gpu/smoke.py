"""GPU smoke check: what a first GPU user runs into first, without vLLM (torch with CUDA and disagg only).

On a machine with an NVIDIA GPU and a CUDA build of torch, from the repository root:

    pip install -e .              # once: disagg's own dependencies (pydantic, crc32c, ...); vLLM not needed
    python -m tests.gpu.smoke     # about a minute; prints its figures; exit status 0 when every check passed

Checks, each printed with its figures:

1. tcp data path: KV tensors shaped as vLLM's (one per layer, [blocks, kv heads, block tokens, 2 * head
   size], Llama-3.1-8B's geometry in bf16) on the GPU on both sides, moved by our TCP connector's pieces below
   vLLM (`transport.tcp.kv_tensors.build_block_store` over the tensors, staged through pinned host memory;
   `BlockServer`; `pull_blocks`, every frame's CRC-32C checked) over 127.0.0.1; the received blocks are
   compared with the sent ones on the GPU; GB/s (10^9 B/s) per size, on the wire and end to end (staging
   and the copy back to the GPU included), median of the timed pulls.
2. KV geometry: `core.kv_geometry.model_geometry` on bf16 and fp16 configs with `--dtype auto`, and one
   token of KV allocated on the GPU in that dtype has exactly the bytes the geometry says.
3. launch: this machine's detected `core.host.Platform` (GPU model, unified memory, GPUDirect RDMA) and
   the vLLM command line and environment of a prefill and a decode node with default flags (the Llama-3.1-8B
   fixture as --model); parsed by vLLM's own parser when vLLM is installed.

`--device cpu` runs the same code on CPU tensors (what the unit suite does, `tests/unit/test_gpu_smoke.py`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from core.host import Platform, detect_platform
from core.kv_geometry import model_geometry
from node.launch import VLLM_SERVER_MODULE, NodeLaunch, resolve
from node.settings import NodeSettings
from transport.tcp.client import pull_blocks
from transport.tcp.kv_tensors import StagingBlockStore, build_block_store
from transport.tcp.lease import LeaseTable
from transport.tcp.server import BlockServer
from transport.tcp.wire import PullRequest

HOST = "127.0.0.1"
MIB = 2**20
SIZES_MIB = (16, 64, 256)
REPEATS = 3
LLAMA = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "Llama-3.1-8B-Instruct"
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Llama-3.1-8B: 32 layers, 8 KV heads of 128; vLLM's CUDA block of 16 tokens: 64 KiB per layer and block in bf16
LAYERS, KV_HEADS, HEAD_DIM, BLOCK_TOKENS = 32, 8, 128, 16
GEOMETRY_CONFIGS = {  # name: (config.json fields, KV dtype under --dtype auto, KV bytes per token)
    "Llama-3.1-8B (bf16)": ({"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                             "hidden_size": 4096, "torch_dtype": "bfloat16"}, "bf16", 131_072),
    "Llama-2-7B (fp16)": ({"num_hidden_layers": 32, "num_attention_heads": 32, "hidden_size": 4096,
                           "torch_dtype": "float16"}, "fp16", 524_288),
}


def kv_caches(num_blocks: int, device: str, *, layers: int = LAYERS, seed: int | None = None,
              head_major: bool = False) -> dict[str, torch.Tensor]:
    """One bf16 tensor per layer, [blocks, kv heads, block tokens, 2 * head size], as vLLM hands them to a
    connector; random from `seed`, else zeros. `head_major`: the same logical shape over memory laid out
    heads first (blocks not contiguous)."""
    generator = torch.Generator(device=device).manual_seed(seed or 0)
    caches = {}
    for layer in range(layers):
        if head_major:
            tensor = torch.zeros(KV_HEADS, num_blocks, BLOCK_TOKENS, 2 * HEAD_DIM, dtype=torch.bfloat16,
                                 device=device).permute(1, 0, 2, 3)
        else:
            tensor = torch.zeros(num_blocks, KV_HEADS, BLOCK_TOKENS, 2 * HEAD_DIM, dtype=torch.bfloat16,
                                 device=device)
        if seed is not None:
            tensor.copy_(torch.randn(tensor.shape, generator=generator, device=device, dtype=torch.bfloat16))
        caches[f"model.layers.{layer}.self_attn.attn"] = tensor
    return caches


def tcp_round_trip(device: str, size_mib: int, *, repeats: int = REPEATS, layers: int = LAYERS,
                   head_major: bool = False) -> dict[str, Any]:
    """Move `size_mib` MiB of KV blocks between two stores on `device` through the tcp transport's block
    server and pull client, `repeats` + 1 times (the first is a warm-up); AssertionError when the blocks that
    arrived differ from those sent (compared on the device). Returns the figures."""
    block_nbytes = layers * KV_HEADS * BLOCK_TOKENS * 2 * HEAD_DIM * 2
    moved = max(1, size_mib * MIB // block_nbytes)
    src = kv_caches(moved + 3, device, layers=layers, seed=1, head_major=head_major)
    dst = kv_caches(moved + 3, device, layers=layers, head_major=head_major)
    src_store, dst_store = build_block_store(src), build_block_store(dst)
    remote_ids, local_ids = random.Random(2).sample(range(moved + 3), moved), list(range(moved + 3))[3:]
    leases = LeaseTable()
    server = BlockServer(src_store, leases, HOST, 0, transfer_timeout_s=120.0, publish_wait_s=1.0)
    port = server.start()
    wire_s, total_s = [], []
    try:
        for attempt in range(repeats + 1):
            request_id = f"smoke-{size_mib}-{attempt}"
            leases.publish(request_id, remote_ids, lease_s=120.0)
            started_s = time.perf_counter()
            views, commit = dst_store.write_views(local_ids)
            pull = PullRequest(0, moved, dst_store.block_nbytes, dst_store.layout_id)
            result = pull_blocks(HOST, port, request_id, pull, views, transfer_timeout_s=120.0)
            commit()
            wire_s.append(result.seconds)
            total_s.append(time.perf_counter() - started_s)
            _check_blocks(src, dst, remote_ids, local_ids)
            for tensor in dst.values():
                tensor[local_ids] = 0  # the next pull must bring every byte again
    finally:
        server.stop()
    nbytes = moved * block_nbytes
    return {"device": device, "size_mib": round(nbytes / MIB, 1), "blocks": moved, "block_nbytes": block_nbytes,
            "staged": isinstance(dst_store, StagingBlockStore),
            "wire_gb_s": round(nbytes / statistics.median(wire_s[1:]) / 1e9, 3),
            "end_to_end_gb_s": round(nbytes / statistics.median(total_s[1:]) / 1e9, 3), "verified": True}


def _check_blocks(src: dict[str, torch.Tensor], dst: dict[str, torch.Tensor], remote_ids: list[int],
                  local_ids: list[int]) -> None:
    """Every received block equals the sent one (on their device); the blocks not pulled stay zero."""
    pulled = set(local_ids)
    untouched = [b for b in range(next(iter(dst.values())).shape[0]) if b not in pulled]
    for name, tensor in dst.items():
        if not torch.equal(tensor[local_ids], src[name][remote_ids]):
            raise AssertionError(f"{name}: the blocks that arrived differ from those sent")
        if untouched and tensor[untouched].any():
            raise AssertionError(f"{name}: a block that was not pulled was written")


def geometry_checks(device: str) -> list[dict[str, Any]]:
    """`model_geometry` with --dtype auto on bf16 and fp16 configs, and one token of KV of that geometry
    allocated on `device` in its dtype; AssertionError when a byte count differs."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, (config, kv_dtype, kv_bytes) in GEOMETRY_CONFIGS.items():
            (Path(folder) / "config.json").write_text(json.dumps(config))
            geometry = model_geometry(folder, "auto")
            token = torch.empty(2, geometry.num_layers, geometry.num_kv_heads, geometry.head_dim,
                                dtype=TORCH_DTYPES[geometry.dtype], device=device)
            allocated = token.numel() * token.element_size()
            if (geometry.dtype, geometry.kv_bytes_per_token, allocated) != (kv_dtype, kv_bytes, kv_bytes):
                raise AssertionError(f"{name}: {geometry.dtype}, {geometry.kv_bytes_per_token} B per token, "
                                     f"{allocated} B allocated; expected {kv_dtype}, {kv_bytes} B")
            rows.append({"model": name, "dtype": geometry.dtype, "kv_bytes_per_token": kv_bytes, "device": device})
    return rows


def node_launches(platform: Platform, model_dir: Path = LLAMA) -> dict[str, NodeLaunch]:
    """A prefill and a decode node with default flags (and `model_dir` as --model) resolved on `platform`."""
    from decode_node.role import ROLE as DECODE
    from prefill_node.role import ROLE as PREFILL

    return {role.name: resolve(NodeSettings.build(role=role.name, **role.defaults.as_settings(),
                                                  model=str(model_dir)), role, platform, environ={})
            for role in (PREFILL, DECODE)}


def launch_check(platform: Platform, model_dir: Path = LLAMA) -> dict[str, Any]:
    """What the nodes would run on `platform`; their commands parsed by vLLM's parser when vLLM is here."""
    launches = node_launches(platform, model_dir)
    parsed = importlib.util.find_spec("vllm") is not None
    if parsed:
        from tests.support.vllm_cli import parse_server_command

        for node in launches.values():
            parse_server_command(node.vllm_command(), VLLM_SERVER_MODULE)
    device, why = platform.kv_buffer_device(peer_is_local=True)
    remote, remote_why = platform.kv_buffer_device(peer_is_local=False)
    return {"platform": platform, "kv_buffer_device_local_peer": f"{device} ({why})",
            "kv_buffer_device_remote_peer": f"{remote} ({remote_why})",
            "dtype": launches["prefill"].dtype, "kv_bytes_per_token": launches["prefill"].geometry.kv_bytes_per_token,
            "commands": {name: node.vllm_command() for name, node in launches.items()},
            "parsed_by_vllm": parsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gpu.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device for the KV tensors (default: cuda)")
    parser.add_argument("--sizes-mib", default=",".join(map(str, SIZES_MIB)), help="MiB per transfer")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed pulls per size (after one warm-up)")
    parser.add_argument("--layers", type=int, default=LAYERS, help="KV layers (default: Llama-3.1-8B's 32)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} (built for CUDA {torch.version.cuda})", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    launch = launch_check(detect_platform())
    print(f"platform: {launch['platform']}")
    for key in ("kv_buffer_device_local_peer", "kv_buffer_device_remote_peer", "dtype", "kv_bytes_per_token",
                "parsed_by_vllm"):
        print(f"  {key}: {launch[key]}")
    print(f"  prefill: {' '.join(launch['commands']['prefill'][1:])}")
    for row in geometry_checks(args.device):
        print(f"geometry: {row['model']}: --dtype auto -> {row['dtype']}, {row['kv_bytes_per_token']:,} B per "
              f"token, allocated on {row['device']}: ok")
    for size_mib in (int(s) for s in args.sizes_mib.split(",")):
        for head_major in (False, True):
            row = tcp_round_trip(args.device, size_mib, repeats=args.repeats, layers=args.layers,
                                 head_major=head_major)
            print(f"tcp {row['device']} -> {row['device']}: {row['size_mib']:7.1f} MiB ({row['blocks']} blocks, "
                  f"{'head-major' if head_major else 'block-major'}, staged {row['staged']}): "
                  f"wire {row['wire_gb_s']:.2f} GB/s, end to end "
                  f"{row['end_to_end_gb_s']:.2f} GB/s, blocks verified on the device")
    print("smoke: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
