"""The decode role: a vLLM server that pulls KV from the prefill node and generates (kv_consumer).
A request without kv_transfer_params is served colocated, so a decode node is also the baseline."""
