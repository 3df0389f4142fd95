"""The prefill role: a vLLM server that computes the KV cache and keeps it for the decode node (kv_producer)."""
