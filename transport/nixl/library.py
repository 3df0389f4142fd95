"""NIXL's Python library, imported in this one place in disagg (vLLM's NixlConnector imports its own).

`import_nixl()` is used by the native probe (`transport.nixl.native_probe`), the loopback measurement and the
transport benchmark's NIXL peers (`bench.xfer.nixl_peers`); none of them imports NIXL at module import time.
"""

from __future__ import annotations

import logging
from typing import Any


def import_nixl() -> tuple[Any, Any, Any]:
    """(the `nixl` package, `nixl_agent`, `nixl_agent_config`).

    Raises ImportError when NIXL is not installed; a broken install may raise anything its native libraries
    raise (callers that probe catch Exception). Quiets NIXL's INFO logging (one line per agent and backend).
    """
    import nixl
    from nixl._api import nixl_agent, nixl_agent_config

    logging.getLogger("nixl").setLevel(logging.WARNING)
    return nixl, nixl_agent, nixl_agent_config
