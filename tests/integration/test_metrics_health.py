"""/metrics of a 2-worker node shows the whole node; /health and the supervisor catch a hung worker."""

from __future__ import annotations

import json
import os
import signal

import requests
from prometheus_client.parser import text_string_to_metric_families

from .helpers import api, connect, wait_for

CLIENTS = 16


def _samples(server) -> dict[tuple[str, tuple], float]:
    """Every sample by (name, labels). The parser names a counter's samples `<name>_total`;
    they are keyed by the name uniws writes (Centrifugo's, without `_total`)."""
    text = requests.get(server.base + "/metrics", timeout=10).text
    return {(family.name if s.name == family.name + "_total" and family.type == "counter" else s.name,
             tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_one_scrape_shows_every_worker(start_server):
    server = start_server({"workers": 2, "prometheus": True})
    clients = [connect(server, f"u{i}", {"room": {}})[0] for i in range(CLIENTS)]
    try:
        # The kernel spreads connections over both workers' sockets; 16 all on one is 2^-15.
        def on_both():
            samples = _samples(server)
            return samples if all(samples[("uniws_worker_num_clients", (("worker", w),))] for w in "01") else None

        per_worker = wait_for(on_both, what="clients on both workers")
        for _ in range(3):         # any worker answers for the node
            samples = _samples(server)
            assert samples[("centrifugo_node_num_clients", ())] == CLIENTS
            assert samples[("centrifugo_node_num_subscriptions", ())] == CLIENTS
            assert samples[("centrifugo_node_num_channels", ())] == 2      # `room` on each worker, summed
        assert per_worker[("uniws_worker_num_clients", (("worker", "0"),))] + \
            per_worker[("uniws_worker_num_clients", (("worker", "1"),))] == CLIENTS
        before = samples[("centrifugo_transport_messages_sent", (("transport", "uni_websocket"),))]
        api(server, "publish", {"channel": "room", "data": {"n": 1}})
        for client in clients:
            assert client.recv_json()["data"]["data"] == {"n": 1}
        samples = _samples(server)
        assert samples[("centrifugo_transport_messages_sent", (("transport", "uni_websocket"),))] >= before + CLIENTS
        assert samples[("centrifugo_node_messages_sent_count", (("type", "publication"),))] == 1
        assert samples[("uniws_worker_up", (("worker", "0"),))] == samples[("uniws_worker_up", (("worker", "1"),))] == 1
        assert samples[("centrifugo_transport_connect_count", (("transport", "uni_websocket"),))] == CLIENTS
        assert samples[("uniws_workers", ())] == 2
        # A server-side disconnect, on whichever worker holds the client, is counted by its code.
        api(server, "disconnect", {"user": "u0"})
        code = str(json.loads(clients[0].until_closed()[-1])["data"]["code"])
        samples = wait_for(lambda: (lambda s: s if s.get(("centrifugo_client_num_server_disconnects",
                                                          (("code", code),))) == 1 else None)(_samples(server)),
                           what="the disconnect counted")
        assert samples[("centrifugo_node_num_clients", ())] == CLIENTS - 1
    finally:
        for client in clients:
            client.close()


def _health(server):
    """(status, body) of one /health, or None when the request landed on the stopped worker."""
    try:
        r = requests.get(server.base + "/health", timeout=2)
    except requests.RequestException:
        return None
    return r.status_code, r.text


def test_a_stopped_worker_turns_health_503_and_is_restarted(start_server):
    server = start_server({"workers": 2, "health": True, "health_worker_timeout": "500ms",
                           "worker_hang_timeout": "3s"})
    assert _health(server) == (200, "{}")
    workers = wait_for(lambda: _children(server.proc.pid) if len(_children(server.proc.pid)) == 2 else None)
    stopped = workers[0]
    os.kill(stopped, signal.SIGSTOP)
    try:
        def unhealthy():
            answer = _health(server)
            return answer if answer and answer[0] == 503 else None

        status, body = wait_for(unhealthy, timeout=10, what="a 503 from the worker still running")
        assert "did not answer" in body
        wait_for(lambda: stopped not in _children(server.proc.pid), timeout=15, what="the hung worker killed")
        wait_for(lambda: len(_children(server.proc.pid)) == 2, timeout=15, what="the worker restarted")
        wait_for(lambda: all(_health(server) == (200, "{}") for _ in range(6)), timeout=15, what="health back")
        assert "has not answered for" in server.log()
    finally:
        try:
            os.kill(stopped, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]
