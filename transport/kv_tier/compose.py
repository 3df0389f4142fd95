"""The prefill node's `--kv-transfer-config` with a KV tier: vLLM's MultiConnector, the P/D connector first.

    {"kv_connector": "MultiConnector", "kv_role": <the P/D connector's>, "kv_load_failure_policy": "recompute",
     ["kv_buffer_device": <the P/D connector's, when it has one>,]
     "kv_connector_extra_config": {"connectors": [<the P/D connector's config>, <the tier's>]}}

Why this shape (issue 16 closing note): the MultiConnector loads from the first child that reports
matched tokens, so the P/D connector goes first (on a prefill node it reports none and the tier is asked);
every child needs its own `kv_role` (the tier's is `kv_both`: it loads and stores); vLLM reads
`kv_load_failure_policy` from the top level only, and "recompute" turns a tier entry that vanished or is
corrupt into a recomputed block instead of a failed request. Decode nodes keep the plain P/D config. No vLLM
import here: the node supervisor builds this before vLLM starts.
"""

from __future__ import annotations

import copy
from typing import Any

from transport.kv_tier.settings import KvTierSettings

CONNECTOR_NAME = "KvTierConnector"
MODULE_PATH = "transport.kv_tier.connector"
TIER_KV_ROLE = "kv_both"


def tier_connector_config(settings: KvTierSettings) -> dict[str, Any]:
    """The tier's own child config in a MultiConnector."""
    return {"kv_connector": CONNECTOR_NAME, "kv_connector_module_path": MODULE_PATH, "kv_role": TIER_KV_ROLE,
            "kv_connector_extra_config": settings.to_extra_config()}


def with_tier(pd_config: dict[str, Any], settings: KvTierSettings) -> dict[str, Any]:
    """`pd_config` (a complete single-connector config, with its `kv_role`) and the tier, as one MultiConnector
    config; ValueError when `pd_config` has no kv_role or already is a MultiConnector."""
    if "kv_role" not in pd_config:
        raise ValueError("the P/D connector's config needs its kv_role (each MultiConnector child has its own)")
    if pd_config.get("kv_connector") == "MultiConnector":
        raise ValueError("the P/D config is already a MultiConnector")
    multi: dict[str, Any] = {"kv_connector": "MultiConnector", "kv_role": pd_config["kv_role"],
                             "kv_load_failure_policy": "recompute"}
    if "kv_buffer_device" in pd_config:
        multi["kv_buffer_device"] = pd_config["kv_buffer_device"]
    multi["kv_connector_extra_config"] = {"connectors": [copy.deepcopy(pd_config), tier_connector_config(settings)]}
    return multi
