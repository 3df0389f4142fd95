"""How fast KV rows convert to each wire dtype on this host, and why the codec uses numba: int8 quantization
(one scale per row of 64 float32) written three ways, numpy, torch and the codec's fused numba kernel, then
the codec (`transport.tcp.codec`) per wire dtype, converting and restoring. One thread each (torch set to
one, as in a vLLM CPU worker bound to one core); best of `--repeats` over `--size-mb` of standard normal KV.

    python -m bench.kv_codec_speed --size-mb 16 --repeats 5 --output codec.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROW = 64


def _best_s(step: Callable[[], object], repeats: int) -> float:
    step()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best


def _numpy_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    peak = np.abs(x).max(axis=1)
    inverse = np.divide(np.float32(127), peak, out=np.zeros_like(peak), where=peak > 0)
    return np.rint(x * inverse[:, None]).astype(np.int8), peak / np.float32(127)


def quantizers(x: np.ndarray, repeats: int) -> dict[str, float]:
    """GB/s of KV quantized to int8 by numpy, torch and the codec's numba kernel."""
    import torch

    from transport.tcp.codec import _quantize_rows

    torch.set_num_threads(1)
    xt = torch.from_numpy(x)

    def torch_int8() -> object:
        peak = xt.abs().amax(dim=1, keepdim=True)
        inverse = torch.where(peak > 0, 127 / peak, torch.zeros_like(peak))
        return torch.round(xt * inverse).to(torch.int8), peak / 127

    scales, values = np.empty(len(x), np.float32), np.empty(x.shape, np.int8)
    steps = {"numpy": lambda: _numpy_int8(x), "torch": torch_int8,
             "numba (codec)": lambda: _quantize_rows(x, scales, values)}
    return {name: round(x.nbytes / _best_s(step, repeats) / 1e9, 3) for name, step in steps.items()}


def codec(x: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:
    """GB/s of KV converted and restored by the codec, per wire dtype."""
    from transport.tcp.codec import Codec
    from transport.tcp.wire_dtype import WireDtype

    source = memoryview(x).cast("B")
    target = memoryview(np.empty_like(x)).cast("B")
    found = {}
    for wire in (WireDtype.BF16, WireDtype.FP16, WireDtype.INT8):
        c = Codec(wire, "float32", ROW)
        out = memoryview(bytearray(c.wire_nbytes(len(source))))
        encode_s = _best_s(lambda: c.encode([source], out), repeats)
        decode_s = _best_s(lambda: c.decode(out, [target]), repeats)
        found[wire.label] = {"encode_gb_s": round(x.nbytes / encode_s / 1e9, 3),
                             "decode_gb_s": round(x.nbytes / decode_s / 1e9, 3)}
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kv_codec_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from transport.tcp.codec import warm_up

    warm_up("float32", ROW)
    x = np.random.default_rng(0).standard_normal(args.size_mb * 2**20 // 4, dtype=np.float32).reshape(-1, ROW)
    result = {"unit": "GB/s (10^9 B/s) of float32 KV, best of repeats, one thread", "size_mb": args.size_mb,
              "repeats": args.repeats, "int8_quantize": quantizers(x, args.repeats), "codec": codec(x, args.repeats)}
    text = json.dumps(result, indent=1)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
