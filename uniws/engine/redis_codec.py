"""Payloads the Redis engine stores and publishes (spec 08 §8.3), Centrifugo-shaped.

Publication and ClientInfo are the protobuf messages of 08 §8.3, encoded by hand (two
small messages do not justify a protobuf dependency):

    Publication { bytes data = 4; ClientInfo info = 5; uint64 offset = 6; map<string,string> tags = 7; }
    ClientInfo  { string user = 1; string client = 2; bytes conn_info = 3; bytes chan_info = 4; }

`data` is carried as raw bytes, never decoded. The node hands ClientInfo around as the
compact JSON `codec.client_info` produces; it is split into the four protobuf fields at
the edge (conn_info/chan_info keep their exact raw JSON bytes) and rebuilt with
`codec.client_info` on the way back, so the handler gets the very same bytes.

PUB/SUB payloads on `P.client.<channel>`: `__p1:<offset>:<epoch>__<Publication>` with
history, the bare Publication without, `__j__<ClientInfo>` / `__l__<ClientInfo>` for
join/leave.
"""

from __future__ import annotations

import json

from .. import codec
from .base import Publication

JOIN_PREFIX = b"__j__"
LEAVE_PREFIX = b"__l__"
POSITIONED_PREFIX = b"__p1:"


class PayloadError(ValueError):
    """A payload that is not one this codec writes."""


# -- protobuf wire format (varints and length-delimited fields only) ----------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise PayloadError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value): int for varints, bytes for length-delimited."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > end:
                raise PayloadError("truncated field")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise PayloadError(f"unsupported wire type {wire}")
        if pos > end:
            raise PayloadError("truncated field")
        yield number, wire, value


# -- Publication -----------------------------------------------------------------------------

def encode_publication(data: bytes, offset: int = 0, tags: dict[str, str] | None = None) -> bytes:
    out = _field(4, data)
    if offset:
        out += _varint(6 << 3) + _varint(offset)
    if tags:
        for key, value in tags.items():
            out += _field(7, _field(1, key.encode()) + _field(2, value.encode()))
    return out


def decode_publication(buf: bytes) -> Publication:
    data, offset, tags = b"", 0, None
    for number, wire, value in _fields(buf):
        if number == 4 and wire == 2:
            data = value
        elif number == 6 and wire == 0:
            offset = value
        elif number == 7 and wire == 2:
            key = val = ""
            for n, w, v in _fields(value):
                if w == 2 and n == 1:
                    key = v.decode()
                elif w == 2 and n == 2:
                    val = v.decode()
            if tags is None:
                tags = {}
            tags[key] = val
    return Publication(data, offset, tags)


# -- ClientInfo ------------------------------------------------------------------------------

_CONN = b',"conn_info":'
_CHAN = b',"chan_info":'


def split_client_info(info: bytes) -> tuple[str, str, bytes, bytes]:
    """(user, client, conn_info, chan_info) of codec.client_info's JSON, raw parts verbatim."""
    try:
        head = json.loads(info)
        user, client = head["user"], head["client"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PayloadError(f"not a ClientInfo JSON object: {exc}") from None
    prefix = codec.client_info(user, client, None, None)[:-1]
    if not info.startswith(prefix) or not info.endswith(b"}"):
        raise PayloadError("ClientInfo JSON not in codec.client_info's shape")
    rest = info[len(prefix):-1]
    conn_info = chan_info = b""
    if rest.startswith(_CONN):
        text = rest[len(_CONN):].decode()
        _, end = json.JSONDecoder().raw_decode(text)
        conn_info = text[:end].encode()
        rest = text[end:].encode()
    if rest.startswith(_CHAN):
        chan_info, rest = rest[len(_CHAN):], b""
    if rest:
        raise PayloadError("ClientInfo JSON has unexpected members")
    return user, client, conn_info, chan_info


def encode_client_info(info: bytes) -> bytes:
    user, client, conn_info, chan_info = split_client_info(info)
    out = b""
    if user:
        out += _field(1, user.encode())
    if client:
        out += _field(2, client.encode())
    if conn_info:
        out += _field(3, conn_info)
    if chan_info:
        out += _field(4, chan_info)
    return out


def decode_client_info(buf: bytes) -> bytes:
    parts: dict[int, bytes] = {}
    for number, wire, value in _fields(buf):
        if wire == 2 and 1 <= number <= 4:
            parts[number] = value
    try:
        user, client = parts.get(1, b"").decode(), parts.get(2, b"").decode()
    except UnicodeDecodeError:
        raise PayloadError("ClientInfo user/client not UTF-8") from None
    return codec.client_info(user, client, parts.get(3) or None, parts.get(4) or None)


def client_info_user(buf: bytes) -> bytes:
    """The user field of a serialized ClientInfo (presence stats count unique users)."""
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 2:
            return value
    return b""


# -- PUB/SUB payloads ------------------------------------------------------------------------

def positioned(offset: int, epoch: str, pub: bytes) -> bytes:
    """The history form; built here only for tests (the publish script builds it in Redis)."""
    return b"%s%d:%s__%s" % (POSITIONED_PREFIX, offset, epoch.encode(), pub)


def parse_message(payload: bytes) -> tuple[str, object, str]:
    """('pub', Publication, epoch) | ('join'/'leave', ClientInfo JSON, '')."""
    if payload.startswith(POSITIONED_PREFIX):
        end = payload.find(b"__", len(POSITIONED_PREFIX))
        if end < 0:
            raise PayloadError("positioned publication without its '__' terminator")
        head = payload[len(POSITIONED_PREFIX):end]
        offset_text, sep, epoch = head.partition(b":")
        if not sep or not offset_text.isdigit():
            raise PayloadError("malformed positioned publication header")
        pub = decode_publication(payload[end + 2:])
        pub.offset = int(offset_text)
        return "pub", pub, epoch.decode()
    if payload.startswith(JOIN_PREFIX):
        return "join", decode_client_info(payload[len(JOIN_PREFIX):]), ""
    if payload.startswith(LEAVE_PREFIX):
        return "leave", decode_client_info(payload[len(LEAVE_PREFIX):]), ""
    return "pub", decode_publication(payload), ""
