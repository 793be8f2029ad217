"""The Helm chart, rendered by the real Helm engine for each feature combination.

Every manifest is checked against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown
fields fail) for the oldest supported and the newest known Kubernetes, and the wiring that a schema
cannot see is asserted: probe paths and ports, selectors, GPU limits, secret references, and that each
PROTEMBED_* variable is a real field of protembed.settings.Settings and parses there.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from deploy_helpers import CHART_DIR, FULLNAME, NAMESPACE, Rendered

from protembed.settings import Settings

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is a dev dependency (pip install kubernetes-validate)"
)

# Chart.yaml kubeVersion floor, and the newest schema set the validator ships.
KUBE_VERSIONS = ("1.27", kubernetes_validate.utils.latest_version())
SECRET_FIELDS = {"api_key", "redis_url"}
JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}

SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": {"gpu": {"enabled": True}},
    "redis-bundled": {"redis": {"mode": "bundled"}},
    "redis-external-url": {
        "redis": {"mode": "external", "external": {"url": "redis://cache.internal:6379/2"}}
    },
    "redis-external-secret": {"redis": {"mode": "external", "external": {"existingSecret": "cache-creds"}}},
    "hpa-cpu": {"autoscaling": {"enabled": True}},
    "hpa-custom-gpu": {
        "gpu": {"enabled": True, "count": 2},
        "autoscaling": {
            "enabled": True,
            "targetCPUUtilizationPercentage": None,
            "customMetric": {"enabled": True},
        },
    },
    "bulk-job-local": {"bulkJob": {"enabled": True, "volume": {"existingClaim": "embeddings"}}},
    "bulk-job-service-gpu": {
        "gpu": {"enabled": True},
        "apiKey": {"value": "s3cret"},
        "bulkJob": {
            "enabled": True,
            "source": "service",
            "volume": {"existingClaim": "embeddings"},
            "activeDeadlineSeconds": 86400,
            "ttlSecondsAfterFinished": 3600,
        },
    },
    "everything": {
        "gpu": {
            "enabled": True,
            "runtimeClassName": "nvidia",
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
        },
        "redis": {"mode": "bundled"},
        "autoscaling": {
            "enabled": True,
            "minReplicas": 3,
            "maxReplicas": 12,
            "customMetric": {"enabled": True},
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "service": {
            "type": "LoadBalancer",
            "headless": True,
            "externalTrafficPolicy": "Local",
            "loadBalancerSourceRanges": ["10.0.0.0/8"],
            "annotations": {"cloud.google.com/app-protocols": '{"grpc":"HTTP2"}'},
        },
        "probes": {"grpc": {"enabled": True}},
        "apiKey": {"value": "s3cret"},
        "podDisruptionBudget": {"minAvailable": 2, "maxUnavailable": None},
        "extraEnv": [{"name": "PROTEMBED_MAX_WAIT_MS", "value": "2"}],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "protembed"}},
            }
        ],
    },
}
EXTERNAL_SECRETS = {("cache-creds", "redis-url"): "rediss://user:pw@cache.internal:6380/0"}


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as the server would build them inside the pod."""
    import os

    for name in list(os.environ):
        if name.startswith("PROTEMBED_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- every scenario ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_manifests_validate_against_kubernetes_schemas(
    scenario: str, render: Callable[..., Rendered]
) -> None:
    rendered = render(SCENARIOS[scenario])
    assert rendered.docs, "chart rendered nothing"
    for doc in rendered.docs:
        assert doc["metadata"].get("namespace") in (None, NAMESPACE)
        if doc["kind"] == "ServiceMonitor":
            # A CRD: no built-in schema, so check the fields the Prometheus operator requires.
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert doc["spec"]["selector"]["matchLabels"] and doc["spec"]["endpoints"]
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(p) for p in error.path)
                pytest.fail(
                    f"{scenario}: {doc['kind']}/{doc['metadata']['name']} invalid for {version} "
                    f"at {where}: {error.message}"
                )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_protembed_env_is_a_settings_field_and_parses(
    scenario: str, render: Callable[..., Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = render(SCENARIOS[scenario])
    env = rendered.container_env(EXTERNAL_SECRETS)
    fields = set(Settings.model_fields)
    for name in env:
        if name.startswith("PROTEMBED_"):
            assert name.removeprefix("PROTEMBED_").lower() in fields, (
                f"{scenario}: {name} is no Settings field"
            )
    settings = _settings_from(env, monkeypatch)
    assert settings.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in rendered.container["ports"]}
    assert settings.port == ports["http"] == 8000
    assert settings.grpc_port == ports["grpc"] == 50051
    if "REDIS_URL" in env:
        assert settings.redis_url == env["REDIS_URL"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_selectors_and_port_names_line_up(scenario: str, render: Callable[..., Rendered]) -> None:
    rendered = render(SCENARIOS[scenario])
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert _labels_match(rendered.deployment["spec"]["selector"]["matchLabels"], pod_labels)
    port_names = {p["name"] for p in rendered.container["ports"]}
    for service in rendered.all("Service"):
        if service["metadata"]["name"].endswith("-redis"):
            continue
        assert _labels_match(service["spec"]["selector"], pod_labels)
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for pdb in rendered.all("PodDisruptionBudget"):
        assert _labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    for hpa in rendered.all("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] == rendered.deployment["metadata"]["name"]
        assert "replicas" not in rendered.deployment["spec"], "HPA and a fixed replica count would fight"
    probes = [rendered.container[k] for k in ("livenessProbe", "readinessProbe", "startupProbe")]
    for probe in probes:
        if "httpGet" in probe:
            assert probe["httpGet"]["port"] in port_names


# --- defaults ---------------------------------------------------------------------------------------


def test_default_probes_drain_and_security(render: Callable[..., Rendered]) -> None:
    r = render()
    c = r.container
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # Warm-up is gated by a startup probe on readiness, with a budget of minutes, not seconds.
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    # The image's tini entrypoint must survive: overriding command would drop signal forwarding.
    assert "command" not in c and "args" not in c

    spec = r.pod_spec
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and 0 < int(sleep[1]) < spec["terminationGracePeriodSeconds"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert spec["automountServiceAccountToken"] is False

    assert not any("nvidia.com/gpu" in str(v) for v in (c["resources"], spec.get("tolerations")))
    assert r.one("ConfigMap")["data"]["PROTEMBED_PROVIDERS"] == "CPUExecutionProvider"
    assert r.deployment["spec"]["replicas"] == 2
    assert not r.has("HorizontalPodAutoscaler") and not r.has("ServiceMonitor") and not r.has("Secret")
    assert r.one("PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": r.deployment["spec"]["selector"],
    }
    assert c["image"] == "protembed:0.1.0"


def test_service_exposes_http_and_grpc_with_app_protocols(render: Callable[..., Rendered]) -> None:
    service = render().one("Service", FULLNAME)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == 8000 and ports["http"]["appProtocol"] == "http"
    assert ports["grpc"]["port"] == 50051 and ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert service["spec"]["type"] == "ClusterIP"


def test_load_balancer_service_and_headless(render: Callable[..., Rendered]) -> None:
    r = render(SCENARIOS["everything"])
    lb = r.one("Service", FULLNAME)["spec"]
    assert lb["type"] == "LoadBalancer" and lb["externalTrafficPolicy"] == "Local"
    assert lb["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    headless = r.one("Service", f"{FULLNAME}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    # The ServiceMonitor must not select the headless Service too (double scrapes).
    monitor = r.one("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchExpressions"] == [
        {"key": "protembed/headless", "operator": "DoesNotExist"}
    ]
    assert "protembed/headless" in headless["metadata"]["labels"]
    assert "protembed/headless" not in r.one("Service", FULLNAME)["metadata"]["labels"]
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# --- GPU --------------------------------------------------------------------------------------------


def test_gpu_requests_devices_tolerates_taint_and_prefers_cuda(render: Callable[..., Rendered]) -> None:
    r = render({"gpu": {"enabled": True, "count": 2}, "nodeSelector": {"pool": "inference"}})
    c, spec = r.container, r.pod_spec
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert c["resources"]["limits"]["memory"] == "3Gi", "GPU limit must be added, not replace the others"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"pool": "inference"}
    assert c["image"] == "protembed:0.1.0-gpu"
    assert r.one("ConfigMap")["data"]["PROTEMBED_PROVIDERS"] == "CUDAExecutionProvider,CPUExecutionProvider"


def test_gpu_overrides(render: Callable[..., Rendered], monkeypatch: pytest.MonkeyPatch) -> None:
    r = render(
        {
            "gpu": {
                "enabled": True,
                "resourceName": "nvidia.com/mig-1g.18gb",
                "runtimeClassName": "nvidia",
                "image": {"repository": "registry.example/protembed-cuda", "tag": "v2"},
            },
            "settings": {"providers": ["tensorrt", "cuda", "cpu"]},
        }
    )
    assert r.container["resources"]["limits"]["nvidia.com/mig-1g.18gb"] == 1
    assert r.pod_spec["runtimeClassName"] == "nvidia"
    assert r.container["image"] == "registry.example/protembed-cuda:v2"
    settings = _settings_from(r.container_env(), monkeypatch)
    assert settings.providers == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


# --- settings -> ConfigMap -----------------------------------------------------------------------------


def test_settings_values_render_in_a_form_settings_parses(
    render: Callable[..., Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Helm reads YAML numbers as float64; a naive toString gives 1.6777216e+07 for 16 MiB.
    values = {
        "settings": {
            "grpc_max_message_bytes": 16 * 2**20,
            "max_queue_tokens": 1048576,
            "max_wait_ms": 2.5,
            "redis_timeout_s": 0.1,
            "warmup": False,
            "long_sequences": "chunk",
            "model_variant": "int8",
            "intra_op_threads": 4,
            "providers": "cpu",
        }
    }
    r = render(values)
    data = r.one("ConfigMap")["data"]
    assert data["PROTEMBED_GRPC_MAX_MESSAGE_BYTES"] == "16777216"
    assert data["PROTEMBED_WARMUP"] == "false"
    settings = _settings_from(r.container_env(), monkeypatch)
    assert settings.grpc_max_message_bytes == 16 * 2**20 and settings.max_queue_tokens == 1048576
    assert settings.max_wait_ms == 2.5 and settings.redis_timeout_s == 0.1
    assert (
        settings.warmup is False and settings.long_sequences == "chunk" and settings.model_variant == "int8"
    )
    assert settings.intra_op_threads == 4 and settings.providers == ["CPUExecutionProvider"]
    assert str(settings.model) == "/opt/protembed/models/protembed-student-v1"
    # null keys are left out, so the server's own defaults apply.
    assert "PROTEMBED_MAX_BATCH_TOKENS" not in data
    assert settings.max_batch_tokens == Settings.model_fields["max_batch_tokens"].default


def test_schema_settings_are_exactly_the_settings_fields() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    settings_schema = schema["properties"]["settings"]
    assert settings_schema["additionalProperties"] is False
    in_schema, in_settings = set(settings_schema["properties"]), set(Settings.model_fields) - SECRET_FIELDS
    assert in_schema == in_settings, (
        "values.schema.json settings out of sync with protembed.settings.Settings: "
        f"add {in_settings - in_schema}, remove {in_schema - in_settings} "
        "(in values.schema.json and values.yaml settings)"
    )
    for name, prop in settings_schema["properties"].items():
        assert prop["description"].startswith(f"PROTEMBED_{name.upper()}:"), name
        annotation = Settings.model_fields[name].annotation
        if typing.get_origin(annotation) is typing.Literal:
            assert [v for v in prop["enum"] if v is not None] == list(typing.get_args(annotation)), name
        elif annotation in JSON_TYPES:
            assert JSON_TYPES[annotation] in prop["type"], name
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert set(values["settings"]) == in_settings, "values.yaml lists every setting (null = server default)"


def test_changing_a_setting_rolls_the_pods(render: Callable[..., Rendered]) -> None:
    def checksum(values: dict[str, Any]) -> str:
        return str(
            render(values).deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        )

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"settings": {"max_batch_size": 32}})


# --- secrets: API key and Redis -------------------------------------------------------------------------


def test_api_key_comes_from_a_secret_never_the_configmap(render: Callable[..., Rendered]) -> None:
    r = render({"apiKey": {"value": "s3cret"}})
    assert "s3cret" not in json.dumps(r.one("ConfigMap"))
    assert r.container_env()["PROTEMBED_API_KEY"] == "s3cret"
    r = render({"apiKey": {"existingSecret": "team-keys", "existingSecretKey": "token"}})
    assert not r.has("Secret")
    ref = next(e for e in r.container["env"] if e["name"] == "PROTEMBED_API_KEY")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "team-keys", "key": "token"}


def test_bundled_redis_is_wired_to_the_server(render: Callable[..., Rendered]) -> None:
    r = render({"redis": {"mode": "bundled"}})
    name = f"{FULLNAME}-redis"
    redis_deploy, redis_service = r.one("Deployment", name), r.one("Service", name)
    assert r.container_env()["REDIS_URL"] == f"redis://{name}:6379/0"
    redis_pod = redis_deploy["spec"]["template"]
    assert _labels_match(redis_service["spec"]["selector"], redis_pod["metadata"]["labels"])
    # The server's Service must not select the Redis pods, nor Redis's the server pods.
    assert not _labels_match(r.one("Service", FULLNAME)["spec"]["selector"], redis_pod["metadata"]["labels"])
    redis = redis_pod["spec"]["containers"][0]
    assert redis_service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in redis["ports"]}
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True
    assert redis_pod["spec"]["securityContext"]["runAsNonRoot"] is True
    args = redis["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    policy = r.one("NetworkPolicy", name)["spec"]
    assert _labels_match(policy["podSelector"]["matchLabels"], redis_pod["metadata"]["labels"])
    allowed = policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert _labels_match(allowed, r.deployment["spec"]["template"]["metadata"]["labels"])


def test_external_redis_url_from_chart_secret_or_existing_secret(render: Callable[..., Rendered]) -> None:
    r = render(SCENARIOS["redis-external-url"])
    assert r.container_env()["REDIS_URL"] == "redis://cache.internal:6379/2"
    assert "cache.internal" not in json.dumps(r.one("ConfigMap"))
    assert not r.has("Deployment", f"{FULLNAME}-redis")
    r = render(SCENARIOS["redis-external-secret"])
    assert not r.has("Secret")
    ref = next(e for e in r.container["env"] if e["name"] == "REDIS_URL")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "cache-creds", "key": "redis-url"}


def test_no_redis_by_default(render: Callable[..., Rendered]) -> None:
    r = render()
    assert "REDIS_URL" not in r.container_env() and not r.has("NetworkPolicy")


# --- probes, gRPC, autoscaling ------------------------------------------------------------------------


def test_grpc_health_probes(render: Callable[..., Rendered]) -> None:
    c = render({"probes": {"grpc": {"enabled": True, "service": "protembed.v1.Embedder"}}}).container
    for probe in ("readinessProbe", "startupProbe"):
        assert c[probe]["grpc"] == {"port": 50051, "service": "protembed.v1.Embedder"}
        assert "httpGet" not in c[probe]
    # Liveness stays on HTTP: a draining gRPC server reports NOT_SERVING and must not be restarted.
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_grpc_disabled_exposes_no_grpc_port(render: Callable[..., Rendered]) -> None:
    r = render({"settings": {"grpc_port": 0}})
    assert [p["name"] for p in r.container["ports"]] == ["http"]
    assert [p["name"] for p in r.one("Service", FULLNAME)["spec"]["ports"]] == ["http"]
    assert r.one("ConfigMap")["data"]["PROTEMBED_GRPC_PORT"] == "0"


def test_custom_ports_follow_settings(render: Callable[..., Rendered]) -> None:
    r = render({"settings": {"port": 9000, "grpc_port": 9001}, "service": {"httpPort": 80, "grpcPort": 443}})
    assert {p["name"]: p["containerPort"] for p in r.container["ports"]} == {"http": 9000, "grpc": 9001}
    service_ports = {
        p["name"]: (p["port"], p["targetPort"]) for p in r.one("Service", FULLNAME)["spec"]["ports"]
    }
    assert service_ports == {"http": (80, "http"), "grpc": (443, "grpc")}
    assert "port-forward service/rel-protembed 8000:80 50051:443" in r.notes


def test_hpa_cpu_and_custom_metric(render: Callable[..., Rendered]) -> None:
    metrics = render(SCENARIOS["hpa-cpu"]).one("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metrics == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    ]
    hpa = render(SCENARIOS["hpa-custom-gpu"]).one("HorizontalPodAutoscaler")["spec"]
    assert hpa["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "protembed_queue_tokens"},
                "target": {"type": "AverageValue", "averageValue": "8192"},
            },
        }
    ]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)


def test_notes_describe_the_release(render: Callable[..., Rendered]) -> None:
    notes = render(SCENARIOS["everything"]).notes
    assert "rollout status deployment/rel-protembed" in notes
    assert "GPU: 1 x nvidia.com/gpu" in notes and "bundled Redis at rel-protembed-redis:6379" in notes
    assert "authorization: Bearer $PROTEMBED_API_KEY" in notes
    assert "L7" in notes  # the gRPC-behind-L4 caveat on LoadBalancer


# --- values the chart refuses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"settings": {"max_batch_tokenz": 1}}, "max_batch_tokenz"),
        ({"settings": {"log_level": "verbose"}}, "log_level"),
        ({"settings": {"max_batch_size": 0}}, "max_batch_size"),
        ({"settings": {"api_key": "x"}}, "api_key"),
        ({"redis": {"mode": "sentinel"}}, "mode"),
        ({"gpu": {"enabled": True, "count": 0}}, "count"),
        ({"redis": {"mode": "external"}}, "redis.mode=external needs"),
        (
            {"settings": {"grpc_port": 0}, "probes": {"grpc": {"enabled": True}}},
            "settings.grpc_port must be > 0",
        ),
        ({"preStopSleepSeconds": 60, "terminationGracePeriodSeconds": 30}, "preStopSleepSeconds"),
        ({"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}, "needs a metric"),
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
        ({"podDisruptionBudget": {"minAvailable": 1}}, "not both"),
        ({"apiKey": {"value": "a", "existingSecret": "b"}}, "not both"),
    ],
)
def test_bad_values_are_refused_naming_the_value(
    values: dict[str, Any], message: str, chart: Any, helm: Any
) -> None:
    with pytest.raises(helm.HelmError, match=message.replace(".", r"\.").replace("$", r"\$")):
        chart.render(values, name="rel", namespace=NAMESPACE)


def test_helm_lint_is_clean(helm: Any) -> None:
    report = helm.lint(CHART_DIR, strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
