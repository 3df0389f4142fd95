"""Where the router gets the model's tokenizer files: a local model folder, or a node that serves them.

The files are the Hugging Face folder's `tokenizer.json` (needed), `tokenizer_config.json` (special tokens;
older models keep their chat template there) and `chat_template.jinja` (transformers 5 keeps it here).
`from_folder(path)` reads them; `from_node(client, node_url)` fetches them from a disagg node supervisor,
which serves exactly these names at `GET /tokenizer/NAME` (node/tokenizer_route.py), so a router on
another host needs no copy of the model. `TokenizerFiles.chat_template` is the template vLLM uses by
default: the `.jinja` file, else the config's `chat_template` (a string, or a list whose entry named
"default" counts).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from core.errors import ConfigError

log = logging.getLogger(__name__)
TOKENIZER_JSON, TOKENIZER_CONFIG, CHAT_TEMPLATE = "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"
FILE_NAMES = (TOKENIZER_JSON, TOKENIZER_CONFIG, CHAT_TEMPLATE)
ROUTE = "/tokenizer"
MAX_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TokenizerFiles:
    tokenizer_json: str
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    chat_template_file: str | None = None
    origin: str = ""  # where they came from, for logs

    @property
    def chat_template(self) -> str | None:
        if self.chat_template_file:
            return self.chat_template_file
        template = self.tokenizer_config.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template if isinstance(template, str) else None


def _parse(texts: dict[str, str | None], origin: str) -> TokenizerFiles:
    if not texts.get(TOKENIZER_JSON):
        raise ConfigError(f"{origin}: no {TOKENIZER_JSON} (the router tokenizes with the `tokenizers` package)")
    try:
        config = json.loads(texts.get(TOKENIZER_CONFIG) or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{origin}: {TOKENIZER_CONFIG} is not JSON: {exc}") from None
    return TokenizerFiles(texts[TOKENIZER_JSON] or "", config if isinstance(config, dict) else {},
                          texts.get(CHAT_TEMPLATE), origin)


def from_folder(path: str | Path) -> TokenizerFiles:
    """The tokenizer files of a local model folder; ConfigError when it has no tokenizer.json."""
    folder = Path(path).expanduser()
    texts = {}
    for name in FILE_NAMES:
        file = folder / name
        texts[name] = file.read_text(encoding="utf-8") if file.is_file() else None
    return _parse(texts, str(folder))


async def from_node(client: httpx.AsyncClient, node_url: str) -> TokenizerFiles | None:
    """The tokenizer files a disagg node serves (None when it serves none: a plain vLLM server, or an older
    node); ConfigError when what it serves is unusable."""
    texts: dict[str, str | None] = {}
    for name in FILE_NAMES:
        resp = await client.get(f"{node_url}{ROUTE}/{name}")
        if resp.status_code == 404:
            if name == TOKENIZER_JSON:
                return None
            texts[name] = None
            continue
        resp.raise_for_status()
        if len(resp.content) > MAX_FILE_BYTES:
            raise ConfigError(f"{node_url}{ROUTE}/{name}: over {MAX_FILE_BYTES} bytes")
        texts[name] = resp.text
    return _parse(texts, f"{node_url}{ROUTE}")
