"""Pure-Python push encoders (spec 02): the reference the Cython fast path is pinned to.

Every raw JSON value handed to these functions (publication data, infos) is
already compact JSON produced at the edge (API decoding, token claims), so it
is inserted verbatim; only line feeds are removed, as the reference does.
"""

from __future__ import annotations

import re
from typing import Mapping

# Push type numbers of the v1 envelope (02 §A.1) and payload keys of v2 (02 §B.1).
PUBLICATION, JOIN, LEAVE, UNSUBSCRIBE, MESSAGE, SUBSCRIBE, CONNECT, DISCONNECT, REFRESH = range(9)
V2_KEYS = ("pub", "join", "leave", "unsubscribe", "message", "subscribe", "connect", "disconnect", "refresh")

# Go's encoding/json escapes (02 §0.5): short forms for \n \r \t, \u00XX for other
# control bytes, HTML-safe <>&, and the JavaScript line separators.
_ESCAPES = {i: "\\u%04x" % i for i in range(0x20)}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x22: '\\"', 0x5C: "\\\\",
                 0x3C: "\\u003c", 0x3E: "\\u003e", 0x26: "\\u0026",
                 0x2028: "\\u2028", 0x2029: "\\u2029"})
for _cp in range(0xD800, 0xE000):          # lone surrogates cannot be UTF-8: replacement char
    _ESCAPES[_cp] = "\\ufffd"
_NEEDS_ESCAPE = re.compile('["\\\\<>&\x00-\x1f\u2028\u2029\ud800-\udfff]')


def json_string(value: str) -> bytes:
    """Encode a str as a JSON string literal with the reference's escaping rules."""
    if _NEEDS_ESCAPE.search(value) is None:   # one C scan; the common case
        return b'"' + value.encode() + b'"'
    return ('"' + value.translate(_ESCAPES) + '"').encode("utf-8")


def raw(value: bytes) -> bytes:
    """A stored raw JSON value as inserted into a push: verbatim minus line feeds."""
    return value.replace(b"\n", b"") if b"\n" in value else value


def _obj(members: list[bytes]) -> bytes:
    return b"{" + b",".join(members) + b"}"


def tags_object(tags: Mapping[str, str] | None) -> bytes | None:
    """Tags map as a JSON object (insertion order), None when empty."""
    if not tags:
        return None
    return _obj([json_string(k) + b":" + json_string(v) for k, v in tags.items()])


def client_info(user: str, client: str, conn_info: bytes | None, chan_info: bytes | None) -> bytes:
    """ClientInfo (02 §A.3): user and client always present."""
    members = [b'"user":' + json_string(user), b'"client":' + json_string(client)]
    if conn_info:
        members.append(b'"conn_info":' + raw(conn_info))
    if chan_info:
        members.append(b'"chan_info":' + raw(chan_info))
    return _obj(members)


def publication(data: bytes, offset: int = 0, tags: bytes | None = None, info: bytes | None = None) -> bytes:
    """Publication payload: data, info, offset (omitted when 0), tags (pre-encoded object)."""
    out = b'{"data":' + raw(data)
    if info:
        out += b',"info":' + info
    if offset:
        out += b',"offset":' + str(offset).encode()
    if tags:
        out += b',"tags":' + tags
    return out + b"}"


def envelope_v1(push_type: int, channel: bytes | None, payload: bytes) -> bytes:
    """v1 push: type (omitted for publications), channel (pre-encoded JSON string), data."""
    out = b"{"
    if push_type:
        out += b'"type":' + str(push_type).encode() + b","
    if channel is not None:
        out += b'"channel":' + channel + b","
    return out + b'"data":' + payload + b"}"


def envelope_v2(push_type: int, channel: bytes | None, payload: bytes) -> bytes:
    """v2 push: optional channel and exactly one payload key named after the kind."""
    out = b"{"
    if channel is not None:
        out += b'"channel":' + channel + b","
    return out + b'"' + V2_KEYS[push_type].encode() + b'":' + payload + b"}"


def envelope(v2: bool, push_type: int, channel: bytes | None, payload: bytes) -> bytes:
    return envelope_v2(push_type, channel, payload) if v2 else envelope_v1(push_type, channel, payload)


def pub_push(v2: bool, channel: str, data: bytes, offset: int = 0,
             tags: Mapping[str, str] | None = None) -> bytes:
    """A complete publication push: what every subscriber of `channel` receives."""
    return envelope(v2, PUBLICATION, json_string(channel), publication(data, offset, tags_object(tags)))


def disconnect_payload(code: int, reason: str, reconnect: bool, v2: bool) -> bytes:
    """Disconnect payload; v2 never carries reconnect (02 §B.1)."""
    out = b'{"code":' + str(code).encode() + b',"reason":' + json_string(reason)
    if reconnect and not v2:
        out += b',"reconnect":true'
    return out + b"}"


def disconnect_push(v2: bool, code: int, reason: str, reconnect: bool) -> bytes:
    return envelope(v2, DISCONNECT, None, disconnect_payload(code, reason, reconnect, v2))


def subscribe_result(*, recoverable: bool = False, epoch: str = "", publications: list[bytes] | None = None,
                     recovered: bool = False, offset: int = 0, positioned: bool = False,
                     data: bytes | None = None, was_recovering: bool = False) -> bytes:
    """SubscribeResult (02 §A.3, values of Connect.subs); expires/ttl never set at connect."""
    members = []
    if recoverable:
        members.append(b'"recoverable":true')
    if epoch:
        members.append(b'"epoch":' + json_string(epoch))
    if publications:
        members.append(b'"publications":[' + b",".join(publications) + b"]")
    if recovered:
        members.append(b'"recovered":true')
    if offset:
        members.append(b'"offset":' + str(offset).encode())
    if positioned:
        members.append(b'"positioned":true')
    if data:
        members.append(b'"data":' + raw(data))
    if was_recovering:
        members.append(b'"was_recovering":true')
    return _obj(members)


def subscribe_payload(*, recoverable: bool = False, epoch: str = "", offset: int = 0,
                      positioned: bool = False, data: bytes | None = None) -> bytes:
    """Subscribe push payload (type 5)."""
    members = []
    if recoverable:
        members.append(b'"recoverable":true')
    if epoch:
        members.append(b'"epoch":' + json_string(epoch))
    if offset:
        members.append(b'"offset":' + str(offset).encode())
    if positioned:
        members.append(b'"positioned":true')
    if data:
        members.append(b'"data":' + raw(data))
    return _obj(members)


def connect_push(v2: bool, *, client: str, version: str, subs: Mapping[str, bytes] | None = None,
                 expires: bool = False, ttl: int = 0, ping: int = 0, session: str = "",
                 data: bytes | None = None) -> bytes:
    """Connect push (type 6); key order client, version, data, subs, expires, ttl, ping, session."""
    members = [b'"client":' + json_string(client), b'"version":' + json_string(version)]
    if data:
        members.append(b'"data":' + raw(data))
    if subs:
        members.append(b'"subs":' + _obj([json_string(ch) + b":" + res for ch, res in subs.items()]))
    if expires:
        members.append(b'"expires":true')
    if ttl:
        members.append(b'"ttl":' + str(ttl).encode())
    if ping:
        members.append(b'"ping":' + str(ping).encode())
    if session:
        members.append(b'"session":' + json_string(session))
    return envelope(v2, CONNECT, None, _obj(members))


def refresh_push(v2: bool, expires: bool, ttl: int) -> bytes:
    members = []
    if expires:
        members.append(b'"expires":true')
    if ttl:
        members.append(b'"ttl":' + str(ttl).encode())
    return envelope(v2, REFRESH, None, _obj(members))


def unsubscribe_push(v2: bool, channel: str, code: int = 2000, reason: str = "server unsubscribe") -> bytes:
    payload = b'{"code":' + str(code).encode() + b',"reason":' + json_string(reason) + b"}"
    return envelope(v2, UNSUBSCRIBE, json_string(channel), payload)


def join_leave_push(v2: bool, push_type: int, channel: str, info: bytes) -> bytes:
    """Join (1) or Leave (2) push carrying a pre-encoded ClientInfo."""
    return envelope(v2, push_type, json_string(channel), b'{"info":' + info + b"}")


def message_push(v2: bool, data: bytes) -> bytes:
    return envelope(v2, MESSAGE, None, b'{"data":' + raw(data) + b"}")


def frame_text(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame (RFC 6455 §5.2) holding `payload`."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload
