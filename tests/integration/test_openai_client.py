"""The official `openai` Python client against the router: chat and completions, streamed and not."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration
PROMPT = "Name three colours of the rainbow."


@pytest.fixture()
def client(cluster):
    from openai import OpenAI

    return OpenAI(base_url=f"{cluster.router_url}/v1", api_key="unused", timeout=120, max_retries=0)


@pytest.fixture()
def baseline(cluster):
    from openai import OpenAI

    return OpenAI(base_url=f"{cluster.baseline_url}/v1", api_key="unused", timeout=120, max_retries=0)


def test_models_lists_the_served_model(client, cluster):
    assert [m.id for m in client.models.list().data] == [cluster.model_name]


def test_chat_unary_usage_and_text(client, baseline, cluster):
    kwargs = dict(model=cluster.model_name, messages=[{"role": "user", "content": PROMPT}], max_tokens=12,
                  temperature=0)
    got, want = client.chat.completions.create(**kwargs), baseline.chat.completions.create(**kwargs)
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.usage.prompt_tokens == want.usage.prompt_tokens > 5
    assert got.usage.completion_tokens == want.usage.completion_tokens
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens


def test_chat_stream_with_usage(client, baseline, cluster):
    kwargs = dict(model=cluster.model_name, messages=[{"role": "user", "content": PROMPT}], max_tokens=12,
                  temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(client.chat.completions.create(**kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    want = baseline.chat.completions.create(**{**kwargs, "stream": False, "stream_options": None})
    assert text == want.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == want.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == want.usage.prompt_tokens


def test_completions_unary_and_stream(client, cluster):
    kwargs = dict(model=cluster.model_name, prompt="Once upon a time", max_tokens=10, temperature=0)
    unary = client.completions.create(**kwargs)
    assert unary.usage.completion_tokens == 10
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == unary.choices[0].text
    assert chunks[-1].usage.completion_tokens == 10


def test_client_errors_raise_typed_exceptions(client, cluster):
    import openai

    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=cluster.model_name, prompt="x", max_tokens=0)
