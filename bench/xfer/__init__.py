"""The transport micro-benchmark, `disagg bench transport`: KV-shaped bytes moved between two processes.

- `bench.xfer.bench`: the methods (every registered transport's bench methods, plus the `socket` and
  `memcpy` baselines), the settings, one run and its report.
- `bench.xfer.pair`: two peer processes driven over pipes; `bench.xfer.peers` (TCP connector, socket,
  memcpy) and `bench.xfer.nixl_peers` (NIXL READ) are the peers; `bench.xfer.buffers` the bytes they move.
- `bench.xfer.table`: the table, progress and target lines.
"""
