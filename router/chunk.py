"""One chunk of a streamed answer, as it came from a node: its JSON bytes, parsed only when needed.

Most chunks of a stream go to the client exactly as the node sent them; parsing each one and encoding it
again cost the router more than anything else it does per token. A `Chunk` keeps the node's bytes and parses
them on first use of `data`; `encoded()` gives the node's bytes back unless the chunk was made or changed
here. `mentions(b'"usage"')` asks whether a field may be in it without parsing (a key's quoted name never
occurs inside a JSON string of other text without its own escaping, so absent bytes mean absent field).
"""

from __future__ import annotations

import json
from typing import Any


class Chunk:
    """A streamed chunk: `raw` (the node's JSON bytes) or `data` (a dict made here)."""

    __slots__ = ("raw", "_data")

    def __init__(self, raw: bytes | None = None, data: dict[str, Any] | None = None) -> None:
        if (raw is None) == (data is None):
            raise ValueError("a chunk is either the node's bytes or a dict")
        self.raw, self._data = raw, data

    @property
    def data(self) -> dict[str, Any]:
        """The chunk as a dict (parsed once; ValueError when the bytes are not a JSON object)."""
        if self._data is None:
            data = json.loads(self.raw)  # type: ignore[arg-type]
            if not isinstance(data, dict):
                raise ValueError("an SSE chunk that is not a JSON object")
            self._data = data
        return self._data

    def mentions(self, key: bytes) -> bool:
        """Whether the quoted key (e.g. b'"usage"') may be in it: False is certain, True needs `data`."""
        return self.raw is None or key in self.raw

    def encoded(self) -> bytes:
        """The chunk's JSON: the node's own bytes when it was not made or changed here."""
        if self.raw is not None:
            return self.raw
        return json.dumps(self._data, separators=(",", ":")).encode()

    @classmethod
    def of(cls, data: dict[str, Any]) -> "Chunk":
        return cls(data=data)
