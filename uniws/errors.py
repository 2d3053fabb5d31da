"""Disconnect codes (spec 03 §1) and server API errors (spec 03 §3, 06 §2.6)."""

from __future__ import annotations


class Disconnect(Exception):
    """A server-side termination: (code, reason, reconnect). Raised to abort a connect."""

    __slots__ = ("code", "reason", "reconnect")

    def __init__(self, code: int, reason: str, reconnect: bool) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.reconnect = reconnect

    def __repr__(self) -> str:
        return f"Disconnect({self.code}, {self.reason!r}, reconnect={self.reconnect})"


# v3.2.x table. 3000 is internal ("connection closed") and never sent.
CONNECTION_CLOSED = Disconnect(3000, "connection closed", True)
SHUTDOWN = Disconnect(3001, "shutdown", True)
INTERNAL = Disconnect(3004, "internal server error", True)
EXPIRED = Disconnect(3005, "connection expired", True)
SUB_EXPIRED = Disconnect(3006, "subscription expired", True)
SLOW = Disconnect(3008, "slow", True)
WRITE_ERROR = Disconnect(3009, "write error", True)
INSUFFICIENT_STATE = Disconnect(3010, "insufficient state", True)
FORCE_RECONNECT = Disconnect(3011, "force reconnect", True)
INVALID_TOKEN = Disconnect(3500, "invalid token", False)
BAD_REQUEST = Disconnect(3501, "bad request", False)
STALE = Disconnect(3502, "stale", False)
FORCE_DISCONNECT = Disconnect(3503, "force disconnect", False)
CONNECTION_LIMIT = Disconnect(3504, "connection limit", False)
CHANNEL_LIMIT = Disconnect(3505, "channel limit", False)


class ApiError(Exception):
    """A server API error returned inside a 200 reply as {"error":{"code","message"}}."""

    __slots__ = ("code", "message")

    MESSAGES = {
        100: "internal server error",
        101: "unauthorized",
        102: "unknown channel",
        103: "permission denied",
        104: "method not found",
        105: "already subscribed",
        106: "limit exceeded",
        107: "bad request",
        108: "not available",
        109: "token expired",
        110: "expired",
        111: "too many requests",
        112: "unrecoverable position",
    }

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = code
        self.message = message if message is not None else self.MESSAGES.get(code, "internal server error")
        super().__init__(code, self.message)


def connect_error_to_disconnect(code: int) -> Disconnect:
    """Spec 03 §4: an error during a unidirectional connect becomes a disconnect."""
    if code in (109, 110):
        return EXPIRED
    return INTERNAL
