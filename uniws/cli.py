"""Command line (spec 07 §5): serve (default), version, checkconfig, genconfig,
gentoken, checktoken.

Console commands print to stdout, as the reference does; the server path reports
fatal errors through the logger (stderr or log_file). Every failure exits with 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import platform
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any, NoReturn

from uniws import __version__
from uniws.config import Config, ConfigError, ConfigValidationError, format_duration, load_config

DEFAULT_CONFIG = "config.json"
DEFAULT_TTL = 604800  # 7 days
GENCONFIG_EXTENSIONS = ("json", "toml", "yaml", "yml")
CHECKTOKEN_USAGE = "error: provide token to check [centrifugo checktoken <TOKEN>]"

log = logging.getLogger("uniws.cli")


class UsageError(Exception):
    """Bad command line; reported with the usage text and exit code 1 (not argparse's 2)."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _formatter)   # subcommand parsers too
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


def _parse_flag_bool(text: str) -> bool:
    """Values for `--health=false` style flags (Go's strconv.ParseBool words)."""
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value: {text!r}")


# Server flags (07 §5.2): (option name, short flag or None, value type, help group, help).
# A flag with help None is hidden from --help but still parsed, so its option gets the
# config's answer (a warning, or a refusal naming it for tls/admin/sockjs) rather than
# "unrecognized arguments".
_SERVER_FLAGS: tuple[tuple[str, str | None, type, str, str | None], ...] = (
    ("address", "-a", str, "listen", "interface address to listen on (default: all)"),
    ("port", "-p", str, "listen", "port to bind to (default 8000)"),
    ("internal_address", None, str, "listen", "address for the API and health endpoints (default: --address)"),
    ("internal_port", None, str, "listen", "port for the API and health endpoints (default: --port)"),
    ("uni_websocket", None, bool, "endpoints", "serve /connection/uni_websocket"),
    ("health", None, bool, "endpoints", "serve /health"),
    ("admin", None, bool, "endpoints", "serve the admin web UI and /admin/auth, /admin/api"),
    ("admin_external", None, bool, "endpoints", "serve the admin UI on the external port"),
    ("admin_insecure", None, bool, "endpoints", "INSECURE: admin UI and admin API without a password"),
    ("prometheus", None, bool, "endpoints", "serve Prometheus metrics at /metrics"),
    ("client_insecure", None, bool, "endpoints", "INSECURE: accept connections without a token"),
    ("api_insecure", None, bool, "endpoints", "INSECURE: serve the API without an API key"),
    ("name", "-n", str, "process", "node name (default: host name and port)"),
    ("engine", "-e", str, "process", "engine: memory (the only one supported)"),
    ("workers", None, int, "process", "worker processes (default: CPU count; 1 = no supervisor)"),
    ("log_level", None, str, "process", "trace, debug, info, warn, error, fatal or none (default info)"),
    ("log_file", None, str, "process", "write the log to this file instead of stderr"),
    ("pid_file", None, str, "process", "write the process ID to this file"),
    # Not supported: hidden.
    ("broker", None, str, "", None),
    ("debug", None, bool, "", None),
    ("uni_sse", None, bool, "", None),
    ("uni_http_stream", None, bool, "", None),
    ("sse", None, bool, "", None),
    ("http_stream", None, bool, "", None),
    ("sockjs", None, bool, "", None),
    ("tls", None, bool, "", None),
    ("tls_cert", None, str, "", None),
    ("tls_key", None, str, "", None),
    ("tls_external", None, bool, "", None),
    ("redis_address", None, str, "", None),
    ("grpc_api", None, bool, "", None),
    ("grpc_api_port", None, int, "", None),
    ("uni_grpc", None, bool, "", None),
    ("uni_grpc_port", None, int, "", None),
    ("tarantool_address", None, str, "", None),
    ("nats_url", None, str, "", None),
)
_SERVER_FLAG_NAMES = tuple(flag[0] for flag in _SERVER_FLAGS)
_FLAG_GROUPS = (("listen", "listening"), ("endpoints", "endpoints and access"), ("process", "process and logging"))


def _version_text() -> str:
    return f"uniws v{__version__} (Python version: {platform.python_version()})"


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help="config file: .json, .yaml or .toml (default config.json)")


def _add_token_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("-u", "--user", default=default, help="user ID (default: anonymous)")
    parser.add_argument("-t", "--ttl", type=int, default=default, metavar="SECONDS",
                        help="token lifetime (default 604800, 7 days)")


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS keeps absent flags out of the namespace: only explicit flags override.
    groups = {key: parser.add_argument_group(title) for key, title in _FLAG_GROUPS}
    for name, short, kind, group, text in _SERVER_FLAGS:
        names = [short, f"--{name}"] if short else [f"--{name}"]
        target = groups.get(group, parser)
        shown = text if text is not None else argparse.SUPPRESS
        if kind is bool:
            target.add_argument(*names, nargs="?", const=True, type=_parse_flag_bool, default=argparse.SUPPRESS,
                                metavar="BOOL", help=shown)
        else:
            metavar = "N" if kind is int else name.split("_")[-1].upper()      # --log_file FILE
            target.add_argument(*names, type=kind, default=argparse.SUPPRESS, metavar=metavar, help=shown)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, max_help_position=36, width=120)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="uniws",
                     description="Centrifugo v3 compatible unidirectional WebSocket server. "
                                 "Without a command: run the server.")
    parser.add_argument("--version", action="version", version=_version_text(), help="print the version and exit")
    _add_config_flag(parser)
    _add_server_flags(parser)
    # `uniws -c config.json -u USER` generates a token, like gentoken (product requirement).
    tokens = parser.add_argument_group("token (instead of running the server, as gentoken)")
    _add_token_flags(tokens, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("version", help="print the version and exit")
    _add_config_flag(commands.add_parser("checkconfig", help="check a config file; exit 1 if it would not start"))
    genconfig = commands.add_parser("genconfig", help="write a minimal config file with random secrets")
    _add_config_flag(genconfig)
    genconfig.add_argument("--if-missing", action="store_true",
                           help="leave an existing file unchanged and succeed (for re-runnable set-ups)")
    gentoken = commands.add_parser("gentoken", help="print an HS256 connection token")
    _add_config_flag(gentoken)
    _add_token_flags(gentoken, None)
    checktoken = commands.add_parser("checktoken", help="verify a connection token with the configured keys")
    _add_config_flag(checktoken)
    checktoken.add_argument("token", nargs="*", help=argparse.SUPPRESS)
    # Centrifugo's static file server: parsed so it can say it is not supported; no help=,
    # so --help does not list it.
    serve = commands.add_parser("serve")
    serve.add_argument("-d", "--dir", default="./")
    serve.add_argument("-p", "--port", default="3000")
    serve.add_argument("-a", "--address", default="")
    return parser


# ---------------------------------------------------------------------------
# Commands


def cmd_version() -> int:
    print(_version_text())
    return 0


def cmd_checkconfig(path: str) -> int:
    try:
        _, warnings = load_config(path, os.environ, {}, must_exist=True)
    except ConfigValidationError as exc:
        print(f"configuration error: {exc.detail}")  # 07 §5.7
        return 1
    except ConfigError as exc:
        print(exc.message)
        return 1
    for warning in warnings:          # what the server would log at start (unknown options...)
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _genconfig_text(extension: str) -> str:
    values = {
        "token_hmac_secret_key": str(uuid.uuid4()),
        "admin_password": str(uuid.uuid4()),
        "admin_secret": str(uuid.uuid4()),
        "api_key": str(uuid.uuid4()),
    }
    if extension == "json":
        return json.dumps({**values, "allowed_origins": []}, indent=2) + "\n"
    if extension == "toml":
        lines = [f'{key} = "{value}"' for key, value in values.items()]
        return "\n".join([*lines, "allowed_origins = []"]) + "\n"
    lines = [f"{key}: {value}" for key, value in values.items()]  # YAML, values unquoted
    return "\n".join([*lines, "allowed_origins: []"]) + "\n"


def _write_new_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(fd, 0o644)  # independent of the umask, as the reference writes it
        file.write(text)


def cmd_genconfig(path: str, if_missing: bool = False) -> int:
    if os.path.exists(path):
        if if_missing:
            print(f"config file {path} already exists, left unchanged")
            return 0
        print(f"error: output config file already exists: {path}")
        return 1
    extension = os.path.splitext(path)[1].lstrip(".")
    if extension not in GENCONFIG_EXTENSIONS:
        print(f"error: output config file must have one of supported extensions: {', '.join(GENCONFIG_EXTENSIONS)}")
        return 1
    try:
        _write_new_file(path, _genconfig_text(extension))
    except OSError as exc:
        print(f"error: {exc}")
        return 1
    try:
        load_config(path, os.environ, {}, must_exist=True)
    except ConfigError as exc:
        os.remove(path)  # never leave a config that does not pass checkconfig
        print(f"error: {exc.message}")
        return 1
    return 0


def _load_for_token_command(path: str) -> Config | None:
    """Config for gentoken/checktoken: a missing file is fine; errors are printed."""
    try:
        cfg, _ = load_config(path, os.environ, {})
    except ConfigError as exc:
        print(f"error: {exc.message}")
        return None
    return cfg


def cmd_gentoken(path: str, user: str, ttl: int) -> int:
    from uniws.auth import generate_hs256_token

    cfg = _load_for_token_command(path)
    if cfg is None:
        return 1
    if not cfg.token_hmac_secret_key:
        print("error: no HMAC secret key set")
        return 1
    token = generate_hs256_token(cfg.token_hmac_secret_key, user, ttl, int(time.time()))
    who = f"user {user}" if user else "anonymous user"
    print(f"HMAC SHA-256 JWT for {who} with expiration TTL {format_duration(ttl)}:")
    print(token)
    return 0


def _token_alg(token: str) -> str:
    """`alg` of a token that already passed verification."""
    header = token.split(".", 1)[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))).get("alg", ""))


def _token_failure(alg: str | None, claims: str | None, reason: str) -> str:
    return f"error: token with algorithm {alg or ''} and claims {claims or ''} has error: {reason}"


def cmd_checktoken(path: str, tokens: Sequence[str]) -> int:
    from uniws.auth import TokenError, TokenVerifier
    from uniws.channels import ChannelRules

    if len(tokens) != 1:
        print(CHECKTOKEN_USAGE)
        return 1
    token = tokens[0]
    cfg = _load_for_token_command(path)
    if cfg is None:
        return 1
    try:
        verifier = TokenVerifier.from_config(cfg)
    except ValueError as exc:
        print(f"error: {exc}")
        return 1
    try:
        credentials = verifier.verify(token, time.time())
    except TokenError as exc:
        if exc.structural:
            print("error: token format is not valid")
        else:
            print(_token_failure(exc.alg, exc.claims, exc.reason))
        return 1
    rules = ChannelRules.from_config(cfg)
    if any(rules.options(channel) is None for channel in credentials.subs):
        print(_token_failure(_token_alg(token), credentials.claims, "102: unknown channel"))
        return 1
    who = f"user {credentials.user}" if credentials.user else "anonymous user"
    print(f"valid token for {who}")
    print(f"payload: {credentials.claims}")
    return 0


def cmd_serve_static() -> int:
    print("error: serve command is not supported")
    return 1


def _explicit_server_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in _SERVER_FLAG_NAMES if hasattr(args, name)}


def run_server(path: str, flags: dict[str, Any]) -> int:
    from uniws.logs import setup_logging

    try:
        cfg, warnings = load_config(path, os.environ, flags)
        setup_logging(cfg.log_level, cfg.log_file)
    except ConfigError as exc:
        setup_logging("info")  # the configured log destination may be what failed
        log.critical(exc.message)
        return 1
    for warning in warnings:
        log.warning(warning)
    if cfg.source_path:
        log.info("using config file", extra={"fields": {"path": cfg.source_path}})
    from uniws.server import serve

    return serve(cfg, reload=lambda: load_config(path, os.environ, flags)[0])


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "version":
        return cmd_version()
    if command == "checkconfig":
        return cmd_checkconfig(args.config)
    if command == "genconfig":
        return cmd_genconfig(args.config, args.if_missing)
    if command == "checktoken":
        return cmd_checktoken(args.config, args.token)
    if command == "serve":
        return cmd_serve_static()
    if command == "gentoken" or hasattr(args, "user") or hasattr(args, "ttl"):
        user = getattr(args, "user", None) or ""
        ttl = getattr(args, "ttl", None)
        return cmd_gentoken(args.config, user, DEFAULT_TTL if ttl is None else ttl)
    return run_server(args.config, _explicit_server_flags(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(exc.usage)
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    return _dispatch(args)
