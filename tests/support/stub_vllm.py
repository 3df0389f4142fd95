"""An HTTP stub that speaks vLLM's OpenAI API and its P/D protocol: the one seam for router unit tests.

A prefill stub answers a request carrying `kv_transfer_params.do_remote_decode` with one token and
`kv_transfer_params` naming its blocks. A decode stub checks that it got those params (recording the
"pull") and generates deterministic tokens. Prompts containing magic words make it fail on purpose:
`FAIL500` (HTTP 500), `CUTSTREAM` (the stream ends without [DONE]), `NOKV` (prefill omits kv params),
`HOLDPREFILL` / `HOLDDECODE` (the prefill / decode stub holds the request until its client goes away; not a
one-token decode request, which is how the router releases a prefill's KV), `SLOWPREFILL` (the prefill stub
answers after SLOW_S).

Like vLLM 0.32 it serves a completions `prompt` that is a list of strings or of token-id lists as a batch
and `n` choices per prompt (choice j seeded `seed + j`, choices indexed `prompt_i * n + j`, usage summed),
and a prefill stub returns only the FIRST prompt's `kv_transfer_params` for a batch
(`final_res_batch[0]`). A decode stub given `kv_transfer_params` generates every prompt's tokens from the
pulled prompt (as vLLM would decode from the first prompt's KV), so a batch sent through P/D as is answers
wrong text. It refuses what vLLM refuses that matters to the P/D split: `min_tokens` > `max_tokens`,
`max_tokens` < 1 (without `echo`), `stream_options` without `stream`, an empty prompt, `n` > 1 with greedy
sampling.

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
SLOW_S = 0.3


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


def _prompt_texts(body: dict[str, Any]) -> list[str]:
    """One text per prompt of the request (a batch of prompts for a list of strings or token-id lists)."""
    if "messages" in body:
        return [" ".join(str(m.get("content", "")) for m in body["messages"])]
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        return [str(p) for p in prompt]
    return [str(prompt)]


def _prompt_text(body: dict[str, Any]) -> str:
    return " ".join(_prompt_texts(body))


def expected_tokens(body: dict[str, Any], prompt: str | None = None, choice: int = 0) -> list[str]:
    """The tokens a stub generates for `prompt` (default: the body's only prompt), choice `choice`."""
    n = min(MAX_TOKENS, body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    text = _prompt_texts(body)[0] if prompt is None else prompt
    offset = len(text) + (body.get("seed") or 0) + choice
    return [f" {WORDS[(offset + i) % len(WORDS)]}" for i in range(n)]


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
        release = state.role == "decode" and body.get("max_tokens") == 1
        magic_hold = f"HOLD{state.role.upper()}" in _prompt_text(body) and not release
        if f"SLOW{state.role.upper()}" in _prompt_text(body):
            await asyncio.sleep(SLOW_S)
        answer = (await _wait_while_held(state, request, magic_hold)) or await _handle(state, body, chat)
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


async def _wait_while_held(state: StubState, request: Request, magic_hold: bool) -> JSONResponse | None:
    """None once `state.hold` is cleared (never, for a prompt with the magic hold word); a 499 (and one more
    `aborted`) if the client goes away first."""
    while state.hold or magic_hold:
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
    if (refusal := _refusal(body)) is not None:
        message, param = refusal
        return JSONResponse({"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}},
                            status_code=400)
    params = body.get("kv_transfer_params") or {}
    if params.get("do_remote_decode"):
        return _prefill_answer(state, body, chat)
    prompts = _prompt_texts(body)
    if params.get("do_remote_prefill"):
        state.pulled.append(params)
        prompts = [params.get("stub_prompt", p) for p in prompts]  # every prompt decodes the pulled KV
    outputs = _outputs(body, prompts)
    if body.get("stream"):
        stream = _stream(outputs, chat, body, cut="CUTSTREAM" in text, delay_s=state.token_delay_s)
        return StreamingResponse(stream, media_type="text/event-stream")
    return _unary(outputs, chat, body.get("n") or 1)


def _refusal(body: dict[str, Any]) -> tuple[str, str | None] | None:
    """(message, param) of vLLM's 400 for a body it refuses; None if it serves it."""
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens < 1 and not body.get("echo"):
        return f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens"
    if isinstance(max_tokens, int) and (body.get("min_tokens") or 0) > max_tokens:
        return f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {body['min_tokens']}.", None
    if body.get("stream_options") and not body.get("stream"):
        return "Stream options can only be defined when `stream=True`.", "stream_options"
    if body.get("prompt") == "" and "messages" not in body:
        return "Either prompt or prompt_embeds must be provided and non-empty.", "prompt"
    if (body.get("n") or 1) > 1 and body.get("temperature", 1.0) == 0:
        return f"n must be 1 when using greedy sampling, got {body['n']}.", None
    return None


def _outputs(body: dict[str, Any], prompts: list[str]) -> list[tuple[int, list[str]]]:
    """(prompt tokens, generated tokens) per choice, in vLLM's order: prompt i, choice j at i * n + j."""
    n = body.get("n") or 1
    return [(len(prompt.split()), expected_tokens(body, prompt, choice=j)) for prompt in prompts for j in range(n)]


def _prefill_answer(state: StubState, body: dict[str, Any], chat: bool) -> JSONResponse:
    assert body["max_tokens"] == 1 and body["stream"] is False
    prompts = _prompt_texts(body)
    data = json.loads(_unary(_outputs(body, prompts), chat, body.get("n") or 1).body)
    if "NOKV" not in _prompt_text(body):  # vLLM: the first prompt's params only, for a whole batch
        data["kv_transfer_params"] = {"do_remote_prefill": True, "do_remote_decode": False,
                                      "remote_block_ids": [1, 2, 3], "remote_engine_id": state.engine_id,
                                      "remote_host": "127.0.0.1", "remote_port": 5600, "stub_prompt": prompts[0]}
    return JSONResponse(data)


def _unary(outputs: list[tuple[int, list[str]]], chat: bool, n: int) -> JSONResponse:
    choices = []
    for index, (_, tokens) in enumerate(outputs):
        text = "".join(tokens)
        choices.append({"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                       if chat else {"index": index, "text": text, "finish_reason": "length"})
    usage = _usage(outputs, n)
    return JSONResponse({"id": "stub-1", "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": "stub-model", "choices": choices, "usage": usage})


def _usage(outputs: list[tuple[int, list[str]]], n: int = 1) -> dict[str, int]:
    prompt_tokens = sum(p for p, _ in outputs[::n])
    completion_tokens = sum(len(tokens) for _, tokens in outputs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _stream(outputs: list[tuple[int, list[str]]], chat: bool, body: dict[str, Any], cut: bool,
                  delay_s: float):
    for i in range(max(len(tokens) for _, tokens in outputs)):
        if cut and i == 2:
            return
        for index, (_, tokens) in enumerate(outputs):
            if i < len(tokens):
                delta = ({"index": index, "delta": {"content": tokens[i]}} if chat
                         else {"index": index, "text": tokens[i]})
                yield f"data: {json.dumps({'id': 'stub-1', 'model': 'stub-model', 'choices': [delta]})}\n\n"
        await asyncio.sleep(delay_s)
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = _usage(outputs, body.get("n") or 1)
        yield f"data: {json.dumps({'id': 'stub-1', 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"
    await asyncio.sleep(delay_s)  # and closes a pause later, as a busy server may
