"""Several worker processes behaving as one node (SO_REUSEPORT workers, the bus, channel owners)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest
import requests

from uniws.cluster import owner_of

from .wsclient import UniClient

CONFIG = {"workers": 4, "history_size": 1000, "history_ttl": "300s", "recover": True, "presence": True}


def info(server) -> dict:
    return server.api("info")["result"]["nodes"][0]


def worker_pids(server) -> dict[int, int]:
    """index -> pid of the live workers, from the supervisor's log lines."""
    pids = {}
    for index, pid in re.findall(r'"worker (\d+) started \(pid (\d+)\)"', server.log()):
        pids[int(index)] = int(pid)
    return pids


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(step)
    raise AssertionError("condition not met in time")


class Subscriber:
    """A recovering client of one channel that remembers every (epoch, offset) it saw, across reconnects."""

    def __init__(self, server, channel: str, user: str) -> None:
        self.server, self.channel, self.user = server, channel, user
        self.seen: list[tuple[str, int]] = []
        self.epoch = ""
        self.position = 0
        self.sessions = 0
        self.unrecovered = 0
        self.connect()

    def connect(self) -> None:
        hint = {"recover": True, "offset": self.position, "epoch": self.epoch}
        self.client = UniClient(self.server.ws_url, {"token": self.server.token(self.user),
                                                     "subs": {self.channel: hint}})
        push = self.client.recv_json(timeout=10)
        assert push["type"] == 6, push
        result = push["data"]["subs"][self.channel]
        if self.sessions and not result.get("recovered"):
            self.unrecovered += 1                          # a declared gap, never a silent one
        self.epoch = result["epoch"]
        self.seen += [(self.epoch, p["offset"]) for p in result.get("publications", [])]
        self.position = result.get("offset", 0)
        self.sessions += 1

    def read_until(self, offset: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.position < offset and time.monotonic() < deadline:
            try:
                push = self.client.recv_json(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            except Exception:                              # connection lost: reconnect and recover
                self.connect()
                continue
            if push.get("type") == 7:
                self.connect()
            elif "channel" in push and "type" not in push:
                self.position = push["data"]["offset"]
                self.seen.append((self.epoch, self.position))

    def assert_consistent(self, last: int) -> None:
        """Per epoch strictly increasing offsets; without a declared gap, exactly 1..last."""
        assert len(self.seen) == len(set(self.seen)), self.seen
        for (e1, o1), (e2, o2) in zip(self.seen, self.seen[1:]):
            assert e1 != e2 or o2 > o1, self.seen
        if not self.unrecovered:
            assert [o for _, o in self.seen] == list(range(1, last + 1)), self.seen
        assert self.position == last


def test_subscribers_on_every_worker_get_publications_in_order(start_server):
    server = start_server(CONFIG)
    subscribers = [Subscriber(server, "abc", f"u{i}") for i in range(24)]
    per_worker = [w["num_clients"] for w in info(server)["workers"]]
    assert len(per_worker) == 4 and sum(per_worker) == 24
    assert all(per_worker), per_worker               # the kernel spread them over every worker
    for n in range(1, 51):                           # each request on a new connection: any worker
        assert server.publish("abc", {"n": n})["result"]["offset"] == n
    for sub in subscribers:
        sub.read_until(50)
        sub.assert_consistent(50)
        assert sub.unrecovered == 0
    assert info(server)["metrics"]["items"]["uniws.bus.gaps"] == 0


def test_history_less_channels_keep_one_order_on_every_worker(start_server):
    """Publications to channels without history are posted to their owner (no position to
    answer with); every subscriber on every worker still sees each channel in publish order."""
    server = start_server({**CONFIG, "namespaces": [{"name": "live"}]})
    channels = [f"live:c{i}" for i in range(8)]
    assert len({owner_of(ch, 4) for ch in channels}) == 4           # every worker owns some
    clients = [UniClient(server.ws_url, {"token": server.token(f"u{i}"), "subs": {ch: {} for ch in channels}})
               for i in range(40)]   # 4 * (3/4)**40: every worker gets some, near certainly
    for client in clients:
        assert client.recv_json()["type"] == 6
    assert all(w["num_clients"] for w in info(server)["workers"])
    n = 0
    for _request in range(6):                          # each request on a new connection: any worker
        lines = []
        for _ in range(50):
            lines.append(json.dumps({"method": "publish", "params": {"channel": channels[n % 8], "data": {"n": n}}}))
            n += 1
        r = requests.post(server.base + "/api", data="\n".join(lines), headers={"Authorization": "apikey apikey"},
                          timeout=10)
        assert r.status_code == 200
        assert [json.loads(line) for line in r.text.splitlines()] == [{"result": {}}] * 50
    for client in clients:
        got: dict[str, list[int]] = {ch: [] for ch in channels}
        for _ in range(n):
            push = client.recv_json(timeout=10)
            got[push["channel"]].append(push["data"]["data"]["n"])
        assert got == {ch: list(range(i, n, 8)) for i, ch in enumerate(channels)}


def test_broadcast_and_publish_in_one_batch_keep_command_order(start_server):
    server = start_server({**CONFIG, "namespaces": [{"name": "live"}]})
    channels = ["live:a", "live:b", "live:c", "a", "b"]          # with and without history
    client = UniClient(server.ws_url, {"token": server.token("u1"), "subs": {ch: {} for ch in channels}})
    assert client.recv_json()["type"] == 6
    lines = []
    for n in range(40):
        if n % 2:
            lines.append({"method": "publish", "params": {"channel": channels[n % 5], "data": {"n": n}}})
        else:
            lines.append({"method": "broadcast", "params": {"channels": channels, "data": {"n": n}}})
    r = requests.post(server.base + "/api", data="\n".join(map(json.dumps, lines)),
                      headers={"Authorization": "apikey apikey"}, timeout=10)
    assert r.status_code == 200 and "error" not in r.text
    got: dict[str, list[int]] = {ch: [] for ch in channels}
    for _ in range(20 * len(channels) + 20):
        push = client.recv_json(timeout=10)
        got[push["channel"]].append(push["data"]["data"]["n"])
    for ch in channels:
        assert got[ch] == sorted(got[ch]), (ch, got[ch])


def test_node_wide_api(start_server):
    server = start_server(CONFIG)
    clients = [UniClient(server.ws_url, {"token": server.token(f"u{i % 3}"), "subs": {"room": {}}}) for i in range(12)]
    for client in clients:
        assert client.recv_json()["type"] == 6
    assert server.api("presence_stats", {"channel": "room"})["result"] == {"num_clients": 12, "num_users": 3}
    assert len(server.api("presence", {"channel": "room"})["result"]["presence"]) == 12
    assert server.api("channels", {"pattern": "ro*"})["result"]["channels"] == {"room": {"num_clients": 12}}
    node = info(server)
    assert node["num_clients"] == 12 and len(node["workers"]) == 4
    assert len({w["uid"] for w in node["workers"]}) == 1
    server.api("disconnect", {"user": "u1"})                 # reaches the user on every worker
    for client in clients[1::3]:
        assert client.until_closed() == ['{"type":7,"data":{"code":3503,"reason":"force disconnect"}}']
    assert wait_for(lambda: info(server)["num_clients"] == 8)
    server.api("subscribe", {"user": "u2", "channel": "extra"})
    assert wait_for(lambda: server.api("channels", {"pattern": "extra"})["result"]["channels"] == {"extra": {"num_clients": 4}})
    for n in range(3):
        server.publish("room", n)
    history = server.api("history", {"channel": "room", "limit": -1})["result"]
    assert [p["offset"] for p in history["publications"]] == [1, 2, 3]


def test_reconnect_to_any_worker_recovers_exactly(start_server):
    server = start_server(CONFIG)
    sub = Subscriber(server, "news", "u1")
    published = 0
    for round_ in range(15):
        sub.client.close()
        for _ in range(7):
            published += 1
            server.publish("news", {"n": published})
        sub.connect()                                  # lands on whichever worker the kernel picks
        sub.read_until(published)
    sub.assert_consistent(published)
    assert sub.unrecovered == 0


class Publisher(threading.Thread):
    """Publishes to one channel at a steady rate, retrying requests that hit a dying worker."""

    def __init__(self, server, channel: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.server, self.channel, self.period = server, channel, 1.0 / rate
        self.stop = threading.Event()
        self.last_offset = 0
        self.published = 0                 # publications answered with success

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                reply = self.server.publish(self.channel, {"n": n})
            except (requests.RequestException, AssertionError):
                reply = {}
            if "result" in reply:          # an error (the owner died meanwhile) is not published
                self.last_offset = reply["result"]["offset"]
                self.published += 1
            time.sleep(self.period)        # the publishing rate, not a wait for an event


@pytest.mark.parametrize("victim", ["other", "owner"])
def test_kill_9_of_a_worker_under_load(start_server, victim):
    server = start_server(CONFIG)
    channel = "live"
    owner = owner_of(channel, 4)
    subscribers = [Subscriber(server, channel, f"u{i}") for i in range(16)]
    publisher = Publisher(server, channel, rate=100)
    publisher.start()
    try:
        wait_for(lambda: publisher.published >= 30)                 # under load when the worker dies
        pids = worker_pids(server)
        index = owner if victim == "owner" else (owner + 1) % 4
        os.kill(pids[index], signal.SIGKILL)
        wait_for(lambda: worker_pids(server).get(index, pids[index]) != pids[index], timeout=5)   # restarted
        restarted_with = publisher.published
        wait_for(lambda: publisher.published >= restarted_with + 50)  # and publishing goes on after it
    finally:
        publisher.stop.set()
        publisher.join()
    last = server.api("history", {"channel": channel, "limit": 0})["result"]["offset"]
    for sub in subscribers:
        sub.read_until(last)
        sub.assert_consistent(last)                  # in order, no duplicates, gaps only when declared
    reconnected = [s for s in subscribers if s.sessions > 1]
    if victim == "other":
        assert all(s.unrecovered == 0 for s in subscribers)      # history survived: exact recovery
        assert len(reconnected) < len(subscribers)                # clients of other workers stayed
    else:
        assert all(s.unrecovered for s in reconnected)            # history was lost: recovered false
    assert len(info(server)["workers"]) == 4
    assert "Traceback" not in server.log()


def test_sighup_reloads_channel_rules(start_server, tmp_path):
    server = start_server(CONFIG)
    assert server.api("publish", {"channel": "news:x", "data": 1})["error"]["code"] == 102
    client = UniClient(server.ws_url, {"token": server.token("u1"), "subs": {"abc": {}}})
    assert client.recv_json()["type"] == 6
    config = json.loads(server.path.read_text())
    server.path.write_text(json.dumps({**config, "namespaces": [{"name": "news"}]}))
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: all("result" in server.api("publish", {"channel": "news:x", "data": 1}) for _ in range(8)))
    server.path.write_text(json.dumps({**config, "history_ttl": "0s"}))     # invalid: keeps the old rules
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reload failed" in server.log())
    assert all("result" in server.api("publish", {"channel": "news:x", "data": 1}) for _ in range(8))
    server.publish("abc", 1)
    assert client.recv_json()["channel"] == "abc"                            # no connection dropped


def test_graceful_shutdown_of_all_workers(start_server):
    server = start_server(CONFIG)
    clients = [UniClient(server.ws_url, {"token": server.token(f"u{i}")}) for i in range(12)]
    for client in clients:
        client.recv_json()
    server.proc.send_signal(signal.SIGTERM)
    for client in clients:
        assert client.until_closed() == ['{"type":7,"data":{"code":3001,"reason":"shutdown","reconnect":true}}']
    assert server.proc.wait(10) == 0


def _client_on_worker(server, worker: int, user: str, channel: str) -> UniClient:
    """Connect until the kernel puts a client on `worker` (per-worker counts from info); close the others."""
    others = []
    try:
        for _ in range(200):
            before = [w["num_clients"] for w in info(server)["workers"]]
            client = UniClient(server.ws_url, {"token": server.token(user), "subs": {channel: {"recover": True}}})
            client.recv_json()
            after = [w["num_clients"] for w in info(server)["workers"]]
            if after[worker] > before[worker]:
                return client
            others.append(client)
        raise AssertionError(f"no connection landed on worker {worker}")
    finally:
        for client in others:
            client.close()


def _metrics(server) -> dict | None:
    """The node's metrics, or None while a survey is lost (a lapped worker misses requests too)."""
    reply = server.api("info")
    return reply["result"]["nodes"][0]["metrics"]["items"] if "result" in reply else None


def test_stalled_worker_is_lapped_and_its_clients_recover(start_server):
    """SIGSTOP one worker while 48 MB of publications pass its ring (32 MB): the others do not
    wait or grow, and when it wakes it notices, counts the overflow and closes its clients with
    3010 so they reconnect and recover."""
    # The worker is stopped on purpose and must resume, not be restarted as hung.
    server = start_server({**CONFIG, "history_size": 10, "uni_websocket_ping_interval": "-1s",
                           "worker_hang_timeout": "0s"})
    channel = "firehose"
    owner = owner_of(channel, 4)
    stalled = (owner + 1) % 4
    victim = _client_on_worker(server, stalled, "victim", channel)
    pid = worker_pids(server)[stalled]
    payload = {"blob": "x" * 12_000}
    os.kill(pid, signal.SIGSTOP)
    try:
        sent = 0
        while sent < 4000:                       # each request on a fresh connection: retry the stalled one
            body = "\n".join(json.dumps({"method": "publish", "params": {"channel": channel, "data": payload}})
                             for _ in range(100))
            try:
                r = requests.post(server.base + "/api", data=body, timeout=1,
                                  headers={"Authorization": "apikey apikey", "Connection": "close"})
            except requests.RequestException:
                continue
            assert r.status_code == 200
            sent += 100
    finally:
        os.kill(pid, signal.SIGCONT)
    messages = victim.until_closed(timeout=20)
    assert json.loads(messages[-1]) == {"type": 7, "data": {"code": 3010, "reason": "insufficient state",
                                                             "reconnect": True}}
    items = wait_for(lambda: _metrics(server), timeout=20)
    assert items["uniws.bus.gaps"] >= 1 and items["uniws.bus.overflows"] >= 1
    assert "lost" in server.log()
    again = UniClient(server.ws_url, {"token": server.token("victim"),
                                      "subs": {channel: {"recover": True, "offset": 1, "epoch": ""}}})
    result = again.recv_json()["data"]["subs"][channel]
    # Requests that timed out on our side while the worker was stopped still ran: >= 4000.
    assert result["offset"] >= 4000 and not result.get("recovered")     # declared, not silent


def test_port_in_use_stops_with_an_error(start_server, tmp_path):
    """A worker that cannot bind fails at start: the supervisor exits 1 instead of restarting it forever."""
    import socket
    import subprocess
    import sys
    from .conftest import free_port
    port = free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    try:
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"workers": 2, "uni_websocket": True}))
        proc = subprocess.run([sys.executable, "-m", "uniws", "-c", str(config), "--address", "127.0.0.1",
                               "--port", str(port)], capture_output=True, text=True, timeout=30)
    finally:
        blocker.close()
    assert proc.returncode == 1
    assert "ListenAndServe" in proc.stderr and "failed to start" in proc.stderr


def test_publication_posted_to_a_stopped_owner_is_answered_with_an_error(start_server):
    """A publish to a history-less channel is posted to its owner; the API answers it only
    when the owner has served it. An owner that does not serve it within the request
    timeout (5 s) makes the answer error 100, never a success."""
    server = start_server({"workers": 2, "namespaces": [{"name": "live"}], "worker_hang_timeout": "0s"})
    channel = next(f"live:x{i}" for i in range(100) if owner_of(f"live:x{i}", 2) == 1)
    pid = worker_pids(server)[1]
    body = json.dumps({"method": "publish", "params": {"channel": channel, "data": {}}})
    answers: list[tuple[float, dict]] = []

    def call() -> None:
        r = requests.post(server.base + "/api", data=body, timeout=30,
                          headers={"Authorization": "apikey apikey", "Connection": "close"})
        answers.append((time.monotonic(), r.json()))

    # Each request is a new connection: the kernel gives about half to the stopped worker,
    # which answers them only once resumed. 16 of them: some reach the running one.
    os.kill(pid, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=call) for _ in range(16)]
        for thread in threads:
            thread.start()
        wait_for(lambda: answers, timeout=20)
        time.sleep(0.5)     # more early answers to check, if any: fewer only check less, never fail
    finally:
        resumed_at = time.monotonic()
        os.kill(pid, signal.SIGCONT)
    for thread in threads:
        thread.join()
    early = [answer for at, answer in answers if at < resumed_at]
    assert early and all(a == {"error": {"code": 100, "message": "internal server error"}} for a in early), answers


def _wait_for_push(client: UniClient, push_type: int, user: str) -> dict:
    """Read pushes until the Join/Leave (type 1/2) of `user`; earlier ones are skipped."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        push = client.recv_json(timeout=max(0.1, deadline - time.monotonic()))
        if push.get("type") == push_type and push["data"]["info"]["user"] == user:
            return push
    raise AssertionError(f"no push {push_type} of {user}")


def test_join_and_leave_reach_subscribers_on_every_worker(start_server):
    server = start_server({**CONFIG, "join_leave": True})
    watchers = []
    for i in range(8):
        watcher = UniClient(server.ws_url, {"token": server.token(f"w{i}"), "subs": {"room": {}}})
        assert watcher.recv_json()["type"] == 6
        watchers.append(watcher)
    assert sum(1 for w in info(server)["workers"] if w["num_clients"]) >= 2   # they span workers
    newcomer = UniClient(server.ws_url, {"token": server.token("newcomer"), "subs": {"room": {}}})
    assert newcomer.recv_json()["type"] == 6
    for watcher in watchers:
        assert _wait_for_push(watcher, 1, "newcomer")["channel"] == "room"
    newcomer.close()
    for watcher in watchers:
        assert _wait_for_push(watcher, 2, "newcomer")["channel"] == "room"
        watcher.close()


def test_workers_die_with_a_killed_supervisor(start_server):
    """kill -9 of the supervisor: its workers must not go on serving the port, orphaned."""
    server = start_server({"workers": 2})
    workers = list(worker_pids(server).values())
    assert len(workers) == 2
    server.proc.kill()
    server.proc.wait(timeout=10)

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as stat:              # a zombie has exited too
            return stat.read().split(") ")[1].startswith("Z")

    wait_for(lambda: all(gone(pid) for pid in workers))
