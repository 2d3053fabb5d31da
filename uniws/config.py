"""One typed Config built from flags, environment, a config file and defaults (spec 07).

`load_config` is pure apart from reading the file (and the host name for the default
node name): every value is coerced and validated once here, so the rest of the server
reads plain typed attributes (`cfg.uni_websocket_ping_interval` is float seconds).

Chosen behaviour where the reference (Centrifugo v3.2.3) is lax, see 07 §9:
* an unparsable boolean/integer value (env or file) is an error naming the option,
  not a silent false/0;
* negative durations are rejected (except ping intervals: negative = no pings), and the
  1ms / 1s checks also apply inside namespaces, where bare non-zero numbers are rejected;
* unknown options produce a warning; options not implemented yet produce a warning
  when set to a non-default value, except security-relevant ones (TLS, the admin UI,
  SockJS), which stop startup with a message naming the option: a server that runs
  plain HTTP while its config asks for TLS must not start;
* `UNIWS_<OPTION>` env variables take precedence over `CENTRIFUGO_<OPTION>`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from uniws.channels import ChannelOptions

ENV_PREFIXES = ("UNIWS_", "CENTRIFUGO_")  # first match wins
NOT_FOUND_MESSAGE = "configuration error: unable to find configuration file"
NAME_PATTERN = re.compile(r"^[-a-zA-Z0-9_.]{2,}$")

# Options the server implements now; others are accepted and, when set to a
# non-default value, reported as "not supported yet".
SUPPORTED = frozenset(
    {
        "address", "port", "internal_address", "internal_port", "name", "engine",
        "log_level", "log_file", "pid_file", "shutdown_timeout", "shutdown_termination_delay",
        "allowed_origins", "api_disable", "api_key", "api_insecure", "api_handler_prefix",
        "health", "health_handler_prefix", "health_worker_timeout", "worker_hang_timeout",
        "admin", "admin_password", "admin_secret", "admin_insecure", "admin_web_path", "admin_handler_prefix",
        "admin_external", "prometheus", "prometheus_handler_prefix",
        "uni_websocket", "uni_websocket_handler_prefix", "uni_websocket_message_size_limit",
        "uni_websocket_ping_interval", "uni_websocket_write_timeout",
        "uni_websocket_resume", "uni_websocket_resume_secret",
        "token_hmac_secret_key", "token_rsa_public_key", "token_ecdsa_public_key",
        "token_audience", "token_issuer",
        "client_insecure", "client_anonymous", "client_channel_limit",
        "client_user_connection_limit", "client_queue_max_size", "client_expired_close_delay",
        "client_expired_sub_close_delay", "api_error_mode",
        "client_stale_close_delay", "client_recovery_max_publication_limit",
        *(f.name for f in dataclasses.fields(ChannelOptions)), "namespaces",
        "channel_private_prefix", "channel_namespace_boundary", "channel_user_boundary",
        "channel_user_separator", "channel_max_length",
        "user_subscribe_to_personal", "user_personal_channel_namespace",
        "user_personal_single_connection",
        "history_meta_ttl", "workers", "gomaxprocs", "usage_stats_disable",
        "proxy_connect_endpoint", "proxy_connect_timeout", "proxy_refresh_endpoint", "proxy_refresh_timeout",
        "proxy_http_headers", "proxy_binary_encoding", "proxy_include_connection_meta",
        "http_max_request_body_size", "http_header_read_timeout", "http_body_read_timeout",
        "http_idle_timeout", "http_max_incomplete_requests",
        "redis_address", "redis_password", "redis_user", "redis_db", "redis_prefix",
        "redis_connect_timeout", "redis_read_timeout", "redis_write_timeout", "redis_reconnect_max_delay",
        "presence_ttl", "client_presence_update_interval",
        "redis_sentinel_address", "redis_sentinel_master_name", "redis_sentinel_user", "redis_sentinel_password",
        "redis_tls", "redis_tls_skip_verify",
    }
)  # fmt: skip

# Proxy options uniws refuses to start with (08 §4): its clients never subscribe, publish or
# call RPC, and the gRPC and granular forms are not implemented. Ignoring them would be silent.
UNSUPPORTED_PROXY = MappingProxyType(
    {
        "proxy_rpc_endpoint": "RPC proxy is for bidirectional clients, which uniws does not serve",
        "proxy_subscribe_endpoint": "subscribe proxy is for bidirectional clients, which uniws does not serve",
        "proxy_publish_endpoint": "publish proxy is for bidirectional clients, which uniws does not serve",
        "proxy_grpc_metadata": "gRPC proxies are not supported",
        "proxy_grpc_cert_file": "gRPC proxies are not supported",
        "proxy_grpc_credentials_key": "gRPC proxies are not supported",
        "proxy_grpc_credentials_value": "gRPC proxies are not supported",
        "granular_proxy_mode": "granular proxy mode is not supported, use proxy_connect_endpoint and "
                               "proxy_refresh_endpoint",
        "proxies": "granular proxy mode is not supported, use proxy_connect_endpoint and proxy_refresh_endpoint",
        "connect_proxy_name": "granular proxy mode is not supported, use proxy_connect_endpoint",
        "refresh_proxy_name": "granular proxy mode is not supported, use proxy_refresh_endpoint",
        "rpc_proxy_name": "RPC proxy is for bidirectional clients, which uniws does not serve",
    }
)
# Channel options (top level and per namespace) for proxies of bidirectional clients.
UNSUPPORTED_CHANNEL_PROXY = ("proxy_subscribe", "proxy_publish", "subscribe_proxy_name", "publish_proxy_name")


class ConfigError(Exception):
    """A fatal configuration problem; `message` is the exact text to report."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigValidationError(ConfigError):
    """A channel/namespace rule violation (07 §4.6).

    The server reports `error validating config: <detail>`; checkconfig reports
    `configuration error: <detail>` (07 §5.7).
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"error validating config: {detail}")
        self.detail = detail


# ---------------------------------------------------------------------------
# Durations (07 §2.2): Go syntax, computed in integer nanoseconds to stay exact.

_NS_PER_UNIT: Mapping[str, int] = MappingProxyType(
    {
        "ns": 1,
        "us": 1_000,
        "\u00b5s": 1_000,  # micro sign
        "\u03bcs": 1_000,  # Greek mu
        "ms": 1_000_000,
        "s": 1_000_000_000,
        "m": 60_000_000_000,
        "h": 3_600_000_000_000,
    }
)
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")
_MAX_DURATION_NS = 2**63 - 1
_SECOND_NS = 1_000_000_000
_MILLISECOND_NS = 1_000_000


def _parse_duration_ns(text: str) -> int:
    """Go's time.ParseDuration; raises ValueError with Go's message."""
    quoted = json.dumps(text, ensure_ascii=False)
    invalid = f"time: invalid duration {quoted}"
    s = text
    negative = s.startswith("-")
    if s.startswith(("-", "+")):
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(invalid)
    total = 0
    while s:
        match = _DURATION_PART.match(s)
        assert match is not None  # the pattern matches the empty string
        whole, frac, unit = match.group(1), match.group(2) or "", match.group(3)
        if not whole and not frac:
            raise ValueError(invalid)
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _NS_PER_UNIT:
            # Go reports the unit up to the next digit or dot, which is what we captured.
            raise ValueError(f"time: unknown unit {json.dumps(unit, ensure_ascii=False)} in duration {quoted}")
        scale = _NS_PER_UNIT[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        if total > _MAX_DURATION_NS:
            raise ValueError(invalid)
        s = s[match.end() :]
    return -total if negative else total


def parse_duration(text: str) -> float:
    """Parse a Go duration string ("300ms", "1h30m", "-1.5s", "0") into float seconds."""
    return _parse_duration_ns(text) / _SECOND_NS


def _format_fraction(value: int, unit: int) -> str:
    """`value / unit` with the fraction's trailing zeros dropped (Go's fmtFrac)."""
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def _format_ns(ns: int) -> str:
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < _MILLISECOND_NS:
        return f"{sign}{_format_fraction(ns, 1_000)}\u00b5s"
    if ns < _SECOND_NS:
        return f"{sign}{_format_fraction(ns, _MILLISECOND_NS)}ms"
    minutes, sub_minute_ns = divmod(ns, 60 * _SECOND_NS)
    hours, minutes = divmod(minutes, 60)
    text = _format_fraction(sub_minute_ns, _SECOND_NS) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def format_duration(seconds: float) -> str:
    """Go's Duration.String(): `0s`, `45s`, `1m30s`, `1h0m0s`, `168h0m0s`, `1.5s`, `300ms`."""
    if isinstance(seconds, int):
        return _format_ns(seconds * _SECOND_NS)  # exact for large whole-second TTLs
    return _format_ns(round(seconds * _SECOND_NS))


# ---------------------------------------------------------------------------
# Option table: the Config dataclass below is the table. A field's kind says how a
# raw value (file native, env/flag string) is coerced; it is inferred from the
# default's type unless given in the field metadata.

_KIND = "kind"


def _dur(default: str, *, whole_seconds: bool = False, allow_negative: bool = False) -> Any:
    kind = "dur_s" if whole_seconds else "dur"
    meta = {_KIND: kind, "allow_negative": allow_negative}
    return field(default=parse_duration(default), metadata=meta)


def _list(*default: str) -> Any:
    return field(default_factory=lambda: list(default), metadata={_KIND: "list"})


def _objects() -> Any:
    return field(default_factory=list, metadata={_KIND: "objects"})


def _special(kind: str, default: Any) -> Any:
    return field(default=default, metadata={_KIND: kind})


def _derived(default_factory: Callable[[], Any] | None = None, default: Any = None) -> Any:
    """Not an option: computed by load_config from options."""
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={_KIND: None})
    return field(default=default, metadata={_KIND: None})


@dataclass(frozen=True, slots=True)
class Config:
    """All options of spec 07 §4 with their defaults. Durations are float seconds."""

    # 4.1 Server, logging, process
    address: str = ""
    port: int = _special("port", 8000)
    internal_address: str = ""  # load_config: "" -> address
    internal_port: int = _special("internal_port", 8000)  # load_config: "" -> port
    name: str = ""  # load_config: "" -> <hostname>_<port>
    engine: str = "memory"
    broker: str = ""
    log_level: str = "info"
    log_file: str = ""
    pid_file: str = ""
    gomaxprocs: int = 0
    debug: bool = False
    shutdown_timeout: float = _dur("30s")
    shutdown_termination_delay: float = _dur("0")
    usage_stats_disable: bool = False
    allowed_origins: list[str] = _list()
    websocket_disable: bool = False
    api_disable: bool = False
    workers: int = 0  # uniws: worker processes, 0 = CPU count
    # uniws: the HTTP front (API, health) of each worker; timeouts 0 = none, count 0 = no cap
    http_max_request_body_size: int = 16 * 1024 * 1024
    http_header_read_timeout: float = _dur("10s")
    http_body_read_timeout: float = _dur("30s")
    http_idle_timeout: float = _dur("60s")
    http_max_incomplete_requests: int = 10000

    # 4.2 Unidirectional WebSocket (zero values fall back to the defaults, 01 §1)
    uni_websocket: bool = False
    uni_websocket_handler_prefix: str = "/connection/uni_websocket"
    uni_websocket_message_size_limit: int = 65536  # negative = no limit
    uni_websocket_ping_interval: float = _dur("25s", allow_negative=True)  # negative = no pings
    uni_websocket_write_timeout: float = _dur("1s")
    uni_websocket_compression: bool = False
    uni_websocket_compression_level: int = 1
    uni_websocket_compression_min_size: int = 0
    uni_websocket_read_buffer_size: int = 0
    uni_websocket_write_buffer_size: int = 0
    uni_websocket_use_write_buffer_pool: bool = False
    # uniws extension: one signed resume cursor per connection (uniws/resume.py)
    uni_websocket_resume: bool = False
    uni_websocket_resume_secret: str = ""    # MAC key of cursors; empty: derived from token_hmac_secret_key

    # 4.3 Other transports and handler prefixes (§3)
    websocket_handler_prefix: str = "/connection/websocket"
    websocket_compression: bool = False
    websocket_compression_level: int = 1
    websocket_compression_min_size: int = 0
    websocket_read_buffer_size: int = 0
    websocket_write_buffer_size: int = 0
    websocket_use_write_buffer_pool: bool = False
    websocket_ping_interval: float = _dur("25s", allow_negative=True)
    websocket_write_timeout: float = _dur("1s")
    websocket_message_size_limit: int = 65536
    sockjs: bool = False
    sockjs_handler_prefix: str = "/connection/sockjs"
    sockjs_url: str = "https://cdn.jsdelivr.net/npm/sockjs-client@1/dist/sockjs.min.js"
    sockjs_heartbeat_delay: float = _dur("25s")
    uni_sse: bool = False
    uni_sse_handler_prefix: str = "/connection/uni_sse"
    uni_sse_max_request_body_size: int = 65536
    uni_http_stream: bool = False
    uni_http_stream_handler_prefix: str = "/connection/uni_http_stream"
    uni_http_stream_max_request_body_size: int = 65536
    sse: bool = False
    sse_handler_prefix: str = "/connection/sse"
    http_stream: bool = False
    http_stream_handler_prefix: str = "/connection/http_stream"
    emulation_handler_prefix: str = "/emulation"
    uni_grpc: bool = False
    uni_grpc_address: str = ""
    uni_grpc_port: int = 11000
    uni_grpc_max_receive_message_size: int = 65536
    uni_grpc_tls: bool = False
    uni_grpc_tls_cert: str = ""
    uni_grpc_tls_key: str = ""
    uni_grpc_tls_disable: bool = False

    # 4.4 Connection token (JWT)
    token_hmac_secret_key: str = ""
    token_rsa_public_key: str = ""
    token_ecdsa_public_key: str = ""
    token_jwks_public_endpoint: str = ""
    token_audience: str = ""
    token_issuer: str = ""

    # 4.5 Client connection behaviour
    client_insecure: bool = False
    client_anonymous: bool = False
    client_channel_limit: int = 128
    client_user_connection_limit: int = 0
    client_queue_max_size: int = 1048576
    client_presence_update_interval: float = _dur("27s")
    client_expired_close_delay: float = _dur("25s")
    client_expired_sub_close_delay: float = _dur("25s")
    client_stale_close_delay: float = _dur("25s")
    client_channel_position_check_delay: float = _dur("40s")
    client_concurrency: int = 0
    client_history_max_publication_limit: int = 300
    client_recovery_max_publication_limit: int = 300
    use_unlimited_history_by_default: bool = False
    node_info_metrics_aggregate_interval: float = _dur("60s")

    # 4.6 Channels, namespaces, personal channels
    channel_max_length: int = 255
    channel_private_prefix: str = "$"
    channel_namespace_boundary: str = ":"
    channel_user_boundary: str = "#"
    channel_user_separator: str = ","
    user_subscribe_to_personal: bool = False
    user_personal_channel_namespace: str = ""
    user_personal_single_connection: bool = False
    namespaces: dict[str, ChannelOptions] = field(default_factory=dict, metadata={_KIND: "namespaces"})
    rpc_namespaces: list[dict[str, Any]] = _objects()
    rpc_namespace_boundary: str = ":"
    rpc_proxy_name: str = ""
    # Top-level channel options (mirrored in `channel_options`)
    presence: bool = False
    join_leave: bool = False
    history_size: int = 0
    history_ttl: float = _dur("0", whole_seconds=True)
    recover: bool = False
    position: bool = False
    protected: bool = False
    anonymous: bool = False
    publish: bool = False
    subscribe_to_publish: bool = False
    presence_disable_for_client: bool = False
    history_disable_for_client: bool = False
    proxy_subscribe: bool = False
    proxy_publish: bool = False
    subscribe_proxy_name: str = ""
    publish_proxy_name: str = ""

    # 4.7 History / presence storage
    history_meta_ttl: float = _dur("0", whole_seconds=True)
    presence_ttl: float = _dur("60s", whole_seconds=True)

    # 4.8 Server API
    api_key: str = ""
    api_insecure: bool = False
    api_handler_prefix: str = "/api"
    api_error_mode: str = ""
    grpc_api: bool = False
    grpc_api_address: str = ""
    grpc_api_port: int = 10000
    grpc_api_key: str = ""
    grpc_api_tls: bool = False
    grpc_api_tls_cert: str = ""
    grpc_api_tls_key: str = ""
    grpc_api_tls_disable: bool = False

    # 4.9 Admin, health, metrics
    admin: bool = False
    admin_password: str = ""
    admin_secret: str = ""
    admin_insecure: bool = False
    admin_web_path: str = ""
    admin_handler_prefix: str = ""
    admin_external: bool = False
    health: bool = False
    health_handler_prefix: str = "/health"
    health_worker_timeout: float = _dur("1s")  # uniws: /health is 503 when a worker takes longer to answer
    worker_hang_timeout: float = _dur("10s")  # uniws: the supervisor restarts a worker silent this long; 0 = never
    prometheus: bool = False
    prometheus_handler_prefix: str = "/metrics"
    graphite: bool = False
    graphite_host: str = "localhost"
    graphite_port: int = 2003
    graphite_prefix: str = "centrifugo"
    graphite_interval: float = _dur("10s")
    graphite_tags: bool = False

    # 4.10 Redis engine (+ out-of-scope Tarantool and NATS)
    redis_address: list[str] = _list("redis://127.0.0.1:6379")
    redis_password: str = ""
    redis_user: str = ""
    redis_db: int = 0
    redis_prefix: str = "centrifugo"
    redis_tls: bool = False
    redis_tls_skip_verify: bool = False
    redis_connect_timeout: float = _dur("1s")
    redis_read_timeout: float = _dur("5s")
    redis_write_timeout: float = _dur("1s")
    redis_idle_timeout: float = _dur("0")
    redis_reconnect_max_delay: float = _dur("5s")    # uniws: cap of the doubling reconnect delay
    redis_use_lists: bool = False
    redis_sentinel_address: list[str] = _list()
    redis_sentinel_master_name: str = ""
    redis_sentinel_password: str = ""
    redis_sentinel_user: str = ""
    redis_cluster_address: list[str] = _list()
    tarantool_address: list[str] = _list("tcp://127.0.0.1:3301")
    tarantool_mode: str = "standalone"
    tarantool_user: str = ""
    tarantool_password: str = ""
    nats_url: str = ""
    nats_prefix: str = "centrifugo"
    nats_dial_timeout: float = _dur("1s")
    nats_write_timeout: float = _dur("1s")

    # 4.11 Proxy
    proxy_connect_endpoint: str = ""
    proxy_connect_timeout: float = _dur("1s")
    proxy_refresh_endpoint: str = ""
    proxy_refresh_timeout: float = _dur("1s")
    proxy_rpc_endpoint: str = ""
    proxy_rpc_timeout: float = _dur("1s")
    proxy_subscribe_endpoint: str = ""
    proxy_subscribe_timeout: float = _dur("1s")
    proxy_publish_endpoint: str = ""
    proxy_publish_timeout: float = _dur("1s")
    proxy_http_headers: list[str] = _list()
    proxy_grpc_metadata: list[str] = _list()
    proxy_binary_encoding: bool = False
    proxy_include_connection_meta: bool = False
    proxy_grpc_cert_file: str = ""
    proxy_grpc_credentials_key: str = ""
    proxy_grpc_credentials_value: str = ""
    granular_proxy_mode: bool = False
    proxies: list[dict[str, Any]] = _objects()
    connect_proxy_name: str = ""
    refresh_proxy_name: str = ""

    # 4.13 TLS
    tls: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_external: bool = False
    tls_autocert: bool = False
    tls_autocert_host_whitelist: str = ""
    tls_autocert_cache_dir: str = ""
    tls_autocert_email: str = ""
    tls_autocert_server_name: str = ""
    tls_autocert_http: bool = False
    tls_autocert_http_addr: str = ":80"
    tls_autocert_force_rsa: bool = False

    # Derived, not options
    channel_options: ChannelOptions = _derived(default_factory=ChannelOptions)
    source_path: str | None = _derived()  # absolute path of the config file used

    def as_dict(self) -> dict[str, Any]:
        """Every attribute as plain data (for debugging and logs)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class _Option:
    name: str
    kind: str
    default: Any
    allow_negative: bool = False


def _option_kind(f: dataclasses.Field[Any]) -> str | None:
    if _KIND in f.metadata:
        kind: str | None = f.metadata[_KIND]
        return kind
    return {bool: "bool", int: "int", str: "str"}[type(f.default)]


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _build_option_table() -> Mapping[str, _Option]:
    table = {}
    for f in dataclasses.fields(Config):
        kind = _option_kind(f)
        if kind is not None:
            allow_negative = bool(f.metadata.get("allow_negative", False))
            table[f.name] = _Option(f.name, kind, _default_of(f), allow_negative)
    return MappingProxyType(table)


OPTIONS: Mapping[str, _Option] = _build_option_table()

_CHANNEL_OPTION_KINDS: Mapping[str, str] = MappingProxyType(
    {f.name: ("dur_s" if f.name == "history_ttl" else OPTIONS[f.name].kind) for f in dataclasses.fields(ChannelOptions)}
)

# Options removed in v3: present in any source -> fatal (07 §4.14).
_REMOVED: Mapping[str, str] = MappingProxyType(
    {"v3_use_offset": "option v3_use_offset was removed in Centrifugo v3 (offsets are always used), remove it"}
)


# ---------------------------------------------------------------------------
# Value coercion (07 §1.2, §1.3). Coercers raise ValueError with a message that
# names the option; the caller turns it into a ConfigError.

_TRUE_WORDS = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE_WORDS = frozenset({"0", "f", "F", "false", "FALSE", "False"})
_OCTAL = re.compile(r"[+-]?0[0-7]+")


def _shown(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _to_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        if value in _TRUE_WORDS:
            return True
        if value in _FALSE_WORDS:
            return False
    raise ValueError(f'option "{key}" must be a boolean (true/false/1/0/t/f), got {_shown(value)}')


def _parse_int_text(text: str) -> int:
    """Decimal, 0x hex, 0o/leading-zero octal, 0b binary, like Go's ParseInt(s, 0, 64)."""
    s = text.strip()
    if _OCTAL.fullmatch(s):
        return int(s, 8)
    return int(s, 0)


def _to_int(key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return _parse_int_text(value)
        except ValueError:
            pass
    raise ValueError(f'option "{key}" must be an integer, got {_shown(value)}')


def _to_str(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)  # `"port": 8000` is the same as `"port": "8000"`
    raise ValueError(f'option "{key}" must be a string, got {_shown(value)}')


def _to_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()  # one string: elements separated by whitespace
    if isinstance(value, list):
        return [_to_str(key, item) for item in value]
    raise ValueError(f'option "{key}" must be an array of strings, got {_shown(value)}')


def _to_objects(key: str, value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):  # env var or flag: a JSON string
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"malformed {key}") from None
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise ValueError(f"malformed {key}")
        return value
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return value
    raise ValueError(f'option "{key}" must be an array of objects, got {_shown(value)}')


def _to_duration(key: str, value: Any, *, whole_seconds: bool, allow_negative: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"malformed duration for key '{key}': expected a duration string, got {_shown(value)}")
    if not isinstance(value, str):
        if value == 0:
            return 0.0
        # A bare number is not a duration in v3 (also inside namespaces, unlike the reference).
        value = str(value)
    try:
        ns = _parse_duration_ns(value)
    except ValueError as exc:
        raise ValueError(f"malformed duration for key '{key}': {exc}") from None
    _check_duration(key, ns, whole_seconds=whole_seconds, allow_negative=allow_negative)
    return ns / _SECOND_NS


def _check_duration(key: str, ns: int, *, whole_seconds: bool, allow_negative: bool) -> None:
    prefix = f"malformed duration for key '{key}': {_format_ns(ns)}"
    if ns < 0 and not allow_negative:
        raise ValueError(f"{prefix}, negative durations are not allowed")
    size = abs(ns)
    if 0 < size < _MILLISECOND_NS:
        raise ValueError(f"{prefix}, minimal duration resolution is 1ms \u2013 make sure correct time unit set")
    if whole_seconds and 0 < size < _SECOND_NS:
        raise ValueError(f"{prefix}, minimal duration resolution is 1s for this key")
    if whole_seconds and size % _SECOND_NS:
        raise ValueError(f"{prefix}, sub-second precision is not supported for this key")


def _to_port(key: str, value: Any) -> int:
    try:
        port = _to_int(key, value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f'option "{key}" must be a port number (0-65535), got {_shown(value)}')
    return port


def _coerce(key: str, kind: str, value: Any, *, allow_negative: bool = False) -> Any:
    if kind == "bool":
        return _to_bool(key, value)
    if kind == "int":
        return _to_int(key, value)
    if kind == "str":
        return _to_str(key, value)
    if kind == "list":
        return _to_list(key, value)
    if kind in ("objects", "namespaces"):
        return _to_objects(key, value)
    if kind in ("dur", "dur_s"):
        return _to_duration(key, value, whole_seconds=kind == "dur_s", allow_negative=allow_negative)
    if kind == "port":
        return _to_port(key, value)
    if kind == "internal_port":
        # "" means "same as port"; resolved after all options are read.
        return None if value == "" else _to_port(key, value)
    raise AssertionError(f"unknown option kind {kind}")


# ---------------------------------------------------------------------------
# Config file (07 §1.1)


def _parse_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        # Python's lineno/colno equal the spec's L and C (C counts from the last newline).
        raise ConfigError(f"JSON syntax error around line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration error: {exc}") from None


def _parse_yaml(data: bytes) -> Any:
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration error: {exc}") from None
    return {} if doc is None else doc  # an empty YAML document is an empty mapping


def _parse_toml(data: bytes) -> Any:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"configuration error: {exc}") from None


_FILE_PARSERS: Mapping[str, Callable[[bytes], Any]] = MappingProxyType(
    {".json": _parse_json, ".yaml": _parse_yaml, ".yml": _parse_yaml, ".toml": _parse_toml}
)


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:  # missing or unreadable: both mean "not found" (07 §1.1)
        return None


def _read_config_file(path: str | None, must_exist: bool, warnings: list[str]) -> tuple[dict[str, Any], str | None]:
    """Lower-cased top-level mapping of the file and its absolute path; ({}, None) if not found."""
    if path is None:
        return {}, None
    parser = _FILE_PARSERS.get(os.path.splitext(path)[1])  # case-sensitive, like the reference
    data = _read_bytes(path) if parser is not None else None
    if parser is None or data is None:
        if must_exist:
            raise ConfigError(NOT_FOUND_MESSAGE)
        if parser is None:
            warnings.append(f"config file {path} ignored: extension must be one of .json, .yaml, .yml, .toml")
        warnings.append("config file not found")
        return {}, None
    doc = parser(data)
    if not isinstance(doc, dict):
        raise ConfigError("configuration error: top-level value of the config file must be an object")
    return {str(key).lower(): value for key, value in doc.items()}, os.path.abspath(path)


# ---------------------------------------------------------------------------
# Loading


def _env_value(env: Mapping[str, str], name: str) -> str | None:
    for prefix in ENV_PREFIXES:
        value = env.get(prefix + name.upper())
        if value:  # an empty variable counts as unset
            return value
    return None


def _raw_values(file_values: Mapping[str, Any], env: Mapping[str, str], flags: Mapping[str, Any]) -> dict[str, Any]:
    """For each option, the raw value of the highest-priority source that sets it."""
    raw: dict[str, Any] = {}
    for name in OPTIONS:
        if name in flags:
            raw[name] = flags[name]
            continue
        env_value = _env_value(env, name)
        if env_value is not None:
            raw[name] = env_value
        elif name in file_values:
            raw[name] = file_values[name]
    return raw


def _reject_removed_options(file_values: Mapping[str, Any], env: Mapping[str, str], flags: Mapping[str, Any]) -> None:
    for name, message in _REMOVED.items():
        if name in flags or name in file_values or _env_value(env, name) is not None:
            raise ConfigError(message)


def _coerce_all(raw: Mapping[str, Any]) -> dict[str, Any]:
    values = {}
    for name, value in raw.items():
        option = OPTIONS[name]
        try:
            values[name] = _coerce(name, option.kind, value, allow_negative=option.allow_negative)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return values


def _parse_namespace(entry: Mapping[str, Any], warnings: list[str]) -> tuple[str, ChannelOptions]:
    lowered = {str(key).lower(): value for key, value in entry.items()}
    name = lowered.pop("name", "")
    if not isinstance(name, str):
        raise ConfigError(f"namespace {_shown(name)}: namespace name must be a string")
    options = {}
    for key, value in lowered.items():
        kind = _CHANNEL_OPTION_KINDS.get(key)
        if kind is None:
            warnings.append(f'unknown option "{key}" in namespace "{name}" ignored')
            continue
        try:
            options[key] = _coerce(key, kind, value)
        except ValueError as exc:
            raise ConfigError(f"namespace {name}: {exc}") from None
    if "history_ttl" in options:
        options["history_ttl"] = int(options["history_ttl"])
    return name, ChannelOptions(**options)


def _check_channel_options(opts: ChannelOptions) -> str | None:
    """The two history rules of 07 §4.6; the message of the first one broken."""
    if (opts.history_size > 0) != (opts.history_ttl > 0):
        return "both history size and history ttl required for history"
    if opts.recover and not opts.history_enabled:
        return "both history size and history ttl required for recovery"
    return None


def _invalid_name(what: str, name: str) -> ConfigValidationError:
    pattern = NAME_PATTERN.pattern
    return ConfigValidationError(
        f"{what} {name}: invalid {what} name \u2013 {name} (must match {pattern} regular expression)"
    )


def _validate_namespaces(parsed: list[tuple[str, ChannelOptions]]) -> dict[str, ChannelOptions]:
    namespaces: dict[str, ChannelOptions] = {}
    for name, opts in parsed:
        if not NAME_PATTERN.fullmatch(name):
            raise _invalid_name("namespace", name)
        if name in namespaces:
            raise ConfigValidationError(f"namespace name must be unique: {name}")
        problem = _check_channel_options(opts)
        if problem:
            raise ConfigValidationError(f"namespace {name}: {problem}")
        namespaces[name] = opts
    return namespaces


def _validate_rpc_namespaces(entries: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for entry in entries:
        name = str(entry.get("name", ""))
        if not NAME_PATTERN.fullmatch(name):
            raise _invalid_name("rpc namespace", name)
        if name in seen:
            raise ConfigValidationError(f"rpc namespace name must be unique: {name}")
        seen.add(name)


def _validate_personal(
    values: Mapping[str, Any], top: ChannelOptions, namespaces: Mapping[str, ChannelOptions]
) -> None:
    ns = values["user_personal_channel_namespace"]
    if values["user_subscribe_to_personal"] and ns and ns not in namespaces:
        raise ConfigValidationError(f"namespace for user personal channel not found: {ns}")
    if not values["user_personal_single_connection"]:
        return
    if not ns:
        if not top.presence:
            raise ConfigValidationError("presence must be enabled on top level to maintain single connection")
    elif ns not in namespaces or not namespaces[ns].presence:
        raise ConfigValidationError(f"presence must be enabled for namespace {ns} to maintain single connection")


def _top_channel_options(values: Mapping[str, Any]) -> ChannelOptions:
    options = {f.name: values[f.name] for f in dataclasses.fields(ChannelOptions)}
    options["history_ttl"] = int(options["history_ttl"])
    return ChannelOptions(**options)


def _check_engine(values: Mapping[str, Any]) -> None:
    engine = values["engine"]
    if engine == "redis":
        _check_redis(values)
    if engine not in ("memory", "redis"):
        raise ConfigError(f"unknown engine: {engine}")
    broker = values["broker"]
    if broker not in ("", "nats"):
        raise ConfigError(f"unknown broker: {broker}")


def _check_redis(values: Mapping[str, Any]) -> None:
    """Redis options (07 §4.10): every address parses, timeouts and prefix are usable."""
    redis_addresses(values)
    if not values["redis_prefix"]:
        raise ConfigError('option "redis_prefix" must not be empty')
    if values["redis_db"] < 0:
        raise ConfigError(f'option "redis_db" must not be negative, got {values["redis_db"]}')
    for name in ("redis_connect_timeout", "redis_read_timeout", "redis_write_timeout",
                 "redis_reconnect_max_delay", "client_presence_update_interval", "presence_ttl"):
        if values[name] <= 0:
            raise ConfigError(f'option "{name}" must be positive with engine redis')


def redis_addresses(config: Any) -> list[Any]:
    """The shards' parsed addresses from a Config or the raw option values."""
    from uniws.engine.redis_shards import AddressError, parse_address, parse_sentinel_group

    get = config.get if isinstance(config, Mapping) else lambda name: getattr(config, name)
    if get("redis_sentinel_address"):       # sentinel mode: one entry (sentinel list) per shard
        try:
            return [parse_sentinel_group(entry, get("redis_sentinel_master_name"), user=get("redis_user"),
                                         password=get("redis_password"), db=get("redis_db"),
                                         sentinel_user=get("redis_sentinel_user"),
                                         sentinel_password=get("redis_sentinel_password"),
                                         tls=get("redis_tls"), tls_skip_verify=get("redis_tls_skip_verify"))
                    for entry in get("redis_sentinel_address")]
        except AddressError as exc:
            raise ConfigError(f"error creating engine: {exc}") from None
    entries = get("redis_address")
    if not entries:
        raise ConfigError('option "redis_address" must name at least one Redis server')
    out = []
    for entry in entries:
        try:
            out.append(parse_address(entry, user=get("redis_user"), password=get("redis_password"),
                                     db=get("redis_db"), tls=get("redis_tls"),
                                     tls_skip_verify=get("redis_tls_skip_verify")))
        except AddressError as exc:
            raise ConfigError(f'option "redis_address": {exc}') from None
    return out


def _check_proxy(values: Mapping[str, Any], namespaces: Mapping[str, ChannelOptions]) -> None:
    """Connect and refresh proxies over HTTP(S) only; every other proxy option refuses to start."""
    for name, why in UNSUPPORTED_PROXY.items():
        if values[name] != OPTIONS[name].default:
            raise ConfigError(f'option "{name}" is not supported: {why}')
    scopes = [("", values.get)]
    scopes += [(f' in namespace "{ns}"', lambda name, o=opts: getattr(o, name)) for ns, opts in namespaces.items()]
    for where, option in scopes:
        for name in UNSUPPORTED_CHANNEL_PROXY:
            if option(name):
                raise ConfigError(f'option "{name}"{where} is not supported: subscribe and publish proxies are '
                                  f"for bidirectional clients, which uniws does not serve")
    for kind in ("connect", "refresh"):
        endpoint = values[f"proxy_{kind}_endpoint"]
        if not endpoint:
            continue
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f'option "proxy_{kind}_endpoint" must start with http:// or https:// '
                              f"(gRPC proxies are not supported), got {endpoint!r}")
        if values[f"proxy_{kind}_timeout"] <= 0:
            raise ConfigError(f'option "proxy_{kind}_timeout" must be positive when proxy_{kind}_endpoint is set')


# Unsupported options a user relies on for security or exposure: set to anything but the
# default, the server refuses to start (like `engine: redis`).
_REFUSED: tuple[tuple[str, str], ...] = (
    ("tls", "TLS is not supported yet; terminate TLS in a proxy in front of uniws"),
    ("sockjs", "the SockJS transport is not supported"),
    ("redis_cluster_address", "Redis Cluster is not supported; use redis_address (one entry per shard)"),
    ("redis_use_lists", "legacy LIST history is not supported; uniws needs Redis >= 5.0.1 streams"),
)
_NOT_REFUSED: frozenset[str] = frozenset()


def refused_option(name: str) -> str | None:
    """Why a non-default value of `name` stops startup, or None."""
    if name in _NOT_REFUSED:
        return None
    for prefix, why in _REFUSED:
        if name == prefix or name.startswith(prefix + "_"):
            return why
    return None


def _check_refused(values: Mapping[str, Any]) -> None:
    for name, option in OPTIONS.items():
        why = refused_option(name)
        if why and values[name] != option.default:
            raise ConfigError(f'option "{name}" refused: {why}; remove it to start uniws')


def _check_resume(values: Mapping[str, Any]) -> None:
    if values["uni_websocket_resume"] and not (values["uni_websocket_resume_secret"]
                                               or values["token_hmac_secret_key"]):
        raise ConfigError('option "uni_websocket_resume" needs a key to sign cursors: set '
                          '"uni_websocket_resume_secret" (or "token_hmac_secret_key")')


def _check_workers(values: Mapping[str, Any]) -> None:
    for name in ("workers", "http_max_request_body_size", "http_max_incomplete_requests"):
        if values[name] < 0:
            raise ConfigError(f'option "{name}" must not be negative, got {values[name]}')
    if values["health_worker_timeout"] <= 0:
        raise ConfigError('option "health_worker_timeout" must be positive')
    if values["admin_web_path"] and not os.path.isdir(values["admin_web_path"]):
        raise ConfigError(f'option "admin_web_path": {values["admin_web_path"]!r} is not a directory')


def _resolve_defaults(values: dict[str, Any]) -> None:
    """Fill in values defined in terms of others (07 §3, §4.1) and zero fallbacks (01 §1)."""
    if values["internal_port"] is None:
        values["internal_port"] = values["port"]
    if not values["internal_address"]:
        values["internal_address"] = values["address"]
    if not values["name"]:
        values["name"] = f"{socket.gethostname()}_{values['port']}"
    for name in ("uni_websocket_ping_interval", "uni_websocket_write_timeout", "uni_websocket_message_size_limit"):
        if values[name] == 0:
            values[name] = OPTIONS[name].default


def _security_warnings(values: Mapping[str, Any]) -> list[str]:
    warnings = []
    for option, what in (("client_insecure", "client"), ("api_insecure", "API"), ("admin_insecure", "admin")):
        if values[option]:
            warnings.append(f"INSECURE {what} mode enabled, make sure you understand risks")
    if values["allowed_origins"] == ["*"]:
        warnings.append(
            "usage of allowed_origins * is discouraged for security reasons, consider setting exact list of origins"
        )
    return warnings


def _unsupported_warnings(values: Mapping[str, Any]) -> list[str]:
    return [
        f'option "{name}" is not supported yet and is ignored'
        for name, option in OPTIONS.items()
        if name not in SUPPORTED and values[name] != option.default
    ]


def load_config(
    path: str | None,
    env: Mapping[str, str],
    flags: Mapping[str, Any],
    *,
    must_exist: bool = False,
) -> tuple[Config, list[str]]:
    """Build the Config: explicit flags > UNIWS_* env > CENTRIFUGO_* env > file > defaults.

    `flags` holds only flags given on the command line. Returns the config and warnings
    to log; raises ConfigError with the message to report.
    """
    warnings: list[str] = []
    file_values, source_path = _read_config_file(path, must_exist, warnings)
    _reject_removed_options(file_values, env, flags)
    for key in file_values:
        if key not in OPTIONS:
            warnings.append(f'unknown option "{key}" ignored')
    for key in flags:
        if key not in OPTIONS:
            warnings.append(f'unknown option "{key}" ignored')

    values = {name: option.default for name, option in OPTIONS.items()}
    values["internal_port"] = None
    values.update(_coerce_all(_raw_values(file_values, env, flags)))

    parsed_namespaces = [_parse_namespace(entry, warnings) for entry in values["namespaces"]]
    top = _top_channel_options(values)
    problem = _check_channel_options(top)
    if problem:
        raise ConfigValidationError(problem)
    namespaces = _validate_namespaces(parsed_namespaces)
    _validate_rpc_namespaces(values["rpc_namespaces"])
    _validate_personal(values, top, namespaces)
    _check_engine(values)
    _check_proxy(values, namespaces)
    _check_resume(values)
    _check_refused(values)
    _check_workers(values)

    warnings.extend(_unsupported_warnings(values))
    warnings.extend(_security_warnings(values))
    values["namespaces"] = namespaces
    _resolve_defaults(values)
    return Config(**values, channel_options=top, source_path=source_path), warnings
