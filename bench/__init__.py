"""bench: measurement tools for disagg.

- `bench.kv_size`: KV-cache sizing calculator (`disagg kv-size`).
- `bench.datasets`, `bench.client`, `bench.loadgen`, `bench.metrics`: a streaming load generator for
  any OpenAI-compatible endpoint (`disagg bench serve`).
- `bench.cli`: registers the subcommands on the `disagg` CLI.

Nothing here imports torch or vllm; `transformers` is imported lazily, only for `--tokenizer`.
"""
