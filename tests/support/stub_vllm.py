"""An HTTP stub that speaks vLLM's OpenAI API and its P/D protocol: the one seam for router unit tests.

A prefill stub answers a request carrying `kv_transfer_params.do_remote_decode` with one token and
`kv_transfer_params` naming its blocks. A decode stub checks that it got those params (recording the
"pull") and generates deterministic tokens. Prompts containing magic words make it fail on purpose:
`FAIL500` (HTTP 500), `CUTSTREAM` (the stream ends without [DONE]), `NOKV` (prefill omits kv params).

Per stub, tests can also set on its `StubState`: `fail_status` (answer every generation request with
that HTTP status), `info` (a NodeInfo to serve at /info), `hold` (keep requests waiting until it is cleared) and `token_delay_s` (a pause
between streamed tokens); and read `active` (requests in progress), `aborted` (requests whose client
went away before the answer was complete) and `calls`. A body vLLM would reject gets a 400, as vLLM does.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
MAX_TOKENS = 512  # a stub answer is never longer, whatever max_tokens says


@dataclass
class StubState:
    role: str
    engine_id: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    pulled: list[dict[str, Any]] = field(default_factory=list)
    healthy: bool = True
    fail_status: int | None = None
    hold: bool = False
    token_delay_s: float = 0.0
    active: int = 0
    aborted: int = 0
    info: dict[str, Any] | None = None  # served at /info (a disagg node supervisor's NodeInfo); None: 404


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return " ".join(str(m.get("content", "")) for m in body["messages"])
    return str(body.get("prompt", ""))


def expected_tokens(body: dict[str, Any]) -> list[str]:
    n = min(MAX_TOKENS, body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    seed = len(_prompt_text(body))
    return [f" {WORDS[(seed + i) % len(WORDS)]}" for i in range(n)]


def create_stub(role: str, engine_id: str = "stub-engine") -> tuple[FastAPI, StubState]:
    app = FastAPI()
    state = StubState(role=role, engine_id=engine_id)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({}, status_code=200 if state.healthy else 503)

    @app.get("/info")
    async def info() -> JSONResponse:
        return JSONResponse(state.info or {}, status_code=200 if state.info else 404)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "stub-model", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await _guarded(state, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await _guarded(state, request, chat=True)

    return app, state


async def _guarded(state: StubState, request: Request, chat: bool) -> Any:
    """Count the request as active until its answer is complete; hold it while `state.hold`."""
    try:
        body = await request.json()
    except ClientDisconnect:  # the router cancelled the call while sending it
        return JSONResponse({}, status_code=499)
    state.calls.append(body)
    state.active += 1
    try:
        answer = await _wait_while_held(state, request) or await _handle(state, body, chat)
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        answer = JSONResponse({"error": {"message": f"invalid request: {exc}", "type": "BadRequestError",
                                         "param": None, "code": 400}}, status_code=400)
    except BaseException:
        state.active -= 1
        raise
    if isinstance(answer, StreamingResponse):
        answer.body_iterator = _tracked(state, answer.body_iterator)
    else:
        state.active -= 1
    return answer


async def _wait_while_held(state: StubState, request: Request) -> JSONResponse | None:
    """None once `state.hold` is cleared; a 499 (and one more `aborted`) if the client goes away first."""
    while state.hold:
        if await request.is_disconnected():
            state.aborted += 1
            return JSONResponse({}, status_code=499)
        await asyncio.sleep(0.01)
    return None


async def _tracked(state: StubState, chunks: Any):
    finished = False
    try:
        async for chunk in chunks:
            yield chunk
        finished = True
    finally:
        state.active -= 1
        state.aborted += not finished


async def _handle(state: StubState, body: dict[str, Any], chat: bool) -> Any:
    text = _prompt_text(body)
    if state.fail_status is not None:
        return JSONResponse({"error": {"message": f"stub failing with {state.fail_status}",
                                       "type": "InternalServerError"}}, status_code=state.fail_status)
    if "FAIL500" in text:
        return JSONResponse({"error": {"message": "engine crashed", "type": "InternalServerError"}}, status_code=500)
    if body.get("model") != "stub-model":
        return JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                       "type": "NotFoundError", "param": "model", "code": 404}}, status_code=404)
    params = body.get("kv_transfer_params") or {}
    if params.get("do_remote_decode"):
        return _prefill_answer(state, body, chat, text)
    if params.get("do_remote_prefill"):
        state.pulled.append(params)
    tokens = expected_tokens(body)
    if body.get("stream"):
        stream = _stream(tokens, chat, body, cut="CUTSTREAM" in text, delay_s=state.token_delay_s)
        return StreamingResponse(stream, media_type="text/event-stream")
    return _unary(tokens, chat, len(text.split()))


def _prefill_answer(state: StubState, body: dict[str, Any], chat: bool, text: str) -> JSONResponse:
    assert body["max_tokens"] == 1 and body["stream"] is False
    answer = _unary(expected_tokens(body)[:1], chat, len(text.split()))
    data = json.loads(answer.body)
    if "NOKV" not in text:
        data["kv_transfer_params"] = {"do_remote_prefill": True, "do_remote_decode": False,
                                      "remote_block_ids": [1, 2, 3], "remote_engine_id": state.engine_id,
                                      "remote_host": "127.0.0.1", "remote_port": 5600}
    return JSONResponse(data)


def _unary(tokens: list[str], chat: bool, prompt_tokens: int) -> JSONResponse:
    text = "".join(tokens)
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
              if chat else {"index": 0, "text": text, "finish_reason": "length"})
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
             "total_tokens": prompt_tokens + len(tokens)}
    return JSONResponse({"id": "stub-1", "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": "stub-model", "choices": [choice], "usage": usage})


async def _stream(tokens: list[str], chat: bool, body: dict[str, Any], cut: bool, delay_s: float):
    for i, token in enumerate(tokens):
        if cut and i == 2:
            return
        delta = {"index": 0, "delta": {"content": token}} if chat else {"index": 0, "text": token}
        yield f"data: {json.dumps({'id': 'stub-1', 'model': 'stub-model', 'choices': [delta]})}\n\n"
        await asyncio.sleep(delay_s)
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 3, "completion_tokens": len(tokens), "total_tokens": 3 + len(tokens)}
        yield f"data: {json.dumps({'id': 'stub-1', 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"
    await asyncio.sleep(delay_s)  # and closes a pause later, as a busy server may
