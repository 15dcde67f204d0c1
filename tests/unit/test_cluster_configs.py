"""cluster_configs/*.yaml parse, and their resource names match the pool's config defaults."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ray_mm.pool.config import LocalClusterSpec, PoolConfig, load_local_cluster_spec

CONFIGS = Path(__file__).resolve().parents[2] / "cluster_configs"


def _load_all(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((CONFIGS / name).read_text()) if doc]


def test_every_yaml_parses() -> None:
    files = sorted(CONFIGS.glob("*.yaml"))
    assert {f.name for f in files} >= {"local.yaml", "ray-cluster.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"}
    for f in files:
        assert _load_all(f.name), f


def test_local_spec_matches_defaults() -> None:
    spec = load_local_cluster_spec(CONFIGS / "local.yaml")
    defaults = PoolConfig()
    assert spec == LocalClusterSpec()  # the file and the built-in default cluster agree
    assert defaults.cpu_node_resource in spec.cpu_nodes.resources
    assert defaults.gpu_node_resource in spec.gpu_nodes.resources
    assert spec.cpu_nodes.count * spec.cpu_nodes.resources[defaults.cpu_node_resource] >= defaults.cpu_workers


def test_launcher_node_types_carry_pool_resources() -> None:
    (doc,) = _load_all("ray-cluster.yaml")
    defaults = PoolConfig()
    types = doc["available_node_types"]
    assert defaults.cpu_node_resource in types["cpu_node"]["resources"]
    assert defaults.gpu_node_resource in types["gpu_node"]["resources"]
    assert types["gpu_node"]["resources"].get("GPU", 0) >= 1
    assert defaults.cpu_node_resource not in types["head"]["resources"]
    assert doc["head_node_type"] in types


def _groups(spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def test_kuberay_groups_carry_pool_resources() -> None:
    defaults = PoolConfig()
    (cluster,) = _load_all("kuberay-raycluster.yaml")
    (job,) = _load_all("kuberay-rayjob.yaml")
    assert cluster["kind"] == "RayCluster" and job["kind"] == "RayJob"
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        groups = _groups(spec)
        cpu_resources = json.loads(yaml.safe_load(groups["cpu"]["rayStartParams"]["resources"]))
        gpu_resources = json.loads(yaml.safe_load(groups["gpu"]["rayStartParams"]["resources"]))
        assert defaults.cpu_node_resource in cpu_resources
        assert defaults.gpu_node_resource in gpu_resources
        gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert gpu_limits["nvidia.com/gpu"] == "1"
    assert "python -m ray_mm run --address auto" in job["spec"]["entrypoint"]
