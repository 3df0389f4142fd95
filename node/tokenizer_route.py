"""`GET /tokenizer/NAME` on a node supervisor: the model's tokenizer files, for a prefix-aware router that
tokenizes prompts itself without a copy of the model (router/tokenizer_files.py).

Only the names in `router.tokenizer_files.FILE_NAMES` are served (tokenizer.json, tokenizer_config.json,
chat_template.jinja), from the model folder the node runs; anything else, or a file the folder lacks, is
404. Behind the node's cluster token like `/info`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse

from router.tokenizer_files import FILE_NAMES, ROUTE


def add_tokenizer_route(app: FastAPI, model_dir: Path) -> None:
    @app.get(ROUTE + "/{name}")
    async def tokenizer_file(name: str) -> FileResponse:
        path = model_dir / name
        if name not in FILE_NAMES or not path.is_file():
            raise HTTPException(status_code=404, detail=f"no tokenizer file {name!r}")
        return FileResponse(path)
