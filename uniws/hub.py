"""One worker's indexes of its connections, and the encode-once delivery into the Cython fan-out.

The hub knows who is here: user -> connections, channel -> subscribers (v1 and v2
clients apart, since their pushes differ), which subscribers are positioned, and the
last position delivered on each channel. It owns no I/O: a publication is framed once
per protocol version and handed to `Fanout.deliver`, which appends the same bytes to
every subscriber's pending output in C.

Connections with a resume cursor (`uni_websocket_resume`) are indexed apart (`subs_resume`):
each of their publication pushes carries the connection's own cursor, so they get one frame
each; everyone else keeps the encode-once path, which checks one empty dict for them.

It also tells the engine when a channel gains its first subscriber here and loses its
last, so a broker (Redis) carries only channels someone on this worker wants.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable

from . import codec
from ._fastpath import CONNECTED, Conn, Fanout, frame_text, json_str, pub_frame
from .engine.base import Publication
from .errors import INSUFFICIENT_STATE, Disconnect
from .globmatch import compile_glob
from .resume import CursorState

log = logging.getLogger("uniws.hub")

# A member index maps a key (user, channel) to its connections. One connection is stored
# as itself, several as a dict (insertion-ordered, O(1) removal): most users have one
# connection and most personal channels one subscriber, so an idle client pays for no dict.
Members = Conn | dict


def add_member(index: dict, key: str, conn: Conn) -> None:
    current = index.get(key)
    if current is None:
        index[key] = conn
    elif type(current) is Conn:
        if current is not conn:
            index[key] = {current: None, conn: None}
    else:
        current[conn] = None


def remove_member(index: dict, key: str, conn: Conn) -> None:
    current = index.get(key)
    if current is conn:
        del index[key]
    elif type(current) is dict:
        current.pop(conn, None)
        if len(current) == 1:
            index[key] = next(iter(current))


def each_member(value) -> Iterable[Conn]:
    if value is None:
        return ()
    return (value,) if type(value) is Conn else value


def count_members(value) -> int:
    if value is None:
        return 0
    return 1 if type(value) is Conn else len(value)


@dataclass(slots=True)
class Subscription:
    """One server-side subscription of a connection: effective options and channel info."""

    presence: bool = False
    join_leave: bool = False
    recover: bool = False
    position: bool = False
    chan_info: bytes | None = None
    data: bytes | None = None
    expire_at: int = 0
    epoch: str = ""           # stream position reported to the client (positioned only)
    offset: int = 0

    @property
    def positioned(self) -> bool:
        return self.recover or self.position


Buffered = list[tuple[Publication, str]]


class Hub:
    def __init__(self, fanout: Fanout, drop: Callable[[Conn, Disconnect], None],
                 first: Callable[[str], None], last: Callable[[str], None]) -> None:
        self.fanout = fanout
        self._drop = drop              # ends a connection (the session's disconnect)
        self._first = first            # a channel got its first subscriber here
        self._last = last              # ... and lost its last one
        self.users: dict[str, Members] = {}
        self.subs: dict[str, Members] = {}
        self.subs_v2: dict[str, Members] = {}
        # Connections that carry a resume cursor (their state by connection), and channel ->
        # such subscribers (v1 and v2 together: each gets its own frame anyway).
        self.cursors: dict[Conn, CursorState] = {}
        self.subs_resume: dict[str, dict[Conn, CursorState]] = {}
        # Positioned subscribers per channel, and the last (epoch, offset) this worker delivered
        # on that channel: the live position check (05 §9) is one comparison per publication.
        self.positioned: dict[str, dict[Conn, None]] = {}
        self.positions: dict[str, tuple[str, int]] = {}
        # Connections waiting for a stream position: publications arriving meanwhile are kept.
        self.pending: dict[str, dict[Conn, Buffered]] = {}
        # Positioned subscribers ahead of what has arrived here, by the offset they have
        # (see note_position); they are out of the delivery indexes meanwhile.
        self.ahead: dict[str, dict[Conn, int]] = {}
        # Channels this worker receives (subscribers or a connect waiting): the engine's count.
        self.wanted: dict[str, int] = {}       # read by the bus handler (cluster.py); changed only here
        self.publications = 0          # publications handed to this hub (metrics)

    # -- users -------------------------------------------------------------------------------

    def add_user(self, conn: Conn) -> None:
        add_member(self.users, conn.user, conn)

    def remove_user(self, conn: Conn) -> None:
        remove_member(self.users, conn.user, conn)

    def user_connections(self, user: str) -> int:
        return count_members(self.users.get(user))

    def matching(self, user: str, client: str = "", session: str = "") -> list[Conn]:
        """The user's live connections, narrowed to one client id or session when given."""
        return [c for c in each_member(self.users.get(user))
                if (not client or c.client_id == client) and (not session or c.session == session)
                and c.close_reason is None and c.state == CONNECTED]

    # -- channels --------------------------------------------------------------------------

    def want(self, channel: str) -> None:
        """Count an interest in the channel's publications (a subscriber or a connect waiting)."""
        count = self.wanted.get(channel, 0)
        self.wanted[channel] = count + 1
        if not count:
            self._first(channel)

    def unwant(self, channel: str) -> None:
        count = self.wanted.get(channel, 0) - 1
        if count > 0:
            self.wanted[channel] = count
        elif count == 0:
            del self.wanted[channel]
            self._last(channel)

    def add(self, conn: Conn, channel: str, sub: Subscription) -> None:
        conn.channels[channel] = sub
        state = self._index(conn, channel)
        if state is not None and sub.recover:
            state.track(channel, sub.epoch, sub.offset)
        self.want(channel)
        if sub.positioned:
            self.positioned.setdefault(channel, {})[conn] = None

    def _index(self, conn: Conn, channel: str) -> CursorState | None:
        """Into the channel's delivery index (the resumers' one for a connection with a cursor)."""
        state = self.cursors.get(conn) if self.cursors else None
        if state is not None:
            self.subs_resume.setdefault(channel, {})[conn] = state
        else:
            add_member(self.subs_v2 if conn.v2 else self.subs, channel, conn)
        return state

    def _unindex(self, conn: Conn, channel: str) -> CursorState | None:
        state = self.cursors.get(conn) if self.cursors else None
        if state is not None:
            resumers = self.subs_resume.get(channel)
            if resumers is not None:
                resumers.pop(conn, None)
                if not resumers:
                    del self.subs_resume[channel]
        else:
            remove_member(self.subs_v2 if conn.v2 else self.subs, channel, conn)
        return state

    def remove(self, conn: Conn, channel: str) -> Subscription | None:
        sub = conn.channels.pop(channel, None)
        if sub is None:
            return None
        ahead = self.ahead.get(channel)
        if ahead is not None and ahead.pop(conn, None) is not None:
            if not ahead:
                del self.ahead[channel]        # held out of the index: nothing else to undo there
            state = self.cursors.get(conn) if self.cursors else None
        else:
            state = self._unindex(conn, channel)
        if state is not None:
            state.untrack(channel)
        positioned = self.positioned.get(channel)
        if positioned is not None:
            positioned.pop(conn, None)
            if not positioned:
                del self.positioned[channel]
                self.positions.pop(channel, None)
        self.unwant(channel)
        return sub

    def begin_buffer(self, conn: Conn, channels: list[str]) -> None:
        """Keep the channels' publications for `conn` until `end_buffer` (the caller wants them)."""
        for channel in channels:
            self.pending.setdefault(channel, {})[conn] = []

    def end_buffer(self, conn: Conn, channels: list[str]) -> dict[str, Buffered]:
        buffered = {}
        for channel in channels:
            waiting = self.pending.get(channel)
            buffered[channel] = waiting.pop(conn, []) if waiting is not None else []
            if not waiting:
                self.pending.pop(channel, None)
        return buffered

    def wanted_channels(self) -> list[str]:
        return list(self.wanted)

    def note_position(self, conn: Conn, channel: str, epoch: str, offset: int) -> bool:
        """A positioned subscriber (already added) caught up at (epoch, offset). False when it
        cannot be exact: behind what this worker delivered, or another epoch.

        With a broker whose answers and deliveries travel apart (Redis: a position is read on one
        connection, publications arrive on another) the subscriber may be ahead of what has
        arrived here: it is held out of the delivery index until live delivery reaches its
        offset, so the publications it already has are not sent twice (and are not taken for
        a jump)."""
        current = self.positions.get(channel)
        if current is None:
            self.positions[channel] = (epoch, offset)
            return True
        if current == (epoch, offset):
            return True
        if current[0] == epoch and offset > current[1]:
            self._unindex(conn, channel)
            self.ahead.setdefault(channel, {})[conn] = offset
            return True
        return False

    # -- delivery --------------------------------------------------------------------------

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        """Engine callback: frame the publication once per protocol version, fan it out."""
        self.publications += 1
        if self.pending:
            waiting = self.pending.get(channel)
            if waiting:
                for buffer in waiting.values():
                    buffer.append((pub, epoch))
        if pub.offset and channel in self.positioned:
            if not self._check_position(channel, pub.offset, epoch):
                self._deliver_late(channel, pub)
                return
            if self.ahead and channel in self.ahead:
                self._release_ahead(channel, pub.offset)
        if self.subs_resume:
            resumers = self.subs_resume.get(channel)
            if resumers:
                self._deliver_with_cursors(resumers, channel, pub)
        subscribers = self.subs.get(channel)
        subscribers_v2 = self.subs_v2.get(channel)
        if not subscribers and not subscribers_v2:
            return
        channel_json = json_str(channel)
        tags = codec.tags_object(pub.tags)
        data = codec.raw(pub.data)
        if subscribers:
            self.fanout.deliver(subscribers, pub_frame(False, channel_json, data, pub.offset, tags))
        if subscribers_v2:
            self.fanout.deliver(subscribers_v2, pub_frame(True, channel_json, data, pub.offset, tags))

    def _deliver_with_cursors(self, resumers: dict[Conn, CursorState], channel: str, pub: Publication) -> None:
        """One frame per connection: the publication push with the cursor after it."""
        payload = codec.publication(codec.raw(pub.data), pub.offset, codec.tags_object(pub.tags))
        channel_json = codec.json_string(channel)
        heads = (codec.envelope_v1(codec.PUBLICATION, channel_json, payload)[:-1],
                 codec.envelope_v2(codec.PUBLICATION, channel_json, payload)[:-1])
        offset = pub.offset
        enqueue = self.fanout.enqueue
        for conn, state in resumers.items():
            state.advance(channel, offset)
            enqueue(conn, frame_text(heads[conn.v2] + state.tail()))

    def deliver_one(self, conn: Conn, channel: str, pub: Publication) -> None:
        state = self.cursors.get(conn) if self.cursors else None
        if state is not None:
            self._deliver_with_cursors({conn: state}, channel, pub)
            return
        frame = pub_frame(conn.v2, codec.json_string(channel), codec.raw(pub.data), pub.offset,
                          codec.tags_object(pub.tags))
        self.fanout.enqueue(conn, frame)

    def handle_join_leave(self, channel: str, join: bool, info: bytes) -> None:
        push_type = codec.JOIN if join else codec.LEAVE
        for v2, index in ((False, self.subs), (True, self.subs_v2)):
            subscribers = index.get(channel)
            if subscribers:
                self.fanout.deliver(subscribers, codec.frame_text(codec.join_leave_push(v2, push_type, channel, info)))
        resumers = self.subs_resume.get(channel) if self.subs_resume else None
        if resumers:                # no cursor: a Join or Leave moves no position
            frames = [codec.frame_text(codec.join_leave_push(v2, push_type, channel, info)) for v2 in (False, True)]
            for conn in list(resumers):
                self.fanout.enqueue(conn, frames[conn.v2])

    def join_leave_to(self, conn: Conn, channel: str, join: bool, info: bytes) -> None:
        push = codec.join_leave_push(conn.v2, codec.JOIN if join else codec.LEAVE, channel, info)
        self.fanout.enqueue(conn, codec.frame_text(push))

    def _check_position(self, channel: str, offset: int, epoch: str) -> bool:
        """Live position check (05 §9): a gap or an epoch change ends positioned subscriptions.
        False for a late publication (at or before the position delivered here): positioned
        subscribers have it already."""
        last = self.positions.get(channel)
        if last is not None and last[0] == epoch and offset <= last[1]:
            return False
        if last is not None and (last[0] != epoch or offset != last[1] + 1):
            log.info("channel %s jumped from %s:%d to %s:%d: positioned clients must recover",
                     channel, last[0], last[1], epoch, offset)
            self.drop_positioned([channel])
        if channel in self.positioned:
            self.positions[channel] = (epoch, offset)
        return True

    def _deliver_late(self, channel: str, pub: Publication) -> None:
        """A publication positioned subscribers have (see note_position): only the others get it."""
        positioned = self.positioned.get(channel, {})
        for index in (self.subs, self.subs_v2, self.subs_resume):
            for conn in list(each_member(index.get(channel))):
                if conn not in positioned:
                    self.deliver_one(conn, channel, pub)

    def _release_ahead(self, channel: str, offset: int) -> None:
        """Before `offset` is delivered: subscribers held at an earlier offset join the index
        (they have everything up to it; this publication is the first they lack)."""
        ahead = self.ahead[channel]
        for conn in [c for c, held in ahead.items() if held < offset]:
            del ahead[conn]
            self._index(conn, channel)
        if not ahead:
            del self.ahead[channel]

    def drop_positioned(self, channels: Iterable[str]) -> int:
        """End the positioned subscribers of these channels with 3010 (they reconnect and recover)."""
        dropped = 0
        for channel in channels:
            for conn in list(self.positioned.get(channel, ())):
                self._drop(conn, INSUFFICIENT_STATE)
                dropped += 1
            self.positions.pop(channel, None)
        return dropped

    # -- what the API and stats read -------------------------------------------------------

    def local_channels(self, pattern: str) -> dict[str, int]:
        """Channel -> subscribers here, for channels matching the glob (ValueError: bad pattern)."""
        match = compile_glob(pattern) if pattern else None
        counts: dict[str, int] = {}
        for index in (self.subs, self.subs_v2, self.subs_resume):
            for channel, subscribers in index.items():
                if match is None or match(channel):
                    counts[channel] = counts.get(channel, 0) + count_members(subscribers)
        return counts

    def num_channels(self) -> int:
        return len(self.subs.keys() | self.subs_v2.keys() | self.subs_resume.keys())

    def num_subs(self) -> int:
        return sum(count_members(s) for index in (self.subs, self.subs_v2, self.subs_resume) for s in index.values())
