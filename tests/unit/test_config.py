"""Configuration loading: spec 07 §1-§4 and the §8 vectors that need no server."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from uniws.channels import ChannelOptions
from uniws.config import (
    OPTIONS,
    SUPPORTED,
    Config,
    ConfigError,
    ConfigValidationError,
    format_duration,
    load_config,
    parse_duration,
)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_json(
    tmp_path: Path, doc: Any, env: dict[str, str] | None = None, flags: dict[str, Any] | None = None
) -> Config:
    cfg, _ = load_config(write(tmp_path, "config.json", json.dumps(doc)), env or {}, flags or {})
    return cfg


def error_of(tmp_path: Path, doc: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_json(tmp_path, doc, env)
    return info.value.message


# ---------------------------------------------------------------------------
# Durations (07 §2.2)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("-0", 0.0),
        ("300ms", 0.3),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("2h45m", 9900.0),
        ("720h", 2592000.0),
        ("1h30m15s", 5415.0),
        ("-1.5s", -1.5),
        ("+2m", 120.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("1500us", 0.0015),
        ("1500\u00b5s", 0.0015),
        ("1500\u03bcs", 0.0015),
        ("250ns", 250e-9),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("30", 'time: missing unit in duration "30"'),
        ("1h30", 'time: missing unit in duration "1h30"'),
        ("", 'time: invalid duration ""'),
        ("abc", 'time: invalid duration "abc"'),
        ("-", 'time: invalid duration "-"'),
        (".s", 'time: invalid duration ".s"'),
        ("5d", 'time: unknown unit "d" in duration "5d"'),
    ],
)
def test_parse_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (59, "59s"),
        (90, "1m30s"),
        (3600, "1h0m0s"),
        (604800, "168h0m0s"),
        (1.5, "1.5s"),
        (0.3, "300ms"),
        (0.0015, "1.5ms"),
        (0.0000015, "1.5\u00b5s"),
        (500e-9, "500ns"),
        (3600.5, "1h0m0.5s"),
        (-90, "-1m30s"),
        (-0.3, "-300ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# ---------------------------------------------------------------------------
# Defaults and the option table (07 §4)


def test_defaults_without_any_source() -> None:
    cfg, warnings = load_config(None, {}, {})
    assert warnings == []
    assert (cfg.port, cfg.internal_port, cfg.address, cfg.engine) == (8000, 8000, "", "memory")
    assert cfg.uni_websocket_ping_interval == 25.0
    assert cfg.uni_websocket_write_timeout == 1.0
    assert cfg.uni_websocket_message_size_limit == 65536
    assert cfg.shutdown_timeout == 30.0
    assert cfg.client_channel_limit == 128
    assert cfg.client_queue_max_size == 1048576
    assert cfg.presence_ttl == 60.0
    assert cfg.redis_address == ["redis://127.0.0.1:6379"]
    assert cfg.allowed_origins == []
    assert cfg.namespaces == {}
    assert cfg.channel_options == ChannelOptions()
    assert cfg.source_path is None


def test_default_name_is_host_and_port() -> None:
    cfg, _ = load_config(None, {}, {"port": "9001"})
    assert cfg.name.endswith("_9001")
    assert len(cfg.name) > len("_9001")


def test_every_supported_option_exists() -> None:
    assert SUPPORTED <= set(OPTIONS)


def test_option_table_covers_spec_sections() -> None:
    for name in ("redis_sentinel_master_name", "proxy_connect_timeout", "tls_autocert_http_addr",
                 "admin_web_path", "prometheus_handler_prefix", "uni_grpc_port", "sockjs_url",
                 "graphite_interval", "client_channel_position_check_delay", "rpc_namespaces", "proxies"):  # fmt: skip
        assert name in OPTIONS


def test_as_dict_has_every_attribute() -> None:
    cfg, _ = load_config(None, {}, {})
    data = cfg.as_dict()
    assert data["port"] == 8000
    assert data["channel_options"]["history_size"] == 0
    assert set(data) == {f.name for f in dataclasses.fields(Config)}


def test_config_is_immutable() -> None:
    cfg, _ = load_config(None, {}, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------
# Sources and precedence (07 §1, vectors 2-4)


def test_number_accepted_for_port(tmp_path: Path) -> None:  # vector 2
    assert load_json(tmp_path, {"port": 9000}).port == 9000


def test_env_overrides_file_and_flag_overrides_env(tmp_path: Path) -> None:  # vector 3
    env = {"CENTRIFUGO_PORT": "9100"}
    assert load_json(tmp_path, {"port": "9000"}, env).port == 9100
    assert load_json(tmp_path, {"port": "9000"}, env, {"port": "9200"}).port == 9200


def test_empty_env_counts_as_unset(tmp_path: Path) -> None:  # vector 4
    assert load_json(tmp_path, {"port": 9000}, {"CENTRIFUGO_PORT": ""}).port == 9000


def test_uniws_env_prefix_wins_over_centrifugo(tmp_path: Path) -> None:
    env = {"CENTRIFUGO_API_KEY": "c", "UNIWS_API_KEY": "u"}
    assert load_json(tmp_path, {"api_key": "f"}, env).api_key == "u"


def test_whole_value_from_one_source(tmp_path: Path) -> None:
    doc = {"namespaces": [{"name": "aa"}, {"name": "bb"}]}
    cfg = load_json(tmp_path, doc, {"CENTRIFUGO_NAMESPACES": '[{"name":"cc"}]'})
    assert list(cfg.namespaces) == ["cc"]


def test_file_keys_are_case_insensitive(tmp_path: Path) -> None:
    assert load_json(tmp_path, {"API_KEY": "k"}).api_key == "k"


def test_source_path_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "config.json", "{}")
    monkeypatch.chdir(tmp_path)
    cfg, warnings = load_config("config.json", {}, {})
    assert cfg.source_path == os.path.join(str(tmp_path), "config.json")
    assert warnings == []


# ---------------------------------------------------------------------------
# Config file formats (07 §1.1)

JSON_EXAMPLE = """{"token_hmac_secret_key": "s3cr3t", "api_key": "k", "allowed_origins": ["http://localhost:3000"],
 "uni_websocket": true, "namespaces": [{"name": "chat", "history_size": 10, "history_ttl": "300s"}]}"""
YAML_EXAMPLE = """token_hmac_secret_key: s3cr3t
api_key: k
allowed_origins: ["http://localhost:3000"]
uni_websocket: true
namespaces:
  - name: chat
    history_size: 10
    history_ttl: 300s
"""
TOML_EXAMPLE = """token_hmac_secret_key = "s3cr3t"
api_key = "k"
allowed_origins = ["http://localhost:3000"]
uni_websocket = true
[[namespaces]]
name = "chat"
history_size = 10
history_ttl = "300s"
"""


@pytest.mark.parametrize(
    ("name", "text"),
    [("c.json", JSON_EXAMPLE), ("c.yaml", YAML_EXAMPLE), ("c.yml", YAML_EXAMPLE), ("c.toml", TOML_EXAMPLE)],
)
def test_equivalent_file_formats(tmp_path: Path, name: str, text: str) -> None:
    cfg, warnings = load_config(write(tmp_path, name, text), {}, {})
    assert warnings == []
    assert cfg.token_hmac_secret_key == "s3cr3t"
    assert cfg.api_key == "k"
    assert cfg.allowed_origins == ["http://localhost:3000"]
    assert cfg.uni_websocket is True
    assert cfg.namespaces == {"chat": ChannelOptions(history_size=10, history_ttl=300)}


def test_missing_file_is_a_warning(tmp_path: Path) -> None:  # vector 1
    cfg, warnings = load_config(str(tmp_path / "config.json"), {}, {})
    assert warnings == ["config file not found"]
    assert cfg.source_path is None


def test_missing_file_with_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "missing.json"), {}, {}, must_exist=True)
    assert info.value.message == "configuration error: unable to find configuration file"


@pytest.mark.parametrize("name", ["config.ini", "config", "config.JSON"])
def test_other_extension_is_not_found(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, '{"port": 9000}')
    cfg, warnings = load_config(path, {}, {})
    assert cfg.port == 8000
    assert warnings[-1] == "config file not found"
    assert path in warnings[0]


def test_other_extension_with_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "c.ini", "{}"), {}, {}, must_exist=True)
    assert info.value.message == "configuration error: unable to find configuration file"


def test_json_syntax_error_position(tmp_path: Path) -> None:  # vector 19
    path = write(tmp_path, "config.json", '{"a": 1,}')
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, {})
    assert info.value.message.startswith("JSON syntax error around line 1, column 9: ")


def test_json_syntax_error_on_later_line(tmp_path: Path) -> None:
    path = write(tmp_path, "config.json", '{\n  "a": 1\n  "b": 2\n}')
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, {})
    assert info.value.message.startswith("JSON syntax error around line 3, column 3: ")


@pytest.mark.parametrize(("name", "text"), [("c.yaml", "a: [1"), ("c.toml", "a = ")])
def test_other_parse_errors(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, name, text), {}, {})
    assert info.value.message.startswith("configuration error: ")


def test_top_level_must_be_object(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "c.json", "[1]"), {}, {})
    assert info.value.message.startswith("configuration error: ")


def test_empty_yaml_is_empty_config(tmp_path: Path) -> None:
    cfg, _ = load_config(write(tmp_path, "c.yaml", ""), {}, {})
    assert cfg.port == 8000


# ---------------------------------------------------------------------------
# Environment and value coercion (07 §1.2, §1.3, vectors 5-8)


@pytest.mark.parametrize("word", ["1", "t", "T", "true", "TRUE", "True"])
def test_env_true_words(word: str) -> None:  # vector 5
    cfg, _ = load_config(None, {"CENTRIFUGO_API_INSECURE": word}, {})
    assert cfg.api_insecure is True


@pytest.mark.parametrize("word", ["0", "f", "F", "false", "FALSE", "False"])
def test_env_false_words(word: str) -> None:
    cfg, _ = load_config(None, {"CENTRIFUGO_API_INSECURE": word}, {})
    assert cfg.api_insecure is False


def test_env_unparsable_bool_is_an_error() -> None:
    # Documented deviation: the reference silently reads "yes" as false (vector 5).
    with pytest.raises(ConfigError) as info:
        load_config(None, {"CENTRIFUGO_API_INSECURE": "yes"}, {})
    assert "api_insecure" in info.value.message


@pytest.mark.parametrize(("text", "value"), [("42", 42), ("0x10", 16), ("010", 8), ("-3", -3)])
def test_env_integers(text: str, value: int) -> None:
    cfg, _ = load_config(None, {"CENTRIFUGO_CLIENT_CHANNEL_LIMIT": text}, {})
    assert cfg.client_channel_limit == value


def test_env_unparsable_int_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"CENTRIFUGO_CLIENT_CHANNEL_LIMIT": "many"}, {})
    assert info.value.message == 'option "client_channel_limit" must be an integer, got "many"'


def test_env_array_split_on_whitespace() -> None:  # vector 6
    cfg, _ = load_config(None, {"CENTRIFUGO_ALLOWED_ORIGINS": "https://a.com https://*.b.com"}, {})
    assert cfg.allowed_origins == ["https://a.com", "https://*.b.com"]


def test_file_array_given_as_string(tmp_path: Path) -> None:
    assert load_json(tmp_path, {"allowed_origins": "https://a.com  https://b.com"}).allowed_origins == [
        "https://a.com",
        "https://b.com",
    ]


def test_env_namespaces_json() -> None:  # vector 7
    cfg, _ = load_config(None, {"CENTRIFUGO_NAMESPACES": '[{"name":"ns1","presence":true},{"name":"ns2"}]'}, {})
    assert cfg.namespaces == {"ns1": ChannelOptions(presence=True), "ns2": ChannelOptions()}


@pytest.mark.parametrize("text", ['[{"name":"ns1"', '{"name":"ns1"}', "[1]"])
def test_env_namespaces_malformed(text: str) -> None:  # vector 8
    with pytest.raises(ConfigError) as info:
        load_config(None, {"CENTRIFUGO_NAMESPACES": text}, {})
    assert info.value.message == "malformed namespaces"


def test_env_proxies_malformed() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"CENTRIFUGO_PROXIES": "[{"}, {})
    assert info.value.message == "malformed proxies"


def test_env_duration() -> None:
    cfg, _ = load_config(None, {"CENTRIFUGO_SHUTDOWN_TIMEOUT": "1m"}, {})
    assert cfg.shutdown_timeout == 60.0


def test_string_option_given_as_number(tmp_path: Path) -> None:
    assert load_json(tmp_path, {"api_key": 123}).api_key == "123"


def test_bool_option_given_as_string(tmp_path: Path) -> None:
    assert load_json(tmp_path, {"health": "true"}).health is True


def test_int_option_given_as_string(tmp_path: Path) -> None:
    assert load_json(tmp_path, {"history_size": "10", "history_ttl": "10s"}).history_size == 10


def test_wrong_type_names_the_option(tmp_path: Path) -> None:
    assert (
        error_of(tmp_path, {"client_channel_limit": [1]}) == 'option "client_channel_limit" must be an integer, got [1]'
    )


@pytest.mark.parametrize("port", ["http", 70000, -1])
def test_bad_port(tmp_path: Path, port: Any) -> None:
    assert '"port"' in error_of(tmp_path, {"port": port})


def test_internal_port_defaults_to_port(tmp_path: Path) -> None:
    cfg = load_json(tmp_path, {"port": 9000, "internal_port": ""})
    assert cfg.internal_port == 9000


def test_internal_port_as_string(tmp_path: Path) -> None:
    assert load_json(tmp_path, {"internal_port": "9001"}).internal_port == 9001


def test_internal_address_defaults_to_address(tmp_path: Path) -> None:
    assert load_json(tmp_path, {"address": "127.0.0.1"}).internal_address == "127.0.0.1"


# ---------------------------------------------------------------------------
# Duration options (07 §2.2, vectors 9-12)


def test_duration_without_unit(tmp_path: Path) -> None:  # vector 9
    assert (
        error_of(tmp_path, {"shutdown_timeout": 30})
        == "malformed duration for key 'shutdown_timeout': time: missing unit in duration \"30\""
    )


def test_env_duration_without_unit() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"CENTRIFUGO_SHUTDOWN_TIMEOUT": "30"}, {})
    assert info.value.message == "malformed duration for key 'shutdown_timeout': time: missing unit in duration \"30\""


def test_history_ttl_below_one_second(tmp_path: Path) -> None:  # vector 10
    assert (
        error_of(tmp_path, {"history_size": 10, "history_ttl": "500ms"})
        == "malformed duration for key 'history_ttl': 500ms, minimal duration resolution is 1s for this key"
    )


def test_history_ttl_sub_second_precision(tmp_path: Path) -> None:  # vector 11
    assert (
        error_of(tmp_path, {"history_size": 10, "history_ttl": "1500ms"})
        == "malformed duration for key 'history_ttl': 1.5s, sub-second precision is not supported for this key"
    )


def test_duration_below_one_millisecond(tmp_path: Path) -> None:  # vector 12
    assert error_of(tmp_path, {"proxy_connect_timeout": "0.5us"}) == (
        "malformed duration for key 'proxy_connect_timeout': 500ns, "
        "minimal duration resolution is 1ms \u2013 make sure correct time unit set"
    )


@pytest.mark.parametrize("key", ["history_meta_ttl", "presence_ttl"])
def test_other_whole_second_keys(tmp_path: Path, key: str) -> None:
    assert "sub-second precision is not supported for this key" in error_of(tmp_path, {key: "2.5s"})


def test_negative_duration_rejected(tmp_path: Path) -> None:
    assert error_of(tmp_path, {"shutdown_timeout": "-1s"}) == (
        "malformed duration for key 'shutdown_timeout': -1s, negative durations are not allowed"
    )


def test_zero_number_is_zero_duration(tmp_path: Path) -> None:
    assert load_json(tmp_path, {"shutdown_timeout": 0}).shutdown_timeout == 0.0


def test_malformed_duration_text(tmp_path: Path) -> None:
    assert (
        error_of(tmp_path, {"client_stale_close_delay": "soon"})
        == "malformed duration for key 'client_stale_close_delay': time: invalid duration \"soon\""
    )


def test_uni_websocket_zero_values_fall_back(tmp_path: Path) -> None:
    cfg = load_json(
        tmp_path,
        {"uni_websocket_ping_interval": "0", "uni_websocket_write_timeout": 0, "uni_websocket_message_size_limit": 0},
    )
    assert cfg.uni_websocket_ping_interval == 25.0
    assert cfg.uni_websocket_write_timeout == 1.0
    assert cfg.uni_websocket_message_size_limit == 65536


def test_uni_websocket_negative_values_kept(tmp_path: Path) -> None:
    cfg = load_json(tmp_path, {"uni_websocket_ping_interval": "-1s", "uni_websocket_message_size_limit": -1})
    assert cfg.uni_websocket_ping_interval == -1.0  # no pings
    assert cfg.uni_websocket_message_size_limit == -1  # no limit


def test_namespace_duration_number_rejected(tmp_path: Path) -> None:
    doc = {"namespaces": [{"name": "chat", "history_size": 10, "history_ttl": 300}]}
    assert error_of(tmp_path, doc) == (
        "namespace chat: malformed duration for key 'history_ttl': time: missing unit in duration \"300\""
    )


def test_namespace_duration_precision_checked(tmp_path: Path) -> None:
    doc = {"namespaces": [{"name": "chat", "history_size": 10, "history_ttl": "1500ms"}]}
    assert error_of(tmp_path, doc) == (
        "namespace chat: malformed duration for key 'history_ttl': 1.5s, "
        "sub-second precision is not supported for this key"
    )


def test_namespace_zero_number_ttl_accepted(tmp_path: Path) -> None:
    cfg = load_json(tmp_path, {"namespaces": [{"name": "chat", "history_ttl": 0}]})
    assert cfg.namespaces["chat"].history_ttl == 0


# ---------------------------------------------------------------------------
# Channel options and namespaces (07 §4.6, vectors 13-17)


def validation_error(tmp_path: Path, doc: Any) -> str:
    with pytest.raises(ConfigValidationError) as info:
        load_json(tmp_path, doc)
    return info.value.message


def test_history_size_without_ttl(tmp_path: Path) -> None:  # vector 13
    assert (
        validation_error(tmp_path, {"history_size": 10})
        == "error validating config: both history size and history ttl required for history"
    )


def test_history_ttl_without_size(tmp_path: Path) -> None:
    assert (
        validation_error(tmp_path, {"history_ttl": "10s"})
        == "error validating config: both history size and history ttl required for history"
    )


def test_recover_without_history(tmp_path: Path) -> None:  # vector 14
    assert (
        validation_error(tmp_path, {"recover": True})
        == "error validating config: both history size and history ttl required for recovery"
    )


def test_namespace_name_too_short(tmp_path: Path) -> None:  # vector 15
    assert validation_error(tmp_path, {"namespaces": [{"name": "a"}]}) == (
        "error validating config: namespace a: invalid namespace name \u2013 a "
        "(must match ^[-a-zA-Z0-9_.]{2,}$ regular expression)"
    )


def test_namespace_name_with_dot_accepted(tmp_path: Path) -> None:
    assert "a.b" in load_json(tmp_path, {"namespaces": [{"name": "a.b"}]}).namespaces


def test_namespace_name_unique(tmp_path: Path) -> None:  # vector 16
    assert (
        validation_error(tmp_path, {"namespaces": [{"name": "ab"}, {"name": "ab"}]})
        == "error validating config: namespace name must be unique: ab"
    )


def test_namespace_history_rule_prefixed(tmp_path: Path) -> None:
    assert (
        validation_error(tmp_path, {"namespaces": [{"name": "ab", "recover": True}]})
        == "error validating config: namespace ab: both history size and history ttl required for recovery"
    )


def test_personal_namespace_must_exist(tmp_path: Path) -> None:  # vector 17
    doc = {"user_subscribe_to_personal": True, "user_personal_channel_namespace": "pp"}
    assert (
        validation_error(tmp_path, doc) == "error validating config: namespace for user personal channel not found: pp"
    )


def test_single_connection_needs_top_level_presence(tmp_path: Path) -> None:
    assert (
        validation_error(tmp_path, {"user_personal_single_connection": True})
        == "error validating config: presence must be enabled on top level to maintain single connection"
    )


def test_single_connection_needs_namespace_presence(tmp_path: Path) -> None:
    doc = {
        "user_personal_single_connection": True,
        "user_subscribe_to_personal": True,
        "user_personal_channel_namespace": "pp",
        "namespaces": [{"name": "pp"}],
    }
    assert (
        validation_error(tmp_path, doc)
        == "error validating config: presence must be enabled for namespace pp to maintain single connection"
    )


def test_single_connection_with_presence_ok(tmp_path: Path) -> None:
    cfg = load_json(tmp_path, {"user_personal_single_connection": True, "presence": True})
    assert cfg.user_personal_single_connection


def test_rpc_namespace_name_unique(tmp_path: Path) -> None:
    assert (
        validation_error(tmp_path, {"rpc_namespaces": [{"name": "rr"}, {"name": "rr"}]})
        == "error validating config: rpc namespace name must be unique: rr"
    )


def test_channel_options_object(tmp_path: Path) -> None:
    cfg = load_json(tmp_path, {"presence": True, "history_size": 5, "history_ttl": "1m", "recover": True})
    assert cfg.channel_options == ChannelOptions(presence=True, history_size=5, history_ttl=60, recover=True)
    assert cfg.channel_options.history_enabled
    assert (cfg.presence, cfg.history_ttl) == (True, 60.0)


def test_namespaces_keep_order_and_do_not_inherit(tmp_path: Path) -> None:
    cfg = load_json(tmp_path, {"presence": True, "namespaces": [{"name": "zz"}, {"name": "aa", "JOIN_LEAVE": True}]})
    assert list(cfg.namespaces) == ["zz", "aa"]
    assert cfg.namespaces["zz"] == ChannelOptions()
    assert cfg.namespaces["aa"] == ChannelOptions(join_leave=True)


def test_unknown_namespace_option_is_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", json.dumps({"namespaces": [{"name": "ab", "colour": "red"}]}))
    _, warnings = load_config(path, {}, {})
    assert warnings == ['unknown option "colour" in namespace "ab" ignored']


# ---------------------------------------------------------------------------
# Engine, removed, unknown and unsupported options (vector 18, §4.14)


def test_unknown_engine(tmp_path: Path) -> None:  # vector 18
    assert error_of(tmp_path, {"engine": "foo"}) == "unknown engine: foo"


def test_unknown_broker(tmp_path: Path) -> None:
    assert error_of(tmp_path, {"broker": "kafka"}) == "unknown broker: kafka"


@pytest.mark.parametrize("source", ["file", "env", "flag"])
def test_v3_use_offset_rejected(tmp_path: Path, source: str) -> None:
    path = write(tmp_path, "c.json", '{"V3_USE_OFFSET": true}' if source == "file" else "{}")
    env = {"CENTRIFUGO_V3_USE_OFFSET": "true"} if source == "env" else {}
    flags = {"v3_use_offset": True} if source == "flag" else {}
    with pytest.raises(ConfigError) as info:
        load_config(path, env, flags)
    assert "v3_use_offset" in info.value.message
    assert "removed" in info.value.message


def test_unknown_option_is_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", '{"foo": 1}')
    _, warnings = load_config(path, {}, {})
    assert warnings == ['unknown option "foo" ignored']


def test_unsupported_option_warns_only_when_changed(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", '{"graphite": true, "sockjs": false, "redis_prefix": "centrifugo"}')
    _, warnings = load_config(path, {}, {})
    assert warnings == ['option "graphite" is not supported yet and is ignored']


@pytest.mark.parametrize("name", sorted(n for n in OPTIONS if n.startswith(("tls", "sockjs"))))
def test_unsupported_security_option_refuses_to_start(tmp_path: Path, name: str) -> None:
    """A server that would run plain HTTP while its config asks for TLS (or SockJS) must not
    start: every such option, set to anything but its default, is fatal."""
    value = {"bool": True, "str": "x", "int": 1}.get(OPTIONS[name].kind, "1s")
    for source in ({"file": {name: value}}, {"env": {f"UNIWS_{name.upper()}": str(value).lower()}},
                   {"flag": {name: value}}):
        path = write(tmp_path, "c.json", json.dumps(source.get("file", {})))
        with pytest.raises(ConfigError) as info:
            load_config(path, source.get("env", {}), source.get("flag", {}))
        assert info.value.message.startswith(f'option "{name}" refused: '), info.value.message
    # The default value is fine (a Centrifugo config may spell out "tls": false).
    if OPTIONS[name].kind != "dur":
        assert load_config(None, {}, {name: OPTIONS[name].default})


def test_admin_options_are_supported(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", '{"admin": true, "admin_password": "p", "admin_secret": "s", '
                                     '"prometheus": true, "health": true}')
    cfg, warnings = load_config(path, {}, {})
    assert warnings == [] and cfg.admin and cfg.admin_password == "p" and cfg.prometheus


def test_admin_insecure_warns(tmp_path: Path) -> None:
    _, warnings = load_config(None, {}, {"admin": True, "admin_insecure": True})
    assert warnings == ["INSECURE admin mode enabled, make sure you understand risks"]


def test_health_worker_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {"health_worker_timeout": "0s"})
    assert "health_worker_timeout" in info.value.message


def test_admin_web_path_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {"admin_web_path": str(tmp_path / "missing")})
    assert "admin_web_path" in info.value.message


def test_insecure_modes_warn() -> None:
    _, warnings = load_config(None, {}, {"client_insecure": True, "api_insecure": True})
    assert warnings == [
        "INSECURE client mode enabled, make sure you understand risks",
        "INSECURE API mode enabled, make sure you understand risks",
    ]


def test_workers_option() -> None:
    cfg, _ = load_config(None, {"UNIWS_WORKERS": "4"}, {})
    assert cfg.workers == 4
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {"workers": -1})
    assert "workers" in info.value.message
