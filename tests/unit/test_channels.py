"""Channel rules: spec 05 §1-§3 examples and §12 vectors #1-#8."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uniws.channels import (CHANNEL_MAX_BYTES, ChannelOptions, ChannelRules, channel_name_error,
                            channel_name_ok)
from uniws.config import ConfigValidationError, load_config

PUBLIC = ChannelOptions(presence=True)
RULES = ChannelRules(namespaces={"public": PUBLIC, "personal": ChannelOptions()})


# 05 §1.2 and §12 #1, #2
@pytest.mark.parametrize(
    ("channel", "namespace"),
    [
        ("$public:chat:1", "public"),  # §12 #1
        ("#42", ""),  # §12 #2
        (":x", ""),  # §12 #2
        ("news", ""),
        ("public:chat", "public"),
        ("$public:chat", "public"),
        ("a:b:c", "a"),
        ("personal:#42", "personal"),
        ("user#42:x", "user#42"),
        ("$$a:b", "$a"),  # the private prefix is stripped once only
    ],
)
def test_namespace_name(channel: str, namespace: str) -> None:
    assert RULES.namespace_name(channel) == namespace


def test_options_top_level_always_found() -> None:
    assert RULES.options("news") is RULES.top
    assert RULES.options(":x") is RULES.top


def test_options_of_namespace() -> None:
    assert RULES.options("$public:chat") is PUBLIC


def test_options_unknown_namespace_is_none() -> None:
    assert RULES.options("ghost:a") is None
    assert RULES.options("user#42:x") is None


def test_namespace_lookup_is_case_sensitive() -> None:
    assert RULES.options("Public:chat") is None


# 05 §1.3 and §12 #3, #4
@pytest.mark.parametrize(
    ("channel", "users"),
    [
        ("dialog#42,43", ["42", "43"]),  # §12 #3
        ("a#1#2", ["2"]),
        ("news#", [""]),
        ("news", []),
    ],
)
def test_allowed_users(channel: str, users: list[str]) -> None:
    assert RULES.allowed_users(channel) == users


@pytest.mark.parametrize(
    ("channel", "user", "allowed"),
    [
        ("a#1#2", "1", False),  # §12 #4
        ("a#1#2", "2", True),
        ("dialog#42,43", "43", True),
        ("dialog#42,43", "4", False),
        ("news", "anyone", True),
        ("news#", "", True),
    ],
)
def test_user_allowed(channel: str, user: str, allowed: bool) -> None:
    assert RULES.user_allowed(channel, user) is allowed


def test_is_private() -> None:
    assert RULES.is_private("$secret")
    assert not RULES.is_private("secret$")


def test_is_user_limited_anywhere_in_name() -> None:
    assert RULES.is_user_limited("personal:#42")
    assert RULES.is_user_limited("a#")
    assert not RULES.is_user_limited("news")


# 05 §2 and §12 #5
def test_personal_channel_in_namespace() -> None:
    rules = ChannelRules(personal_namespace="personal", namespaces={"personal": ChannelOptions()})
    assert rules.personal_channel("42") == "personal:#42"


def test_personal_channel_top_level() -> None:
    assert ChannelRules().personal_channel("test_user") == "#test_user"


def test_custom_boundaries() -> None:
    rules = ChannelRules(
        namespace_boundary="/", private_prefix="!", user_boundary="@", user_separator=";",
        namespaces={"ns": PUBLIC}, personal_namespace="ns",
    )  # fmt: skip
    assert rules.namespace_name("!ns/x") == "ns"
    assert rules.options("ns:x") is rules.top
    assert rules.is_private("!x")
    assert rules.allowed_users("d@1;2") == ["1", "2"]
    assert rules.personal_channel("7") == "ns/@7"


def test_empty_options_disable_features() -> None:
    rules = ChannelRules(namespace_boundary="", private_prefix="", user_boundary="", user_separator="")
    assert rules.namespace_name("ns:x") == ""
    assert not rules.is_private("$x")
    assert not rules.is_user_limited("a#1")
    assert rules.user_allowed("a#1", "2")


def test_empty_user_separator_keeps_one_user() -> None:
    rules = ChannelRules(user_separator="")
    assert rules.allowed_users("d#1,2") == ["1,2"]


def test_history_enabled_needs_size_and_ttl() -> None:
    assert ChannelOptions(history_size=10, history_ttl=300).history_enabled
    assert not ChannelOptions(history_size=10).history_enabled
    assert not ChannelOptions(history_ttl=300).history_enabled


def test_from_config() -> None:
    cfg, _ = load_config(
        None,
        {},
        {
            "channel_namespace_boundary": "/",
            "presence": True,
            "namespaces": [{"name": "chat", "history_size": 10, "history_ttl": "300s"}],
            "user_subscribe_to_personal": True,
            "user_personal_channel_namespace": "chat",
        },
    )
    rules = ChannelRules.from_config(cfg)
    assert rules.top == ChannelOptions(presence=True)
    assert rules.options("chat/x") == ChannelOptions(history_size=10, history_ttl=300)
    assert rules.personal_channel("42") == "chat/#42"
    assert rules.subscribe_to_personal


# 05 §12 #6-#8 (startup errors)
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"namespaces": [{"name": "x"}]},
            "namespace x: invalid namespace name \u2013 x (must match ^[-a-zA-Z0-9_.]{2,}$ regular expression)",
        ),
        ({"recover": True}, "both history size and history ttl required for recovery"),
        ({"history_size": 10}, "both history size and history ttl required for history"),
    ],
)
def test_invalid_channel_configuration(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigValidationError) as info:
        load_config(None, {}, flags)
    assert info.value.message == f"error validating config: {message}"


# -- channel names the node takes (checked before anything reaches the bus) -------------------

@pytest.mark.parametrize("channel", ["a", "news", "$public:chat:1", "#42", "chat#1,2,3", "x" * 300,
                                     "x" * CHANNEL_MAX_BYTES, "é" * (CHANNEL_MAX_BYTES // 2), "ch\x00an",
                                     "频道", "\U0001f600", " spaced "])
def test_channel_names_accepted(channel):
    assert channel_name_error(channel) is None and channel_name_ok(channel)


@pytest.mark.parametrize(("channel", "why"), [
    ("", "empty channel"),
    ("x" * (CHANNEL_MAX_BYTES + 1), "channel longer than 65535 bytes"),
    ("x" * 70_000, "channel longer than 65535 bytes"),
    ("é" * (CHANNEL_MAX_BYTES // 2 + 1), "channel longer than 65535 bytes"),       # counted in bytes
    ("a\ud800b", "channel is not valid UTF-8"),
    ("\udfff", "channel is not valid UTF-8"),
])
def test_channel_names_refused(channel, why):
    assert channel_name_error(channel) == why and not channel_name_ok(channel)


@given(st.text(max_size=300))
def test_channel_name_check_matches_what_the_bus_can_carry(channel):
    try:
        encoded = channel.encode("utf-8")
    except UnicodeEncodeError:
        encoded = None
    carried = encoded is not None and 0 < len(encoded) <= CHANNEL_MAX_BYTES
    assert (channel_name_error(channel) is None) == carried == channel_name_ok(channel)


@given(st.integers(CHANNEL_MAX_BYTES - 8, CHANNEL_MAX_BYTES + 8), st.sampled_from(["a", "é", "频", "\U0001f600"]))
def test_channel_name_limit_is_in_utf8_bytes(size, char):
    channel = char * (size // len(char.encode()))
    assert channel_name_ok(channel) == (len(channel.encode()) <= CHANNEL_MAX_BYTES)
