"""The chart pointed at an external Redis Cluster: the redis+cluster:// URL passes the schema, reaches the
pod from the Secret, and the server built from that environment opens the cluster cache with the
chart's cache_encoding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from deploy_helpers import NAMESPACE, Rendered

from protembed.cache import RedisClusterCache, make_cache
from protembed.settings import Settings

CLUSTER_URL = "rediss+cluster://:pw@cache-0.cache:6379,cache-1.cache:6379"


async def test_an_external_cluster_reaches_the_server_as_a_cluster_cache(
    render: Callable[..., Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = render(
        {
            "redis": {"mode": "external", "external": {"url": CLUSTER_URL}},
            "settings": {"cache_encoding": "float16"},
        }
    )
    env = r.container_env()
    assert env["REDIS_URL"] == CLUSTER_URL
    assert "pw@" not in str(r.one("ConfigMap"))  # the URL (and its password) only in the Secret
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert s.redis_url == CLUSTER_URL and s.cache_encoding == "float16"
    cache = make_cache(
        s.redis_url,
        max_bytes=s.cache_max_bytes,
        ttl_s=s.cache_ttl_s,
        timeout_s=s.redis_timeout_s,
        encoding=s.cache_encoding,
    )
    try:
        assert isinstance(cache, RedisClusterCache)  # built without connecting
        assert cache.describe()["encoding"] == "float16"
    finally:
        await cache.close()


def test_an_unknown_redis_scheme_is_refused(chart: Any, helm: Any) -> None:
    values = {"redis": {"mode": "external", "external": {"url": "redis+sentinel://a:26379"}}}
    with pytest.raises(helm.HelmError, match="url"):
        chart.render(values, name="rel", namespace=NAMESPACE)
