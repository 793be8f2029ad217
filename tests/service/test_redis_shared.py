"""Two real server processes (``protembed serve``) sharing one real redis-server; Redis killed mid-run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow


def embed(url: str, seqs: list[str]) -> dict[str, Any]:
    r = httpx.post(url + "/embed", json={"sequences": seqs}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_two_servers_share_redis_and_survive_its_death(
    redis_server: Any, start_server_process: Callable[..., Any]
) -> None:
    # REDIS_URL (the unprefixed name) for one server and PROTEMBED_REDIS_URL for the other: both work.
    a = start_server_process(REDIS_URL=redis_server.url)
    b = start_server_process(PROTEMBED_REDIS_URL=redis_server.url, PROTEMBED_REDIS_TIMEOUT_S="0.2")
    assert httpx.get(a.url + "/info").json()["cache"]["backend"] == "redis"

    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MVLSPADKTNVKAAW"]
    first = embed(a.url, seqs)
    assert [d["cached"] for d in first["data"]] == [False, False]
    # writes are off the response path: wait until server B sees them
    deadline = time.monotonic() + 5
    while True:
        second = embed(b.url, seqs)
        if all(d["cached"] for d in second["data"]) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [d["cached"] for d in second["data"]] == [True, True]
    assert second["data"][0]["embedding"] == first["data"][0]["embedding"]

    redis_server.kill()
    start = time.monotonic()
    for i in range(3):
        down = embed(b.url, [f"MKILLED{'A' * i}", seqs[0]])
        assert not any(d["cached"] for d in down["data"])  # answered by the model
    assert time.monotonic() - start < 5
    assert metric(b.url, 'protembed_cache_errors_total{backend="redis"}') >= 1

    redis_server.start()  # same port; the servers reconnect by themselves after their back-off
    deadline = time.monotonic() + 15
    cached = False
    while not cached and time.monotonic() < deadline:
        embed(b.url, ["MBACKAGAIN"])
        time.sleep(0.3)
        cached = embed(a.url, ["MBACKAGAIN"])["data"][0]["cached"]
    assert cached, "servers did not use Redis again after it came back"
