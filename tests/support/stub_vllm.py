"""The router tests' seam: the stub vLLM server lives in `bench/stub_vllm.py` (`disagg bench router` runs it too),
its model in `bench/stub_model.py`."""

from bench.stub_model import EOS, WORDS, detokenize, expected_tokens, prompt_ids, tokenize  # noqa: F401
from bench.stub_vllm import StubState, create_stub  # noqa: F401
