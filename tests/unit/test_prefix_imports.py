"""The router's prefix-aware routing imports neither torch, vllm nor transformers (DESIGN §3: the router is
pure HTTP plus light libraries: pyzmq, msgspec, tokenizers, jinja2)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


def test_prefix_routing_modules_import_no_engine():
    code = ("import sys, router.app, router.cli, router.kv_events, router.kv_event_stream, router.prefix_routing, "
            "router.tokenize, router.chat_template, router.block_hash\n"
            "heavy = sorted(m for m in ('torch', 'vllm', 'transformers', 'cbor2') if m in sys.modules)\n"
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-2000:]
