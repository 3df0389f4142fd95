"""A node supervisor whose "vLLM server" is a tiny HTTP server answering /health: for testing the
supervisor's process handling without the engine.
Run as: python -m tests.support.fake_node MODEL_DIR PORT INFO_PORT [MAX_RESTARTS]"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from decode_node.role import ROLE
from node import launch, supervisor
from node.settings import NodeSettings

FAKE_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def main() -> int:
    logging.basicConfig(level=logging.INFO)
    model_dir, port, info_port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    launch.NodeLaunch.vllm_command = lambda self: [sys.executable, "-c", FAKE_SERVER, str(self.settings.port)]
    settings = NodeSettings.build(role="decode", **ROLE.defaults.as_settings() | {"port": port, "info_port": info_port},
                                  model=str(model_dir), served_model_name="fake", transport="none",
                                  engine={"restart_on_crash": int(sys.argv[4]) if len(sys.argv) > 4 else 0})
    return supervisor.run_node(settings, ROLE)


if __name__ == "__main__":
    sys.exit(main())
