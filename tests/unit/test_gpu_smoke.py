"""The GPU smoke check (`tests/gpu/smoke.py`): on CPU tensors here, on CUDA tensors where there is a GPU.

On a GPU machine (torch with CUDA, vLLM not needed), from the repository root:

    pip install -e .              # once: disagg's own dependencies
    python -m tests.gpu.smoke     # prints the figures (GB/s per size, the detected platform); exit 0 = passed

or, with pytest and pytest-timeout installed, `python -m pytest tests/unit/test_gpu_smoke.py -q -s`. The
`gpu`-marked tests below skip where there is no NVIDIA driver (tests/conftest.py) or torch has no CUDA; the
others run the same code with `device="cpu"`, so the GPU run changes only the device.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from core.host import PLATFORMS, detect_platform  # noqa: E402
from tests.gpu import smoke  # noqa: E402

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]


def needs_torch_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} has no CUDA device here")


@pytest.mark.parametrize("head_major, staged", [(False, False), (True, True)])
def test_tcp_data_path_on_cpu_tensors(head_major, staged):
    row = smoke.tcp_round_trip("cpu", 1, repeats=1, layers=2, head_major=head_major)
    assert row["verified"] and row["staged"] is staged and row["blocks"] == 8
    assert row["wire_gb_s"] > 0 and row["end_to_end_gb_s"] > 0


def test_the_block_check_catches_a_wrong_block():
    src = smoke.kv_caches(4, "cpu", layers=1, seed=1)
    dst = smoke.kv_caches(4, "cpu", layers=1, seed=None)
    with pytest.raises(AssertionError, match="differ from those sent"):
        smoke._check_blocks(src, dst, [0, 1], [2, 3])
    for name in dst:
        dst[name][[2, 3]] = src[name][[0, 1]]
    smoke._check_blocks(src, dst, [0, 1], [2, 3])
    dst["model.layers.0.self_attn.attn"][0] = 1
    with pytest.raises(AssertionError, match="not pulled was written"):
        smoke._check_blocks(src, dst, [0, 1], [2, 3])


def test_geometry_on_cpu():
    rows = smoke.geometry_checks("cpu")
    assert [(r["dtype"], r["kv_bytes_per_token"]) for r in rows] == [("bf16", 131_072), ("fp16", 524_288)]


@pytest.mark.parametrize("host", PLATFORMS)
def test_launch_check_on_simulated_hosts(host):
    found = smoke.launch_check(PLATFORMS[host])
    assert found["dtype"] == ("auto" if PLATFORMS[host].cuda else "float32")
    assert found["kv_bytes_per_token"] == (131_072 if PLATFORMS[host].cuda else 262_144)
    assert set(found["commands"]) == {"prefill", "decode"}


def test_script_prints_its_figures_on_cpu(capsys):
    assert smoke.main(["--device", "cpu", "--sizes-mib", "1", "--repeats", "1", "--layers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("GB/s") == 4 and "smoke: every check passed" in out and "platform: Platform(" in out


def test_script_refuses_cuda_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA device")
    assert smoke.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


WITHOUT_VLLM = """
import importlib.util, sys
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *args: None if name.split(".")[0] == "vllm" else find_spec(name, *args)
class Hide:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] == "vllm":
            raise ImportError("vLLM hidden for this test")
sys.meta_path.insert(0, Hide)
from tests.gpu import smoke
code = smoke.main(["--device", "cpu", "--sizes-mib", "1", "--repeats", "1", "--layers", "2"])
print("vllm imported:", any(name.split(".")[0] == "vllm" for name in sys.modules))
sys.exit(code)
"""


def test_script_runs_where_vllm_is_not_installed():
    """A lent GPU machine has torch with CUDA but no vLLM: the smoke check must not need it."""
    done = subprocess.run([sys.executable, "-c", WITHOUT_VLLM], cwd=REPO, capture_output=True, text=True,
                          timeout=240, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert "parsed_by_vllm: False" in done.stdout and "vllm imported: False" in done.stdout


@pytest.mark.gpu
def test_tcp_data_path_with_cuda_kv_on_both_sides():
    needs_torch_cuda()
    for size_mib in (16, 64):
        for head_major in (False, True):
            row = smoke.tcp_round_trip("cuda", size_mib, head_major=head_major)
            print(row)
            assert row["verified"] and row["staged"]  # GPU KV always goes through pinned host staging


@pytest.mark.gpu
def test_geometry_on_the_gpu():
    needs_torch_cuda()
    assert len(smoke.geometry_checks("cuda")) == 2


@pytest.mark.gpu
def test_launch_of_the_detected_platform():
    needs_torch_cuda()
    platform = detect_platform()
    found = smoke.launch_check(platform)
    assert platform.cuda and found["dtype"] == "auto" and found["kv_bytes_per_token"] == 131_072


@pytest.mark.gpu
def test_smoke_script_as_a_gpu_user_runs_it():
    needs_torch_cuda()
    done = subprocess.run([sys.executable, "-m", "tests.gpu.smoke"], cwd=REPO, capture_output=True, text=True,
                          timeout=280)
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "smoke: every check passed" in done.stdout
