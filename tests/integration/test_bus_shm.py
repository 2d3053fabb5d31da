"""A /dev/shm too small for the bus rings is a clear startup error, not a SIGBUS later.

The server runs in its own mount namespace with a 40 MiB tmpfs on /dev/shm (Docker gives
64 MiB by default); two workers need two 32 MiB rings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from .conftest import free_port


def _small_shm_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _small_shm_works(), reason="needs unshare -m and mount (root)")


def run_with_small_shm(tmp_path, workers: int, size: str = "40m") -> subprocess.Popen:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"workers": workers, "uni_websocket": True, "api_key": "k",
                                  "token_hmac_secret_key": "s"}))
    server = f"{sys.executable} -m uniws -c {config} --address 127.0.0.1 --port {free_port()}"
    return subprocess.Popen(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec {server}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)


def test_too_small_dev_shm_stops_at_startup_naming_the_size(tmp_path):
    proc = run_with_small_shm(tmp_path, workers=2)
    try:
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:                   # it started instead: stop it and its workers
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1, output
    assert "needs 64.0 MiB of shared memory in /dev/shm/uniws-bus-" in output
    assert "2 workers x 32.0 MiB ring each" in output and "--shm-size=" in output
    assert "Traceback" not in output and "worker 0 started" not in output
