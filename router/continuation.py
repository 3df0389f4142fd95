"""Continuing a request from the prefill node's first token: pure functions over bodies and chunks.

The prefill node computes the prompt's KV *and* samples the first token. Instead of throwing that token away
(vLLM's P/D protocol) the router sends it to the client at once and asks the decode node for the rest: the
decode node's prompt is the prompt's token ids plus the first token, with one token less to generate, so it
loads the prompt's KV and computes only the first token's forward pass, which samples the second token
(the connectors cap the remote tokens at `remote_num_tokens`: transport/tcp/scheduler_side.py,
transport/nixl/connector.py). TTFT no longer waits for the transfer, and no token is computed twice.

It is exact (the same tokens, text, logprobs and usage as colocated serving) only where nothing the decode node
does depends on the first token being *output* rather than *prompt*. `reason_not_to_continue` is that rule,
an allow-list: every field below is per-step (a sampling distribution, a format) or adapted here. A request
with anything else is served the plain P/D way (its decode node recomputes the last prompt token and
samples the first token itself), which is exact for everything:

- stop strings (a stop string across the first and second token would go unseen), presence and frequency
  penalties (they count output tokens), structured output and tools (their state starts at the first token),
  echo and prompt logprobs (about the prompt), seeded sampling (vLLM's per-request generator would be one draw
  behind), non-text chat content (vLLM then re-renders the messages instead of taking the token ids),
  `continuous_usage_stats`, and any field this module does not know.

Shapes are vLLM 0.32's (entrypoints/openai/completion/serving.py, chat_completion/serving.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

SAMPLING_EPS = 1e-5  # vLLM: a temperature below it is greedy
_CONTINUABLE = frozenset({
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "min_tokens", "temperature", "top_p",
    "top_k", "min_p", "seed", "stream", "stream_options", "logprobs", "top_logprobs", "repetition_penalty",
    "logit_bias", "user", "n", "return_token_ids", "skip_special_tokens", "spaces_between_special_tokens",
    "stop_token_ids", "ignore_eos", "allowed_token_ids", "add_special_tokens", "add_generation_prompt",
    "continue_final_message", "chat_template", "chat_template_kwargs", "priority", "request_id",
    "frequency_penalty", "presence_penalty", "stop", "include_stop_str_in_output", "return_tokens_as_token_ids",
})
_ZERO_IF_SET = ("frequency_penalty", "presence_penalty")


def reason_not_to_continue(body: dict[str, Any], endpoint: str) -> str | None:
    """None when `body` (one prompt, one choice) can continue from the first token exactly; else why not."""
    unknown = sorted(key for key in body if key not in _CONTINUABLE)
    if unknown:
        return f"fields {', '.join(unknown)}"
    if body.get("stop"):
        return "stop strings"
    if any(body.get(key) for key in _ZERO_IF_SET):
        return "presence/frequency penalty"
    temperature = body.get("temperature")
    sampled = not isinstance(temperature, (int, float)) or temperature >= SAMPLING_EPS
    if sampled and body.get("seed") is not None:
        return "seeded sampling"
    if (body.get("stream_options") or {}).get("continuous_usage_stats"):
        return "continuous usage stats"
    if endpoint == "chat" and not all(isinstance(m, dict) and isinstance(m.get("content"), (str, type(None)))
                                      for m in body.get("messages") or []):
        return "non-text message content"
    if endpoint == "completions" and not _one_prompt(body.get("prompt")):
        return "not one prompt"
    budget, least = max_tokens_of(body, endpoint), body.get("min_tokens")
    if budget is None:  # chat's default budget may come from the model's generation config: it would grow by one
        return "no token budget"
    if budget < 2 or (isinstance(least, int) and least > budget):
        return "a token budget vLLM refuses"  # its 400 must name the client's numbers, not ours
    return None


def _one_prompt(prompt: Any) -> bool:
    return isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt))


COMPLETIONS_MAX_TOKENS = 16  # vLLM's (and OpenAI's) default for /v1/completions (completion/protocol.py)


def max_tokens_of(body: dict[str, Any], endpoint: str = "chat") -> int | None:
    """The client's token budget (chat: max_completion_tokens over max_tokens); unset, completions' default
    (16) and chat's None (then the server's default: the context left, or the model's generation config)."""
    for key in ("max_completion_tokens", "max_tokens"):
        if isinstance(body.get(key), int):
            return body[key]
    return COMPLETIONS_MAX_TOKENS if endpoint == "completions" else None


@dataclass(frozen=True)
class FirstToken:
    """The prefill node's first token, out of its JSON answer (asked with `return_token_ids`)."""

    answer: dict[str, Any]  # the prefill node's JSON body (one choice)
    token_id: int
    text: str
    prompt_token_ids: list[int]
    finish_reason: str | None

    @property
    def choice(self) -> dict[str, Any]:
        return self.answer["choices"][0]

    @property
    def ends_answer(self) -> bool:
        """True when the first token is the end of the answer (end of sequence, a stop token): its prefill
        finished with "stop", not with "length" (the one token it was allowed)."""
        return self.finish_reason == "stop"

    @property
    def usable(self) -> bool:
        """False when the answer cannot be built from this token exactly: the prefill ended otherwise than
        by its one-token budget or a stop, or its text cannot be split off (empty: a partial UTF-8 character
        vLLM holds back, or a skipped special token; or a replacement character)."""
        if self.ends_answer:
            return True
        return self.finish_reason == "length" and bool(self.text) and "\ufffd" not in self.text


def first_token(answer: dict[str, Any], endpoint: str) -> FirstToken | None:
    """The first token of a prefill answer, or None when the answer is not one plain token with its ids."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    token_ids = choice.get("token_ids")
    prompt_ids = choice.get("prompt_token_ids") if endpoint == "completions" else answer.get("prompt_token_ids")
    if endpoint == "chat":
        message = choice.get("message") or {}
        if message.get("tool_calls") or message.get("reasoning") or message.get("reasoning_content"):
            return None
        text = message.get("content")
    else:
        text = choice.get("text")
    if not (isinstance(token_ids, list) and len(token_ids) == 1 and isinstance(prompt_ids, list)
            and isinstance(text, str)):
        return None
    return FirstToken(answer=answer, token_id=token_ids[0], text=text, prompt_token_ids=prompt_ids,
                      finish_reason=choice.get("finish_reason"))


def prefill_request(prefill_body: dict[str, Any], client_body: dict[str, Any]) -> dict[str, Any]:
    """The prefill leg (router.protocol.prefill_request's body) asking for the prompt's and first token's ids;
    its first token obeys `min_tokens` as colocated serving's would (no end of sequence before it)."""
    req = {**prefill_body, "return_token_ids": True}
    if isinstance(client_body.get("min_tokens"), int) and client_body["min_tokens"] >= 1:
        req["min_tokens"] = 1
    return req


def decode_request(body: dict[str, Any], endpoint: str, first: FirstToken,
                   params: dict[str, Any]) -> dict[str, Any]:
    """The decode leg: prompt = the prompt's ids + the first token, one token less to generate."""
    req = copy.deepcopy(body)
    ids = [*first.prompt_token_ids, first.token_id]
    if endpoint == "completions":
        req["prompt"] = ids
        req["kv_transfer_params"] = dict(params)
    else:  # vLLM's chat server takes pre-tokenized ids from kv_transfer_params (renderers/online_renderer.py)
        req["kv_transfer_params"] = {**params, "prompt_token_ids": ids}
    if endpoint == "completions" and not isinstance(req.get("max_tokens"), int):
        req["max_tokens"] = COMPLETIONS_MAX_TOKENS  # its default, made explicit so that one less can be asked
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(req.get(key), int):
            req[key] -= 1
    if isinstance(req.get("min_tokens"), int):
        req["min_tokens"] = max(0, req["min_tokens"] - 1)
    return req


def _shift_usage(usage: Any) -> Any:
    """The decode node counted the first token as prompt: give it back to the completion."""
    if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
        return usage
    return {**usage, "prompt_tokens": usage["prompt_tokens"] - 1,
            "completion_tokens": (usage.get("completion_tokens") or 0) + 1}
