"""disagg: disaggregated prefill/decode LLM serving on vLLM.

The CLI (`disagg.cli`), shared typed messages (`disagg.messages`), the error hierarchy
(`disagg.errors`) and model preparation (`disagg.model`) live here; each role lives in its
own top-level package (prefill_node, decode_node, router, transport, deploy, bench).
"""

__version__ = "0.1.0"
