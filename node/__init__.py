"""What the prefill and decode roles share: a node's settings, how they become a vLLM server on a host, and
the supervisor that runs it. Each role package (`prefill_node`, `decode_node`) holds its `NodeRole`."""
