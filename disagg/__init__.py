"""disagg: disaggregated prefill/decode LLM serving on vLLM.

This package is the command line (`disagg.cli`, `python -m disagg`) and nothing else: it collects the
subcommands each top-level package contributes. What every package shares lives in `core`; each role in its
own package (prefill_node, decode_node, router, transport, deploy, bench).
"""

__version__ = "0.1.0"
