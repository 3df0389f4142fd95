"""The cluster token: proof, in every PULL and RELEASE, that the decode side shares the prefill node's secret.

The proof is an HMAC-SHA256 keyed by the token over a domain tag, the frame type, the request id and, for a
PULL, its fields (so a proof for one request or one range opens no other). A prefill node with a token
refuses (ERROR `UNAUTHORIZED`) any PULL or RELEASE without a valid proof before it looks the request up,
so nothing is sent and no lease changes. Without a token on the prefill node, proofs are not checked.

What it does not do: encrypt the KV, or stop an observer on the path from replaying a proof it saw for
the same request while that request is published (minutes at most). Run the KV link on a trusted network.
"""

from __future__ import annotations

import hashlib
import hmac

from core.cluster_token import CLUSTER_TOKEN_ENV  # noqa: F401  (read by `TcpConnectorSettings.from_extra_config`)
PROOF_NBYTES = 32  # HMAC-SHA256
_DOMAIN = b"disagg-tcp-kv/1\0"


def normalize_token(token: str | None) -> bytes | None:
    """The token's bytes (surrounding whitespace, e.g. a file's newline, removed); None when unset or empty."""
    if token is None:
        return None
    text = token.strip()
    return text.encode() if text else None


def proof(token: bytes | None, frame_type: int, request_id: bytes, fields: bytes = b"") -> bytes:
    """The proof a frame carries: empty without a token."""
    if token is None:
        return b""
    message = _DOMAIN + bytes([frame_type]) + len(request_id).to_bytes(2, "big") + request_id + fields
    return hmac.new(token, message, hashlib.sha256).digest()


def verify(token: bytes | None, frame_type: int, request_id: bytes, fields: bytes, got: bytes) -> bool:
    """True when no token is required, or `got` is the token's proof for this frame (constant time)."""
    if token is None:
        return True
    return len(got) == PROOF_NBYTES and hmac.compare_digest(proof(token, frame_type, request_id, fields), got)
