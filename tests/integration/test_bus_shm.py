"""A small /dev/shm: the default rings shrink to fit (with a warning); one too small even for
the smallest rings is a clear startup error, never a SIGBUS later.

The server runs in its own mount namespace with a small tmpfs on /dev/shm (Docker gives
64 MiB by default); two workers want two 32 MiB rings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
import requests

from .conftest import free_port


def _small_shm_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _small_shm_works(), reason="needs unshare -m and mount (root)")


def run_with_small_shm(tmp_path, workers: int, size: str = "40m", port: int | None = None) -> subprocess.Popen:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"workers": workers, "uni_websocket": True, "api_key": "k",
                                  "token_hmac_secret_key": "s"}))
    server = f"{sys.executable} -m uniws -c {config} --address 127.0.0.1 --port {port or free_port()}"
    return subprocess.Popen(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec {server}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_too_small_dev_shm_stops_at_startup_naming_the_size(tmp_path):
    proc = run_with_small_shm(tmp_path, workers=2, size="6m")
    try:
        output, _ = proc.communicate(timeout=30)
    finally:
        _stop(proc)                               # if it started instead: it and its workers
    assert proc.returncode == 1, output
    assert "needs 64.0 MiB of shared memory in /dev/shm/uniws-bus-" in output and "only 6.0 MiB is free" in output
    assert "2 workers x 32.0 MiB ring each" in output and "--shm-size=" in output
    assert "Traceback" not in output and "worker 0 started" not in output


def test_docker_sized_dev_shm_serves_with_smaller_rings(tmp_path):
    """Docker's default 64 MiB cannot hold two 32 MiB rings: the node starts with 16 MiB rings
    and says so, and publications to channels of both workers are served."""
    port = free_port()
    proc = run_with_small_shm(tmp_path, workers=2, size="64m", port=port)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "worker 1 started" in line or "exited" in line:
                break
        output = "".join(lines)
        assert "the bus rings are 16.0 MiB each instead of 32.0 MiB" in output, output
        assert "--shm-size=96m" in output
        session = requests.Session()
        deadline = time.monotonic() + 15
        while True:                               # the workers listen a moment after they start
            try:
                session.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, output
                time.sleep(0.05)
        body = "\n".join(json.dumps({"method": "publish", "params": {"channel": f"c{i}", "data": i}})
                         for i in range(20))                # channels owned by both workers
        for _ in range(5):                        # requests land on either worker
            reply = session.post(f"http://127.0.0.1:{port}/api", data=body,
                                 headers={"Authorization": "apikey k"}, timeout=10)
            assert reply.status_code == 200
            assert all("result" in json.loads(line) for line in reply.text.splitlines()), reply.text
        assert proc.poll() is None
    finally:
        _stop(proc)
