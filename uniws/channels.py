"""Channel name rules: namespaces, private and user-limited channels (spec 05 §1-§3, 06 §2.9).

Pure functions of the channel name and the configuration; they run on every connect,
so each is a couple of string operations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uniws.config import Config


# The longest channel name the node takes, in bytes of UTF-8: the bus carries a name's
# length in 16 bits. Centrifugo sets no limit on API channels (06 §2.9) and applies
# `channel_max_length` to client-side subscribes only, which uni clients never send.
CHANNEL_MAX_BYTES = 65535


def channel_name_error(channel: str) -> str | None:
    """Why `channel` cannot be a channel name, or None: empty, over CHANNEL_MAX_BYTES, or
    not encodable as UTF-8 (a lone surrogate, which a JSON escape like "\\ud800" can make).
    Any other character is allowed (05 §1.1)."""
    if not channel:
        return "empty channel"
    if channel.isascii():                     # O(1) in CPython: the common case costs nothing
        size = len(channel)
    else:
        try:
            size = len(channel.encode("utf-8"))
        except UnicodeEncodeError:
            return "channel is not valid UTF-8"
    if size > CHANNEL_MAX_BYTES:
        return f"channel longer than {CHANNEL_MAX_BYTES} bytes"
    return None


def channel_name_ok(channel: str) -> bool:
    """The hot path's check: a short ASCII name needs no further look."""
    return (0 < len(channel) <= CHANNEL_MAX_BYTES and channel.isascii()) or channel_name_error(channel) is None


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """Options of the top level or of one namespace (05 §3). No inheritance between them."""

    presence: bool = False
    join_leave: bool = False
    history_size: int = 0
    history_ttl: int = 0  # whole seconds
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

    @property
    def history_enabled(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0


_NO_NAMESPACES: Mapping[str, ChannelOptions] = MappingProxyType({})


class ChannelRules:
    """Resolves channel names against the configured boundaries and namespaces.

    An empty boundary/prefix disables the feature it marks (05 §1.1).
    """

    __slots__ = (
        "namespace_boundary",
        "private_prefix",
        "user_boundary",
        "user_separator",
        "top",
        "namespaces",
        "subscribe_to_personal",
        "personal_namespace",
        "personal_single_connection",
    )

    def __init__(
        self,
        *,
        namespace_boundary: str = ":",
        private_prefix: str = "$",
        user_boundary: str = "#",
        user_separator: str = ",",
        top: ChannelOptions = ChannelOptions(),
        namespaces: Mapping[str, ChannelOptions] = _NO_NAMESPACES,
        subscribe_to_personal: bool = False,
        personal_namespace: str = "",
        personal_single_connection: bool = False,
    ) -> None:
        self.namespace_boundary = namespace_boundary
        self.private_prefix = private_prefix
        self.user_boundary = user_boundary
        self.user_separator = user_separator
        self.top = top
        self.namespaces = dict(namespaces)
        self.subscribe_to_personal = subscribe_to_personal
        self.personal_namespace = personal_namespace
        self.personal_single_connection = personal_single_connection

    @classmethod
    def from_config(cls, cfg: Config) -> ChannelRules:
        return cls(
            namespace_boundary=cfg.channel_namespace_boundary,
            private_prefix=cfg.channel_private_prefix,
            user_boundary=cfg.channel_user_boundary,
            user_separator=cfg.channel_user_separator,
            top=cfg.channel_options,
            namespaces=cfg.namespaces,
            subscribe_to_personal=cfg.user_subscribe_to_personal,
            personal_namespace=cfg.user_personal_channel_namespace,
            personal_single_connection=cfg.user_personal_single_connection,
        )

    def namespace_name(self, ch: str) -> str:
        """Text before the first namespace boundary, after stripping the private prefix once."""
        prefix = self.private_prefix
        if prefix and ch.startswith(prefix):
            ch = ch[len(prefix) :]
        boundary = self.namespace_boundary
        if not boundary:
            return ""
        pos = ch.find(boundary)
        return ch[:pos] if pos >= 0 else ""

    def options(self, ch: str) -> ChannelOptions | None:
        """Options of the channel's namespace; None when the namespace does not exist."""
        ns = self.namespace_name(ch)
        if not ns:
            return self.top
        return self.namespaces.get(ns)

    def is_private(self, ch: str) -> bool:
        return bool(self.private_prefix) and ch.startswith(self.private_prefix)

    def is_user_limited(self, ch: str) -> bool:
        return bool(self.user_boundary) and self.user_boundary in ch

    def allowed_users(self, ch: str) -> list[str]:
        """Users listed after the LAST user boundary; [] for a channel that is not user-limited."""
        if not self.is_user_limited(ch):
            return []
        users = ch.rpartition(self.user_boundary)[2]
        if not self.user_separator:
            return [users]
        return users.split(self.user_separator)

    def user_allowed(self, ch: str, user: str) -> bool:
        """Exact string match against the allowed users; always true for other channels."""
        return not self.is_user_limited(ch) or user in self.allowed_users(ch)

    def personal_channel(self, user: str) -> str:
        """`#<user>`, or `<ns>:#<user>` with a personal channel namespace (05 §2)."""
        channel = self.user_boundary + user
        if self.personal_namespace:
            return self.personal_namespace + self.namespace_boundary + channel
        return channel
