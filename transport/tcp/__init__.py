"""Our TCP KV transport: a vLLM KV connector that pulls a request's blocks over one TCP stream.

Layers, bottom up: `errors`, `stream` (socket I/O) and `wire` (frames, checksum); `wire_dtype` (what KV looks
like on the wire) and `codec` (converting to and from it, with numba: the connector loads it when it maps the KV cache); `blocks`
(where block bytes live); `lease` and `server` (prefill side); `client` (decode side); `wire_choice` (the cost
model of `auto`) and `wire_codecs` (a decode node's choice per pull); `settings`; `plugin` (the registered
`Transport`) and `loopback` (doctor's in-process bandwidth check). Then the vLLM glue,
the only modules importing vllm or torch: `kv_tensors`, `metadata`, `scheduler_side`, `worker_side`,
`stats` and `connector`. vLLM loads
`transport.tcp.connector.DisaggTcpConnector`; see that module for the `kv_transfer_config`.
"""
