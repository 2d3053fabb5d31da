"""Pure parts of the Redis engine: shard selection, address forms, payload codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uniws import codec
from uniws.engine import redis_codec as rc
from uniws.engine.redis_shards import (
    AddressError,
    RedisAddress,
    fnv1a64,
    jump_hash,
    parse_address,
    shard_index,
)

# -- shard selection (08 §8.3) ---------------------------------------------------------------

def test_fnv1a64_reference_vectors():
    # The FNV-1a 64 reference values (Fowler/Noll/Vo test suite).
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


def test_jump_hash_reference_vectors():
    # Vectors of the reference jump-hash implementation (Lamping & Veach; go-jump's tests).
    assert jump_hash(1, 1) == 0
    assert jump_hash(42, 57) == 43
    assert jump_hash(0xDEAD10CC, 1) == 0
    assert jump_hash(0xDEAD10CC, 666) == 361
    assert jump_hash(256, 1024) == 520


def test_jump_hash_two_buckets_by_hand():
    # "a", 2 buckets, the spec's loop unrolled: b=0, key'=key*K+1, j=floor(2^31/((key'>>33)+1)).
    key = (0xAF63DC4C8601EC8C * 2862933555777941757 + 1) % 2**64
    j = (1 << 31) // ((key >> 33) + 1)
    assert j == 1                     # < 2: a second round
    key = (key * 2862933555777941757 + 1) % 2**64
    j2 = int(2 * ((1 << 31) / ((key >> 33) + 1)))
    assert j2 >= 2                    # loop ends with b = 1
    assert shard_index("a", 2) == 1


def test_channel_shard_vectors():
    assert [shard_index("chat", n) for n in (1, 2, 3, 5, 10)] == [0, 0, 0, 4, 4]
    assert [shard_index("news", n) for n in (1, 2, 3, 5, 10)] == [0, 1, 2, 3, 3]
    assert [shard_index("", n) for n in (1, 2, 3, 5, 10)] == [0, 1, 1, 1, 1]


@given(st.text(max_size=64), st.integers(min_value=1, max_value=300))
def test_shard_index_in_range_and_stable(channel, shards):
    index = shard_index(channel, shards)
    assert 0 <= index < shards
    assert shard_index(channel, shards) == index
    # Jump hash moves a key only to the new bucket when one is added.
    grown = shard_index(channel, shards + 1)
    assert grown in (index, shards)


# -- addresses (07 §4.10) --------------------------------------------------------------------

def test_address_forms():
    assert parse_address("localhost:6380") == RedisAddress("localhost", 6380)
    assert parse_address("redis://u:p%40ss@h:1/3") == RedisAddress("h", 1, "", "u", "p@ss", 3)
    assert parse_address("redis://:pw@h:1") == RedisAddress("h", 1, "", "", "pw", 0)
    assert parse_address("tcp://h:2", password="opt", db=4) == RedisAddress("h", 2, "", "", "opt", 4)
    assert parse_address("redis://x:y@h:2", user="ou", password="op") == RedisAddress("h", 2, "", "x", "y", 0)
    assert parse_address("unix:///run/redis.sock", db=2) == RedisAddress(path="/run/redis.sock", db=2)
    assert str(parse_address("h:1/2")) == "h:1/2"
    assert parse_address("rediss://h:1").tls and not parse_address("redis://h:1").tls


@pytest.mark.parametrize("bad", ["", "host", "host:", "host:notaport", "redis://h:1/x", "http://h:1",
                                 "unix://", "h:99999", "redis://h:1?db=2"])
def test_bad_addresses_are_refused(bad):
    with pytest.raises(AddressError):
        parse_address(bad)


@given(st.text(max_size=40))
def test_parse_address_never_crashes_otherwise(text):
    try:
        address = parse_address(text)
    except AddressError:
        return
    assert address.path or (address.host and 0 <= address.port <= 65535)


# -- payloads (08 §8.3) ----------------------------------------------------------------------

tags_st = st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=2**64 - 1), tags_st)
def test_publication_roundtrip(data, offset, tags):
    pub = rc.decode_publication(rc.encode_publication(data, offset, tags))
    assert (pub.data, pub.offset, pub.tags) == (data, offset, tags or None)


def test_publication_protobuf_bytes():
    # Field 4 (bytes) "{}", field 6 (varint) 300, field 7 map entry {"k": "v"}.
    assert rc.encode_publication(b"{}", 300, {"k": "v"}) == b'"\x02{}0\xac\x02:\x06\n\x01k\x12\x01v'


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@given(st.text(max_size=20), st.text(max_size=20), st.none() | json_value, st.none() | json_value)
def test_client_info_roundtrip_is_byte_exact(user, client, conn, chan):
    import json
    raw = lambda v: None if v is None else json.dumps(v, separators=(",", ":")).encode()
    info = codec.client_info(user, client, raw(conn), raw(chan))
    encoded = rc.encode_client_info(info)
    assert rc.decode_client_info(encoded) == info
    assert rc.client_info_user(encoded) == user.encode()


def test_client_info_keeps_raw_json_text():
    info = b'{"user":"u","client":"c","conn_info":{"n":1.50,"s":"\\u00e9"},"chan_info":[1e3]}'
    assert rc.decode_client_info(rc.encode_client_info(info)) == info


@pytest.mark.parametrize("bad", [b"", b"[]", b'{"user":"u"}', b'{"client":"c","user":"u"}',
                                 b'{"user":"u","client":"c","extra":1}'])
def test_client_info_not_in_codec_shape_is_refused(bad):
    with pytest.raises(rc.PayloadError):
        rc.encode_client_info(bad)


def test_pubsub_payload_forms():
    pub = rc.encode_publication(b'{"a":1}')
    kind, value, epoch = rc.parse_message(rc.positioned(7, "1650000000", pub))
    assert (kind, value.data, value.offset, epoch) == ("pub", b'{"a":1}', 7, "1650000000")
    kind, value, epoch = rc.parse_message(pub)
    assert (kind, value.offset, epoch) == ("pub", 0, "")
    info = b'{"user":"u","client":"c"}'
    assert rc.parse_message(b"__j__" + rc.encode_client_info(info)) == ("join", info, "")
    assert rc.parse_message(b"__l__" + rc.encode_client_info(info)) == ("leave", info, "")
    with pytest.raises(rc.PayloadError):
        rc.parse_message(b"__p1:x:1__")


@given(st.binary(max_size=100))
def test_parse_message_fails_only_with_payload_error(payload):
    try:
        rc.parse_message(payload)
    except (rc.PayloadError, UnicodeDecodeError):
        pass
