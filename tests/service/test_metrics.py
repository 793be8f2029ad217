"""Metrics.child: the memoized labelled child is the one prometheus keeps, and it counts."""

from __future__ import annotations

from protembed.metrics import Metrics


def test_child_is_prometheus_own_labelled_child() -> None:
    m = Metrics()
    a = m.child(m.http_requests, "/embed", "POST", "200")
    assert a is m.child(m.http_requests, "/embed", "POST", "200")
    assert a is m.http_requests.labels("/embed", "POST", "200")
    b = m.child(m.http_requests, "/embed", "POST", "422")
    assert b is not a
    # The same label values on another metric are another child.
    assert m.child(m.grpc_requests, "Embed", "OK") is not m.child(m.grpc_latency, "Embed", "OK")
    a.inc(2)
    b.inc()
    m.child(m.http_latency, "/embed", "POST", "200").observe(0.001)
    text = m.render().decode()
    assert 'protembed_http_requests_total{method="POST",route="/embed",status="200"} 2.0' in text
    assert 'protembed_http_requests_total{method="POST",route="/embed",status="422"} 1.0' in text
    labels = '{method="POST",route="/embed",status="200"}'
    assert f"protembed_http_request_duration_seconds_count{labels} 1.0" in text
