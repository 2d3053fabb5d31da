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
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


def _parse_flag_bool(text: str) -> bool:
    """Values for `--health=false` style flags (Go's strconv.ParseBool words)."""
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value: {text!r}")


# (option name, short flag or None, value type) of the server flags (07 §5.2).
_SERVER_FLAGS: tuple[tuple[str, str | None, type], ...] = (
    ("port", "-p", str),
    ("address", "-a", str),
    ("internal_address", None, str),
    ("internal_port", None, str),
    ("name", "-n", str),
    ("engine", "-e", str),
    ("broker", None, str),
    ("log_level", None, str),
    ("log_file", None, str),
    ("pid_file", None, str),
    ("workers", None, int),
    ("debug", None, bool),
    ("admin", None, bool),
    ("admin_external", None, bool),
    ("admin_insecure", None, bool),
    ("client_insecure", None, bool),
    ("api_insecure", None, bool),
    ("prometheus", None, bool),
    ("health", None, bool),
    ("uni_websocket", None, bool),
    ("uni_sse", None, bool),
    ("uni_http_stream", None, bool),
    ("sse", None, bool),
    ("http_stream", None, bool),
    ("sockjs", None, bool),
    ("tls", None, bool),
    ("tls_cert", None, str),
    ("tls_key", None, str),
    ("tls_external", None, bool),
    ("redis_address", None, str),
    ("grpc_api", None, bool),
    ("grpc_api_port", None, int),
    ("uni_grpc", None, bool),
    ("uni_grpc_port", None, int),
    ("tarantool_address", None, str),
    ("nats_url", None, str),
)
_SERVER_FLAG_NAMES = tuple(name for name, _, _ in _SERVER_FLAGS)


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="path to config file")


def _add_token_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("-u", "--user", default=default, help="user ID, by default anonymous")
    parser.add_argument("-t", "--ttl", type=int, default=default, help="token TTL in seconds (default 604800)")


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS keeps absent flags out of the namespace: only explicit flags override.
    for name, short, kind in _SERVER_FLAGS:
        names = [short, f"--{name}"] if short else [f"--{name}"]
        if kind is bool:
            parser.add_argument(
                *names, nargs="?", const=True, type=_parse_flag_bool, default=argparse.SUPPRESS, metavar="BOOL"
            )
        else:
            parser.add_argument(*names, type=kind, default=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="uniws", description="Centrifugo v3 compatible unidirectional WebSocket server")
    _add_config_flag(parser)
    _add_server_flags(parser)
    # `uniws -c config.json -u USER` generates a token, like gentoken (product requirement).
    _add_token_flags(parser, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("version", help="print version and exit")
    _add_config_flag(commands.add_parser("checkconfig", help="check configuration file"))
    _add_config_flag(commands.add_parser("genconfig", help="generate minimal configuration file"))
    gentoken = commands.add_parser("gentoken", help="generate an HS256 connection token")
    _add_config_flag(gentoken)
    _add_token_flags(gentoken, None)
    checktoken = commands.add_parser("checktoken", help="check a connection token")
    _add_config_flag(checktoken)
    checktoken.add_argument("token", nargs="*", help=argparse.SUPPRESS)
    serve = commands.add_parser("serve", help="static file server (not supported)")
    serve.add_argument("-d", "--dir", default="./")
    serve.add_argument("-p", "--port", default="3000")
    serve.add_argument("-a", "--address", default="")
    return parser


# ---------------------------------------------------------------------------
# Commands


def cmd_version() -> int:
    print(f"uniws v{__version__} (Python version: {platform.python_version()})")
    return 0


def cmd_checkconfig(path: str) -> int:
    try:
        load_config(path, os.environ, {}, must_exist=True)
    except ConfigValidationError as exc:
        print(f"configuration error: {exc.detail}")  # 07 §5.7
        return 1
    except ConfigError as exc:
        print(exc.message)
        return 1
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


def cmd_genconfig(path: str) -> int:
    if os.path.exists(path):
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
        return cmd_genconfig(args.config)
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
