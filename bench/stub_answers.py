"""The stub's answers in vLLM 0.32's shapes (`bench/stub_vllm.py` serves them): the 400s vLLM gives for
bodies it refuses, the choices of a batch and of `n`, unary bodies and SSE streams with usage and token ids.

An `Output` is one choice's (prompt ids, generated ids), from `bench/stub_model.py`'s tiny model."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi.responses import JSONResponse

from bench.stub_model import EOS, generate, prompt_texts, word


def refusal(body: dict[str, Any]) -> tuple[str, str | None] | None:
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


Output = tuple[list[int], list[int]]  # (prompt ids, generated ids) of one choice


def outputs_of(body: dict[str, Any], ids_per_prompt: list[list[int]]) -> list[Output]:
    """(prompt ids, generated ids) per choice, in vLLM's order: prompt i, choice j at i * n + j."""
    n = body.get("n") or 1
    texts = prompt_texts(body)
    stop_first = ["STOPFIRST" in texts[i] if i < len(texts) else False for i in range(len(ids_per_prompt))]
    return [(ids, generate(ids, body, choice=j, stop_first=stop_first[i]))
            for i, ids in enumerate(ids_per_prompt) for j in range(n)]


def finish(generated: list[int], body: dict[str, Any]) -> str:
    return "stop" if generated and generated[-1] == EOS else "length"


def unary(outputs: list[Output], chat: bool, body: dict[str, Any]) -> JSONResponse:
    ids_asked = bool(body.get("return_token_ids"))
    choices = []
    for index, (prompt, generated) in enumerate(outputs):
        text = "".join(word(t) for t in generated)
        choice: dict[str, Any] = {"index": index, "finish_reason": finish(generated, body),
                                  "token_ids": generated if ids_asked else None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, prompt_token_ids=prompt if ids_asked else None)
        choices.append(choice)
    data = {"id": "stub-1", "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": "stub-model", "choices": choices,
            "usage": usage(outputs, body.get("n") or 1)}
    if chat:
        data["prompt_token_ids"] = outputs[0][0] if ids_asked else None
    return JSONResponse(data)


def usage(outputs: list[Output], n: int = 1) -> dict[str, int]:
    prompt_tokens = sum(len(p) for p, _ in outputs[::n])
    completion_tokens = sum(len(generated) for _, generated in outputs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _chunk(data: dict[str, Any]) -> str:
    """One SSE event, compact JSON with the id first, as vLLM writes them (pydantic's model_dump_json)."""
    return f"data: {json.dumps({'id': 'stub-1', 'model': 'stub-model', **data}, separators=(',', ':'))}\n\n"


async def stream(outputs: list[Output], chat: bool, body: dict[str, Any], cut: bool, delay_s: float,
                  first_delay_s: float = 0.0):
    ids_asked = bool(body.get("return_token_ids"))
    await asyncio.sleep(first_delay_s)
    if chat:  # vLLM's chat streams open with the role, one chunk per choice
        for index, (prompt, _) in enumerate(outputs):
            role = {"choices": [{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None}]}
            yield _chunk({**role, **({"prompt_token_ids": prompt} if ids_asked else {})})
    for i in range(max(len(generated) for _, generated in outputs)):
        if cut and i == 2:
            return
        for index, (prompt, generated) in enumerate(outputs):
            if i < len(generated):
                yield _chunk({"choices": [_stream_choice(index, prompt, generated, i, chat, body)]})
        await asyncio.sleep(delay_s)
    if (body.get("stream_options") or {}).get("include_usage"):
        yield _chunk({"choices": [], "usage": usage(outputs, body.get("n") or 1)})
    yield "data: [DONE]\n\n"
    await asyncio.sleep(delay_s)  # and closes a pause later, as a busy server may


def _stream_choice(index: int, prompt: list[int], generated: list[int], i: int, chat: bool,
                   body: dict[str, Any]) -> dict[str, Any]:
    last = i == len(generated) - 1
    choice: dict[str, Any] = {"index": index, "finish_reason": finish(generated, body) if last else None}
    if chat:
        choice["delta"] = {"content": word(generated[i])}
    else:
        choice["text"] = word(generated[i])
    if body.get("return_token_ids"):
        choice["token_ids"] = [generated[i]]
        if not chat and i == 0:
            choice["prompt_token_ids"] = prompt
    return choice
