"""The Prometheus text uniws writes: it parses, and node totals are the workers' sums."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from uniws.metrics import BUCKETS, WorkerMetrics, render

counts = st.integers(0, 10**9)


@st.composite
def snapshots(draw):
    n = draw(st.integers(1, 4))
    snaps = []
    for worker in range(n):
        api = {}
        for method in draw(st.lists(st.sampled_from(["publish", "info", "presence"]), unique=True)):
            api[method] = [float(draw(st.integers(0, 1000))) for _ in range(len(BUCKETS) + 1)] + \
                [draw(st.floats(0, 1e6))]
        snaps.append({
            "worker": worker, "num_clients": draw(counts), "num_users": draw(counts), "num_channels": draw(counts),
            "num_subs": draw(counts), "uptime": draw(st.floats(0, 1e7)), "frames_sent": draw(counts),
            "flushes": draw(counts), "connects": draw(counts), "publications": draw(counts),
            "sequenced": draw(counts),
            "disconnects": draw(st.dictionaries(st.sampled_from(["3001", "3008", "3010", "4000"]), counts)),
            "api": api, "items": {"uniws.bus.gaps": float(draw(counts))},
        })
    return snaps


def _samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@settings(deadline=None)
@given(snapshots(), st.lists(st.integers(4, 8), unique=True, max_size=2))
def test_render_parses_and_sums(snaps, missing):
    text = render(snaps, missing, len(snaps) + len(missing)).decode()
    samples = _samples(text)
    assert samples[("centrifugo_node_num_clients", ())] == sum(s["num_clients"] for s in snaps)
    assert samples[("centrifugo_transport_messages_sent_total", (("transport", "uni_websocket"),))] == \
        sum(s["frames_sent"] for s in snaps)
    for s in snaps:
        assert samples[("uniws_worker_up", (("worker", str(s["worker"])),))] == 1
    for worker in missing:
        assert samples[("uniws_worker_up", (("worker", str(worker)),))] == 0
    methods = {m for s in snaps for m in s["api"]}
    for method in methods:
        labels = (("method", method), ("protocol", "http"))
        total = sum(sum(s["api"][method][:-1]) for s in snaps if method in s["api"])
        assert samples[("centrifugo_api_command_duration_seconds_count", labels)] == total
        bucket = tuple(sorted(labels + (("le", "+Inf"),)))
        assert samples[("centrifugo_api_command_duration_seconds_histogram_bucket", bucket)] == total


def test_observe_puts_each_duration_in_its_bucket():
    metrics = WorkerMetrics(node=None)
    metrics.observe_api({"publish": 3}, 0.004)
    metrics.observe_api({"publish": 1, "info": 2}, 0.3)
    metrics.observe_api({"info": 1}, 60.0)
    publish, info = metrics.api["publish"], metrics.api["info"]
    assert publish[0] == 3 and publish[BUCKETS.index(0.5)] == 1 and sum(publish[:-1]) == 4
    assert abs(publish[-1] - (0.012 + 0.3)) < 1e-9
    assert info[BUCKETS.index(0.5)] == 2 and info[len(BUCKETS)] == 1          # over 10 s: only +Inf
