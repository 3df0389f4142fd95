"""`none`: no KV connector. The node serves every request itself (a colocated node or replica)."""

from __future__ import annotations

from typing import Any

from transport.base import Fit, KvLink, LinkFacts, Transport


class NoTransport(Transport):
    name = "none"
    summary = "no KV connector: the node serves requests colocated only"

    def fit_for_auto(self, facts: LinkFacts) -> Fit:
        return Fit(False, "never chosen by auto (a disaggregated node needs a connector)")

    def kv_transfer_config(self, link: KvLink) -> dict[str, Any] | None:
        return None
