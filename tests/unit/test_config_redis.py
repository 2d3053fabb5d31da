"""Redis engine options (07 §4.10): address forms, shards, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from uniws.config import OPTIONS, ConfigError, load_config, redis_addresses
from uniws.engine.redis_shards import RedisAddress


def load(tmp_path: Path, doc: dict, env: dict | None = None):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    return load_config(str(path), env or {}, {})


def test_redis_engine_loads_with_defaults(tmp_path):
    cfg, warnings = load(tmp_path, {"engine": "redis"})
    assert cfg.engine == "redis" and warnings == []
    assert redis_addresses(cfg) == [RedisAddress("127.0.0.1", 6379, "", "", "", 0)]


def test_redis_shards_and_overrides(tmp_path):
    cfg, warnings = load(tmp_path, {"engine": "redis", "redis_password": "pw", "redis_db": 2,
                                    "redis_address": ["127.0.0.1:7001", "redis://u:x@h:7002/5",
                                                      "unix:///tmp/r.sock"]})
    assert warnings == []
    assert redis_addresses(cfg) == [RedisAddress("127.0.0.1", 7001, "", "", "pw", 2),
                                    RedisAddress("h", 7002, "", "u", "x", 5),
                                    RedisAddress(path="/tmp/r.sock", password="pw", db=2)]
    assert cfg.redis_prefix == "centrifugo" and cfg.redis_reconnect_max_delay == 5.0


def test_redis_tls_options(tmp_path):
    cfg, _ = load(tmp_path, {"engine": "redis", "redis_tls": True, "redis_tls_skip_verify": True,
                             "redis_address": ["h:1", "rediss://g:2"]})
    assert [(a.tls, a.tls_skip_verify) for a in redis_addresses(cfg)] == [(True, True), (True, True)]
    cfg, _ = load(tmp_path, {"engine": "redis", "redis_address": ["h:1", "rediss://g:2"]})
    assert [a.tls for a in redis_addresses(cfg)] == [False, True]


def test_redis_address_from_env_whitespace_list(tmp_path):
    cfg, _ = load(tmp_path, {"engine": "redis"}, {"CENTRIFUGO_REDIS_ADDRESS": "a:1 b:2"})
    assert [(a.host, a.port) for a in redis_addresses(cfg)] == [("a", 1), ("b", 2)]


@pytest.mark.parametrize("doc, expected", [
    ({"redis_address": "nohostport"}, 'option "redis_address": malformed Redis address'),
    ({"redis_address": "h:1/db"}, "is not a number"),
    ({"redis_prefix": ""}, 'option "redis_prefix" must not be empty'),
    ({"redis_read_timeout": "0s"}, 'option "redis_read_timeout" must be positive'),
])
def test_bad_redis_options(tmp_path, doc, expected):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, {"engine": "redis", **doc})
    assert expected in info.value.message


def test_sentinel_groups(tmp_path):
    cfg, warnings = load(tmp_path, {"engine": "redis", "redis_sentinel_address": ["a:1,b:2", "c:3"],
                                    "redis_sentinel_master_name": "mymaster", "redis_password": "pw",
                                    "redis_sentinel_password": "spw"})
    assert warnings == []
    shards = redis_addresses(cfg)
    assert [s.sentinels for s in shards] == [(("a", 1), ("b", 2)), (("c", 3),)]
    assert {(s.master_name, s.password, s.sentinel_password) for s in shards} == {("mymaster", "pw", "spw")}


@pytest.mark.parametrize("doc, expected", [
    ({"redis_sentinel_address": ["a:1"]}, "error creating engine: master name must be set when using Redis Sentinel"),
    ({"redis_sentinel_address": ["a:1,b"], "redis_sentinel_master_name": "m"},
     "error creating engine: malformed Redis Sentinel address: 'b'"),
])
def test_bad_sentinel_options(tmp_path, doc, expected):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, {"engine": "redis", **doc})
    assert info.value.message == expected


@pytest.mark.parametrize("name, value", [
    ("redis_cluster_address", ["127.0.0.1:7000"]), ("redis_use_lists", True)
])
def test_unsupported_redis_modes_refuse_to_start(tmp_path, name, value):
    assert name in OPTIONS
    with pytest.raises(ConfigError) as info:
        load(tmp_path, {name: value})
    assert info.value.message.startswith(f'option "{name}" refused: ')
