"""Splicing the prefill node's first token into the decode node's answer (see router.continuation).

The decode node answered for "prompt + first token" with one token less to generate. To the client the answer
must read as colocated serving's: the first token's text, token id and logprobs in front, usage counting it as
completion, not prompt, the prompt's token ids without it, completions' `text_offset`s shifted by its text.

- `unary(first, answer, endpoint)`: one JSON body;
- `head_chunks(first, endpoint, stream_options)`: the chunks a stream starts with, made from the prefill
  answer (chat: the role chunk, then the first token; completions: the first token);
- `StreamSplicer.chunk(chunk)`: each decode chunk (router.chunk.Chunk) as the client gets it (None: dropped,
  e.g. chat's second role chunk);
- `alone(first, endpoint, client_body)`: the prefill answer as the whole answer (the first token ended it).
"""

from __future__ import annotations

import json
from typing import Any

from router.chunk import Chunk
from router.continuation import FirstToken, _shift_usage


def unary(first: FirstToken, answer: dict[str, Any], endpoint: str, client_body: dict[str, Any]) -> dict[str, Any]:
    """The decode node's JSON answer with the first token in front."""
    choice = dict(answer["choices"][0])
    if endpoint == "chat":
        message = dict(choice.get("message") or {})
        message["content"] = first.text + (message.get("content") or "")
        choice["message"] = message
    else:
        choice["text"] = first.text + (choice.get("text") or "")
    if isinstance(first.choice.get("logprobs"), dict):
        merge = _chat_logprobs if endpoint == "chat" else _completion_logprobs
        choice["logprobs"] = merge(first, choice.get("logprobs"))
    spliced = {**answer, "choices": [{**choice, **_token_ids(first, choice, endpoint, client_body)}],
               "usage": _shift_usage(answer.get("usage"))}
    if endpoint == "chat" and "prompt_token_ids" in answer:
        spliced["prompt_token_ids"] = first.prompt_token_ids if client_body.get("return_token_ids") else None
    return spliced


def alone(first: FirstToken, endpoint: str, client_body: dict[str, Any]) -> dict[str, Any]:
    """The prefill answer as the client's whole answer, without what only the router asked for."""
    answer = {key: value for key, value in first.answer.items() if key != "kv_transfer_params"}
    if client_body.get("return_token_ids"):
        return answer
    choice = {**first.choice, "token_ids": None}
    if endpoint == "completions":
        choice["prompt_token_ids"] = None
    else:
        answer["prompt_token_ids"] = None
    answer["choices"] = [choice]
    return answer


def head_chunks(first: FirstToken, endpoint: str, client_body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks a streamed answer starts with (vLLM's own first chunks, made from the prefill answer);
    when the first token ends the answer, it carries the finish reason and a usage chunk follows if asked for."""
    asked_ids = bool(client_body.get("return_token_ids"))
    base = {"id": first.answer.get("id"), "created": first.answer.get("created"), "model": first.answer.get("model")}
    choice = first.choice
    finish = first.finish_reason if first.ends_answer else None
    if endpoint == "chat":
        role = {**base, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}]}
        if asked_ids:
            role["prompt_token_ids"] = first.prompt_token_ids
        token = {**base, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": {"content": first.text}, "logprobs": choice.get("logprobs"),
                              "finish_reason": finish, **_ids(first, asked_ids, chat=True)}]}
        chunks = [role, token]
    else:
        chunks = [{**base, "object": "text_completion",
                   "choices": [{"index": 0, "text": first.text, "logprobs": choice.get("logprobs"),
                                "finish_reason": finish, "stop_reason": choice.get("stop_reason") if finish else None,
                                **_ids(first, asked_ids, chat=False)}]}]
    if first.ends_answer and (client_body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**base, "object": chunks[0]["object"], "choices": [], "usage": first.answer.get("usage")})
    return chunks


class StreamSplicer:
    """Rewrites the decode node's chunks of one continued stream (see the module docstring). Chunks that need
    no change (most: a token's text) pass as the node sent them, unparsed (router.chunk)."""

    def __init__(self, first: FirstToken, endpoint: str) -> None:
        self.first, self.endpoint = first, endpoint
        self.offset = len(first.text)  # completions: text_offset shift
        self.id = first.answer.get("id")
        self._id_prefix = b'{"id":' + json.dumps(self.id).encode() + b"," if isinstance(self.id, str) else None

    def chunk(self, chunk: Chunk) -> Chunk | None:
        if not self._needs_change(chunk):
            return chunk
        data = chunk.data
        choices = data.get("choices") or []
        if self.endpoint == "chat" and choices and "role" in (choices[0].get("delta") or {}):
            return None  # its role chunk: the client had ours
        out = {**data, "id": self.id if self.id is not None else data.get("id")}
        out.pop("prompt_token_ids", None)  # chat's first chunk: "prompt + first token"; ours went first
        if "usage" in data:
            out["usage"] = _shift_usage(data["usage"])
        if choices:
            out["choices"] = [self._choice(c) for c in choices]
        return Chunk.of(out)

    def _needs_change(self, chunk: Chunk) -> bool:
        """Whether the chunk carries anything to rewrite (its id, usage, the role, prompt ids, text offsets)."""
        if chunk.raw is None or self._id_prefix is None or not chunk.raw.startswith(self._id_prefix):
            return True  # made here, or another id than the prefill answer's (vLLM's ids follow X-Request-Id)
        return any(key in chunk.raw for key in (b'"usage"', b'"role"', b'"prompt_token_ids"', b'"text_offset"'))

    def _choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        choice = {key: value for key, value in choice.items() if key != "prompt_token_ids"}
        logprobs = choice.get("logprobs")
        if self.endpoint == "completions" and isinstance(logprobs, dict) and logprobs.get("text_offset"):
            choice["logprobs"] = {**logprobs, "text_offset": [o + self.offset for o in logprobs["text_offset"]]}
        return choice


def _ids(first: FirstToken, asked: bool, chat: bool) -> dict[str, Any]:
    if not asked:
        return {}
    return {"token_ids": [first.token_id]} if chat else {"prompt_token_ids": first.prompt_token_ids,
                                                          "token_ids": [first.token_id]}


def _token_ids(first: FirstToken, choice: dict[str, Any], endpoint: str, client_body: dict[str, Any]) -> dict:
    if not client_body.get("return_token_ids"):
        return {"token_ids": None, **({"prompt_token_ids": None} if endpoint == "completions" else {})}
    ids = {"token_ids": [first.token_id, *(choice.get("token_ids") or [])]}
    if endpoint == "completions":
        ids["prompt_token_ids"] = first.prompt_token_ids
    return ids


def _completion_logprobs(first: FirstToken, rest: Any) -> dict[str, Any]:
    head = first.choice["logprobs"]
    rest = rest if isinstance(rest, dict) else {}
    shift = len(first.text)
    return {"text_offset": [*head.get("text_offset", []), *(o + shift for o in rest.get("text_offset") or [])],
            "token_logprobs": [*head.get("token_logprobs", []), *(rest.get("token_logprobs") or [])],
            "tokens": [*head.get("tokens", []), *(rest.get("tokens") or [])],
            "top_logprobs": [*(head.get("top_logprobs") or []), *(rest.get("top_logprobs") or [])]}


def _chat_logprobs(first: FirstToken, rest: Any) -> dict[str, Any]:
    head = first.choice["logprobs"]
    rest = rest if isinstance(rest, dict) else {}
    return {**head, "content": [*(head.get("content") or []), *(rest.get("content") or [])]}
