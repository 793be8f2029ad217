"""Paths and the parsed form of a rendered chart, shared by the deployment tests and their conftest."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "protembed"
DOCKER_DIR = REPO / "docker"
RELEASE = "rel"
NAMESPACE = "ml"
FULLNAME = f"{RELEASE}-protembed"


@dataclass
class Rendered:
    """One `helm template` result: parsed manifests plus NOTES.txt."""

    docs: list[dict[str, Any]]
    notes: str

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, (
            f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
        )
        return found[0]

    def has(self, kind: str, name: str | None = None) -> bool:
        return any(name is None or d["metadata"]["name"] == name for d in self.all(kind))

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment", FULLNAME)

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod_spec["containers"]
        assert [c["name"] for c in containers] == ["protembed"]
        container: dict[str, Any] = containers[0]
        return container

    def secret_value(self, name: str, key: str) -> str | None:
        """A key of a Secret this release renders; None when the Secret is not part of the release."""
        for secret in self.all("Secret"):
            if secret["metadata"]["name"] == name:
                return base64.b64decode(secret["data"][key]).decode()
        return None

    def container_env(self, external_secrets: dict[tuple[str, str], str] | None = None) -> dict[str, str]:
        """The server container's environment as the kubelet would build it (envFrom, then env).

        Secret references resolve against the rendered Secrets, else against ``external_secrets``
        (Secrets the operator creates outside the chart); an unresolvable reference fails the test.
        """
        env: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            config_map = self.one("ConfigMap", source["configMapRef"]["name"])
            env.update(config_map.get("data") or {})
        for entry in self.container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = str(entry["value"])
                continue
            ref = entry["valueFrom"]["secretKeyRef"]
            value = self.secret_value(ref["name"], ref["key"])
            if value is None:
                value = (external_secrets or {}).get((ref["name"], ref["key"]))
            assert value is not None, f"env {entry['name']}: Secret {ref['name']}/{ref['key']} is nowhere"
            env[entry["name"]] = value
        return env


def parse(manifests: dict[str, str]) -> Rendered:
    docs: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(docs=docs, notes=notes)
