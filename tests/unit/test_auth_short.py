"""TokenVerifier's short path: whatever it accepts equals the full path's result; every token it
does not accept (refusals included) is left to the full path, so `verify` decides exactly as the
spec's step order says (04 §2)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniws import auth
from uniws.auth import TokenError, TokenVerifier

SECRET = "secret"
NOW = 1_700_000_000.25


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(claims: bytes, header: bytes = b'{"alg":"HS256","typ":"JWT"}', secret: str = SECRET,
          digest=hashlib.sha256) -> str:
    signing_input = f"{b64url(header)}.{b64url(claims)}"
    return f"{signing_input}.{b64url(hmac.new(secret.encode(), signing_input.encode(), digest).digest())}"


def outcome(call, tok: str, now: float):
    try:
        return ("ok", call(tok, now))
    except TokenError as exc:
        return ("refused", exc.kind, str(exc))


def same_as_full(verifier: TokenVerifier, tok: str, now: float = NOW):
    full = outcome(verifier._verify_full, tok, now)
    assert outcome(verifier.verify, tok, now) == full
    short = verifier._verify_short(tok, now)
    if short is not None:
        assert full == ("ok", short)
    return full, short


# Values of every JSON type, with the edge cases of each claim's checks.
scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=8),
    st.integers(min_value=-(2**63) - 2, max_value=2**63 + 2),
    st.sampled_from([int(NOW) - 1, int(NOW), int(NOW) + 1, 2**63 - 1, 2**64, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([NOW, NOW - 1, NOW + 1.5]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                            max_size=3), max_leaves=6)
claim_names = st.sampled_from(sorted(auth._SHORT_CLAIMS) + ["subs", "b64info", "other"])
claims = st.dictionaries(claim_names, values | st.lists(st.text(max_size=4), max_size=3), max_size=6)


@settings(max_examples=400, deadline=None)
@given(claims, st.sampled_from([("", ""), ("app", ""), ("", "iss1"), ("app", "iss1")]))
def test_accepts_only_what_the_full_path_accepts_and_gives_the_same_credentials(doc, audience_issuer):
    audience, issuer = audience_issuer
    verifier = TokenVerifier(hmac_secret_key=SECRET, audience=audience, issuer=issuer)
    if audience and "aud" in doc and doc["aud"] is None:
        doc["aud"] = [audience]
    same_as_full(verifier, token(json.dumps(doc, separators=(",", ":")).encode()))   # big integers too


def test_the_usual_token_takes_the_short_path():
    verifier = TokenVerifier(hmac_secret_key=SECRET, audience="app", issuer="me")
    tok = token(b'{"sub":"u1","exp":1700000100,"iat":1699999000,"aud":["x","app"],"iss":"me","channels":["a","a"],'
                b'"info":{"n": 1},"jti":"j"}')
    full, short = same_as_full(verifier, tok)
    assert short is not None
    assert short.user == "u1" and short.expire_at == 1700000100 and list(short.subs) == ["a"]
    assert short.info == b'{"n":1}'


def test_expire_at_claim_wins_over_exp_as_in_the_full_path():
    verifier = TokenVerifier(hmac_secret_key=SECRET)
    for claims, expected in ((b'{"exp":1700000100,"expire_at":-5}', 0), (b'{"exp":1700000100,"expire_at":7}', 7),
                             (b'{"exp":1700000100}', 1700000100), (b'{}', 0)):
        full, short = same_as_full(verifier, token(claims))
        assert short is not None and short.expire_at == expected


@pytest.mark.parametrize("tok", [
    token(b'{"sub":"u1","exp":1700000000}'),                                      # exp == now (whole second)
    token(b'{"sub":"u1","exp":1600000000}'),                                      # expired
    token(b'{"sub":"u1","nbf":1800000000}'),                                      # not yet valid
    token(b'{"sub":"u1"}', secret="other"),                                        # bad signature
    token(b'{"sub":"u1"}', header=b'{"alg":"none"}'),                              # unsupported algorithm
    token(b'{"sub":"u1"}', header=b'{"alg":"RS256"}'),                             # disabled algorithm
    token(b'{"sub":"u1"}', header=b'{"alg":"HS256","kid":5}'),                     # bad header field type
    token(b'{"sub":5}'), token(b'{"exp":true}'), token(b'{"exp":"1800000000"}'),    # claim types
    token(b'{"aud":[1]}'), token(b'{"channels":"a"}'), token(b'{"expire_at":1.5}'),
    token(b'{"sub":"u1"'), token(b'[1]'), token(b'\xff'),                          # not a JSON object
    token(b'{"exp":99999999999999999999}'),                                         # out of int64
    token(b'{"sub":"u1"}') + ".x",                                                  # four parts
    token(b'{"sub":"u1"}')[:-1] + "!",                                              # outside base64url
    "eyJ" + token(b'{"sub":"u1"}')[3:].replace(".", "", 1),                         # two parts
])
def test_refusals_are_the_full_paths(tok):
    verifier = TokenVerifier(hmac_secret_key=SECRET)
    full, short = same_as_full(verifier, tok, NOW - 0.25)
    assert short is None


def test_audience_and_issuer_mismatches_are_refused_as_before():
    verifier = TokenVerifier(hmac_secret_key=SECRET, audience="app", issuer="me")
    for claims in (b'{"aud":"ap","iss":"me"}', b'{"aud":"application","iss":"me"}', b'{"aud":["x"],"iss":"me"}',
                   b'{"iss":"me"}', b'{"aud":"app"}', b'{"aud":"app","iss":"you"}'):
        full, short = same_as_full(verifier, token(claims))
        assert short is None and full[0] == "refused"


def test_every_hmac_algorithm_and_long_keys_verify_as_hmac_does():
    long_secret = "k" * 200                      # longer than every block: hashed first (RFC 2104)
    for secret in (SECRET, long_secret):
        verifier = TokenVerifier(hmac_secret_key=secret)
        for alg, digest in (("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)):
            tok = token(b'{"sub":"u"}', header=orjson.dumps({"alg": alg}), secret=secret, digest=digest)
            assert verifier.verify(tok, NOW).user == "u"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=200), st.sampled_from(["sha256", "sha384", "sha512"]))
def test_the_keyed_hmac_check_equals_hmac_digest(key, message, digest):
    check = auth._hmac_check(key, digest)
    mac = hmac.digest(key, message, digest)
    assert check(message, mac)
    assert not check(message, mac[:-1] + bytes([mac[-1] ^ 1]))


def test_the_header_memory_is_bounded():
    verifier = TokenVerifier(hmac_secret_key=SECRET)
    for i in range(3 * auth._HEADER_CACHE_SIZE):
        header = orjson.dumps({"alg": "HS256", "kid": f"k{i}"})
        assert verifier.verify(token(b'{"sub":"u"}', header=header), NOW).user == "u"
        assert len(verifier._header_checks) <= auth._HEADER_CACHE_SIZE
