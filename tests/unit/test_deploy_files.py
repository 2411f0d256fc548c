"""The deploy files (Docker, compose, Prometheus, Grafana, `ray up`, KubeRay) are valid and agree
with the code: Docker cannot run here, so this is what keeps them from rotting."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.cli import build_parser
from services.common.metrics import METRICS_PORTS, ServiceMetrics
from services.config import DEFAULT_PORT

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OTLP_GRPC_PORT = 4317
JAEGER_UI_PORT = 16686
DOCKERFILES = ("docker/Dockerfile", "docker/Dockerfile.ray")


def _yaml(relative: str) -> Any:
    return yaml.safe_load((DEPLOY / relative).read_text())


def _is_pinned(image: str) -> bool:
    name, _, tag = image.rpartition("/")[2].partition(":")
    return bool(name) and bool(tag) and tag != "latest"


def _dockerfile_instructions(relative: str, keyword: str) -> list[str]:
    text = (DEPLOY / relative).read_text().replace("\\\n", " ")
    return [
        line.split(None, 1)[1]
        for line in text.splitlines()
        if line.split(None, 1)[:1] == [keyword] and len(line.split(None, 1)) == 2
    ]


def _k8s_containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [manifest["spec"]["headGroupSpec"], *manifest["spec"]["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def _all_images() -> list[str]:
    compose = _yaml("docker/compose.yaml")
    images = [service["image"] for service in compose["services"].values()]
    images.append(_yaml("ray/cluster.yaml")["docker"]["image"])
    images += [c["image"] for c in _k8s_containers(_yaml("k8s/raycluster.yaml"))]
    for dockerfile in DOCKERFILES:
        images += _dockerfile_instructions(dockerfile, "FROM")
    return images


def _serve_args(argv: list[str]) -> Any:
    assert argv[0] == "serve", argv
    return build_parser().parse_args(argv)


@pytest.mark.parametrize("image", _all_images())
def test_every_image_is_pinned_to_a_version(image: str) -> None:
    assert _is_pinned(image), f"{image} has no version tag (or :latest)"


def test_compose_serves_the_front_door_on_the_default_port() -> None:
    hopscope = _yaml("docker/compose.yaml")["services"]["hopscope"]
    args = _serve_args(hopscope["command"])
    assert args.port == DEFAULT_PORT
    assert args.host == "0.0.0.0"  # reachable from outside the container
    assert f"{DEFAULT_PORT}:{DEFAULT_PORT}" in " ".join(hopscope["ports"])
    assert {int(port) for port in hopscope["expose"]} == set(METRICS_PORTS.values())
    assert hopscope["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
        f"http://jaeger:{OTLP_GRPC_PORT}"
    )


def test_compose_jaeger_takes_otlp_and_does_not_adjust_clock_skew() -> None:
    jaeger = _yaml("docker/compose.yaml")["services"]["jaeger"]
    assert "--query.max-clock-skew-adjustment=0s" in jaeger["command"]
    published = {int(mapping.rsplit(":", 1)[1]) for mapping in jaeger["ports"]}
    assert {OTLP_GRPC_PORT, JAEGER_UI_PORT} <= published


def test_compose_mounts_files_that_exist() -> None:
    compose = _yaml("docker/compose.yaml")
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert (DEPLOY / "docker" / source).exists(), f"{name} mounts missing {source}"
    build = compose["services"]["hopscope"]["build"]
    assert (DEPLOY / "docker" / build["context"] / build["dockerfile"]).is_file()


def test_prometheus_scrapes_each_service_on_its_metrics_port() -> None:
    config = _yaml("prometheus/prometheus.yml")
    scraped = {
        target["labels"]["hopscope_service"]: int(address.rsplit(":", 1)[1])
        for job in config["scrape_configs"]
        for target in job["static_configs"]
        for address in target["targets"]
    }
    assert scraped == METRICS_PORTS


def test_grafana_dashboard_charts_only_metrics_the_services_expose() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/hopscope.json").read_text())
    metrics = ServiceMetrics("x")
    metrics.observe_rpc("Step", 1.0)  # labelled series appear once recorded
    exposed = set(re.findall(r"^(hopscope_\w+)", metrics.exposition(), re.MULTILINE))
    charted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"hopscope_\w+", target["expr"])
    }
    assert charted and charted <= exposed, charted - exposed
    wanted = {"queue_length", "running_seqs", "kv_blocks_used", "kv_blocks_free", "batch_size"}
    wanted |= {"step_ms", "ttft_ms", "tpot_ms", "e2e_ms", "rpc_duration_ms"}
    assert {f"hopscope_{name}" for name in wanted} <= {re.sub(r"_bucket$", "", n) for n in charted}


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    datasources = _yaml("grafana/provisioning/datasources/datasources.yaml")["datasources"]
    providers = _yaml("grafana/provisioning/dashboards/dashboards.yaml")["providers"]
    dashboard = json.loads((DEPLOY / "grafana/dashboards/hopscope.json").read_text())
    uids = {source["uid"] for source in datasources}
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} <= uids
    grafana = _yaml("docker/compose.yaml")["services"]["grafana"]
    mounted = {volume.split(":")[1] for volume in grafana["volumes"]}
    assert providers[0]["options"]["path"] in mounted


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfiles_expose_the_front_door_and_metrics_ports(dockerfile: str) -> None:
    exposed = {
        int(p) for line in _dockerfile_instructions(dockerfile, "EXPOSE") for p in line.split()
    }
    assert {DEFAULT_PORT, *METRICS_PORTS.values()} <= exposed


def test_dockerfile_default_command_is_a_valid_serve() -> None:
    (cmd,) = _dockerfile_instructions("docker/Dockerfile", "CMD")
    assert _serve_args(json.loads(cmd)).port == DEFAULT_PORT
    (entrypoint,) = _dockerfile_instructions("docker/Dockerfile", "ENTRYPOINT")
    assert json.loads(entrypoint) == ["hopscope"]


def test_ray_cluster_config_passes_rays_own_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = Path(pytest.importorskip("ray.autoscaler").__file__).parent / "ray-schema.json"
    config = _yaml("ray/cluster.yaml")
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    node_types = config["available_node_types"]
    assert config["head_node_type"] in node_types
    labels = {t["labels"]["hopscope-node"] for t in node_types.values()}
    assert labels == {"a", "b", "c"}
    head_start = " ".join(config["head_start_ray_commands"])
    assert "hopscope-node=a" in shlex.split(head_start)


def test_kuberay_cluster_labels_three_nodes_and_opens_the_ports() -> None:
    manifest = _yaml("k8s/raycluster.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    spec = manifest["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    assert [g["rayStartParams"]["labels"] for g in groups] == [
        "hopscope-node=a",
        "hopscope-node=b",
        "hopscope-node=c",
    ]
    head_ports = {
        p["containerPort"]
        for p in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert {DEFAULT_PORT, *METRICS_PORTS.values()} <= head_ports
    for container in _k8s_containers(manifest):
        assert set(METRICS_PORTS.values()) <= {p["containerPort"] for p in container["ports"]}
        endpoint = {e["name"]: e["value"] for e in container["env"]}["OTEL_EXPORTER_OTLP_ENDPOINT"]
        assert endpoint.endswith(f":{OTLP_GRPC_PORT}")


def test_ray_versions_agree_across_the_cluster_files() -> None:
    ray_version = _yaml("k8s/raycluster.yaml")["spec"]["rayVersion"]
    assert _yaml("ray/cluster.yaml")["docker"]["image"].split(":")[1].startswith(ray_version)
    (base,) = _dockerfile_instructions("docker/Dockerfile.ray", "FROM")
    assert base.split(":")[1].startswith(ray_version)
