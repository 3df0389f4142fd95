"""Whether vLLM can keep its KV cache in FP8 on a host: `fp8_kv_cache_support(platform)` (doctor and
`node.launch.resolve` ask it).

vLLM 0.32 (read from its source): `--kv-cache-dtype fp8|fp8_e4m3|fp8_e5m2` is accepted by the CUDA attention
backends and by the CPU backend (`vllm/v1/attention/backends/cpu_attn.py`: `supported_kv_cache_dtypes` lists
the three). On CPU, `_get_attn_isa` raises "FP8 KV cache on CPU requires x86 with AVX-512 or AMX" on any
other host (ARM, POWER, s390x, RISC-V, x86 without AVX-512), and "requires head_size divisible by 32" for
head sizes that are multiples of 16 but not of 32 (checked by vLLM when it starts; SmolLM2's 64 passes).
With FP8 the KV takes one byte per element (`core.kv_geometry`): half of fp16's and a quarter of fp32's KV
bytes per token, on the wire too (the TCP transport's wire dtypes do not shrink it further).
"""

from __future__ import annotations

from pathlib import Path

from core.host import Platform

FP8_KV_CACHE_DTYPES = ("fp8", "fp8_e4m3", "fp8_e5m2")
_CPU_FP8_FLAGS = ("avx512f", "amx_tile")  # either one: vLLM's torch.cpu._is_avx512_supported / _is_amx_tile_supported


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """This host's CPU flags (the first processor's `flags` line); empty when unreadable."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fp8_kv_cache_support(platform: Platform, flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """(whether vLLM 0.32 runs an FP8 KV cache on this host, why). `flags`: the CPU's (default: this host's)."""
    if platform.cuda:
        return True, "CUDA host: vLLM's GPU attention backends take --kv-cache-dtype fp8"
    if platform.arch not in ("x86_64", "AMD64"):
        return False, (f"vLLM's CPU backend needs x86 with AVX-512 or AMX for an FP8 KV cache; this host is "
                       f"{platform.arch}")
    found = [flag for flag in _CPU_FP8_FLAGS if flag in (cpu_flags() if flags is None else flags)]
    if not found:
        return False, "vLLM's CPU backend needs AVX-512 or AMX for an FP8 KV cache; this CPU has neither"
    return True, f"CPU backend with {' and '.join(found)}"
