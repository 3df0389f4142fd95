"""bench: measurement tools for disagg.

- `bench.kv_size`: KV-cache sizing calculator (`disagg kv-size`).
- `bench.datasets`, `bench.client`, `bench.loadgen`, `bench.metrics`: a streaming load generator for
  any OpenAI-compatible endpoint (`disagg bench serve`).
- `bench.compare`, `bench.kv_metrics`, `bench.report`, `bench.plots`: colocated vs disaggregated serving
  (`disagg bench compare`); the transports and their metric names come from `transport.registry`.
- `bench.xfer`: the transport micro-benchmark (`disagg bench transport`, `bench.transport_cli`): every
  registered transport's bench methods plus the socket and memcpy baselines.
- `bench.cli`: registers the subcommands on the `disagg` CLI.

Nothing here imports torch or vllm; `transformers` is imported lazily, only for `--tokenizer`; NIXL only
inside the NIXL bench peers' processes. `bench` may import `transport`, never the other way round.
"""
