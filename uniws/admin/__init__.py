"""The admin web interface (08 §5): static UI, `POST <prefix>/admin/auth`, `POST <prefix>/admin/api`.

The UI's files ship in this package (`static/`; no build step, no CDN) and are read once
at start; with `admin_web_path` they are read from that directory on each request
instead (an operator's own UI, edited without a restart). The admin API is the v3 server
API (06 §2) behind the admin token instead of the API key: an `Api` of its own whose key
check is switched off, reached only after the token check here.
"""

from __future__ import annotations

import hmac
import mimetypes
import os
import sys
from importlib import resources
from urllib.parse import parse_qsl

import orjson

from ..api import Api
from .auth import form_field, make_token, token_valid

_INDEX = "index.html"
LOGIN_BODY_MAX = 8192          # bytes of a POST to /admin/auth: a password form needs far less
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
          ".ico": "image/x-icon", ".json": "application/json"}
_SECURITY = [("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
             ("Referrer-Policy", "no-referrer")]
# The built-in UI loads nothing from elsewhere and has no inline script or style (an
# operator's own UI from admin_web_path may, so it does not get this).
_CSP = [("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")]


def _empty(status: int):
    return status, [], b""


def _text(status: int, text: str):
    return status, [("Content-Type", "text/plain; charset=utf-8")], text.encode()


def _content_type(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    return _TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def embedded_files() -> dict[str, bytes]:
    """The built-in UI: file name -> bytes (found through the package, installed or not)."""
    root = resources.files(__name__) / "static"
    return {entry.name: entry.read_bytes() for entry in root.iterdir() if entry.is_file()}


class AdminHandler:
    def __init__(self, node, cfg) -> None:
        self.node = node
        prefix = cfg.admin_handler_prefix.rstrip("/")
        self.prefix = prefix
        self.base = prefix + "/"
        self.auth_path = prefix + "/admin/auth"
        self.api_path = prefix + "/admin/api"
        self.password = cfg.admin_password
        self.secret = cfg.admin_secret
        self.insecure = cfg.admin_insecure
        self.web_path = cfg.admin_web_path
        self.files = {} if self.web_path else embedded_files()
        # The v3 API with its key check off: the token check below stands in front of it.
        self.api = Api(node, api_key="", api_insecure=True, handler_prefix=self.api_path,
                       error_mode=cfg.api_error_mode)

    # -- routing (the subtree `<prefix>/` goes to the UI: every path no other handler claims) --

    def matches(self, path: str) -> bool:
        return path.startswith(self.base) or (bool(self.prefix) and path == self.prefix)

    def body_limit(self, path: str) -> int:
        """A login form is small: a client without credentials cannot make a worker buffer
        more (413 on the head, or as soon as a chunked body grows past it)."""
        if path == self.api_path:
            return sys.maxsize          # after the token check: the front's limit alone
        return LOGIN_BODY_MAX if path == self.auth_path else 0

    def head_check(self, method, path, query, headers):
        if path == self.auth_path or path == self.api_path:
            if method != "POST":
                return _empty(405)
            if path == self.api_path and not self._authorized(query, headers):
                return _empty(401)
            return None
        if method not in ("GET", "HEAD"):
            return _empty(405)
        return None

    async def handle(self, method, path, query, headers, body, dispatched=None):
        if path == self.api_path:
            return await self.api.handle(method, path, query, headers, body, dispatched=dispatched)
        if dispatched is not None:
            dispatched()
        if path == self.auth_path:
            return self._login(headers, body)
        response = self._static(path)
        if method == "HEAD":
            status, hdrs, content = response
            return status, hdrs, b""
        return response

    # -- login and token ------------------------------------------------------------------

    def _login(self, headers, body: bytes):
        if self.insecure:
            return 200, [("Content-Type", "application/json")], b'{"token":"insecure"}\n'
        if not self.password or not self.secret:
            return _text(400, "Bad Request\n")
        password = form_field(headers.get("content-type", ""), body, "password")
        if password is None or not _same(password, self.password):
            return _text(400, "Bad Request\n")
        return 200, [("Content-Type", "application/json")], orjson.dumps({"token": make_token(self.secret)}) + b"\n"

    def _authorized(self, query: str, headers) -> bool:
        if self.insecure:
            return True
        if not self.secret:
            return False
        header = headers.get("authorization")
        if header is not None:
            parts = header.split()
            return len(parts) == 2 and parts[0].lower() == "token" and token_valid(self.secret, parts[1])
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == "token":
                return token_valid(self.secret, value)
        return False

    # -- static files ---------------------------------------------------------------------

    def _static(self, path: str):
        if path == self.prefix:             # `/admin` -> `/admin/`: the UI derives its URLs from it
            return 301, [("Location", self.base)], b""
        name = path[len(self.base):] or _INDEX
        content = self._file(name)
        if content is None:
            return _text(404, "404 page not found\n")
        headers = [("Content-Type", _content_type(name)), ("Cache-Control", "no-cache"), *_SECURITY,
                   *(() if self.web_path else _CSP)]
        return 200, headers, content

    def _file(self, name: str) -> bytes | None:
        if not self.web_path:
            return self.files.get(name)
        parts = name.split("/")
        if any(part in ("", ".", "..") or "\\" in part or "\0" in part for part in parts):
            return None
        full = os.path.join(self.web_path, *parts)
        if os.path.isdir(full):
            full = os.path.join(full, _INDEX)
        try:
            with open(full, "rb") as file:
                return file.read()
        except OSError:
            return None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))
