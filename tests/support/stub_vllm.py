"""The router tests' seam: the stub vLLM server lives in `bench/stub_vllm.py` (`disagg bench router` runs it too)."""

from bench.stub_vllm import *  # noqa: F401,F403
from bench.stub_vllm import EOS, WORDS, StubState, create_stub, detokenize, expected_tokens, prompt_ids, tokenize  # noqa: F401
