"""One signed resume cursor per connection (`uni_websocket_resume`): codec, per-connection state, matching.

A uni client has no SDK to remember a position per channel, and cannot even name its
server-side (personal) channels. With `uni_websocket_resume: true` the connect push and every
publication push carry a top-level `"cursor"`: the connection's position on all its
recoverable subscriptions after that push. Reconnecting with `?cf_resume=<cursor>` (or a
`resume` field in the connect command) recovers each channel as a per-channel `subs` hint
would (05 §8).

Binary layout, base64url without padding:

    version (1 byte, 1) | blake2b-8(user) | entries... | keyed blake2b-16 MAC of all before it
    entry = blake2b-8(channel) | blake2b-4(epoch) | offset as an unsigned LEB128 varint

An entry is 13 bytes plus the varint (1 byte below offset 128, 3 below 2 097 152); with 100
channels at offsets under 2M a cursor is 1 + 8 + 100 * 15 + 16 = 1525 bytes, 2034 characters.
Channels are known by hash only: the server recomputes a reconnecting connection's channels
from its credentials and matches them by hash. The MAC key is derived from
`uni_websocket_resume_secret`, else `token_hmac_secret_key`, so every worker and node with the
same config signs and accepts the same cursors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from .protocol import SubHint

VERSION = 1
CHANNEL_HASH = 8
EPOCH_HASH = 4
USER_HASH = 8
MAC_SIZE = 16
_HEAD = 1 + USER_HASH
_URLSAFE = bytes.maketrans(b"+/", b"-_")
# The largest a cursor may be before decoding: the channel limit is a config option, this is a
# bound on work (and a base64 URL parameter) for made-up input, not a protocol limit.
MAX_CURSOR_CHARS = 64 * 1024


class CursorError(ValueError):
    """A resume cursor that cannot be used: refuse the connect (3501)."""


def _hash(value: str, size: int) -> bytes:
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=size).digest()


def channel_hash(channel: str) -> bytes:
    return _hash(channel, CHANNEL_HASH)


def epoch_hash(epoch: str) -> bytes:
    return _hash(epoch, EPOCH_HASH)


def user_hash(user: str) -> bytes:
    return _hash(user, USER_HASH)


def varint(n: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, at: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= end:
            raise CursorError("truncated offset")
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and shift:
                raise CursorError("offset not minimally encoded")
            if value >= 1 << 64:
                raise CursorError("offset over 64 bits")
            return value, at
        shift += 7
        if shift > 63:
            raise CursorError("offset over 64 bits")


class Signer:
    """Signs and verifies cursors with one keyed blake2b (the key prepared once)."""

    __slots__ = ("_keyed",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a resume cursor needs a secret")
        # A key of its own: the token secret signs JWTs, not cursors (blake2b has no length extension).
        key = hashlib.blake2b(b"uniws resume cursor v1\x00" + secret.encode("utf-8", "surrogatepass"),
                              digest_size=32).digest()
        self._keyed = hashlib.blake2b(key=key, digest_size=MAC_SIZE)

    @classmethod
    def from_config(cls, cfg) -> Signer | None:
        if not cfg.uni_websocket_resume:
            return None
        return cls(cfg.uni_websocket_resume_secret or cfg.token_hmac_secret_key)

    def mac(self, body: bytes) -> bytes:
        keyed = self._keyed.copy()
        keyed.update(body)
        return keyed.digest()

    def encode(self, body: bytes) -> bytes:
        """The cursor text (ASCII bytes) of a body."""
        keyed = self._keyed.copy()
        keyed.update(body)
        # One keyed hash over the small body, base64url without padding (this runs per push).
        return binascii.b2a_base64(body + keyed.digest(), newline=False).translate(_URLSAFE).rstrip(b"=")

    def decode(self, text: str, user: str) -> dict[bytes, CursorEntry]:
        """Verify a cursor and return its entries by channel hash (CursorError when unusable)."""
        if len(text) > MAX_CURSOR_CHARS:
            raise CursorError("too long")
        try:
            raw = base64.urlsafe_b64decode(text.encode("ascii") + b"=" * (-len(text) % 4))
        except (UnicodeEncodeError, binascii.Error, ValueError):
            raise CursorError("not base64url") from None
        if base64.urlsafe_b64encode(raw).rstrip(b"=") != text.encode("ascii").rstrip(b"="):
            raise CursorError("not base64url")
        if len(raw) < _HEAD + MAC_SIZE:
            raise CursorError("too short")
        body, mac = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
        if not hmac.compare_digest(self.mac(body), mac):
            raise CursorError("bad signature")
        if body[0] != VERSION:
            raise CursorError(f"unknown version {body[0]}")
        if body[1:_HEAD] != user_hash(user):
            raise CursorError("issued to another user")
        entries: dict[bytes, CursorEntry] = {}
        at, end = _HEAD, len(body)
        while at < end:
            if end - at < CHANNEL_HASH + EPOCH_HASH + 1:
                raise CursorError("truncated entry")
            channel = body[at:at + CHANNEL_HASH]
            epoch = body[at + CHANNEL_HASH:at + CHANNEL_HASH + EPOCH_HASH]
            offset, at = _read_varint(body, at + CHANNEL_HASH + EPOCH_HASH, end)
            entries[channel] = CursorEntry(epoch, offset)
        return entries


class CursorEntry:
    """A channel's position from a cursor: the epoch is known by its hash only."""

    __slots__ = ("epoch_hash", "offset")

    def __init__(self, epoch_hash_: bytes, offset: int) -> None:
        self.epoch_hash = epoch_hash_
        self.offset = offset

    def hint(self, epoch: str) -> SubHint:
        """The per-channel hint this entry stands for, given the stream's current epoch. A hash that
        does not match is an epoch mismatch (05 §8): the hint then names an epoch that cannot be
        the stream's (its own with a NUL in front)."""
        matches = hmac.compare_digest(epoch_hash(epoch), self.epoch_hash)
        return SubHint(recover=True, offset=self.offset, epoch=epoch if matches else "\x00" + epoch)

    def __repr__(self) -> str:
        return f"CursorEntry({self.epoch_hash.hex()}, {self.offset})"


class CursorState:
    """One opted-in connection's position on its recoverable subscriptions, and its cursor.

    `entries` keeps each channel's encoded entry; a publication re-encodes only its own entry, and
    the cursor is the join of all entries signed once.
    """

    __slots__ = ("_tail", "entries", "head", "prefixes", "signer")

    def __init__(self, signer: Signer, user: str) -> None:
        self.signer = signer
        self.head = bytes((VERSION,)) + user_hash(user)
        self.prefixes: dict[str, bytes] = {}     # channel -> channel hash + epoch hash
        self.entries: dict[str, bytes] = {}      # channel -> prefix + varint(offset)
        self._tail: bytes | None = None

    def track(self, channel: str, epoch: str, offset: int) -> None:
        prefix = channel_hash(channel) + epoch_hash(epoch)
        self.prefixes[channel] = prefix
        self.entries[channel] = prefix + varint(offset)
        self._tail = None

    def untrack(self, channel: str) -> None:
        if self.entries.pop(channel, None) is not None:
            del self.prefixes[channel]
            self._tail = None

    def advance(self, channel: str, offset: int) -> None:
        """A publication at `offset` is being delivered on `channel` (no-op for channels not tracked)."""
        prefix = self.prefixes.get(channel)
        if prefix is not None and offset:
            self.entries[channel] = prefix + varint(offset)
            self._tail = None

    def cursor(self) -> bytes:
        return self.signer.encode(self.head + b"".join(self.entries.values()))

    def tail(self) -> bytes:
        """`,"cursor":"..."}`: what closes a push carrying the current cursor (cached until it changes)."""
        tail = self._tail
        if tail is None:
            tail = self._tail = b',"cursor":"' + self.cursor() + b'"}'
        return tail


def with_cursor(push: bytes, tail: bytes) -> bytes:
    """A push (a JSON object) with the cursor member appended: its closing brace replaced by `tail`."""
    return push[:-1] + tail


def resume_hints(entries: dict[bytes, CursorEntry], channels) -> dict[str, CursorEntry]:
    """The cursor entries of the connection's channels, by channel name; channels the connection no
    longer has are ignored, new ones have no entry."""
    hints = {}
    for channel in channels:
        entry = entries.get(channel_hash(channel))
        if entry is not None:
            hints[channel] = entry
    return hints
