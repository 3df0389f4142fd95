"""Registers bench's subcommands on the `disagg` CLI: `bench serve`, `bench compare`, `bench transport`,
`bench quality`, `bench router`, `bench kv-tier`, `bench multiturn`, `kv-size`.

`disagg.cli` calls `add_parsers(subparsers)`; each leaf parser sets `func(args) -> int` (the exit code).
"""

from __future__ import annotations

import argparse

from bench import (compare_cli, kv_size_cli, kv_tier_cli, multiturn_cli, quality_cli, router_cli, serve_cli,
                   transport_cli)

_FORMATTER = argparse.RawDescriptionHelpFormatter

KV_SIZE_DESCRIPTION = """\
KV-cache sizing from a model's config.json or a built-in preset.

  KV bytes/token = 2 × num_hidden_layers × num_key_value_heads × head_dim × bytes/element
  (head_dim = config head_dim, else hidden_size / num_attention_heads;
   num_key_value_heads defaults to num_attention_heads)

Prints KV per token, per sequence of --context-tokens, and the memory for --concurrency sequences
times the overhead factor φ; optionally the sequences that fit in --memory-gib, the time to move one
sequence's KV over --bandwidth-gb-s, and the memory bandwidth --decode-tokens-per-s needs.
Exit status 2 for a malformed config, an unknown preset or a bad number."""

KV_SIZE_EPILOG = """\
examples:
  disagg kv-size --preset Llama-3.1-8B --dtype fp16 --context-tokens 4096
  disagg kv-size --config ~/.cache/disagg/models/SmolLM2-135M-Instruct --memory-gib 4 --bandwidth-gb-s 12.5
  disagg kv-size --preset Llama-3.1-70B --decode-tokens-per-s 1000 --avg-context-tokens 2048 \\
      --params 70B --concurrency 32 --json"""

SERVE_DESCRIPTION = """\
Load generator for any OpenAI-compatible server (disagg's router, plain vLLM, SGLang).

Streams requests (stream: true, stream_options.include_usage) to /v1/completions or
/v1/chat/completions and reports TTFT, TPOT, ITL and end-to-end latency (mean, p50, p95, p99),
requests/s, output tokens/s, goodput, failures by kind (http_<status>, timeout, connection,
stream_error, incomplete_stream, bad_chunk, empty_stream) and the server's Server-Timing header
(name → ms, mean and p50). Output token counts come from the final usage chunk when present, else
from the number of content chunks. Exit status: 0 if any request succeeded, 1 if none did, 2 for
bad options."""

SERVE_EPILOG = """\
examples:
  disagg bench serve --url http://127.0.0.1:8000 --num-requests 50 --concurrency 4 --output r.json
  disagg bench serve --url http://127.0.0.1:8000 --dataset prefix --prefix-len 1024 --input-len 64 \\
      --request-rate 2 --max-tokens 64 --ignore-eos --goodput ttft_ms=500,tpot_ms=50
  disagg bench serve --url http://127.0.0.1:8000 --dataset sharegpt --sharegpt-path sg.json \\
      --endpoint /v1/chat/completions --tokenizer ~/.cache/disagg/models/SmolLM2-135M-Instruct"""

COMPARE_DESCRIPTION = """\
Runs the same workload against the colocated baseline and disaggregated serving (per transport) and
writes report.md, results.json and plots (ttft.png, transfer.png, e2e.png).

Per prompt length (capped at the context minus --output-len): sequential streamed requests with
ignore_eos and temperature 0, a warm-up first, prompts unique per mode and length. Reported: KV size
(tokens × bytes/token and in whole blocks), the link bandwidth (a TCP stream measured on --link-host)
and the transfer time it predicts, the transfer time and bytes measured on the decode node's vLLM
metrics, decode time (E2E − TTFT, colocated), transfer/decode, TTFT and E2E disaggregated vs colocated,
and the effective bandwidth from the fitted transfer-time line. Without URLs (or with --local) it
starts `disagg up --local --no-prefix-caching` per transport itself. Exit status: 0 when every mode
answered at every length, 1 when one did not or a cluster failed to start, 2 for bad options."""

COMPARE_EPILOG = """\
examples:
  disagg bench compare --local --prompt-lens 128,512 --output-len 32 --num-requests 2 --out-dir /tmp/cmp
  disagg bench compare --colocated-url http://127.0.0.1:8001 --disagg-url nixl=http://127.0.0.1:8000 \\
      --decode-metrics-url nixl=http://127.0.0.1:8200 --out-dir cmp"""

TRANSPORT_DESCRIPTION = """\
Moves KV-shaped buffers (16 layers of 64 KiB blocks) between two processes on 127.0.0.1 with:
  tcp-connector  our TCP KV connector's block server and pull client (frames, CRC-32C)
  tcp-connector-int8|bf16|fp16  the same with float32 KV converted to that wire dtype and restored
  nixl-ucx       a NIXL READ of the blocks, UCX with its default transports
  nixl-ucx-tcp   the same with UCX restricted to TCP (UCX_TLS=tcp)
  socket         a plain blocking TCP socket (sendall -> recv_into)
and memcpy (numpy.copyto in one process). Per size: one warm-up, then --repeats timed transfers, the
median reported in GB/s (10^9 B/s) with its ratio to socket and memcpy. Unavailable or failing methods
are reported with the reason. Exit status: 0 when no measurement failed (unavailable and skipped are not
failures), 1 when one did, 2 for bad options."""

TRANSPORT_EPILOG = """\
examples:
  disagg bench transport
  disagg bench transport --sizes-mb 1,64 --repeats 5 --methods tcp-connector,socket,memcpy
  disagg bench transport --json --output transport.json --max-duration-s 300"""


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add `kv-size` and `bench` (with `serve`, `compare` and `transport`) to the `disagg` subcommands."""
    kv_parser = subparsers.add_parser(
        "kv-size", help="KV-cache size, capacity, transfer time and bandwidth for a model",
        description=KV_SIZE_DESCRIPTION, epilog=KV_SIZE_EPILOG, formatter_class=_FORMATTER)
    kv_size_cli.add_arguments(kv_parser)
    kv_parser.set_defaults(func=kv_size_cli.run)

    bench_parser = subparsers.add_parser(
        "bench", help="measure serving performance",
        description="Measure serving performance of OpenAI-compatible endpoints.")
    bench_sub = bench_parser.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND", required=True)
    serve_parser = bench_sub.add_parser(
        "serve", help="load-test one OpenAI-compatible endpoint",
        description=SERVE_DESCRIPTION, epilog=SERVE_EPILOG, formatter_class=_FORMATTER)
    serve_cli.add_arguments(serve_parser)
    serve_parser.set_defaults(func=serve_cli.run)
    compare_parser = bench_sub.add_parser(
        "compare", help="colocated vs disaggregated serving: latency, KV transfer, report and plots",
        description=COMPARE_DESCRIPTION, epilog=COMPARE_EPILOG, formatter_class=_FORMATTER)
    compare_cli.add_arguments(compare_parser)
    compare_parser.set_defaults(func=compare_cli.run)
    transport_parser = bench_sub.add_parser(
        "transport", help="KV transport bandwidth: TCP connector, NIXL, socket, memcpy",
        description=TRANSPORT_DESCRIPTION, epilog=TRANSPORT_EPILOG, formatter_class=_FORMATTER)
    transport_cli.add_arguments(transport_parser)
    transport_parser.set_defaults(func=transport_cli.run)
    quality_parser = bench_sub.add_parser(
        "quality", help="KV wire dtypes vs colocated: identical outputs, first divergence, log-prob difference",
        description=quality_cli.DESCRIPTION, epilog=quality_cli.EPILOG, formatter_class=_FORMATTER)
    quality_cli.add_arguments(quality_parser)
    quality_parser.set_defaults(func=quality_cli.run)
    multiturn_parser = bench_sub.add_parser(
        "multiturn", help="multi-turn conversations per routing policy: TTFT per turn, prefix-cache hits per node",
        description=multiturn_cli.DESCRIPTION, epilog=multiturn_cli.EPILOG, formatter_class=_FORMATTER)
    multiturn_cli.add_arguments(multiturn_parser)
    multiturn_parser.set_defaults(func=multiturn_cli.run)
    router_parser = bench_sub.add_parser(
        "router", help="what the router itself costs, against stub nodes (overhead at c=1, throughput at c=64)",
        description=router_cli.DESCRIPTION, epilog=router_cli.EPILOG, formatter_class=_FORMATTER)
    router_cli.add_arguments(router_parser)
    router_parser.set_defaults(func=router_cli.run)
    tier_parser = bench_sub.add_parser(
        "kv-tier", help="two-turn conversations: TTFT of a second turn on a prefill node without the first",
        description=kv_tier_cli.DESCRIPTION, epilog=kv_tier_cli.EPILOG, formatter_class=_FORMATTER)
    kv_tier_cli.add_arguments(tier_parser)
    tier_parser.set_defaults(func=kv_tier_cli.run)
