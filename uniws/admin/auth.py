"""Admin login (08 §5.2-5.3): the password form and the HMAC-signed token.

Token: `<unix seconds>.<hex HMAC-SHA256 of those digits under admin_secret>`, valid 30
days. Altered digits or signature fail the HMAC, and a new secret invalidates every
token signed with the old one. The form parser reads the `password` field from an
`application/x-www-form-urlencoded` or `multipart/form-data` body (the UI sends multipart).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import parse_qsl

TOKEN_TTL = 30 * 24 * 3600
_CLOCK_SKEW = 60                 # a token "from the future" by more than this is refused


def make_token(secret: str, now: float | None = None) -> str:
    stamp = str(int(time.time() if now is None else now))
    return f"{stamp}.{_sign(secret, stamp)}"


def token_valid(secret: str, token: str, now: float | None = None) -> bool:
    if not secret:
        return False
    stamp, dot, signature = token.partition(".")
    if not dot or not stamp.isdigit() or not stamp.isascii() or len(stamp) > 12:
        return False
    if not hmac.compare_digest(signature.encode("utf-8", "surrogatepass"), _sign(secret, stamp).encode()):
        return False
    age = (time.time() if now is None else now) - int(stamp)
    return -_CLOCK_SKEW <= age <= TOKEN_TTL


def _sign(secret: str, stamp: str) -> str:
    return hmac.new(secret.encode("utf-8", "surrogatepass"), stamp.encode(), hashlib.sha256).hexdigest()


def form_field(content_type: str, body: bytes, name: str) -> str | None:
    """The first value of field `name` in a urlencoded or multipart body; None when absent
    or the body is not a form."""
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media == "multipart/form-data":
        return _multipart_field(params, body, name)
    if media in ("application/x-www-form-urlencoded", ""):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
        for key, value in parse_qsl(text, keep_blank_values=True):
            if key == name:
                return value
    return None


def _param(params: str, key: str) -> str | None:
    for part in params.split(";"):
        k, eq, v = part.strip().partition("=")
        if eq and k.strip().lower() == key:
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            return v
    return None


def _multipart_field(params: str, body: bytes, name: str) -> str | None:
    boundary = _param(params, "boundary")
    if not boundary or len(boundary) > 200:
        return None
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break                                   # the closing delimiter
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        for line in head.split(b"\r\n"):
            key, colon, value = line.partition(b":")
            if colon and key.strip().lower() == b"content-disposition":
                text = value.decode("latin-1")
                kind, _, dparams = text.partition(";")
                if kind.strip().lower() == "form-data" and _param(dparams, "name") == name:
                    if content.endswith(b"\r\n"):
                        content = content[:-2]
                    try:
                        return content.decode("utf-8")
                    except UnicodeDecodeError:
                        return None
    return None
