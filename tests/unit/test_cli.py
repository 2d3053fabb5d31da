"""`python -m uniws ...` as a subprocess: spec 07 §8 vectors 8-33 that need no
running server, and 04 §8 vectors 20-23."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "secret"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def fatal_messages(self) -> list[str]:
        """Messages of the fatal JSON log lines the server path writes to stderr."""
        entries = [json.loads(line) for line in self.err.splitlines() if line.startswith("{")]
        return [entry["message"] for entry in entries if entry["level"] == "fatal" and entry["time"]]


def run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    # A controlled environment: no CENTRIFUGO_*/UNIWS_* variables leak in from the caller.
    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "uniws", *args],
        check=False,
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def write_config(directory: Path, doc: Any, name: str = "config.json") -> Path:
    path = directory / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc, encoding="utf-8")
    return path


def b64url_json(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_hs256(claims: bytes, secret: str = SECRET) -> str:
    signing_input = b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(claims)
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def gentoken(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = run(cwd, "gentoken", *args, env=env)
    assert result.code == 0, result.out + result.err
    return result.lines[1]


@pytest.fixture
def secret_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"token_hmac_secret_key": SECRET})


# ---------------------------------------------------------------------------
# Server path: fatal configuration errors (vectors 8-19). Each fails before the
# server starts, as one JSON log line on stderr, exit code 1.


def assert_fatal(result: Result, message: str) -> None:
    assert result.code == 1
    assert result.fatal_messages() == [message]
    assert result.out == ""


def test_malformed_namespaces_env(tmp_path: Path) -> None:  # vector 8
    result = run(tmp_path, env={"CENTRIFUGO_NAMESPACES": '[{"name":"ns1"'})
    assert_fatal(result, "malformed namespaces")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (  # vector 9
            {"shutdown_timeout": 30},
            "malformed duration for key 'shutdown_timeout': time: missing unit in duration \"30\"",
        ),
        (  # vector 10
            {"history_size": 10, "history_ttl": "500ms"},
            "malformed duration for key 'history_ttl': 500ms, minimal duration resolution is 1s for this key",
        ),
        (  # vector 11
            {"history_size": 10, "history_ttl": "1500ms"},
            "malformed duration for key 'history_ttl': 1.5s, sub-second precision is not supported for this key",
        ),
        (  # vector 12
            {"proxy_connect_timeout": "0.5us"},
            (
                "malformed duration for key 'proxy_connect_timeout': 500ns, "
                "minimal duration resolution is 1ms \u2013 make sure correct time unit set"
            ),
        ),
        (  # vector 13
            {"history_size": 10},
            "error validating config: both history size and history ttl required for history",
        ),
        (  # vector 14
            {"recover": True},
            "error validating config: both history size and history ttl required for recovery",
        ),
        (  # vector 15
            {"namespaces": [{"name": "a"}]},
            (
                "error validating config: namespace a: invalid namespace name \u2013 a "
                "(must match ^[-a-zA-Z0-9_.]{2,}$ regular expression)"
            ),
        ),
        (  # vector 16
            {"namespaces": [{"name": "ab"}, {"name": "ab"}]},
            "error validating config: namespace name must be unique: ab",
        ),
        (  # vector 17
            {"user_subscribe_to_personal": True, "user_personal_channel_namespace": "pp"},
            "error validating config: namespace for user personal channel not found: pp",
        ),
        ({"engine": "foo"}, "unknown engine: foo"),  # vector 18
    ],
)
def test_fatal_config_errors(tmp_path: Path, doc: dict[str, Any], message: str) -> None:
    write_config(tmp_path, doc)
    assert_fatal(run(tmp_path), message)


def test_json_syntax_error_is_fatal(tmp_path: Path) -> None:  # vector 19
    write_config(tmp_path, '{"a": 1,}')
    result = run(tmp_path)
    assert result.code == 1
    [message] = result.fatal_messages()
    assert message.startswith("JSON syntax error around line 1, column")


def test_flag_overrides_env(tmp_path: Path) -> None:
    result = run(tmp_path, "-e", "foo", env={"CENTRIFUGO_ENGINE": "memory"})
    assert_fatal(result, "unknown engine: foo")


def test_uniws_env_overrides_centrifugo_env(tmp_path: Path) -> None:
    result = run(tmp_path, env={"CENTRIFUGO_ENGINE": "memory", "UNIWS_ENGINE": "bar"})
    assert_fatal(result, "unknown engine: bar")


def test_bool_flag_with_explicit_value(tmp_path: Path) -> None:
    # Parsed fine (the engine error comes later); a bad bool word is a usage error.
    assert_fatal(run(tmp_path, "--health=false", "--uni_websocket", "-e", "foo"), "unknown engine: foo")
    result = run(tmp_path, "--health=maybe")
    assert result.code == 1
    assert "--health" in result.err


def test_log_file_open_failure(tmp_path: Path) -> None:
    result = run(tmp_path, "--log_file", str(tmp_path / "no" / "such" / "dir.log"))
    assert result.code == 1
    [message] = result.fatal_messages()
    assert message.startswith("error opening log file: ")


def test_unknown_flag_prints_usage(tmp_path: Path) -> None:
    result = run(tmp_path, "--no-such-flag")
    assert result.code == 1
    assert "usage: " in result.err
    assert "error: unrecognized arguments: --no-such-flag" in result.err


def test_unknown_command(tmp_path: Path) -> None:
    result = run(tmp_path, "frobnicate")
    assert result.code == 1
    assert "usage: " in result.err


def test_help_exits_zero(tmp_path: Path) -> None:
    result = run(tmp_path, "--help")
    assert result.code == 0
    assert "checktoken" in result.out


def test_help_has_one_line_per_flag_in_groups_without_unsupported_flags(tmp_path: Path) -> None:
    out = run(tmp_path, "--help").out
    for title in ("listening:", "endpoints and access:", "process and logging:"):
        assert f"\n{title}\n" in out
    options = out[out.index("\noptions:"):]
    flag_lines = [line for line in options.splitlines() if line.startswith("  -")]
    assert len(flag_lines) >= 15 and all(len(line.split("  ", 2)) == 3 for line in flag_lines), flag_lines
    for hidden in ("--tls", "--sockjs", "--redis_address", "--debug"):
        assert hidden not in out
    assert re.search(r"^ {4}gentoken ", out, re.M) and not re.search(r"^ {4}serve\b", out, re.M)


@pytest.mark.parametrize("args", [("--tls",), ("--tls_cert", "c.pem"), ("--sockjs",)])
def test_unsupported_security_flags_refuse_to_start(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run(tmp_path, *args)
    assert result.code == 1
    [message] = result.fatal_messages()
    assert message.startswith(f'option "{args[0][2:]}" refused: ')


def test_version_flag(tmp_path: Path) -> None:
    assert run(tmp_path, "--version") == run(tmp_path, "version")
    assert run(tmp_path, "--version").out.startswith("uniws v")


def test_serve_is_not_supported(tmp_path: Path) -> None:
    result = run(tmp_path, "serve", "-d", ".")
    assert (result.code, result.out) == (1, "error: serve command is not supported\n")


# ---------------------------------------------------------------------------
# checkconfig (vectors 20, 21; 07 §5.7)


def test_checkconfig_missing_file(tmp_path: Path) -> None:  # vector 20
    result = run(tmp_path, "checkconfig", "-c", "missing.json")
    assert (result.code, result.out) == (1, "configuration error: unable to find configuration file\n")


def test_checkconfig_good_file(tmp_path: Path) -> None:  # vector 21
    write_config(tmp_path, {"token_hmac_secret_key": SECRET, "namespaces": [{"name": "chat"}]}, "good.json")
    result = run(tmp_path, "checkconfig", "-c", "good.json")
    assert (result.code, result.out, result.err) == (0, "", "")


def test_checkconfig_warns_like_the_server(tmp_path: Path) -> None:
    write_config(tmp_path, {"colour": "red", "graphite": True})
    result = run(tmp_path, "checkconfig")
    assert (result.code, result.out) == (0, "")
    assert result.err.splitlines() == ['warning: unknown option "colour" ignored',
                                       'warning: option "graphite" is not supported yet and is ignored']


@pytest.mark.parametrize("doc", [{"tls": True}, {"tls_key": "k.pem"}, {"sockjs": True}])
def test_checkconfig_refuses_unsupported_security_options(tmp_path: Path, doc: dict[str, Any]) -> None:
    write_config(tmp_path, doc)
    result = run(tmp_path, "checkconfig")
    [name] = doc
    assert result.code == 1 and result.out.startswith(f'option "{name}" refused: '), result.out


def test_checkconfig_default_path(tmp_path: Path) -> None:
    write_config(tmp_path, {})
    assert run(tmp_path, "checkconfig").code == 0


def test_checkconfig_json_syntax_error(tmp_path: Path) -> None:
    write_config(tmp_path, '{"a": 1,}')
    result = run(tmp_path, "checkconfig")
    assert result.code == 1
    assert result.out.startswith("JSON syntax error around line 1, column 9: ")


def test_checkconfig_validation_error(tmp_path: Path) -> None:
    write_config(tmp_path, {"history_size": 10})
    result = run(tmp_path, "checkconfig")
    assert (result.code, result.out) == (
        1,
        "configuration error: both history size and history ttl required for history\n",
    )


def test_checkconfig_malformed_duration(tmp_path: Path) -> None:
    write_config(tmp_path, {"namespaces": [{"name": "chat", "history_size": 1, "history_ttl": 30}]})
    result = run(tmp_path, "checkconfig")
    assert result.code == 1
    assert result.out == (
        "namespace chat: malformed duration for key 'history_ttl': time: missing unit in duration \"30\"\n"
    )


def test_checkconfig_reads_env(tmp_path: Path) -> None:
    write_config(tmp_path, {})
    result = run(tmp_path, "checkconfig", env={"CENTRIFUGO_NAMESPACES": "[{"})
    assert (result.code, result.out) == (1, "malformed namespaces\n")


# ---------------------------------------------------------------------------
# genconfig (vectors 22-25; 07 §5.4)


def test_genconfig_json(tmp_path: Path) -> None:  # vector 22
    result = run(tmp_path, "genconfig", "-c", "out.json")
    assert (result.code, result.out) == (0, "")
    path = tmp_path / "out.json"
    text = path.read_text()
    doc = json.loads(text)
    assert list(doc) == ["token_hmac_secret_key", "admin_password", "admin_secret", "api_key", "allowed_origins"]
    secrets = [doc[key] for key in list(doc)[:4]]
    assert all(UUID4.match(value) for value in secrets)
    assert len(set(secrets)) == 4
    assert doc["allowed_origins"] == []
    assert text == json.dumps(doc, indent=2) + "\n"
    assert path.stat().st_mode & 0o777 == 0o644
    checked = run(tmp_path, "checkconfig", "-c", "out.json")
    assert (checked.code, checked.out, checked.err) == (0, "", "")      # nothing the server would warn about


def test_genconfig_if_missing_is_rerunnable(tmp_path: Path) -> None:
    assert run(tmp_path, "genconfig", "--if-missing", "-c", "out.json") == Result(0, "", "")
    before = (tmp_path / "out.json").read_text()
    again = run(tmp_path, "genconfig", "--if-missing", "-c", "out.json")
    assert (again.code, again.out) == (0, "config file out.json already exists, left unchanged\n")
    assert (tmp_path / "out.json").read_text() == before


def test_genconfig_refuses_existing_file(tmp_path: Path) -> None:  # vector 23
    assert run(tmp_path, "genconfig", "-c", "out.json").code == 0
    before = (tmp_path / "out.json").read_text()
    result = run(tmp_path, "genconfig", "-c", "out.json")
    assert (result.code, result.out) == (1, "error: output config file already exists: out.json\n")
    assert (tmp_path / "out.json").read_text() == before


def test_genconfig_bad_extension(tmp_path: Path) -> None:  # vector 24
    result = run(tmp_path, "genconfig", "-c", "out.ini")
    assert (result.code, result.out) == (
        1,
        "error: output config file must have one of supported extensions: json, toml, yaml, yml\n",
    )
    assert not (tmp_path / "out.ini").exists()


@pytest.mark.parametrize("name", ["out.yml", "out.yaml"])
def test_genconfig_yaml(tmp_path: Path, name: str) -> None:  # vector 25
    assert run(tmp_path, "genconfig", "-c", name).code == 0
    lines = (tmp_path / name).read_text().split("\n")
    keys = ["token_hmac_secret_key", "admin_password", "admin_secret", "api_key"]
    for line, key in zip(lines[:4], keys, strict=True):
        name_part, value = line.split(": ")
        assert name_part == key
        assert UUID4.match(value)  # unquoted
    assert lines[4:] == ["allowed_origins: []", ""]
    assert run(tmp_path, "checkconfig", "-c", name).code == 0


def test_genconfig_toml(tmp_path: Path) -> None:  # vector 25
    assert run(tmp_path, "genconfig", "-c", "out.toml").code == 0
    lines = (tmp_path / "out.toml").read_text().split("\n")
    keys = ["token_hmac_secret_key", "admin_password", "admin_secret", "api_key"]
    for line, key in zip(lines[:4], keys, strict=True):
        name_part, value = line.split(" = ")
        assert name_part == key
        assert value.startswith('"') and value.endswith('"')
        assert UUID4.match(value[1:-1])
    assert lines[4:] == ["allowed_origins = []", ""]


def test_genconfig_deletes_file_failing_validation(tmp_path: Path) -> None:
    result = run(tmp_path, "genconfig", "-c", "out.json", env={"CENTRIFUGO_HISTORY_SIZE": "10"})
    assert (result.code, result.out) == (
        1,
        "error: error validating config: both history size and history ttl required for history\n",
    )
    assert not (tmp_path / "out.json").exists()


# ---------------------------------------------------------------------------
# gentoken (vectors 26-28; 04 §8 #20-#22)


def test_gentoken_default_ttl(tmp_path: Path, secret_config: Path) -> None:  # vector 26
    before = int(time.time())
    result = run(tmp_path, "gentoken", "-c", "config.json", "-u", "28282")
    assert result.code == 0
    assert len(result.lines) == 2
    assert result.lines[0] == "HMAC SHA-256 JWT for user 28282 with expiration TTL 168h0m0s:"
    header, payload, _ = result.lines[1].split(".")
    assert header == "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    assert b64url_json(header) == {"alg": "HS256", "typ": "JWT"}
    claims = b64url_json(payload)
    assert list(claims) == ["sub", "exp"]
    assert claims["sub"] == "28282"
    assert before + 604800 - 2 <= claims["exp"] <= int(time.time()) + 604800 + 2
    assert "=" not in result.lines[1]


@pytest.mark.parametrize(("ttl", "rendered"), [("3600", "1h0m0s"), ("90", "1m30s"), ("0", "0s"), ("59", "59s")])
def test_gentoken_ttl_rendering(tmp_path: Path, secret_config: Path, ttl: str, rendered: str) -> None:  # vector 27
    result = run(tmp_path, "gentoken", "-u", "1", "-t", ttl)
    assert result.lines[0] == f"HMAC SHA-256 JWT for user 1 with expiration TTL {rendered}:"


def test_gentoken_bob_short_ttl(tmp_path: Path, secret_config: Path) -> None:  # 04 §8 #21
    result = run(tmp_path, "gentoken", "-t", "90", "-u", "bob")
    assert result.lines[0] == "HMAC SHA-256 JWT for user bob with expiration TTL 1m30s:"


@pytest.mark.parametrize("args", [(), ("-u", "")])
def test_gentoken_anonymous(tmp_path: Path, secret_config: Path, args: tuple[str, ...]) -> None:  # 04 §8 #20
    result = run(tmp_path, "gentoken", *args)
    assert result.code == 0
    assert result.lines[0] == "HMAC SHA-256 JWT for anonymous user with expiration TTL 168h0m0s:"
    assert list(b64url_json(result.lines[1].split(".")[1])) == ["exp"]


def test_gentoken_without_secret(tmp_path: Path) -> None:  # vector 28, 04 §8 #22
    result = run(tmp_path, "gentoken", "-u", "1")
    assert (result.code, result.out) == (1, "error: no HMAC secret key set\n")


def test_gentoken_secret_from_env_without_file(tmp_path: Path) -> None:
    result = run(tmp_path, "gentoken", "-c", "absent.json", "-u", "7", env={"CENTRIFUGO_TOKEN_HMAC_SECRET_KEY": "x"})
    assert result.code == 0
    assert result.lines[0] == "HMAC SHA-256 JWT for user 7 with expiration TTL 168h0m0s:"


def test_gentoken_malformed_config(tmp_path: Path) -> None:
    write_config(tmp_path, {"shutdown_timeout": 30})
    result = run(tmp_path, "gentoken")
    assert (result.code, result.out) == (
        1,
        "error: malformed duration for key 'shutdown_timeout': time: missing unit in duration \"30\"\n",
    )


def test_root_command_with_user_generates_token(tmp_path: Path, secret_config: Path) -> None:
    result = run(tmp_path, "-c", "config.json", "-u", "test_user")
    assert result.code == 0
    assert result.lines[0] == "HMAC SHA-256 JWT for user test_user with expiration TTL 168h0m0s:"
    assert b64url_json(result.lines[1].split(".")[1])["sub"] == "test_user"


def test_root_command_with_ttl_generates_token(tmp_path: Path, secret_config: Path) -> None:
    result = run(tmp_path, "-t", "90")
    assert result.lines[0] == "HMAC SHA-256 JWT for anonymous user with expiration TTL 1m30s:"


def test_gentoken_token_verifies_with_secret(tmp_path: Path, secret_config: Path) -> None:
    token = gentoken(tmp_path, "-u", "42")
    claims = base64.urlsafe_b64decode(token.split(".")[1] + "==")
    assert token == sign_hs256(claims)


# ---------------------------------------------------------------------------
# checktoken (vectors 29-32; 04 §8 #23; 04 §7.2)


def test_checktoken_valid(tmp_path: Path, secret_config: Path) -> None:  # vector 29
    token = gentoken(tmp_path, "-u", "28282")
    result = run(tmp_path, "checktoken", token)
    assert result.code == 0
    assert result.lines[0] == "valid token for user 28282"
    assert re.fullmatch(r'payload: \{"sub":"28282","exp":\d+\}', result.lines[1])
    assert len(result.lines) == 2


def test_checktoken_valid_bob(tmp_path: Path, secret_config: Path) -> None:  # 04 §8 #23
    token = gentoken(tmp_path, "-u", "bob")
    result = run(tmp_path, "checktoken", "-c", "config.json", token)
    assert result.lines[0] == "valid token for user bob"
    assert result.lines[1].startswith('payload: {"sub":"bob","exp":')


def test_checktoken_anonymous(tmp_path: Path, secret_config: Path) -> None:
    token = gentoken(tmp_path)
    result = run(tmp_path, "checktoken", token)
    assert result.lines[0] == "valid token for anonymous user"


@pytest.mark.parametrize("args", [(), ("a", "b")])
def test_checktoken_needs_one_token(tmp_path: Path, secret_config: Path, args: tuple[str, ...]) -> None:  # vector 30
    result = run(tmp_path, "checktoken", *args)
    assert (result.code, result.out) == (1, "error: provide token to check [centrifugo checktoken <TOKEN>]\n")


def test_checktoken_other_secret(tmp_path: Path, secret_config: Path) -> None:  # vector 31
    token = gentoken(tmp_path, "-c", "other.json", "-u", "1", env={"CENTRIFUGO_TOKEN_HMAC_SECRET_KEY": "other"})
    result = run(tmp_path, "checktoken", token)
    assert result.code == 1
    assert result.out.startswith('error: token with algorithm HS256 and claims {"sub":"1","exp":')
    assert "has error: invalid token" in result.out


def test_checktoken_expired(tmp_path: Path, secret_config: Path) -> None:  # vector 32
    token = gentoken(tmp_path, "-u", "1", "-t", "-10")
    result = run(tmp_path, "checktoken", token)
    assert result.code == 1
    assert result.out.startswith('error: token with algorithm HS256 and claims {"sub":"1","exp":')
    assert result.out.endswith("has error: token expired\n")


def test_checktoken_not_a_jwt(tmp_path: Path, secret_config: Path) -> None:
    result = run(tmp_path, "checktoken", "not-a-token")
    assert (result.code, result.out) == (1, "error: token format is not valid\n")


def test_checktoken_disabled_algorithm(tmp_path: Path) -> None:
    write_config(tmp_path, {})
    token = gentoken(tmp_path, "-c", "x.json", "-u", "1", env={"CENTRIFUGO_TOKEN_HMAC_SECRET_KEY": "s"})
    result = run(tmp_path, "checktoken", token)
    assert result.code == 1
    assert result.out.endswith("has error: invalid token: disabled JWT algorithm: HS256\n")


def test_checktoken_unknown_channel_namespace(tmp_path: Path, secret_config: Path) -> None:
    claims = '{"sub":"1","channels":["ghost:a"]}'
    result = run(tmp_path, "checktoken", sign_hs256(claims.encode()))
    assert (result.code, result.out) == (
        1,
        f"error: token with algorithm HS256 and claims {claims} has error: 102: unknown channel\n",
    )


def test_checktoken_known_channel_namespace(tmp_path: Path) -> None:
    write_config(tmp_path, {"token_hmac_secret_key": SECRET, "namespaces": [{"name": "news"}]})
    result = run(tmp_path, "checktoken", sign_hs256(b'{"sub":"1","subs":{"news:a":{}}}'))
    assert result.code == 0
    assert result.lines == ["valid token for user 1", 'payload: {"sub":"1","subs":{"news:a":{}}}']


def test_checktoken_malformed_config(tmp_path: Path) -> None:
    write_config(tmp_path, '{"a": 1,}')
    result = run(tmp_path, "checktoken", "x")
    assert result.code == 1
    assert result.out.startswith("error: JSON syntax error around line 1, column 9: ")


# ---------------------------------------------------------------------------
# version (vector 33)


def test_version(tmp_path: Path) -> None:
    result = run(tmp_path, "version")
    assert result.code == 0
    assert re.fullmatch(r"uniws v\S+ \(Python version: \d+\.\d+\.\d+\)\n", result.out)
