"""The router's own tokenization (router.tokenize, router.chat_template) gives the token ids vLLM would:
compared with transformers' apply_chat_template (what vLLM calls) on the real model's tokenizer for several
conversations, and on prompts as text and as ids; shapes it cannot reproduce give None, never a guess.
(tests/integration/test_prefix_routing.py compares with a running vLLM's /tokenize.)"""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from core.model import default_model_dir
from node.tokenizer_route import add_tokenizer_route
from router import tokenizer_files
from router.tokenize import PromptTokenizer, given_ids

pytestmark = pytest.mark.timeout(120)

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three rivers."},
     {"role": "assistant", "content": "Nile, Amazon, Danube."}, {"role": "user", "content": "And lakes?"}],
    [{"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}],
    [{"role": "user", "content": "Ünïcödé ✓ 中文 and\ttabs\n\nnewlines  "}, {"role": "assistant", "content": None},
     {"role": "user", "content": "<|im_start|> inside text"}],
]


@pytest.fixture(scope="module")
def model_dir():
    folder = default_model_dir()
    if not (folder / "tokenizer.json").is_file():
        pytest.skip(f"no converted default model at {folder}")
    return folder


@pytest.fixture(scope="module")
def ours(model_dir):
    return PromptTokenizer(tokenizer_files.from_folder(model_dir))


@pytest.fixture(scope="module")
def hf(model_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(model_dir))


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_token_ids_equal_transformers_apply_chat_template(ours, hf, messages, add_generation_prompt):
    conversation = [{**m, "content": "\n".join(p["text"] for p in m["content"]) if isinstance(m["content"], list)
                     else (m["content"] or "")} for m in messages]  # vLLM's parser: parts joined, None -> ""
    theirs = hf.apply_chat_template(conversation, tokenize=True, add_generation_prompt=add_generation_prompt,
                                    return_dict=False)
    body = {"messages": messages, "add_generation_prompt": add_generation_prompt}
    assert ours.token_ids("chat", body) == list(theirs)


def test_completion_prompts_as_text_and_as_ids(ours, hf):
    text = "The lighthouse keepers wrote the wind's direction in the log."
    assert ours.token_ids("completions", {"prompt": text}) == hf(text)["input_ids"]
    assert ours.token_ids("completions", {"prompt": [text]}) == hf(text)["input_ids"]
    assert ours.token_ids("completions", {"prompt": [5, 6, 7]}) == [5, 6, 7]
    assert ours.token_ids("completions", {"prompt": [[5, 6, 7]]}) == [5, 6, 7]
    assert ours.token_ids("completions", {"prompt": text, "truncate_prompt_tokens": 3}) == hf(text)["input_ids"][-3:]
    assert given_ids({"prompt": [1, 2, 3], "truncate_prompt_tokens": 2}) == [2, 3]
    assert given_ids({"prompt": "text"}) is None


@pytest.mark.parametrize("body", [
    {"prompt": ["a", "b"]},  # several prompts: split before routing
    {"prompt": [1, "x"]},
    {"prompt": "x", "prompt_embeds": "AAAA"},
])
def test_completion_shapes_it_cannot_reproduce_give_none(ours, body):
    assert ours.token_ids("completions", body) is None


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]},
    {"messages": [{"role": "user", "content": "hi"}], "continue_final_message": True},
    {"messages": [{"role": "user", "content": "hi"}], "chat_template": "{{ messages }}"},
    {"messages": []},
    {"messages": "hi"},
])
def test_chat_it_cannot_render_exactly_gives_none(ours, body):
    assert ours.token_ids("chat", body) is None


def test_a_node_serves_its_tokenizer_files_and_nothing_else(model_dir):
    app = FastAPI()
    add_tokenizer_route(app, model_dir)

    async def fetch():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as client:
            files = await tokenizer_files.from_node(client, "http://node")
            refused = [(await client.get(f"/tokenizer/{name}")).status_code
                       for name in ("model.safetensors", "config.json", "..%2Fconfig.json")]
            return files, refused

    import asyncio
    files, refused = asyncio.run(fetch())
    local = tokenizer_files.from_folder(model_dir)
    assert files.tokenizer_json == local.tokenizer_json and files.chat_template == local.chat_template
    assert refused == [404, 404, 404]
