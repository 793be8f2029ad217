"""The chart's optional bulk Job (bulkJob.*): an Indexed Job whose pod I embeds shard I.

Beyond the schema checks every scenario gets in test_chart.py, the Job's command is run for real: each
pod's shell command, exactly as rendered, with JOB_COMPLETION_INDEX set as Kubernetes sets it and the
ConfigMap's environment, on the tiny model; the merge line of NOTES.txt then joins the shards, and the
result equals an unsharded run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deploy_helpers import FULLNAME, NAMESPACE, Rendered

from protembed.bulk import read_embeddings
from protembed.commands.embed import EXIT_SKIPPED, main

JOB = f"{FULLNAME}-bulk"
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def _job(rendered: Rendered) -> dict[str, Any]:
    return rendered.one("Job", JOB)


def _container(rendered: Rendered) -> dict[str, Any]:
    containers = _job(rendered)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["embed"]
    container: dict[str, Any] = containers[0]
    return container


def test_off_by_default(render: Callable[..., Rendered]) -> None:
    assert not render().has("Job")


def test_indexed_job_on_a_volume_never_selected_by_the_service(render: Callable[..., Rendered]) -> None:
    r = render(
        {"bulkJob": {"enabled": True, "shards": 16, "parallelism": 5, "volume": {"existingClaim": "pvc"}}}
    )
    spec = _job(r)["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 16, 5)
    pod = spec["template"]
    assert pod["spec"]["restartPolicy"] == "Never"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "pvc"}
    c = _container(r)
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    script = c["args"][2]
    assert c["args"][:2] == ["/bin/sh", "-c"] and "command" not in c  # tini stays PID 1
    assert '--shard "${JOB_COMPLETION_INDEX}"/16' in script
    assert "'/data/embeddings/shard-'\"${JOB_COMPLETION_INDEX}\"'-of-16.h5'" in script
    assert script.endswith("|| [ $? -eq 3 ]")  # skipped bad records complete the shard
    assert c["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # Job pods must never receive traffic or count against the server's disruption budget.
    labels = pod["metadata"]["labels"]
    for selector in (
        r.one("Service", FULLNAME)["spec"]["selector"],
        r.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        r.deployment["spec"]["selector"]["matchLabels"],
    ):
        assert not all(labels.get(k) == v for k, v in selector.items())


def test_service_source_talks_grpc_to_the_release_with_its_key(render: Callable[..., Rendered]) -> None:
    r = render(
        {
            "gpu": {"enabled": True},
            "apiKey": {"existingSecret": "keys", "existingSecretKey": "token"},
            "service": {"grpcPort": 443},
            "bulkJob": {"enabled": True, "source": "service", "volume": {"existingClaim": "pvc"}},
        }
    )
    c = _container(r)
    assert f"--server 'grpc://{FULLNAME}:443'" in c["args"][2]
    assert "envFrom" not in c
    assert c["env"] == [
        {"name": "PROTEMBED_API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "token"}}}
    ]
    # The server pods hold the GPUs; the Job's pods only read and write.
    assert "nvidia.com/gpu" not in str(c["resources"])
    assert "tolerations" not in _job(r)["spec"]["template"]["spec"]


def test_local_source_on_gpu_gets_the_gpu_like_the_server(render: Callable[..., Rendered]) -> None:
    r = render(
        {"gpu": {"enabled": True, "count": 2}, "bulkJob": {"enabled": True, "volume": {"existingClaim": "p"}}}
    )
    c, pod = _container(r), _job(r)["spec"]["template"]["spec"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2 and c["resources"]["limits"]["memory"] == "3Gi"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert c["image"] == "protembed:0.1.0-gpu"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "bulkJob.enabled needs bulkJob.volume.existingClaim"),
        ({"source": "service", "volume": {"existingClaim": "p"}}, "settings.grpc_port must be > 0"),
        ({"parallelism": 9, "shards": 8, "volume": {"existingClaim": "p"}}, "must not exceed bulkJob.shards"),
        ({"source": "cluster", "volume": {"existingClaim": "p"}}, "source"),
        ({"outputSuffix": ".csv", "volume": {"existingClaim": "p"}}, "outputSuffix"),
        ({"input": "it's.fasta", "volume": {"existingClaim": "p"}}, "input"),
        ({"shards": 0, "volume": {"existingClaim": "p"}}, "shards"),
    ],
)
def test_bad_bulk_values_are_refused_naming_the_value(
    values: dict[str, Any], message: str, chart: Any, helm: Any
) -> None:
    settings = {"settings": {"grpc_port": 0}} if values.get("source") == "service" else {}
    with pytest.raises(helm.HelmError, match=message.replace(".", r"\.")):
        chart.render({**settings, "bulkJob": {"enabled": True, **values}}, name="rel", namespace=NAMESPACE)


def test_the_rendered_pods_embed_their_shards_and_notes_merge_them(
    tmp_path: Path, tiny_model_dir: Path, render: Callable[..., Rendered]
) -> None:
    shards = 3
    rng = np.random.default_rng(7)
    records = {
        f"P{i:05d}": "".join(rng.choice(list(AMINO), size=int(rng.integers(8, 60)))) for i in range(40)
    }
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "in.fasta").write_text("".join(f">{k} test\n{v}\n" for k, v in records.items()) + ">bad\nMK1\n")
    r = render(
        {
            # The tiny model's window is 64 residues: the chunk overlap must stay below half of it.
            "settings": {
                "model": str(tiny_model_dir),
                "providers": "cpu",
                "intra_op_threads": 1,
                "chunk_overlap": 16,
            },
            "bulkJob": {
                "enabled": True,
                "shards": shards,
                "parallelism": shards,
                "volume": {"existingClaim": "pvc", "mountPath": str(volume)},
                "input": "in.fasta",
                "outputDir": "out",
            },
        }
    )
    script = _container(r)["args"][2]
    pod_env = r.one("ConfigMap", FULLNAME)["data"]
    bin_dir = str(Path(sys.executable).parent)  # where the `protembed` console script is
    base = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}
    for index in range(shards):
        env = {**base, **pod_env, "JOB_COMPLETION_INDEX": str(index)}  # as the Job controller sets it
        run = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"shard {index}/{shards}" in run.stderr
    notes = [line.strip() for line in r.notes.splitlines()]
    merge_line = next(line for line in notes if line.startswith("protembed merge"))
    run = subprocess.run(["/bin/sh", "-c", merge_line], env=base, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]

    whole = tmp_path / "whole.h5"
    local = ["--model", str(tiny_model_dir), "--providers", "cpu", "--intra-op-threads", "1"]
    local += ["--chunk-overlap", "16", "--no-progress"]
    assert main([str(volume / "in.fasta"), "-o", str(whole), *local]) == EXIT_SKIPPED  # the bad record
    want, got = read_embeddings(whole), read_embeddings(volume / "out" / "merged.h5")
    assert set(got) == set(want) == set(records)
    for rid, vec in want.items():
        np.testing.assert_allclose(got[rid], vec, atol=1e-6)
