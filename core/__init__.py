"""The small core every package builds on: errors, typed messages, the cluster token, host facts, the model
and its KV geometry. It imports no role (prefill_node, decode_node, router), no transport and no launcher."""
