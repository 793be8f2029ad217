"""The cache on a real 3-node Redis Cluster that the tests start (``redis-server --cluster-enabled yes``
x3 joined by ``redis-cli --cluster create``): lookups split per node, one round trip per node; a slot
moved under the client; a node killed and restarted; and a real server whose cluster loses a node while
requests run. Also the float16 value encoding and the cluster URL."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
import redis
from redis.exceptions import MovedError

from protembed.cache import (
    MemoryCache,
    RedisCache,
    RedisClusterCache,
    cache_key,
    decode_array,
    encode_array,
    make_cache,
    parse_cluster_url,
)
from protembed.metrics import Metrics
from protembed.testing import free_port


def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


# --- a real cluster ------------------------------------------------------------------------------------


@dataclass
class Node:
    """One cluster-enabled redis-server; killed and restarted on the same ports with its nodes.conf, so
    it rejoins as the same node (with no data: nothing is persisted)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    bus_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # cluster-require-full-coverage no: the surviving masters keep serving their slots while one is
        # down (the setting docs/cache.md recommends for a cache cluster).
        args = (
            f"--port {self.port} --cluster-port {self.bus_port} --bind 127.0.0.1 --cluster-enabled yes "
            "--cluster-config-file nodes.conf --cluster-node-timeout 1000 "
            "--cluster-require-full-coverage no --appendonly no"
        ).split()
        self.proc = subprocess.Popen(
            [str(shutil.which("redis-server")), *args, "--save", "", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(self._answers, 10, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


@dataclass
class Cluster:
    nodes: list[Node]

    @property
    def url(self) -> str:
        return f"redis+cluster://{self.nodes[0].name}"

    def node_of(self, key: str, probe: Node | None = None) -> Node:
        """The node serving ``key``'s slot as ``probe`` (default: the first live node) sees it: a plain
        client's GET is answered there, elsewhere MOVED."""
        probe = probe or next(n for n in self.nodes if n.proc is not None)
        try:
            probe.client().get(key)
            return probe
        except MovedError as exc:
            return next(n for n in self.nodes if n.port == int(exc.port))

    def healthy(self) -> bool:
        try:
            return all(
                n.client().cluster("info")["cluster_state"] == "ok"
                and int(n.client().cluster("info")["cluster_known_nodes"]) == len(self.nodes)
                for n in self.nodes
            )
        except redis.RedisError:
            return False

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[Cluster]:
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install redis-server redis-tools)")
    cluster = Cluster([Node(tmp_path / f"node{i}") for i in range(3)])
    try:
        for node in cluster.nodes:
            node.start()
        subprocess.run(
            [
                str(shutil.which("redis-cli")),
                *("--cluster", "create", *(n.name for n in cluster.nodes)),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait(cluster.healthy, 30, "cluster_state:ok on all three nodes")
        yield cluster
    finally:
        cluster.stop()


def _keys_on_every_node(cluster: Cluster, n: int) -> list[str]:
    keys = [cache_key("m", "1", "student", "M" + "ACDEFGHIKLMNPQRSTVWY"[i % 20] * (i + 1)) for i in range(n)]
    owners = {cluster.node_of(k).port for k in keys}
    assert owners == {node.port for node in cluster.nodes}, "the keys must span all three nodes"
    return keys


def _value(i: int) -> bytes:
    return encode_array(np.full(8, i, np.float32))


# --- cache object on the cluster -----------------------------------------------------------------------


async def test_lookup_spanning_all_nodes_is_one_round_trip_per_node(redis_cluster: Cluster) -> None:
    keys = _keys_on_every_node(redis_cluster, 12)
    metrics = Metrics()
    cache = RedisClusterCache(redis_cluster.url, ttl_s=100, timeout_s=0.5, metrics=metrics)
    try:
        cache.put_many([(k, _value(i)) for i, k in enumerate(keys)])
        await cache.flush_writes()
        assert await cache.get_many(keys) == [_value(i) for i in range(len(keys))]  # no CROSSSLOT
        for node in redis_cluster.nodes:
            assert node.client().dbsize() == sum(redis_cluster.node_of(k) is node for k in keys)

        # One open connection per node for INFO: a new connection's handshake would be reads too.
        info_clients = [n.client() for n in redis_cluster.nodes]

        def reads() -> list[int]:
            return [int(c.info("stats")["total_reads_processed"]) for c in info_clients]

        reads()

        # Reading INFO is itself one read on each node: the control pair measures that, then a lookup
        # of keys on all three nodes must add exactly one read (one round trip) on each.
        a, b = reads(), reads()
        control = [y - x for x, y in zip(a, b, strict=True)]
        got = await cache.get_many(keys)
        c = reads()
        per_node = [z - y - ctl for y, z, ctl in zip(b, c, control, strict=True)]
        assert got == [_value(i) for i in range(len(keys))]
        assert per_node == [1, 1, 1], f"round trips per node {per_node}"
        hits = metrics.registry.get_sample_value("protembed_cache_hits_total", {"backend": "redis-cluster"})
        assert hits == 2 * len(keys)
        on_first = next(k for k in keys if redis_cluster.node_of(k) is redis_cluster.nodes[0])
        assert 0 < int(redis_cluster.nodes[0].client().ttl(on_first)) <= 100
        assert cache.describe()["nodes"] == 3 and cache.errors == 0
    finally:
        await cache.close()


async def test_slot_moved_under_the_client_is_followed(redis_cluster: Cluster) -> None:
    keys = _keys_on_every_node(redis_cluster, 12)
    cache = RedisClusterCache(redis_cluster.url, ttl_s=100, timeout_s=0.5)
    try:
        cache.put_many([(k, _value(i)) for i, k in enumerate(keys)])
        await cache.flush_writes()
        assert all(v is not None for v in await cache.get_many(keys))  # the client now knows the slots
        key = keys[0]
        src = redis_cluster.node_of(key)
        dst = next(n for n in redis_cluster.nodes if n is not src)
        slot = int(src.client().cluster("keyslot", key))
        src_id, dst_id = (n.client().execute_command("CLUSTER MYID") for n in (src, dst))
        # The manual resharding protocol (what redis-cli --cluster reshard does, for one slot).
        dst.client().execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.client().execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        moved = src.client().execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
        src.client().execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *moved)
        for node in redis_cluster.nodes:
            node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        assert redis_cluster.node_of(key) is dst
        # The client still routes the slot to src: src answers MOVED, the client follows it.
        assert await cache.get_many(keys) == [_value(i) for i in range(len(keys))]
        assert await cache.get_many(keys) == [_value(i) for i in range(len(keys))]
        assert cache.errors == 0
    finally:
        await cache.close()


async def test_node_down_costs_only_its_keys_and_heals(redis_cluster: Cluster) -> None:
    keys = _keys_on_every_node(redis_cluster, 12)
    metrics = Metrics()
    cache = RedisClusterCache(redis_cluster.url, ttl_s=100, timeout_s=0.2, metrics=metrics, max_backoff_s=0.3)
    try:
        cache.put_many([(k, _value(i)) for i, k in enumerate(keys)])
        await cache.flush_writes()
        assert all(v is not None for v in await cache.get_many(keys))
        dead = redis_cluster.nodes[1]
        on_dead = [redis_cluster.node_of(k) is dead for k in keys]
        dead.kill()
        start = time.monotonic()
        got = await cache.get_many(keys)
        # The dead node's keys are misses (the model answers them); the other nodes still answer.
        assert [v is None for v in got] == on_dead
        got = await cache.get_many(keys)  # inside the dead node's back-off: not even tried
        assert [v is None for v in got] == on_dead
        assert time.monotonic() - start < 1.5
        labels = {"backend": "redis-cluster"}
        errors = metrics.registry.get_sample_value("protembed_cache_errors_total", labels)
        assert errors is not None and errors >= 1
        assert cache.describe()["nodes_backed_off"] == 1

        dead.start()  # same ports and nodes.conf: rejoins as the same master, empty
        _wait(redis_cluster.healthy, 30, "the node to rejoin")
        time.sleep(0.35)  # past the back-off

        async def healed() -> bool:
            cache.put_many([(k, _value(i)) for i, k in enumerate(keys)])
            await cache.flush_writes()
            return all(v is not None for v in await cache.get_many(keys))

        end = time.monotonic() + 10
        while not await healed():
            assert time.monotonic() < end, "the cache did not use the restarted node again"
            time.sleep(0.2)
    finally:
        await cache.close()


@pytest.mark.slow
async def test_failover_to_a_replica_heals_without_a_restart(redis_cluster: Cluster, tmp_path: Path) -> None:
    keys = _keys_on_every_node(redis_cluster, 12)
    master = redis_cluster.nodes[0]
    replica = Node(tmp_path / "replica")
    replica.start()
    redis_cluster.nodes.append(replica)  # stopped with the others
    master_id = master.client().execute_command("CLUSTER MYID")
    subprocess.run(
        [
            str(shutil.which("redis-cli")),
            *("--cluster", "add-node", replica.name, master.name),
            *("--cluster-slave", "--cluster-master-id", master_id.decode()),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    _wait(lambda: replica.client().info("replication")["master_link_status"] == "up", 30, "replication")
    cache = RedisClusterCache(redis_cluster.url, ttl_s=100, timeout_s=0.2, max_backoff_s=0.3)
    try:
        cache.put_many([(k, _value(i)) for i, k in enumerate(keys)])
        await cache.flush_writes()
        assert master.client().execute_command("WAIT", 1, 5000) == 1  # the replica has the writes
        assert all(v is not None for v in await cache.get_many(keys))
        master.kill()
        # The replica takes over the master's slots (node timeout 1 s, then an election); the client finds
        # it by itself: connection errors ask for a topology refresh, and the keys hit again, from it.
        end = time.monotonic() + 30
        while not all(v is not None for v in await cache.get_many(keys)):
            assert time.monotonic() < end, "the cache did not find the promoted replica"
            await asyncio.sleep(0.2)
        assert replica.client().execute_command("ROLE")[0] == b"master"
        # Asked of the promoted replica itself: the other masters learn of the promotion by gossip, which
        # may still lag here (CI once saw a survivor MOVE a key to the dead master).
        assert any(redis_cluster.node_of(k, probe=replica) is replica for k in keys) and cache.errors >= 1
    finally:
        await cache.close()


async def test_unreachable_cluster_answers_misses_within_the_timeout(tmp_path: Path) -> None:
    cache = RedisClusterCache(f"redis+cluster://127.0.0.1:{free_port()}", ttl_s=100, timeout_s=0.1)
    try:
        start = time.monotonic()
        assert await cache.get_many(["a", "b"]) == [None, None]
        assert await cache.get_many(["a"]) == [None]  # backed off: not tried
        cache.put_many([("a", b"1")])
        await cache.flush_writes()
        assert time.monotonic() - start < 1.0 and cache.errors == 1
    finally:
        await cache.close()


# --- the real server on the cluster -----------------------------------------------------------------------


@pytest.mark.slow
def test_server_loses_no_request_when_a_cluster_node_dies(
    redis_cluster: Cluster, start_server_process: Callable[..., Any]
) -> None:
    server = start_server_process(REDIS_URL=redis_cluster.url, PROTEMBED_REDIS_TIMEOUT_S="0.2")
    assert httpx.get(server.url + "/info").json()["cache"]["backend"] == "redis-cluster"
    residues = "ACDEFGHIKLMNPQRSTVWY"
    seqs = [f"M{residues[i % 20]}{residues[(7 * i) % 20]}KTAYIAK{'G' * (i % 9)}QR" for i in range(24)]
    reference = {}
    with httpx.Client(timeout=10) as http:
        first = http.post(server.url + "/embed", json={"sequences": seqs}).json()["data"]
        for d, seq in zip(first, seqs, strict=True):
            reference[seq] = np.array(d["embedding"])
        _wait(lambda: sum(n.client().dbsize() for n in redis_cluster.nodes) == len(seqs), 10, "cache writes")
        assert all(n.client().dbsize() > 0 for n in redis_cluster.nodes), "the sequences span all nodes"

    failures: list[str] = []
    answered: list[list[bool]] = []
    stop = threading.Event()

    def client_loop(offset: int) -> None:
        with httpx.Client(timeout=10) as http:
            i = offset
            while not stop.is_set():
                batch = [seqs[(i + j) % len(seqs)] for j in range(8)]
                i += 5
                r = http.post(server.url + "/embed", json={"sequences": batch})
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                data = r.json()["data"]
                for d, seq in zip(data, batch, strict=True):
                    if not np.allclose(d["embedding"], reference[seq], atol=1e-5):
                        failures.append(f"wrong vector for {seq}")
                answered.append([d["cached"] for d in data])

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        before_kill = len(answered)
        redis_cluster.nodes[2].kill()  # mid-run
        time.sleep(2.5)
        during = answered[before_kill:]
        redis_cluster.nodes[2].start()
        _wait(redis_cluster.healthy, 30, "the node to rejoin")
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert not failures, failures[:5]
    assert before_kill > 0 and len(during) > 0
    # While the node was down its sequences were computed, the other nodes' still came from the cache.
    assert any(any(c) for c in during) and any(not all(c) for c in during)
    # Healed: the restarted node is written again (the server re-caches what it computes), so all hit.
    with httpx.Client(timeout=10) as http:
        end = time.monotonic() + 15
        while True:
            data = http.post(server.url + "/embed", json={"sequences": seqs}).json()["data"]
            if all(d["cached"] for d in data):
                break
            assert time.monotonic() < end, "the server did not use the restarted node again"
            time.sleep(0.3)


# --- the cluster URL and make_cache ------------------------------------------------------------------------


def test_cluster_url_names_seed_nodes_and_keeps_credentials_and_options() -> None:
    first, nodes = parse_cluster_url("rediss+cluster://u:p%40ss@h1:7000,h2:7001,[::1]:7002/0?ssl_cert_reqs=none")
    assert first == "rediss://u:p%40ss@h1:7000/0?ssl_cert_reqs=none"
    assert nodes == [("h1", 7000), ("h2", 7001), ("::1", 7002)]
    assert parse_cluster_url("redis+cluster://h") == ("redis://h:6379", [("h", 6379)])
    assert parse_cluster_url("redis+cluster://h:1,g:2?ssl=false")[0] == "redis://h:1?ssl=false"
    with pytest.raises(ValueError, match="only database 0"):
        parse_cluster_url("redis+cluster://h:7000/3")
    with pytest.raises(ValueError, match="'h:x' is not host:port"):
        parse_cluster_url("redis+cluster://h:x")


async def test_make_cache_picks_the_backend_by_url() -> None:
    kw: dict[str, Any] = {"max_bytes": 1024, "ttl_s": 10, "timeout_s": 0.1}
    for url, cls in (("redis+cluster://h:7000", RedisClusterCache), ("redis://h:6379/0", RedisCache)):
        cache = make_cache(url, **kw)
        assert type(cache) is cls
        await cache.close()
    assert isinstance(make_cache(None, **kw), MemoryCache)
    with pytest.raises(ValueError, match="cache encoding 'bfloat16'"):
        make_cache(None, encoding="bfloat16", **kw)  # type: ignore[arg-type]


# --- float16 values ----------------------------------------------------------------------------------------


def test_float16_values_are_half_the_size_and_close() -> None:
    rng = np.random.default_rng(0)
    vec = rng.normal(0, 1, 768).astype(np.float32)
    f32, f16 = encode_array(vec), encode_array(vec, "float16")
    assert len(f16) - 9 == (len(f32) - 9) // 2 == 768 * 2
    back = decode_array(f16)
    assert back is not None and back.dtype == np.float32 and back.shape == (768,)
    assert not back.flags.writeable
    # float16 keeps 11 significant bits: relative error at most 2^-11 per value
    assert np.all(np.abs(back - vec) <= np.abs(vec) * 2.0**-11 + 1e-7)
    per_residue = rng.normal(0, 1, (5, 192)).astype(np.float32)
    back2 = decode_array(encode_array(per_residue, "float16"))
    assert back2 is not None and back2.shape == (5, 192)
    assert decode_array(f16[:-1]) is None


def test_float16_never_stores_an_overflow_as_infinity() -> None:
    vec = np.array([1.0, 7e4, -2.5], np.float32)  # 70,000 is beyond float16's 65,504
    data = encode_array(vec, "float16")
    back = decode_array(data)
    assert data == encode_array(vec) and back is not None and np.array_equal(back, vec)


def test_the_key_names_the_encoding() -> None:
    f32 = cache_key("m", "1", "student", "MKT")
    assert cache_key("m", "1", "student", "MKT", "float16") == f32 + ":f16"


async def test_float16_cache_stores_half_and_answers_close_values(redis_server: Any) -> None:
    vec = np.linspace(-3, 3, 768, dtype=np.float32)
    key = cache_key("m", "1", "student", "MKT")
    for cache in (
        MemoryCache(1 << 20, encoding="float16"),
        RedisCache(redis_server.url, ttl_s=10, timeout_s=0.5, encoding="float16"),
    ):
        cache.put_many([(key, encode_array(vec))])  # callers always hand over float32 values
        if isinstance(cache, RedisCache):
            await cache.flush_writes()
            stored = await cache.client.get(key + ":f16")
            assert await cache.client.exists(key) == 0
        else:
            stored = cache.get_sync([key])[0]
        assert stored is not None and len(stored) == 9 + 768 * 2
        (got,) = await cache.get_many([key])
        assert got is not None and got == stored
        back = decode_array(got)
        assert back is not None and np.max(np.abs(back - vec)) <= 3 * 2.0**-11
        assert cache.describe()["encoding"] == "float16"
        await cache.close()


@pytest.mark.slow
def test_server_with_float16_cache_answers_close_vectors_under_f16_keys(
    redis_server: Any, start_server_process: Callable[..., Any]
) -> None:
    server = start_server_process(REDIS_URL=redis_server.url, PROTEMBED_CACHE_ENCODING="float16")
    assert httpx.get(server.url + "/info").json()["cache"]["encoding"] == "float16"
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MVLSPADKTNVKAAW"]
    with httpx.Client(timeout=10) as http:
        first = http.post(server.url + "/embed", json={"sequences": seqs}).json()["data"]
        client = redis.Redis.from_url(redis_server.url)
        _wait(lambda: len(client.keys("protembed:*")) == len(seqs), 10, "cache writes")
        for key in cast(list[bytes], client.keys("protembed:*")):
            assert key.endswith(b":f16")
            assert client.strlen(key) == 9 + 2 * len(first[0]["embedding"])
        second = http.post(server.url + "/embed", json={"sequences": seqs}).json()["data"]
    assert [d["cached"] for d in first] == [False, False] and [d["cached"] for d in second] == [True, True]
    for a, b in zip(first, second, strict=True):
        x, y = np.array(a["embedding"]), np.array(b["embedding"])
        assert not np.array_equal(x, y) and np.all(np.abs(y - x) <= np.abs(x) * 2.0**-11 + 1e-7)
