"""Fixtures for the deployment tests: the Helm chart rendered by the real Helm engine, in process.

helm-python-sdk wraps Helm's Go SDK (libhelm_c) with ctypes, so `helm template` semantics (value
coalescing, values.schema.json validation, `fail`, sprig functions) are exercised without a helm
binary or a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from deploy_helpers import CHART_DIR, NAMESPACE, RELEASE, Rendered, parse


@pytest.fixture(scope="session")
def helm() -> Any:
    return pytest.importorskip(
        "helm_python", reason="helm-python-sdk is a dev dependency (pip install helm-python-sdk)"
    )


@pytest.fixture(scope="session")
def chart(helm: Any) -> Iterator[Any]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: Any) -> Callable[..., Rendered]:
    def _render(values: dict[str, Any] | None = None) -> Rendered:
        return parse(chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True))

    return _render
