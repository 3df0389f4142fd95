"""A router in front of stub vLLM servers, all on real loopback sockets: the router tests' cluster."""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import httpx

from router.app import create_app
from router.config import RouterConfig
from tests.support.stub_vllm import StubState, create_stub
from tests.support.threaded_server import serve


@dataclass
class StubCluster:
    url: str
    prefills: list[StubState]
    decodes: list[StubState]
    prefill_urls: list[str]
    decode_urls: list[str] = field(default_factory=list)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def metric(self, line_prefix: str) -> float:
        """The value of the one sample whose line starts with `line_prefix`; 0 when there is none."""
        for line in self.metrics().splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@contextmanager
def stub_cluster(prefills: int = 1, decodes: int = 1, mode: str = "disagg",
                 **config: Any) -> Iterator[StubCluster]:
    """A router (RouterConfig `config` overrides) in front of `prefills` + `decodes` stub servers."""
    with ExitStack() as stack:
        p_stubs = [create_stub("prefill", engine_id=f"prefill-{i}") for i in range(prefills)]
        d_stubs = [create_stub("decode") for _ in range(decodes)]
        p_urls = [stack.enter_context(serve(app)) for app, _ in p_stubs]
        d_urls = [stack.enter_context(serve(app)) for app, _ in d_stubs]
        settings = RouterConfig(mode=mode, prefill_urls=tuple(p_urls) if mode == "disagg" else (),
                                decode_urls=tuple(d_urls), **{"health_interval_s": 0.2, **config})
        url = stack.enter_context(serve(create_app(settings)))
        yield StubCluster(url, [s for _, s in p_stubs], [s for _, s in d_stubs], p_urls, d_urls)


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline_s:
            return False
        time.sleep(0.02)
    return True


def completion(**extra: Any) -> dict[str, Any]:
    return {"model": "stub-model", "prompt": "hello there", "max_tokens": 5, "temperature": 0, **extra}
