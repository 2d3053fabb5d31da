"""Connection JWT verification (spec 04 §1-§6) and HS256 token generation (spec 04 §7.1).

hmac/cryptography do the crypto (keys parsed once per verifier); the token
structure and the claims are checked here, step by step, so that the *first* failing step of spec 04 §2 decides the
error kind and text (structure -> signature -> claim types -> time -> aud/iss ->
subs/channels -> connection expiration -> connection info).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from uniws import jsonexact

__all__ = [
    "TokenError",
    "TokenSub",
    "Credentials",
    "TokenVerifier",
    "generate_hs256_token",
    "parse_json",
    "raw_json_or_base64",
    "subs_from_json",
]

# Token error kinds (mapped by the connect handler to 3500 / 3005 / 3004).
INVALID = "invalid"
EXPIRED = "expired"
INTERNAL = "internal"

# (signing input, signature) -> signature is valid
SignatureCheck = Callable[[bytes, bytes], bool]

_HMAC_DIGESTS: Mapping[str, str] = MappingProxyType({"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"})
_RSA_HASHES: Mapping[str, type[hashes.HashAlgorithm]] = MappingProxyType(
    {"RS256": hashes.SHA256, "RS384": hashes.SHA384, "RS512": hashes.SHA512}
)
# Only the algorithm matching the key's curve is enabled (spec 04 §1).
_ECDSA_BY_CURVE: Mapping[str, tuple[str, type[hashes.HashAlgorithm]]] = MappingProxyType(
    {
        "secp256r1": ("ES256", hashes.SHA256),
        "secp384r1": ("ES384", hashes.SHA384),
        "secp521r1": ("ES512", hashes.SHA512),
    }
)
# Anything outside this set (none, PS*, EdDSA, lower-case names...) is "unsupported".
_KNOWN_ALGORITHMS = frozenset(_HMAC_DIGESTS) | frozenset(_RSA_HASHES) | {"ES256", "ES384", "ES512"}

_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_BASE64URL_TOKEN = re.compile(r"[A-Za-z0-9_\-.]+")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_FORMAT_NOT_VALID = "invalid token: token format is not valid"
# The claims TokenVerifier's short path reads; a token with any other (subs, b64info...) takes
# the full path.
_SHORT_CLAIMS = frozenset(("sub", "exp", "nbf", "iat", "jti", "iss", "aud", "channels", "expire_at", "info", "meta"))
_HEADER_CACHE_SIZE = 16
_OVERRIDE_KEYS = ("presence", "join_leave", "position", "recover")


# ---------------------------------------------------------------------------
# Public types


class TokenError(Exception):
    """A token rejected by verification; `kind` selects the disconnect code."""

    def __init__(
        self,
        kind: str,
        reason: str,
        *,
        detail: str = "",
        alg: str | None = None,
        claims: str | None = None,
        structural: bool = False,
    ) -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.kind = kind  # "invalid" -> 3500, "expired" -> 3005, "internal" -> 3004
        self.reason = reason  # checktoken cause text
        self.alg = alg
        self.claims = claims
        self.structural = structural

    def __repr__(self) -> str:
        return f"TokenError({self.kind!r}, {str(self)!r})"


@dataclass(slots=True)
class TokenSub:
    """One server-side channel from the token (`subs` entry or `channels` item)."""

    info: bytes | None
    data: bytes | None
    presence: bool | None = None
    join_leave: bool | None = None
    position: bool | None = None
    recover: bool | None = None


@dataclass(slots=True)
class Credentials:
    """Who a connection is: from a connection token or from the connect proxy's `result`."""

    user: str
    expire_at: int
    info: bytes | None
    subs: dict[str, TokenSub]
    meta: bytes | None
    claims: str
    data: bytes | None = None     # connect push `data` (connect proxy only)
    client_subs: bool = True      # client-requested `subs` may add channels (token: yes, 04 §5; proxy: no, 08 §2.3)


# ---------------------------------------------------------------------------
# Internal representations


@dataclass(slots=True)
class _ParsedToken:
    alg: str
    signing_input: bytes
    signature: bytes
    claims_json: bytes
    claims_text: str


@dataclass(slots=True)
class _SubClaim:
    """A `subs` entry after type checking; base64 is decoded later (spec 04 §2 step 7)."""

    info: Any
    b64info: str
    data: Any
    b64data: str
    overrides: dict[str, bool | None]


@dataclass(slots=True)
class _Claims:
    sub: str
    exp: int | float | None
    nbf: int | float | None
    aud: tuple[str, ...] | None
    iss: str | None
    channels: list[str]
    subs: dict[str, _SubClaim]
    expire_at: int | None
    b64info: str
    info: Any
    meta: Any


# ---------------------------------------------------------------------------
# JSON helpers


def _parse_json(raw: bytes) -> Any:
    """Decode JSON; ValueError when invalid. Big integers keep their exact value. Stricter
    than the API's payloads: invalid UTF-8 and lone surrogates are refused."""
    if not jsonexact.may_hold_huge_integer(raw):
        return orjson.loads(raw)
    text = raw.decode("utf-8")
    value, end = jsonexact.raw_decode(text, jsonexact.skip_whitespace(text, 0))
    if jsonexact.skip_whitespace(text, end) != len(text):
        raise ValueError("trailing data after JSON value")
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")   # orjson refuses lone surrogates too
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    return value


def _compact_json(value: Any, path: str) -> bytes:
    """Compact JSON text of a decoded value, embedded verbatim in pushes later."""
    try:
        return jsonexact.dumps(value)
    except ValueError:  # valid JSON we cannot re-encode: a server-side failure
        raise TokenError(INTERNAL, f"{path}: value nested too deeply") from None


def _is_valid_json(raw: bytes) -> bool:
    try:
        _parse_json(raw)
    except ValueError:
        return False
    return True


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    if type(value) in (int, float):
        return "number"
    if type(value) is str:
        return "string"
    if type(value) is list:
        return "array"
    return "object"


# ---------------------------------------------------------------------------
# Base64


def _b64url_decode(part: str) -> bytes:
    """Unpadded base64url; the alphabet was already checked for the whole token."""
    if len(part) % 4 == 1:
        raise ValueError("bad base64url length")
    # binascii directly: about 3x faster than base64.urlsafe_b64decode on the hot path.
    return binascii.a2b_base64(part.encode("ascii").translate(_URLSAFE_TO_STANDARD) + b"=" * (-len(part) % 4))


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64std_decode(text: str) -> bytes:
    """Standard base64 with padding (Go's StdEncoding); ValueError when malformed."""
    if len(text) % 4:  # strict_mode alone still accepts "YWJj="
        raise ValueError("base64 length is not a multiple of 4")
    return binascii.a2b_base64(text, strict_mode=True)


# ---------------------------------------------------------------------------
# Error factories


def _invalid_token(what: str) -> TokenError:
    return TokenError(INVALID, f"invalid token: {what}")


def _internal_error(what: str) -> TokenError:
    return TokenError(INTERNAL, what)


def _structural(detail: str, alg: str | None = None, claims: str | None = None) -> TokenError:
    return TokenError(INVALID, _FORMAT_NOT_VALID, detail=detail, alg=alg, claims=claims, structural=True)


# ---------------------------------------------------------------------------
# Step 1: structure


def _decode_header_alg(encoded: str) -> str:
    try:
        header = _parse_json(_b64url_decode(encoded))
    except ValueError:
        raise _structural("header is not base64url JSON") from None
    if type(header) is not dict:
        raise _structural("header is not a JSON object")
    alg = header.get("alg")
    if type(alg) is not str:
        raise _structural("header has no string alg")
    for name in ("typ", "cty", "kid"):
        if header.get(name) is not None and type(header[name]) is not str:
            raise _structural(f"header {name} is not a string", alg)
    return alg


def _parse_token(token: str) -> _ParsedToken:
    if not token.startswith("eyJ"):
        raise _structural("token does not start with eyJ")
    if not _BASE64URL_TOKEN.fullmatch(token):
        raise _structural("token has characters outside base64url")
    first_dot, last_dot = token.find("."), token.rfind(".")
    if first_dot < 0 or first_dot == last_dot:
        raise _structural("token does not have three parts")
    alg = _decode_header_alg(token[:first_dot])
    try:
        claims_json = _b64url_decode(token[first_dot + 1 : last_dot])
    except ValueError:  # also a payload holding a dot (more than two dots)
        raise _structural("payload is not base64url", alg) from None
    claims_text = claims_json.decode("utf-8", "replace")
    try:
        signature = _b64url_decode(token[last_dot + 1 :])
    except ValueError:
        raise _structural("signature is not base64url", alg, claims_text) from None
    return _ParsedToken(alg, token[:last_dot].encode("ascii"), signature, claims_json, claims_text)


# ---------------------------------------------------------------------------
# Step 2: keys and signature checks (built once per verifier)


_IPAD = bytes(byte ^ 0x36 for byte in range(256))   # translate tables: key XOR ipad / opad (RFC 2104)
_OPAD = bytes(byte ^ 0x5C for byte in range(256))


def _hmac_check(secret: bytes, digest_name: str) -> SignatureCheck:
    # RFC 2104 with the keyed inner and outer hash states made once: each token then costs two
    # state copies and two short hashes. hmac.digest fetches the algorithm and sets the key up
    # again on every call (OpenSSL 3), about 3x the time.
    block = hashlib.new(digest_name).block_size
    key = secret if len(secret) <= block else hashlib.new(digest_name, secret).digest()
    key = key.ljust(block, b"\0")
    inner_keyed = hashlib.new(digest_name, key.translate(_IPAD))
    outer_keyed = hashlib.new(digest_name, key.translate(_OPAD))

    def check(signing_input: bytes, signature: bytes) -> bool:
        inner = inner_keyed.copy()
        inner.update(signing_input)
        outer = outer_keyed.copy()
        outer.update(inner.digest())
        return hmac.compare_digest(outer.digest(), signature)

    return check


def _rsa_check(key: rsa.RSAPublicKey, hash_type: type[hashes.HashAlgorithm]) -> SignatureCheck:
    pkcs1v15, hash_algorithm = padding.PKCS1v15(), hash_type()

    def check(signing_input: bytes, signature: bytes) -> bool:
        try:
            key.verify(signature, signing_input, pkcs1v15, hash_algorithm)
        except (InvalidSignature, ValueError):
            return False
        return True

    return check


def _ecdsa_check(key: ec.EllipticCurvePublicKey, hash_type: type[hashes.HashAlgorithm]) -> SignatureCheck:
    half = (key.curve.key_size + 7) // 8
    ecdsa = ec.ECDSA(hash_type())

    def check(signing_input: bytes, signature: bytes) -> bool:
        # JWS carries raw R||S; cryptography wants DER.
        if len(signature) != 2 * half:
            return False
        r = int.from_bytes(signature[:half], "big")
        s = int.from_bytes(signature[half:], "big")
        try:
            key.verify(encode_dss_signature(r, s), signing_input, ecdsa)
        except (InvalidSignature, ValueError):
            return False
        return True

    return check


def _load_pem_public_key(pem: str) -> Any:
    """First PEM block: SubjectPublicKeyInfo or X.509 certificate (PKCS#1 is refused)."""
    block = _PEM_BLOCK.search(pem)
    if block is None:
        raise ValueError("key must be PEM encoded")
    label, block_bytes = block.group(1), block.group(0).encode("ascii")
    try:
        if label == "PUBLIC KEY":
            return serialization.load_pem_public_key(block_bytes)
        if label == "CERTIFICATE":
            return x509.load_pem_x509_certificate(block_bytes).public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    raise ValueError(f"unsupported PEM block type {label!r} (expected PUBLIC KEY or CERTIFICATE)")


def _rsa_checks(pem: str) -> dict[str, SignatureCheck]:
    try:
        key = _load_pem_public_key(pem)
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("not an RSA public key")
    except ValueError as exc:
        raise ValueError(f"error parsing RSA public key: {exc}") from None
    return {alg: _rsa_check(key, hash_type) for alg, hash_type in _RSA_HASHES.items()}


def _ecdsa_checks(pem: str) -> dict[str, SignatureCheck]:
    try:
        key = _load_pem_public_key(pem)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("not an ECDSA public key")
        if key.curve.name not in _ECDSA_BY_CURVE:
            raise ValueError(f"unsupported curve {key.curve.name}")
    except ValueError as exc:
        raise ValueError(f"error parsing ECDSA public key: {exc}") from None
    alg, hash_type = _ECDSA_BY_CURVE[key.curve.name]
    return {alg: _ecdsa_check(key, hash_type)}


def _hmac_checks(secret: str) -> dict[str, SignatureCheck]:
    key = secret.encode("utf-8")
    return {alg: _hmac_check(key, digest) for alg, digest in _HMAC_DIGESTS.items()}


# ---------------------------------------------------------------------------
# Step 3: strict claim types


def _type_error(path: str, expected: str, value: Any) -> TokenError:
    return _invalid_token(f"{path}: expected {expected}, got {_json_type(value)}")


def _optional_string(doc: dict, name: str, path: str | None = None) -> str | None:
    value = doc.get(name)
    if value is None or type(value) is str:
        return value
    raise _type_error(path or name, "string", value)


def _numeric_date(value: Any, name: str, allow_string: bool) -> int | float | None:
    """NumericDate: a JSON number (exp: also a string holding one), within int64 seconds."""
    if value is None:
        return None
    if allow_string and type(value) is str:
        value = _number_from_string(value, name)
    elif type(value) not in (int, float):
        raise _type_error(name, "number", value)
    # Bounded so that expire_at/ttl stay 64-bit integers downstream.
    if not _INT64_MIN <= value <= _INT64_MAX:  # also rejects "1e400" (infinity)
        raise _invalid_token(f"{name}: time value out of range")
    return value


def _number_from_string(text: str, name: str) -> int | float:
    """A string holding a JSON number literal (Go json.Number semantics)."""
    if len(text) > 64 or not _JSON_NUMBER.fullmatch(text):
        raise _invalid_token(f"{name}: string is not a number")
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _audience(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if type(value) is str:
        return (value,)
    if type(value) is list and all(type(item) is str for item in value):
        return tuple(value)
    raise _type_error("aud", "string or array of strings", value)


def _all_strings(items: list) -> bool:
    for item in items:
        if type(item) is not str:
            return False
    return True


def _string_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if type(value) is list and all(type(item) is str for item in value):
        return value
    raise _type_error(name, "array of strings", value)


def _expire_at(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        raise _type_error("expire_at", "integer", value)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise _invalid_token("expire_at: integer out of range")
    return value


def _override(value: Any, path: str) -> bool | None:
    """`{"value": bool}`; missing/null -> None (namespace default); `{}` -> False."""
    if value is None:
        return None
    if type(value) is not dict:
        raise _type_error(path, "object", value)
    flag = value.get("value")
    if flag is None:
        return False
    if type(flag) is not bool:
        raise _type_error(path + ".value", "boolean", flag)
    return flag


def _sub_claim(channel: str, options: Any) -> _SubClaim:
    path = f"subs.{channel}"
    if options is None:
        options = {}
    elif type(options) is not dict:
        raise _type_error(path, "object", options)
    overrides_doc = options.get("override")
    if overrides_doc is None:
        overrides_doc = {}
    elif type(overrides_doc) is not dict:
        raise _type_error(path + ".override", "object", overrides_doc)
    return _SubClaim(
        info=options.get("info"),
        b64info=_optional_string(options, "b64info", path + ".b64info") or "",
        data=options.get("data"),
        b64data=_optional_string(options, "b64data", path + ".b64data") or "",
        overrides={
            key: _override(overrides_doc.get(key), f"{path}.override.{key}") for key in _OVERRIDE_KEYS
        },
    )


def _subs(value: Any) -> dict[str, _SubClaim]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise _type_error("subs", "object", value)
    return {channel: _sub_claim(channel, options) for channel, options in value.items()}


def _decode_claims(claims_json: bytes) -> _Claims:
    try:
        doc = _parse_json(claims_json)
    except ValueError:
        raise _invalid_token("claims are not valid JSON") from None
    if type(doc) is not dict:
        raise _type_error("claims", "object", doc)
    _numeric_date(doc.get("iat"), "iat", allow_string=False)  # parsed, not checked
    _optional_string(doc, "jti")
    return _Claims(
        sub=_optional_string(doc, "sub") or "",
        exp=_numeric_date(doc.get("exp"), "exp", allow_string=True),
        nbf=_numeric_date(doc.get("nbf"), "nbf", allow_string=False),
        aud=_audience(doc.get("aud")),
        iss=_optional_string(doc, "iss"),
        channels=_string_list(doc.get("channels"), "channels"),
        subs=_subs(doc.get("subs")),
        expire_at=_expire_at(doc.get("expire_at")),
        b64info=_optional_string(doc, "b64info") or "",
        info=doc.get("info"),
        meta=doc.get("meta"),
    )


# ---------------------------------------------------------------------------
# Steps 4-9


def _check_time(claims: _Claims, now: float) -> None:
    # Strict comparisons, no leeway: exp == now is already expired.
    if claims.exp is not None and not claims.exp > now:
        raise TokenError(EXPIRED, "token expired", detail="exp is not in the future")
    if claims.nbf is not None and not claims.nbf < now:
        raise TokenError(EXPIRED, "token expired", detail="nbf is not in the past")


def _raw_or_b64(value: Any, b64: str, path: str, bad_b64: Callable[[str], TokenError]) -> bytes | None:
    """Non-empty base64 (field `path`) wins over the JSON value; None when both are absent."""
    if b64:
        try:
            return _b64std_decode(b64)
        except ValueError:
            raise bad_b64(f"{path}: illegal base64 data") from None
    return None if value is None else _compact_json(value, path.replace("b64", ""))


def _token_sub(channel: str, claim: _SubClaim) -> TokenSub:
    # Bad base64 inside subs is an invalid token (spec 04 §2 step 7).
    return TokenSub(
        info=_raw_or_b64(claim.info, claim.b64info, f"subs.{channel}.b64info", _invalid_token),
        data=_raw_or_b64(claim.data, claim.b64data, f"subs.{channel}.b64data", _invalid_token),
        **claim.overrides,
    )


def _token_subs(claims: _Claims) -> dict[str, TokenSub]:
    if claims.subs:  # a non-empty subs object wins; channels are then ignored
        return {channel: _token_sub(channel, claim) for channel, claim in claims.subs.items()}
    return {channel: TokenSub(info=None, data=None) for channel in claims.channels}


def _connection_expire_at(claims: _Claims) -> int:
    """Spec 04 §6.1: expire_at claim (<= 0: never), else exp, else never (0)."""
    if claims.expire_at is not None:
        return max(claims.expire_at, 0)
    if claims.exp is not None:
        return math.floor(claims.exp)
    return 0


def _check_subs_data_is_json(subs: dict[str, TokenSub]) -> None:
    # Decoded b64data is embedded raw in the connect push, which then cannot be encoded (03 §5).
    for channel, sub in subs.items():
        if sub.data is not None and not _is_valid_json(sub.data):
            raise TokenError(INTERNAL, f"subs.{channel}.b64data: data is not valid JSON")


# ---------------------------------------------------------------------------
# The same rules for the connect proxy's `result` (spec 08 §2.3)

parse_json = _parse_json


def raw_json_or_base64(value: Any, b64: Any, path: str) -> bytes | None:
    """An (info, b64info) or (data, b64data) pair: non-empty base64 wins; TokenError when malformed."""
    if b64 is not None and type(b64) is not str:
        raise _type_error(path, "string", b64)
    return _raw_or_b64(value, b64 or "", path, _internal_error)


def subs_from_json(value: Any) -> dict[str, TokenSub]:
    """A `subs` map with the token's schema (04 §3); TokenError when malformed."""
    subs = {channel: _token_sub(channel, claim) for channel, claim in _subs(value).items()}
    _check_subs_data_is_json(subs)
    return subs


# ---------------------------------------------------------------------------
# Verifier


class TokenVerifier:
    """Verifies connection tokens with keys parsed once at construction."""

    __slots__ = ("_checks", "_audience", "_issuer", "_header_checks")

    def __init__(
        self,
        hmac_secret_key: str = "",
        rsa_public_key: str = "",
        ecdsa_public_key: str = "",
        audience: str = "",
        issuer: str = "",
    ) -> None:
        checks: dict[str, SignatureCheck] = {}
        if hmac_secret_key:
            checks.update(_hmac_checks(hmac_secret_key))
        if rsa_public_key:
            checks.update(_rsa_checks(rsa_public_key))
        if ecdsa_public_key:
            checks.update(_ecdsa_checks(ecdsa_public_key))
        self._checks: Mapping[str, SignatureCheck] = MappingProxyType(checks)
        self._audience = audience
        self._issuer = issuer
        # Encoded JOSE header -> its algorithm's check: most deployments sign every token with
        # the same header, so it is decoded once, not per connect (see _verify_short).
        self._header_checks: dict[str, SignatureCheck] = {}

    @classmethod
    def from_config(cls, cfg: Any) -> "TokenVerifier":
        return cls(
            hmac_secret_key=cfg.token_hmac_secret_key or "",
            rsa_public_key=cfg.token_rsa_public_key or "",
            ecdsa_public_key=cfg.token_ecdsa_public_key or "",
            audience=cfg.token_audience or "",
            issuer=cfg.token_issuer or "",
        )

    def verify(self, token: str, now: float) -> Credentials:
        """Spec 04 §2 steps 1-9 (namespace existence is the caller's check)."""
        creds = self._verify_short(token, now)
        return creds if creds is not None else self._verify_full(token, now)

    def _verify_short(self, token: str, now: float) -> Credentials | None:
        """The usual token, accepted in a third of the full path's time, or None: the full path
        then decides (and words every refusal). Accepted here: exactly three parts, a known
        header with an enabled algorithm, a valid signature, and claims among _SHORT_CLAIMS of
        the plain types, valid now; the result equals what the full path returns for it."""
        first_dot = token.find(".")
        last_dot = token.rfind(".")
        if first_dot < 0 or token.find(".", first_dot + 1) != last_dot:
            return None
        header = token[:first_dot]
        check = self._header_checks.get(header) or self._learn_header(header)
        if check is None or not _BASE64URL_TOKEN.fullmatch(token):
            return None
        try:
            claims_json = _b64url_decode(token[first_dot + 1 : last_dot])
            signature = _b64url_decode(token[last_dot + 1 :])
            if not check(token[:last_dot].encode("ascii"), signature):
                return None
            doc = _parse_json(claims_json)
        except ValueError:
            return None
        if type(doc) is not dict or not _SHORT_CLAIMS.issuperset(doc):
            return None
        get = doc.get
        sub, exp, nbf, iat = get("sub"), get("exp"), get("nbf"), get("iat")
        if sub is None:
            sub = ""
        elif type(sub) is not str:
            return None
        if exp is not None and not (type(exp) is int and now < exp <= _INT64_MAX):
            return None
        if nbf is not None and not (type(nbf) is int and _INT64_MIN <= nbf < now):
            return None
        if iat is not None and not (type(iat) in (int, float) and _INT64_MIN <= iat <= _INT64_MAX):
            return None
        jti, iss, aud, channels, expire_at = get("jti"), get("iss"), get("aud"), get("channels"), get("expire_at")
        if not (jti is None or type(jti) is str) or not (iss is None or type(iss) is str):
            return None
        if self._issuer and iss != self._issuer:
            return None
        if aud is not None and type(aud) is not str and not (type(aud) is list and _all_strings(aud)):
            return None
        if self._audience and (aud is None or (aud != self._audience if type(aud) is str
                                               else self._audience not in aud)):
            return None
        if channels is not None and not (type(channels) is list and _all_strings(channels)):
            return None
        if expire_at is None:
            expire_at = 0 if exp is None else exp
        elif type(expire_at) is int and _INT64_MIN <= expire_at <= _INT64_MAX:
            expire_at = max(expire_at, 0)
        else:
            return None
        info, meta = get("info"), get("meta")
        try:
            info = None if info is None else _compact_json(info, "info")
            meta = None if meta is None else _compact_json(meta, "meta")
        except TokenError:
            return None
        subs = {channel: TokenSub(info=None, data=None) for channel in channels} if channels else {}
        return Credentials(sub, expire_at, info, subs, meta, claims_json.decode("utf-8", "replace"))

    def _learn_header(self, header: str) -> SignatureCheck | None:
        """The check of a well-formed header whose algorithm is enabled, remembered (a bounded
        number of them: made-up headers only cost their own decode); None otherwise."""
        if not header.startswith("eyJ") or not _BASE64URL_TOKEN.fullmatch(header):
            return None
        try:
            check = self._checks.get(_decode_header_alg(header))
        except TokenError:
            return None
        if check is not None:
            if len(self._header_checks) >= _HEADER_CACHE_SIZE:
                self._header_checks.clear()
            self._header_checks[header] = check
        return check

    def _verify_full(self, token: str, now: float) -> Credentials:
        """Every step of spec 04 §2 in order: the first failing one decides the refusal."""
        parsed = _parse_token(token)
        try:
            self._check_signature(parsed)
            claims = _decode_claims(parsed.claims_json)
            _check_time(claims, now)
            self._check_audience_and_issuer(claims)
            subs = _token_subs(claims)
            expire_at = _connection_expire_at(claims)
            # Bad top-level b64info is a generic error, not an invalid token (step 9).
            info = _raw_or_b64(claims.info, claims.b64info, "b64info", _internal_error)
            meta = None if claims.meta is None else _compact_json(claims.meta, "meta")
            _check_subs_data_is_json(subs)
        except TokenError as err:
            err.alg, err.claims = parsed.alg, parsed.claims_text
            raise
        return Credentials(claims.sub, expire_at, info, subs, meta, parsed.claims_text)

    def _check_signature(self, parsed: _ParsedToken) -> None:
        check = self._checks.get(parsed.alg)
        if check is None:
            known = parsed.alg in _KNOWN_ALGORITHMS
            cause = "disabled" if known else "unsupported"
            raise _invalid_token(f"{cause} JWT algorithm: {parsed.alg}")
        if not check(parsed.signing_input, parsed.signature):
            raise _invalid_token("signature is not valid")

    def _check_audience_and_issuer(self, claims: _Claims) -> None:
        if self._audience and (claims.aud is None or self._audience not in claims.aud):
            raise TokenError(INVALID, "invalid token", detail="audience mismatch")
        if self._issuer and claims.iss != self._issuer:
            raise TokenError(INVALID, "invalid token", detail="issuer mismatch")


# ---------------------------------------------------------------------------
# gentoken (spec 04 §7.1)

_GENTOKEN_HEADER = _b64url_encode(b'{"alg":"HS256","typ":"JWT"}')


def generate_hs256_token(secret: str, user: str, ttl_seconds: int, now: int) -> str:
    """{"sub":user,"exp":now+ttl} (sub omitted for anonymous), HS256, unpadded base64url."""
    exp = now + ttl_seconds
    claims = {"sub": user, "exp": exp} if user else {"exp": exp}
    signing_input = f"{_GENTOKEN_HEADER}.{_b64url_encode(orjson.dumps(claims))}"
    signature = hmac.digest(secret.encode("utf-8"), signing_input.encode("ascii"), "sha256")
    return f"{signing_input}.{_b64url_encode(signature)}"
