"""A KV tier shared by the prefill nodes (issue 16): blocks keyed by vLLM's chained block hash, loaded
instead of computed when present, stored once computed; Redis or a directory behind it.

Layers, bottom up, none importing vLLM: `settings` (one typed object, the connector's extra config),
`entry` (the stored format: header + raw block, CRC-32C), `keys` (the namespace of model, KV layout and
block size), `breaker` (skip a failing tier for a while), `backend` (the interface and the registry),
`redis_backend` (the only module importing redis-py) and `disk_backend`, `writer` (the bounded background
store queue), `compose` (the MultiConnector config a prefill node runs). Then the vLLM glue: `metadata`,
`stats`, `scheduler_side`, `worker_side` and `connector` (`KvTierConnector`, loaded by module path; its
docstring says why it is ours and not LMCache's or vLLM's OffloadingConnector).
"""
