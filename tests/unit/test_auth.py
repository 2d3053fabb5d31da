"""Connection JWT verification: spec 04 §1-§8 and 03 §7 #1-#4."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
from types import SimpleNamespace

import jwt
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from uniws.auth import Credentials, TokenError, TokenSub, TokenVerifier, generate_hs256_token

SECRET = "secret"
NOW = 1_700_000_000  # injected clock, whole second
NOW_F = NOW + 0.25  # injected clock with a fraction
DOC_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiJ0ZXN0X3VzZXIiLCJleHAiOjE2MzAxMzAxNzB9."
    "u7anX-VYXywX1p1lv9UC9CAu04vpA6LgG5gsw5lz1Iw"
)
DOC_EXP = 1630130170
HS_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


# ---------------------------------------------------------------------------
# helpers


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_hs(signing_input: str, secret: str | bytes = SECRET, alg: str = "HS256") -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return b64url(hmac.new(key, signing_input.encode(), HS_DIGESTS.get(alg, hashlib.sha256)).digest())


def hs_token(
    claims: dict | bytes, *, secret: str | bytes = SECRET, alg: str = "HS256", header: dict | bytes | None = None
) -> str:
    """HMAC-signed token from raw parts (claims/header as dict or exact bytes)."""
    header_bytes = header if isinstance(header, bytes) else orjson.dumps(header or {"alg": alg, "typ": "JWT"})
    claims_bytes = claims if isinstance(claims, bytes) else orjson.dumps(claims)
    signing_input = f"{b64url(header_bytes)}.{b64url(claims_bytes)}"
    return f"{signing_input}.{sign_hs(signing_input, secret, alg)}"


def hs_verifier(**options: str) -> TokenVerifier:
    return TokenVerifier(hmac_secret_key=SECRET, **options)


def verify(claims: dict | bytes, now: float = NOW_F, **options: str) -> Credentials:
    return hs_verifier(**options).verify(hs_token(claims), now)


def rejection(claims: dict | bytes, now: float = NOW_F, **options: str) -> TokenError:
    with pytest.raises(TokenError) as caught:
        verify(claims, now, **options)
    return caught.value


def token_failure(verifier: TokenVerifier, token: str, now: float = NOW_F) -> TokenError:
    with pytest.raises(TokenError) as caught:
        verifier.verify(token, now)
    return caught.value


def b64std(data: bytes) -> str:
    return base64.b64encode(data).decode()


def public_pem(private_key) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def certificate_pem(private_key) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "uniws-test")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=36500))
        .sign(private_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_keys():
    return {
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "ES384": ec.generate_private_key(ec.SECP384R1()),
        "ES512": ec.generate_private_key(ec.SECP521R1()),
    }


# ---------------------------------------------------------------------------
# gentoken (04 §7.1, §8 #1, #20)


def test_gentoken_reproduces_doc_token_vector_1():
    token = generate_hs256_token("secret", "test_user", 604800, DOC_EXP - 604800)
    assert token == DOC_TOKEN
    assert token.rsplit(".", 1)[1] == "u7anX-VYXywX1p1lv9UC9CAu04vpA6LgG5gsw5lz1Iw"


def test_gentoken_anonymous_omits_sub():
    header, claims, _ = generate_hs256_token("secret", "", 90, NOW).split(".")
    assert header == "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    assert base64.urlsafe_b64decode(claims + "==") == f'{{"exp":{NOW + 90}}}'.encode()
    assert "=" not in claims


def test_gentoken_round_trips_through_verifier():
    creds = hs_verifier().verify(generate_hs256_token(SECRET, "bob", 60, NOW), NOW_F)
    assert (creds.user, creds.expire_at) == ("bob", NOW + 60)
    assert creds.claims == f'{{"sub":"bob","exp":{NOW + 60}}}'


# ---------------------------------------------------------------------------
# doc token (§8 #2) and basic outcomes


def test_doc_token_is_expired_today_vector_2():
    err = token_failure(hs_verifier(), DOC_TOKEN, now=1_760_000_000.0)
    assert (err.kind, err.reason, err.alg) == ("expired", "token expired", "HS256")
    assert err.claims == '{"sub":"test_user","exp":1630130170}'
    assert not err.structural


def test_doc_token_valid_before_its_exp():
    creds = hs_verifier().verify(DOC_TOKEN, DOC_EXP - 0.5)
    assert creds == Credentials("test_user", DOC_EXP, None, {}, None, '{"sub":"test_user","exp":1630130170}')


def test_anonymous_empty_claims_vector_10():
    creds = verify({})
    assert (creds.user, creds.expire_at, creds.subs, creds.info, creds.meta) == ("", 0, {}, None, None)


def test_raw_claims_text_is_kept_exactly():
    raw = b'{ "sub" : "bob",\n "x": [1, 2] }'
    assert verify(raw).claims == raw.decode()


# ---------------------------------------------------------------------------
# connection expiration (§6.1, §8 #3-#7)


@pytest.mark.parametrize(
    "claims, expire_at",
    [
        ({"sub": "42"}, 0),  # #3 no exp: never expires
        ({"sub": "42", "exp": NOW + 3600}, NOW + 3600),  # #4
        ({"sub": "42", "exp": NOW + 3600, "expire_at": 0}, 0),  # #5
        ({"sub": "42", "exp": NOW + 3600, "expire_at": NOW + 60}, NOW + 60),  # #6
        ({"sub": "42", "exp": NOW + 3600, "expire_at": NOW - 10}, NOW - 10),  # #7: caller disconnects 3005
        ({"sub": "42", "expire_at": -5}, 0),  # negative: never
        ({"sub": "42", "expire_at": NOW + 5}, NOW + 5),  # without exp
        ({"sub": "42", "exp": NOW + 10.75}, NOW + 10),  # fractional exp floors
        ({"sub": "42", "exp": str(NOW + 100)}, NOW + 100),  # numeric string
        ({"sub": "42", "exp": f"{NOW + 100}.5"}, NOW + 100),
        ({"sub": "42", "exp": "1.8e9"}, 1_800_000_000),
        ({"sub": "42", "exp": None}, 0),  # null = absent
    ],
)
def test_connection_expire_at(claims, expire_at):
    assert verify(claims).expire_at == expire_at


# ---------------------------------------------------------------------------
# time validity (§2 step 4, §8 #8, 03 §7 #3)


@pytest.mark.parametrize(
    "claims, now",
    [
        ({"exp": NOW - 10}, NOW_F),  # 03 §7 #3
        ({"exp": NOW}, float(NOW)),  # equal to the current second: already expired
        ({"exp": NOW}, NOW_F),
        ({"exp": NOW_F}, NOW_F),  # fractional, compared exactly
        ({"exp": str(NOW)}, NOW_F),
        ({"nbf": NOW + 60}, NOW_F),  # #8
        ({"nbf": NOW_F}, NOW_F),
        ({"nbf": NOW + 0.5}, NOW_F),
    ],
)
def test_time_validity_failures_are_expired(claims, now):
    err = rejection({"sub": "42", **claims}, now)
    assert (err.kind, err.reason) == ("expired", "token expired")


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": NOW_F + 0.001},
        {"exp": NOW + 1},
        {"nbf": NOW},
        {"nbf": NOW_F - 0.001},
        {"nbf": NOW - 100, "exp": NOW + 100},
    ],
)
def test_time_validity_passes_strictly(claims):
    assert verify({"sub": "42", **claims}).user == "42"


# ---------------------------------------------------------------------------
# claim types (§3, §8 #9)


@pytest.mark.parametrize(
    "claims, what",
    [
        ({"sub": 42}, "sub"),  # #9
        ({"sub": True}, "sub"),
        ({"sub": ["42"]}, "sub"),
        ({"exp": "abc"}, "exp"),
        ({"exp": ""}, "exp"),
        ({"exp": " 1800000000"}, "exp"),
        ({"exp": "0x10"}, "exp"),
        ({"exp": "NaN"}, "exp"),
        ({"exp": "1e400"}, "exp"),
        ({"exp": True}, "exp"),
        ({"exp": [1]}, "exp"),
        ({"exp": {}}, "exp"),
        ({"exp": 2**63}, "exp"),
        ({"nbf": "1"}, "nbf"),  # only exp may be a string
        ({"nbf": False}, "nbf"),
        ({"iat": "1"}, "iat"),
        ({"iat": {}}, "iat"),
        ({"aud": 5}, "aud"),
        ({"aud": [1]}, "aud"),
        ({"aud": ["a", None]}, "aud"),
        ({"aud": {"a": 1}}, "aud"),
        ({"iss": 1}, "iss"),
        ({"jti": 7}, "jti"),
        ({"channels": "news"}, "channels"),
        ({"channels": [1]}, "channels"),
        ({"channels": {"a": 1}}, "channels"),
        ({"subs": []}, "subs"),
        ({"subs": "a"}, "subs"),
        ({"subs": {"a": 1}}, "subs.a"),
        ({"subs": {"a": []}}, "subs.a"),
        ({"subs": {"a": {"b64info": 1}}}, "subs.a.b64info"),
        ({"subs": {"a": {"b64data": True}}}, "subs.a.b64data"),
        ({"subs": {"a": {"override": 1}}}, "subs.a.override"),
        ({"subs": {"a": {"override": {"presence": True}}}}, "subs.a.override.presence"),
        ({"subs": {"a": {"override": {"recover": {"value": "yes"}}}}}, "subs.a.override.recover.value"),
        ({"subs": {"a": {"override": {"position": {"value": 1}}}}}, "subs.a.override.position.value"),
        ({"expire_at": 1.5}, "expire_at"),
        ({"expire_at": 1.0}, "expire_at"),
        ({"expire_at": "100"}, "expire_at"),
        ({"expire_at": True}, "expire_at"),
        ({"expire_at": 2**63}, "expire_at"),
        ({"b64info": 1}, "b64info"),
        ({"b64info": {}}, "b64info"),
    ],
)
def test_wrong_claim_type_is_invalid(claims, what):
    err = rejection(claims)
    assert err.kind == "invalid" and not err.structural
    assert err.reason.startswith(f"invalid token: {what}:")
    assert err.alg == "HS256" and err.claims == orjson.dumps(claims).decode()


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"null", b"42", b"{", b"", b'{"a":NaN}', b'{"s":"\xff"}', b'{"a":1}x'])
def test_claims_not_a_json_object_is_invalid(raw):
    err = rejection(raw)
    assert err.kind == "invalid" and not err.structural and err.reason.startswith("invalid token: claims")


def test_claim_type_checked_before_time():
    # step 3 precedes step 4: a wrong type wins over expiry
    assert rejection({"sub": 1, "exp": NOW - 10}).kind == "invalid"


def test_unknown_claims_are_ignored():
    assert verify({"sub": "u", "foo": {"bar": [1]}, "typ": 5}).user == "u"


# ---------------------------------------------------------------------------
# structure (§2 step 1, §8 #13, 03 §7 #1)


GOOD = hs_token({"sub": "42"})
GOOD_HEADER, GOOD_PAYLOAD, GOOD_SIGNATURE = GOOD.split(".")


@pytest.mark.parametrize(
    "token",
    [
        "abc",  # 03 §7 #1
        "eyJ",
        GOOD_HEADER,
        f"{GOOD_HEADER}.{GOOD_PAYLOAD}",  # one dot
        f"{GOOD_HEADER}=.{GOOD_PAYLOAD}.{GOOD_SIGNATURE}",  # #13 padding in each part
        f"{GOOD_HEADER}.{GOOD_PAYLOAD}=.{GOOD_SIGNATURE}",
        f"{GOOD_HEADER}.{GOOD_PAYLOAD}.{GOOD_SIGNATURE}=",
        f"{GOOD_HEADER}.{GOOD_PAYLOAD}.x.{GOOD_SIGNATURE}",  # more than two dots
        f"{GOOD_HEADER}.{GOOD_PAYLOAD}.{GOOD_SIGNATURE}.",
        f"{GOOD_HEADER}.{GOOD_PAYLOAD[:-1]}+.{GOOD_SIGNATURE}",  # standard alphabet
        f"{GOOD_HEADER}.{GOOD_PAYLOAD}.{GOOD_SIGNATURE[:-2]}/a",
        f"{GOOD_HEADER}.{GOOD_PAYLOAD} .{GOOD_SIGNATURE}",
        f"{GOOD_HEADER}.{GOOD_PAYLOAD}.{GOOD_SIGNATURE}xx",  # length 4n+1: not base64
        f" {GOOD}",
        "e" + GOOD[1:].replace("y", "Y", 1),  # does not start with eyJ
        hs_token({}, header=b'{"alg":"HS256"'),  # header not JSON
        hs_token({}, header=b'["HS256"]'),  # header not an object
        hs_token({}, header=b'{"typ":"JWT"}'),  # no alg
        hs_token({}, header=b'{"alg":256}'),
        hs_token({}, header=b'{"alg":null}'),
        hs_token({}, header=b'{"alg":"HS256","kid":1}'),
    ],
)
def test_structural_failures(token):
    err = token_failure(hs_verifier(), token)
    assert (err.kind, err.structural) == ("invalid", True)
    assert err.reason == "invalid token: token format is not valid"
    assert "\n" not in str(err)


def test_structural_failure_keeps_decoded_header_alg():
    err = token_failure(hs_verifier(), f"{GOOD_HEADER}.{GOOD_PAYLOAD}.x.{GOOD_SIGNATURE}")
    assert (err.alg, err.claims) == ("HS256", None)


def test_header_extra_fields_accepted():
    token = hs_token({"sub": "a"}, header=b'{"alg":"HS256","typ":"JWT","kid":"k1","x":[1]}')
    assert hs_verifier().verify(token, NOW_F).user == "a"


# ---------------------------------------------------------------------------
# algorithms and signatures (§1, §2 step 2, §8 #11, #12, #19, 03 §7 #2, #4)


@pytest.mark.parametrize("alg", ["none", "hs256", "PS256", "EdDSA", "ES256K", ""])
def test_unsupported_algorithm(alg):
    err = token_failure(hs_verifier(), hs_token({"sub": "1"}, header={"alg": alg}))
    assert (err.kind, err.reason, err.alg) == ("invalid", f"invalid token: unsupported JWT algorithm: {alg}", alg)
    assert not err.structural


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_algorithms(alg):
    creds = hs_verifier().verify(hs_token({"sub": "7"}, alg=alg), NOW_F)
    assert creds.user == "7"


@pytest.mark.parametrize(
    "token",
    [
        hs_token({"sub": "42"}, secret="wrong"),  # 03 §7 #2, §8 #19
        GOOD[:-4] + ("AAAA" if not GOOD.endswith("AAAA") else "BBBB"),
        ".".join([GOOD_HEADER, b64url(b'{"sub":"43"}'), GOOD_SIGNATURE]),  # tampered payload
        f"{GOOD_HEADER}.{GOOD_PAYLOAD}.",  # empty signature
        f"{GOOD_HEADER}.{GOOD_PAYLOAD}.{GOOD_SIGNATURE[:-3]}",  # truncated
        hs_token({"sub": "42"}, alg="HS384").rsplit(".", 1)[0] + "." + sign_hs("x", alg="HS384"),
    ],
)
def test_bad_signature_is_invalid(token):
    err = token_failure(hs_verifier(), token)
    assert (err.kind, err.reason, err.structural) == ("invalid", "invalid token: signature is not valid", False)


def test_signature_checked_before_expiry_03_vector_4():
    err = token_failure(hs_verifier(), hs_token({"sub": "1", "exp": NOW - 10}, secret="wrong"))
    assert err.reason == "invalid token: signature is not valid"


def test_nothing_configured_disables_everything():
    err = token_failure(TokenVerifier(), GOOD)
    assert err.reason == "invalid token: disabled JWT algorithm: HS256"


def test_hs256_disabled_with_only_rsa_key_vector_12(rsa_key):
    pem = public_pem(rsa_key)
    verifier = TokenVerifier(rsa_public_key=pem)
    assert token_failure(verifier, GOOD).reason == "invalid token: disabled JWT algorithm: HS256"
    # key confusion: the public key PEM used as an HMAC secret must not verify
    forged = hs_token({"sub": "admin"}, secret=pem)
    err = token_failure(verifier, forged)
    assert (err.kind, err.reason) == ("invalid", "invalid token: disabled JWT algorithm: HS256")


def test_rsa_disabled_when_only_hmac(rsa_key):
    token = jwt.encode({"sub": "1"}, rsa_key, algorithm="RS256")
    assert token_failure(hs_verifier(), token).reason == "invalid token: disabled JWT algorithm: RS256"


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
@pytest.mark.parametrize("key_form", [public_pem, certificate_pem])
def test_rsa_algorithms(rsa_key, alg, key_form):
    verifier = TokenVerifier(rsa_public_key=key_form(rsa_key))
    creds = verifier.verify(jwt.encode({"sub": "r", "exp": NOW + 5}, rsa_key, algorithm=alg), NOW_F)
    assert (creds.user, creds.expire_at) == ("r", NOW + 5)


def test_rsa_signature_from_other_key_is_invalid(rsa_key):
    verifier = TokenVerifier(rsa_public_key=public_pem(rsa_key))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    err = token_failure(verifier, jwt.encode({"sub": "r"}, other, algorithm="RS256"))
    assert err.reason == "invalid token: signature is not valid"


def test_several_key_types_at_once(rsa_key, ec_keys):
    verifier = TokenVerifier(
        hmac_secret_key=SECRET, rsa_public_key=public_pem(rsa_key), ecdsa_public_key=public_pem(ec_keys["ES256"])
    )
    assert verifier.verify(GOOD, NOW_F).user == "42"
    assert verifier.verify(jwt.encode({"sub": "r"}, rsa_key, algorithm="RS512"), NOW_F).user == "r"
    assert verifier.verify(jwt.encode({"sub": "e"}, ec_keys["ES256"], algorithm="ES256"), NOW_F).user == "e"


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
@pytest.mark.parametrize("key_form", [public_pem, certificate_pem])
def test_ecdsa_algorithms_match_curve(ec_keys, alg, key_form):
    key = ec_keys[alg]
    verifier = TokenVerifier(ecdsa_public_key=key_form(key))
    assert verifier.verify(jwt.encode({"sub": "e"}, key, algorithm=alg), NOW_F).user == "e"
    for other_alg, other_key in ec_keys.items():
        if other_alg != alg:  # only the curve's own algorithm is enabled
            err = token_failure(verifier, jwt.encode({"sub": "e"}, other_key, algorithm=other_alg))
            assert err.reason == f"invalid token: disabled JWT algorithm: {other_alg}"


def test_ecdsa_rejects_wrong_key_and_der_signature(ec_keys):
    key = ec_keys["ES256"]
    verifier = TokenVerifier(ecdsa_public_key=public_pem(key))
    forged = jwt.encode({"sub": "e"}, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    assert token_failure(verifier, forged).reason == "invalid token: signature is not valid"
    signing_input = jwt.encode({"sub": "e"}, key, algorithm="ES256").rsplit(".", 1)[0]
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))  # DER, not raw R||S
    err = token_failure(verifier, f"{signing_input}.{b64url(der)}")
    assert err.reason == "invalid token: signature is not valid"


# ---------------------------------------------------------------------------
# key parsing at construction (§1)


def test_pkcs1_rsa_public_key_is_rejected(rsa_key):
    pkcs1 = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
    assert "BEGIN RSA PUBLIC KEY" in pkcs1
    with pytest.raises(ValueError, match="^error parsing RSA public key: "):
        TokenVerifier(rsa_public_key=pkcs1)


@pytest.mark.parametrize(
    "option, prefix",
    [("rsa_public_key", "error parsing RSA public key: "), ("ecdsa_public_key", "error parsing ECDSA public key: ")],
)
@pytest.mark.parametrize("pem", ["not a pem", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])
def test_garbage_keys_are_rejected(option, prefix, pem):
    with pytest.raises(ValueError) as caught:
        TokenVerifier(**{option: pem})
    assert str(caught.value).startswith(prefix)


def test_key_of_wrong_type_is_rejected(rsa_key, ec_keys):
    with pytest.raises(ValueError, match="^error parsing RSA public key: "):
        TokenVerifier(rsa_public_key=public_pem(ec_keys["ES256"]))
    with pytest.raises(ValueError, match="^error parsing ECDSA public key: "):
        TokenVerifier(ecdsa_public_key=public_pem(rsa_key))
    with pytest.raises(ValueError, match="^error parsing ECDSA public key: "):
        TokenVerifier(ecdsa_public_key=public_pem(ec.generate_private_key(ec.SECP256K1())))


def test_from_config(rsa_key):
    cfg = SimpleNamespace(
        token_hmac_secret_key=SECRET,
        token_rsa_public_key=public_pem(rsa_key),
        token_ecdsa_public_key="",
        token_audience="centrifugo",
        token_issuer="app",
    )
    verifier = TokenVerifier.from_config(cfg)
    assert verifier.verify(hs_token({"aud": "centrifugo", "iss": "app"}), NOW_F).user == ""
    assert token_failure(verifier, GOOD).reason == "invalid token"


# ---------------------------------------------------------------------------
# audience and issuer (§2 steps 5-6, §8 #14, #15)


@pytest.mark.parametrize(
    "claims, ok",
    [
        ({"aud": ["x", "centrifugo"]}, True),  # #14
        ({"aud": "centrifugo"}, True),
        ({"aud": "x"}, False),
        ({}, False),
        ({"aud": []}, False),
        ({"aud": "Centrifugo"}, False),
        ({"aud": ["centrifugo2"]}, False),
    ],
)
def test_audience(claims, ok):
    if ok:
        assert verify(claims, audience="centrifugo").user == ""
    else:
        err = rejection(claims, audience="centrifugo")
        assert (err.kind, err.reason) == ("invalid", "invalid token")


@pytest.mark.parametrize(
    "claims, ok", [({"iss": "app"}, True), ({"iss": "App"}, False), ({}, False), ({"iss": ""}, False)]
)
def test_issuer(claims, ok):  # #15
    if ok:
        assert verify(claims, issuer="app").user == ""
    else:
        err = rejection(claims, issuer="app")
        assert (err.kind, err.reason) == ("invalid", "invalid token")


def test_audience_and_issuer_ignored_when_not_configured():
    assert verify({"sub": "u", "aud": "anything", "iss": "anyone"}).user == "u"


def test_expiry_reported_before_audience_mismatch():
    assert rejection({"aud": "x", "exp": NOW - 1}, audience="centrifugo").kind == "expired"


# ---------------------------------------------------------------------------
# subs / channels (§2 step 7, §4, §8 #16, #17)


def test_channels_claim_vector_16():
    creds = verify({"sub": "42", "channels": ["$secret", "news#7"]})
    assert creds.subs == {"$secret": TokenSub(None, None), "news#7": TokenSub(None, None)}


@pytest.mark.parametrize(
    "claims, channels",
    [
        ({"subs": {"a": {}}, "channels": ["b"]}, ["a"]),  # #17
        ({"subs": {}, "channels": ["b", "c"]}, ["b", "c"]),  # empty subs: channels used
        ({"subs": None, "channels": ["b"]}, ["b"]),
        ({"subs": {"z": {}, "a": {}, "m": None}}, ["z", "a", "m"]),  # insertion order kept
        ({"channels": ["b", "b", "a"]}, ["b", "a"]),
    ],
)
def test_subs_win_over_channels(claims, channels):
    assert list(verify(claims).subs) == channels


@pytest.mark.parametrize(
    "override, expected",
    [
        ({}, (None, None, None, None)),
        ({"presence": {"value": True}}, (True, None, None, None)),
        ({"join_leave": {"value": False}, "position": {}}, (None, False, False, None)),
        ({"recover": {"value": None}}, (None, None, None, False)),
        ({"presence": None, "recover": {"value": True}}, (None, None, None, True)),
        (
            {key: {"value": True} for key in ("presence", "join_leave", "position", "recover")},
            (True, True, True, True),
        ),
        ({"unknown": 1, "presence": {"value": True, "extra": "x"}}, (True, None, None, None)),
    ],
)
def test_subs_overrides(override, expected):
    sub = verify({"subs": {"news": {"override": override}}}).subs["news"]
    assert (sub.presence, sub.join_leave, sub.position, sub.recover) == expected


def test_spec_subs_example():
    claims = {"sub": "42", "subs": {"news": {"data": {"welcome": 1}, "override": {"recover": {"value": True}}}}}
    assert verify(claims).subs == {"news": TokenSub(info=None, data=b'{"welcome":1}', recover=True)}


@pytest.mark.parametrize(
    "options, info, data",
    [
        ({"info": {"a": 1, "b": [1, 2]}, "data": "text"}, b'{"a":1,"b":[1,2]}', b'"text"'),
        ({"b64info": b64std(b"\x00\x01"), "info": {"ignored": 1}}, b"\x00\x01", None),
        ({"b64data": b64std(b'{"x": 1}'), "data": {"ignored": 1}}, None, b'{"x": 1}'),
        ({"b64info": "", "info": 5, "b64data": "", "data": [1]}, b"5", b"[1]"),  # empty b64 -> JSON value
        ({"info": None, "data": None}, None, None),
    ],
)
def test_subs_info_and_data(options, info, data):
    sub = verify({"subs": {"ch": options}}).subs["ch"]
    assert (sub.info, sub.data) == (info, data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"big":123456789012345678901234567890}',  # beyond 64 bits: kept exact, no crash
        b'{"neg":-9223372036854775809,"u64":18446744073709551615}',
        b'{"ns":1630130170000000000,"pi":3.14}',
    ],
)
def test_subs_data_with_big_integers(data):
    raw = b'{"subs":{"ch":{"data":' + data + b',"info":' + data + b"}}}"
    sub = verify(raw).subs["ch"]
    assert (sub.info, sub.data) == (data, data)


@pytest.mark.parametrize("field", ["b64info", "b64data"])
@pytest.mark.parametrize("bad", ["!!!!", "YWJj=", "YWI", "YW Jj", "YWJj\n", "é"])
def test_bad_base64_in_subs_is_invalid(field, bad):
    err = rejection({"subs": {"ch": {field: bad}}})
    assert (err.kind, err.reason) == ("invalid", f"invalid token: subs.ch.{field}: illegal base64 data")


def test_bad_base64_in_subs_comes_after_expiry():
    assert rejection({"exp": NOW - 1, "subs": {"ch": {"b64info": "!!"}}}).kind == "expired"


@pytest.mark.parametrize("payload", [b"not json", b" ", b'{"a":', b"\xff\xfe", b"NaN", b'{"a":1}{}'])
def test_b64data_that_is_not_json_is_internal(payload):
    err = rejection({"subs": {"ch": {"b64data": b64std(payload)}}})
    assert err.kind == "internal" and err.alg == "HS256"


def test_b64data_not_json_loses_to_invalid_base64_elsewhere():
    claims = {"subs": {"a": {"b64data": b64std(b"nope")}, "b": {"b64info": "!!"}}}
    assert rejection(claims).kind == "invalid"


# ---------------------------------------------------------------------------
# connection info and meta (§2 step 9)


@pytest.mark.parametrize(
    "claims, info",
    [
        ({"info": {"name": "Alice", "tags": ["x"]}}, b'{"name":"Alice","tags":["x"]}'),
        ({"info": "plain"}, b'"plain"'),
        ({"info": {"n": 1.5, "t": True, "z": None}}, b'{"n":1.5,"t":true,"z":null}'),
        ({"b64info": b64std(b'{"raw": true}'), "info": {"x": 1}}, b'{"raw": true}'),  # non-empty b64info wins
        ({"b64info": b64std(b"\xff")}, b"\xff"),  # any bytes
        ({"b64info": "", "info": [1]}, b"[1]"),
        ({"info": None}, None),
        ({}, None),
    ],
)
def test_connection_info(claims, info):
    assert verify(claims).info == info


def test_raw_claim_json_is_compacted():
    raw = b'{"info": { "a" : [1, 2,\n3] }, "meta": {"k":  "v", "n": 99999999999999999999999}}'
    creds = verify(raw)
    assert creds.info == b'{"a":[1,2,3]}'
    assert creds.meta == b'{"k":"v","n":99999999999999999999999}'


@pytest.mark.parametrize("bad", ["!!!!", "YWI", "YWJj=", "YWI==", "YW=I"])
def test_bad_top_level_b64info_is_internal(bad):
    err = rejection({"sub": "u", "b64info": bad})
    assert (err.kind, err.alg, err.structural) == ("internal", "HS256", False)
    assert err.claims == orjson.dumps({"sub": "u", "b64info": bad}).decode()


def test_subs_base64_checked_before_top_level_b64info():
    assert rejection({"b64info": "!!", "subs": {"a": {"b64data": "!!"}}}).kind == "invalid"


def test_meta():
    assert verify({"meta": {"plan": "pro"}}).meta == b'{"plan":"pro"}'
    assert verify({"meta": 0}).meta == b"0"


# ---------------------------------------------------------------------------
# error object


def test_token_error_fields_for_checktoken():
    err = rejection({"sub": "bob", "exp": NOW - 1})
    assert err.claims == f'{{"sub":"bob","exp":{NOW - 1}}}'
    assert str(err).startswith("token expired") and "\n" not in str(err)
    err = token_failure(hs_verifier(), "abc")
    assert (err.alg, err.claims, err.structural) == (None, None, True)


# ---------------------------------------------------------------------------
# JSON edge cases: must never crash the worker


@pytest.mark.parametrize(
    "raw",
    [
        b'{"exp":1000000000000000000000000000000}',  # beyond int64 seconds
        b'{"sub":"\\ud800"}',  # lone surrogate escape (orjson path)
        b'{"sub":"\\ud800","n":1234567890123456789012}',  # same on the exact-integer path
        b'{"info":' + b"[" * 1030 + b"]" * 1030 + b"}",  # nesting beyond the parser limit
    ],
)
def test_edge_json_claims_are_invalid(raw):
    assert rejection(raw).kind == "invalid"


def test_deep_but_parseable_info_is_compacted():
    nested = b"[" * 300 + b"]" * 300  # deeper than orjson.dumps allows
    assert verify(b'{"info":' + nested + b"}").info == nested


def test_info_too_deep_to_reencode_is_internal():
    nested = b"[" * 1010 + b"]" * 1010
    assert rejection(b'{"meta":' + nested + b"}").kind == "internal"
