"""The closed hierarchy of KV transfer failures, and the error codes an ERROR frame carries.

Any of these fails the pull: the decode node then recomputes or fails the request, never decodes from it.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    UNKNOWN_REQUEST = 1  # never published, already released, or its lease expired
    BAD_RANGE = 2  # asked for blocks outside what was published
    LAYOUT_MISMATCH = 3  # the two KV caches do not have the same per-block layout
    FRAME_TOO_LARGE = 4
    BAD_FRAME = 5
    INTERNAL = 6
    UNAUTHORIZED = 7  # the frame does not prove the cluster token (`transport.tcp.auth`)


class KvTransferError(Exception):
    """Base of every failure of a KV transfer."""


class ProtocolError(KvTransferError):
    """A malformed or unexpected frame."""


class FrameTooLargeError(ProtocolError):
    """A frame announced more bytes than allowed."""


class ChecksumError(KvTransferError):
    """The CRC-32C of what arrived differs from the one announced."""


class TruncatedError(KvTransferError):
    """The peer closed the connection in the middle of a frame."""


class TransferTimeoutError(KvTransferError):
    """The exchange ran past its deadline."""


class PeerUnreachableError(KvTransferError):
    """The connection to the peer could not be opened."""


class RemoteError(KvTransferError):
    """The peer refused the request with an ERROR frame."""

    def __init__(self, code: int, message: str) -> None:
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"error {code}"
        super().__init__(f"{name}: {message}")
        self.code = code
        self.message = message
