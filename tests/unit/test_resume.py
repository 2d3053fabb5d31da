"""Resume cursor codec (uniws/resume.py): roundtrip, tamper refusal, size bound, hint matching."""

from __future__ import annotations

import base64
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniws.resume import (
    CursorEntry,
    CursorError,
    CursorState,
    Signer,
    channel_hash,
    epoch_hash,
    resume_hints,
    varint,
    with_cursor,
)

SIGNER = Signer("secret")


def state_with(channels: dict[str, tuple[str, int]], user: str = "42") -> CursorState:
    state = CursorState(SIGNER, user)
    for channel, (epoch, offset) in channels.items():
        state.track(channel, epoch, offset)
    return state


def raw_of(cursor: bytes) -> bytes:
    return base64.urlsafe_b64decode(cursor + b"=" * (-len(cursor) % 4))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


channels_st = st.dictionaries(st.text(min_size=1, max_size=40),
                              st.tuples(st.text(min_size=1, max_size=8), st.integers(0, (1 << 64) - 1)),
                              max_size=30)


@given(channels_st, st.text(max_size=20))
def test_roundtrip(channels, user):
    cursor = state_with(channels, user).cursor().decode()
    entries = SIGNER.decode(cursor, user)
    assert len(entries) == len(channels)
    for channel, (epoch, offset) in channels.items():
        entry = entries[channel_hash(channel)]
        assert entry.offset == offset and entry.epoch_hash == epoch_hash(epoch)


def test_advance_moves_only_tracked_channels_and_changes_the_cursor():
    state = state_with({"a": ("ep", 5), "b": ("ep", 7)})
    before = state.tail()
    state.advance("a", 6)
    state.advance("untracked", 99)
    state.advance("b", 0)                   # a publication without offset moves nothing
    assert state.tail() != before
    entries = SIGNER.decode(state.cursor().decode(), "42")
    assert {e.offset for e in entries.values()} == {6, 7} and len(entries) == 2
    state.untrack("a")
    assert list(SIGNER.decode(state.cursor().decode(), "42")) == [channel_hash("b")]


@settings(max_examples=300)
@given(channels_st.filter(bool), st.data())
def test_any_tampering_is_refused(channels, data):
    cursor = state_with(channels).cursor()
    raw = bytearray(raw_of(cursor))
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "text"]))
    if kind == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] ^= data.draw(st.integers(1, 255))
        tampered = b64(bytes(raw))
    elif kind == "truncate":
        tampered = b64(bytes(raw[:data.draw(st.integers(0, len(raw) - 1))]))
    elif kind == "extend":
        tampered = b64(bytes(raw) + data.draw(st.binary(min_size=1, max_size=20)))
    else:
        text = cursor.decode()
        at = data.draw(st.integers(0, len(text) - 1))
        char = data.draw(st.characters().filter(lambda c: c != text[at]))
        tampered = text[:at] + char + text[at + 1:]
    with pytest.raises(CursorError):
        SIGNER.decode(tampered, "42")


@given(st.text(max_size=300))
def test_arbitrary_text_is_refused_or_decodes_only_when_signed(text):
    try:
        SIGNER.decode(text, "42")
    except CursorError:
        return
    raise AssertionError("an unsigned text was accepted")


def test_other_user_other_key_and_version_are_refused():
    cursor = state_with({"a": ("ep", 1)}, "42").cursor().decode()
    with pytest.raises(CursorError, match="another user"):
        SIGNER.decode(cursor, "43")
    with pytest.raises(CursorError, match="signature"):
        Signer("other secret").decode(cursor, "42")
    body = b"\x02" + raw_of(cursor.encode())[1:-16]
    with pytest.raises(CursorError, match="version"):
        SIGNER.decode(SIGNER.encode(body).decode(), "42")
    with pytest.raises(CursorError, match="base64"):
        SIGNER.decode(cursor[:-1] + "!", "42")


def test_size_for_100_channels_is_bounded():
    channels = {f"news:channel-{i}": ("AbCd", 2_000_000 - 1) for i in range(100)}
    cursor = state_with(channels).cursor()
    # 1 version + 8 user + 100 * (8 channel + 4 epoch + 3 varint) + 16 MAC
    assert len(raw_of(cursor)) == 1525
    assert len(cursor) == 2034


def test_signing_is_cheap():
    state = state_with({f"ch{i}": ("AbCd", 1000) for i in range(20)})
    n = 2000
    started = time.perf_counter()
    for i in range(n):
        state.advance("ch3", 1001 + i)
        state.tail()
    per_cursor = (time.perf_counter() - started) / n
    assert per_cursor < 100e-6, per_cursor          # a loose bound for a loaded CI box (measured ~3 µs)


def test_varint_and_entry_hint():
    assert [varint(n) for n in (0, 1, 127, 128, 300)] == [b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\xac\x02"]
    entry = CursorEntry(epoch_hash("ep"), 5)
    assert entry.hint("ep").epoch == "ep" and entry.hint("ep").offset == 5 and entry.hint("ep").recover
    assert entry.hint("other").epoch not in ("", "other")           # a mismatch, never a match or "any"
    entries = {channel_hash("a"): entry, channel_hash("gone"): CursorEntry(epoch_hash("ep"), 1)}
    assert resume_hints(entries, ["a", "new"]) == {"a": entry}


def test_with_cursor_appends_a_member():
    assert with_cursor(b'{"a":1}', b',"cursor":"x"}') == b'{"a":1,"cursor":"x"}'


def test_signer_needs_a_secret():
    with pytest.raises(ValueError):
        Signer("")


def test_config_needs_a_key_when_resume_is_on(tmp_path):
    from uniws.config import ConfigError, load_config

    def load(doc):
        path = tmp_path / "config.json"
        path.write_text(json.dumps(doc))
        return load_config(str(path), {}, {})[0]

    with pytest.raises(ConfigError, match="uni_websocket_resume_secret"):
        load({"uni_websocket_resume": True})
    assert Signer.from_config(load({"uni_websocket_resume": False})) is None
    own = Signer.from_config(load({"uni_websocket_resume": True, "uni_websocket_resume_secret": "k",
                                   "token_hmac_secret_key": "t"}))
    derived = Signer.from_config(load({"uni_websocket_resume": True, "token_hmac_secret_key": "t"}))
    body = b"\x01" + b"\x00" * 8
    assert own.encode(body) == Signer("k").encode(body) != derived.encode(body) == Signer("t").encode(body)
