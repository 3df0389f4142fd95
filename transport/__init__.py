"""KV transports: the choice between NIXL and our TCP connector, and vLLM's kv_transfer_config for each."""
