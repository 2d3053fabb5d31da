"""Sans-I/O decoding of the unidirectional connect request (spec 01 §3).

Reproduces the reference's Go-decoder behaviour: keys match case-insensitively,
only the first JSON value counts (trailing bytes are ignored), `null` is an
empty request, a `null` subscription is `{}`, and a known field of the wrong
JSON type is a parse error (the transport then closes silently).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from uniws import jsonexact

_U64_MAX = (1 << 64) - 1


class ConnectRequestError(ValueError):
    """The first message is not a valid ConnectRequest: close silently."""


@dataclass(slots=True)
class SubHint:
    """A client's recovery hint for one channel of the connect `subs`."""

    recover: bool = False
    offset: int = 0
    epoch: str = ""


@dataclass(slots=True)
class ConnectRequest:
    token: str = ""
    data: bytes | None = None          # compact raw JSON, only for a connect proxy
    name: str = ""
    version: str = ""
    subs: dict[str, SubHint] = field(default_factory=dict)
    resume: str = ""                   # a resume cursor (uni_websocket_resume), verified at connect


def _first_json_value(payload: bytes) -> object:
    """The first JSON value of `payload`; whatever follows it is ignored."""
    if not jsonexact.may_hold_huge_integer(payload):
        try:
            return orjson.loads(payload)         # the common case: exactly one value
        except orjson.JSONDecodeError:
            pass
    text = payload.decode("utf-8", "replace").lstrip(" \t\r\n")
    if not text:
        raise ConnectRequestError("empty connect request")
    try:
        value, _end = jsonexact.raw_decode(text)
    except ValueError as exc:                    # nested too deeply included
        raise ConnectRequestError(f"malformed JSON: {exc}") from None
    return value


def compact_json(value: object) -> bytes:
    """Compact JSON bytes of a decoded value (exact big integers)."""
    try:
        return jsonexact.dumps(value)
    except ValueError as exc:
        raise ConnectRequestError(f"data: {exc}") from None


def _lower_keys(obj: dict) -> dict:
    return {k.lower(): v for k, v in obj.items()}


def _string(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConnectRequestError(f"{what} must be a string")
    return value


def _sub_hint(value: object, channel: str) -> SubHint:
    if value is None:                            # the reference panics here; we read it as {}
        return SubHint()
    if not isinstance(value, dict):
        raise ConnectRequestError(f"subs.{channel} must be an object")
    if not value:                                # `{}`, the usual hint: nothing to read
        return SubHint()
    fields = _lower_keys(value)
    hint = SubHint()
    recover = fields.get("recover")
    if recover is not None:
        if not isinstance(recover, bool):
            raise ConnectRequestError(f"subs.{channel}.recover must be a boolean")
        hint.recover = recover
    offset = fields.get("offset")
    if offset is not None:
        if type(offset) is not int or not 0 <= offset <= _U64_MAX:
            raise ConnectRequestError(f"subs.{channel}.offset must be an unsigned integer")
        hint.offset = offset
    hint.epoch = _string(fields.get("epoch"), f"subs.{channel}.epoch")
    return hint


def parse_connect_request(payload: bytes) -> ConnectRequest:
    """Decode the first client message (or `cf_connect` value) into a ConnectRequest."""
    if not payload.strip():
        raise ConnectRequestError("empty connect request")
    value = _first_json_value(payload)
    if value is None:
        return ConnectRequest()
    if not isinstance(value, dict):
        raise ConnectRequestError("connect request must be a JSON object")
    fields = _lower_keys(value)
    request = ConnectRequest(
        token=_string(fields.get("token"), "token"),
        name=_string(fields.get("name"), "name"),
        version=_string(fields.get("version"), "version"),
        resume=_string(fields.get("resume"), "resume"),
    )
    if "data" in fields and fields["data"] is not None:
        request.data = compact_json(fields["data"])
    subs = fields.get("subs")
    if subs is not None:
        if not isinstance(subs, dict):
            raise ConnectRequestError("subs must be an object")
        request.subs = {channel: _sub_hint(hint, channel) for channel, hint in subs.items()}
    return request
