"""An HTTP stub that speaks vLLM's OpenAI API and its P/D protocol: the one seam for router tests, and the
fake nodes of `disagg bench router` (`python -m bench.stub_vllm ROLE PORT` serves one).

A prefill stub answers a request carrying `kv_transfer_params.do_remote_decode` with one token and
`kv_transfer_params` naming its blocks. A decode stub checks that it got those params (recording the
"pull") and generates deterministic tokens. Prompts containing magic words make it fail on purpose:
`FAIL500` (HTTP 500), `CUTSTREAM` (the stream ends without [DONE]), `NOKV` (prefill omits kv params),
`HOLDPREFILL` / `HOLDDECODE` (the prefill / decode stub holds the request until its client goes away; not a
one-token decode request, the way the router releases a prefill's KV on a plain vLLM server), `SLOWPREFILL`
/ `SLOWDECODE` (the prefill / decode stub waits SLOW_S before it answers, headers included). Like a disagg node it answers the release call
(`/disagg/v1/release_kv`), recording it in `released`.

Like vLLM 0.32 it serves a completions `prompt` that is a list of strings or of token-id lists as a batch
and `n` choices per prompt (choice j seeded `seed + j`, choices indexed `prompt_i * n + j`, usage summed),
and a prefill stub returns only the FIRST prompt's `kv_transfer_params` for a batch
(`final_res_batch[0]`). A decode stub given `kv_transfer_params` generates every prompt's tokens from the
pulled prompt (as vLLM would decode from the first prompt's KV), so a batch sent through P/D as is answers
wrong text. It refuses what vLLM refuses that matters to the P/D split: `min_tokens` > `max_tokens`,
`max_tokens` < 1 (without `echo`), `stream_options` without `stream`, an empty prompt, `n` > 1 with greedy
sampling. The answers' shapes are `bench/stub_answers.py`'s.

The stub is a tiny autoregressive model over token ids (`bench/stub_model.py`): a prompt's words are its
tokens (ids from a CRC of each word), and each generated token is a function of every token before it (prompt
and output). So a decode stub asked to continue from "prompt ids + first token" generates exactly the tokens
colocated serving would after that first token, as vLLM does: the router's first-token continuation is
testable here. Token ids come back with `return_token_ids` (vLLM's places: completions per choice, chat's
prompt ids at the top); chat streams start with a role chunk. `STOPFIRST` in a prompt makes the first
generated token the end of sequence (empty text, finish reason "stop").

Per stub, tests can also set on its `StubState`: `fail_status` (answer every generation request with
that HTTP status), `info` (a NodeInfo to serve at /info), `hold` (keep requests waiting until it is cleared),
`token_delay_s` (a pause between streamed tokens), `first_chunk_delay_s` (a pause between a stream's headers
and its first chunk) and `metrics` (vLLM's load gauges and counters served at /metrics, e.g.
`vllm:num_requests_waiting`); and read `active` (requests in progress), `aborted` (requests whose client
went away before the answer was complete) and `calls`. A body vLLM would reject gets a 400, as vLLM does.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from bench import stub_answers as answers
from bench.stub_model import prompt_ids, prompt_text

SLOW_S = 0.3
# prompt words that make a stub misbehave on purpose (see above); generated test requests must avoid them
MAGIC_WORDS = ("FAIL500", "CUTSTREAM", "NOKV", "HOLDPREFILL", "HOLDDECODE", "SLOWPREFILL", "SLOWDECODE",
               "STOPFIRST")


@dataclass
class StubState:
    role: str
    engine_id: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    pulled: list[dict[str, Any]] = field(default_factory=list)
    released: list[dict[str, Any]] = field(default_factory=list)  # release calls (node/vllm_middleware.py)
    healthy: bool = True
    fail_status: int | None = None
    hold: bool = False
    token_delay_s: float = 0.0
    first_chunk_delay_s: float = 0.0  # a pause between a stream's headers and its first chunk
    active: int = 0
    aborted: int = 0
    info: dict[str, Any] | None = None  # served at /info (a disagg node supervisor's NodeInfo); None: 404
    kv_event_sources: dict[str, Any] = field(default_factory=dict)  # vLLM's /kv_event_sources ({}: no events)
    metrics: dict[str, float] | None = None  # served at /metrics as vLLM's gauges and counters; None: 404


def create_stub(role: str, engine_id: str = "stub-engine") -> tuple[FastAPI, StubState]:
    app = FastAPI()
    state = StubState(role=role, engine_id=engine_id)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({}, status_code=200 if state.healthy else 503)

    @app.get("/info")
    async def info() -> JSONResponse:
        return JSONResponse(state.info or {}, status_code=200 if state.info else 404)

    @app.get("/kv_event_sources")
    async def kv_event_sources() -> dict:
        return state.kv_event_sources

    @app.get("/metrics")
    async def metrics() -> Response:
        if state.metrics is None:
            return Response(status_code=404)
        lines = [f'{name}{{engine="0",model_name="stub-model"}} {value}' for name, value in state.metrics.items()]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "stub-model", "object": "model"}]}

    @app.post("/disagg/v1/release_kv")
    async def release_kv(request: Request) -> Any:
        state.released.append((await request.json())["kv_transfer_params"])
        return {"released": True}

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
        magic_hold = f"HOLD{state.role.upper()}" in prompt_text(body) and not release
        if f"SLOW{state.role.upper()}" in prompt_text(body):
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
    text = prompt_text(body)
    if state.fail_status is not None:
        return JSONResponse({"error": {"message": f"stub failing with {state.fail_status}",
                                       "type": "InternalServerError"}}, status_code=state.fail_status)
    if "FAIL500" in text:
        return JSONResponse({"error": {"message": "engine crashed", "type": "InternalServerError"}}, status_code=500)
    if body.get("model") != "stub-model":
        return JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                       "type": "NotFoundError", "param": "model", "code": 404}}, status_code=404)
    if (refusal := answers.refusal(body)) is not None:
        message, param = refusal
        return JSONResponse({"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}},
                            status_code=400)
    params = body.get("kv_transfer_params") or {}
    if params.get("do_remote_decode"):
        return _prefill_answer(state, body, chat)
    ids = prompt_ids(body)
    if params.get("do_remote_prefill"):  # decode from the pulled KV, then this request's own later tokens
        state.pulled.append(params)
        kv = list(params.get("stub_prompt_ids") or [])
        remote = params.get("remote_num_tokens", len(kv))
        ids = [kv[:remote] + own[remote:] for own in ids]
    outputs = answers.outputs_of(body, ids)
    if body.get("stream"):
        stream = answers.stream(outputs, chat, body, cut="CUTSTREAM" in text, delay_s=state.token_delay_s,
                                first_delay_s=state.first_chunk_delay_s)
        return StreamingResponse(stream, media_type="text/event-stream")
    return answers.unary(outputs, chat, body)


def _prefill_answer(state: StubState, body: dict[str, Any], chat: bool) -> JSONResponse:
    assert body["max_tokens"] == 1 and body["stream"] is False
    ids = prompt_ids(body)
    data = json.loads(answers.unary(answers.outputs_of(body, ids), chat, body).body)
    if "NOKV" not in prompt_text(body):  # vLLM: the first prompt's params only, for a whole batch
        data["kv_transfer_params"] = {"do_remote_prefill": True, "do_remote_decode": False,
                                      "remote_block_ids": [1, 2, 3], "remote_engine_id": state.engine_id,
                                      "remote_request_id": "stub-req", "remote_host": "127.0.0.1",
                                      "remote_port": 5600, "remote_num_tokens": len(ids[0]),
                                      "stub_prompt_ids": ids[0]}
    return JSONResponse(data)


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.stub_vllm ROLE PORT [TOKEN_DELAY_S]`: serve one stub on 127.0.0.1 until killed."""
    import sys

    import uvicorn

    args = sys.argv[1:] if argv is None else argv
    app, state = create_stub(args[0], engine_id=f"{args[0]}-stub")
    state.token_delay_s = float(args[2]) if len(args) > 2 else 0.0
    uvicorn.run(app, host="127.0.0.1", port=int(args[1]), log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
