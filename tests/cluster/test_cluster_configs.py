"""Every shipped file under cluster/ loads the way its consumer loads it.

- Launcher YAMLs go through Ray's own cluster-config path (`prepare_config` fills the provider's
  defaults, `validate_config` checks ray-schema.json), offline: no cloud call, no cluster.
- KubeRay manifests are checked against the fields KubeRay v1 requires (the CRDs are not installed
  here), the RayService's Serve config against Ray Serve's own schema and jobs/configs/serve.yaml.
- Alert rules must reference the series raysys/serve/metrics.py actually exports.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
CLOUD_CONFIGS = ["aws.yaml", "gcp.yaml"]
LAUNCHER_CONFIGS = [*CLOUD_CONFIGS, "local.yaml"]
KUBERAY_MANIFESTS = ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/rayservice.yaml"]
ALERT_RULES = CLUSTER / "prometheus" / "raysys-alerts.yaml"
SHARED_MOUNT = "/mnt/raysys"
RAY_MAJOR_MINOR = ".".join(ray.__version__.split(".")[:2])

# The command in each file's header comment: the file says how it is used.
HEADER_COMMANDS = {
    "aws.yaml": "ray up cluster/aws.yaml",
    "gcp.yaml": "ray up cluster/gcp.yaml",
    "local.yaml": "ray up cluster/local.yaml",
    "kuberay/storage.yaml": "kubectl apply -f cluster/kuberay/storage.yaml",
    "kuberay/raycluster.yaml": "kubectl apply -f cluster/kuberay/storage.yaml -f cluster/kuberay/raycluster.yaml",
    "kuberay/rayjob.yaml": "kubectl apply -f cluster/kuberay/rayjob.yaml",
    "kuberay/rayservice.yaml": "kubectl apply -f cluster/kuberay/rayservice.yaml",
    "prometheus/raysys-alerts.yaml": "promtool check rules cluster/prometheus/raysys-alerts.yaml",
}

# What KubeRay's ray.io/v1 CRDs and controllers require before they reconcile a resource:
# kind -> (the key holding the RayClusterSpec, further required spec keys and their types).
KUBERAY_KINDS: dict[str, tuple[str | None, dict[str, type]]] = {
    "RayCluster": (None, {}),
    "RayJob": ("rayClusterSpec", {"entrypoint": str}),
    "RayService": ("rayClusterConfig", {"serveConfigV2": str}),
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def load(relative: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / relative).read_text())


# ------------------------------------------------------------------------------------ launcher YAMLs


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_ray_validation(name: str) -> None:
    prepared = prepare_config(load(name))
    validate_config(prepared)  # raises on any schema or consistency problem
    assert prepared["cluster_name"].startswith("raysys")
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_ray_validation_catches_a_broken_config() -> None:
    """The check above has teeth: a misspelt key and an unknown head type are both refused."""
    misspelt = load("aws.yaml")
    misspelt["max_worker"] = misspelt.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(misspelt))
    wrong_head = load("aws.yaml")
    wrong_head["head_node_type"] = "head.gpu"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(wrong_head))


@pytest.mark.parametrize("name", CLOUD_CONFIGS)
def test_cloud_config_has_cpu_head_and_autoscaling_spot_gpu_workers(name: str) -> None:
    config = prepare_config(load(name))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head only coordinates"
    assert "guestAccelerators" not in head["node_config"]
    assert not head["node_config"].get("InstanceType", "m").startswith(("g", "p"))

    workers = {key: spec for key, spec in types.items() if key != config["head_node_type"]}
    assert len(workers) == 1
    (worker,) = workers.values()
    assert worker["min_workers"] == 0 < worker["max_workers"] <= config["max_workers"]
    node = worker["node_config"]
    if config["provider"]["type"] == "aws":
        assert node["InstanceType"].startswith(("g", "p")), "a GPU instance family"
        assert node["InstanceMarketOptions"]["MarketType"] == "spot"
    else:
        assert worker["resources"]["GPU"] == sum(a["acceleratorCount"] for a in node["guestAccelerators"]) == 1
        assert node["scheduling"]["provisioningModel"] == "SPOT"
        assert node["scheduling"]["onHostMaintenance"] == "TERMINATE"


@pytest.mark.parametrize("name", CLOUD_CONFIGS)
def test_cloud_config_mounts_shared_storage_on_every_node(name: str) -> None:
    config = prepare_config(load(name))
    mounts = [cmd for cmd in config["initialization_commands"] if "mount " in cmd and SHARED_MOUNT in cmd]
    assert len(mounts) == 1, "initialization_commands (run on every node) mount the NFS share"
    assert f"--volume {SHARED_MOUNT}:{SHARED_MOUNT}" in config["docker"]["run_options"]


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_turns_on_token_auth_on_every_node(name: str) -> None:
    config = prepare_config(load(name))
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [cmd for cmd in config[key] if "ray start" in cmd]
        assert starts and all("RAY_AUTH_MODE=token ray start" in cmd for cmd in starts), key


@pytest.mark.parametrize("name", CLOUD_CONFIGS)
def test_cloud_config_images_pin_the_installed_ray(name: str) -> None:
    docker = load(name)["docker"]
    for key in ("head_image", "worker_image"):
        assert image_ray_version(docker[key]) == RAY_MAJOR_MINOR, docker[key]
    assert docker["head_image"].endswith("-cpu") and docker["worker_image"].endswith("-gpu")


def image_ray_version(image: str) -> str:
    """'rayproject/ray:2.60.0-py311-gpu' or '.../raysys:ray2.60.0-py311-gpu' -> '2.60'."""
    tag = image.rsplit(":", 1)[1]
    found = re.match(r"^(?:ray)?(\d+)\.(\d+)\.\d+", tag)
    assert found, f"{image}: the tag does not start with a Ray version"
    return f"{found.group(1)}.{found.group(2)}"


@pytest.mark.parametrize("relative", sorted(HEADER_COMMANDS))
def test_every_yaml_header_names_its_command(relative: str) -> None:
    text = (CLUSTER / relative).read_text()
    header = "".join(line[1:].strip() + " " for line in text.splitlines() if line.startswith("#"))
    assert text.startswith("# ")
    assert HEADER_COMMANDS[relative] in header


def test_every_cluster_yaml_is_covered() -> None:
    shipped = {str(path.relative_to(CLUSTER)) for path in CLUSTER.rglob("*.yaml")}
    assert shipped == set(HEADER_COMMANDS)


# ------------------------------------------------------------------------------- KubeRay manifests


def kuberay_problems(manifest: dict[str, Any]) -> list[str]:
    """Everything KubeRay would refuse or misread in `manifest` (empty when it is fine)."""
    problems = []
    if manifest.get("apiVersion") != "ray.io/v1":
        problems.append("apiVersion must be ray.io/v1")
    kind = manifest.get("kind")
    if kind not in KUBERAY_KINDS:
        return [*problems, f"kind {kind!r} is not one of {sorted(KUBERAY_KINDS)}"]
    name = (manifest.get("metadata") or {}).get("name", "")
    if not DNS_LABEL.match(name):
        problems.append(f"metadata.name {name!r} is not a DNS label")
    spec = manifest.get("spec") or {}
    cluster_key, required = KUBERAY_KINDS[kind]
    for key, kind_of in required.items():
        if not isinstance(spec.get(key), kind_of) or not spec[key]:
            problems.append(f"spec.{key} must be a non-empty {kind_of.__name__}")
    cluster = spec if cluster_key is None else spec.get(cluster_key)
    where = "spec" if cluster_key is None else f"spec.{cluster_key}"
    if not isinstance(cluster, dict):
        return [*problems, f"{where} is missing"]
    return problems + cluster_spec_problems(cluster, where)


def cluster_spec_problems(cluster: dict[str, Any], where: str) -> list[str]:
    """A RayClusterSpec: head group, worker groups, the Ray version and token auth."""
    problems = []
    if str(cluster.get("rayVersion", ""))[: len(RAY_MAJOR_MINOR) + 1] != RAY_MAJOR_MINOR + ".":
        problems.append(f"{where}.rayVersion must be the installed Ray {ray.__version__}")
    if (cluster.get("authOptions") or {}).get("mode") != "token":
        problems.append(f"{where}.authOptions.mode must be token")
    head = cluster.get("headGroupSpec") or {}
    problems += group_problems(head, f"{where}.headGroupSpec")
    groups = cluster.get("workerGroupSpecs") or []
    names = [group.get("groupName") for group in groups]
    if len(set(names)) != len(names):
        problems.append(f"{where}.workerGroupSpecs: groupName values must be unique")
    for i, group in enumerate(groups):
        at = f"{where}.workerGroupSpecs[{i}]"
        if not isinstance(group.get("groupName"), str) or not DNS_LABEL.match(group["groupName"]):
            problems.append(f"{at}.groupName must be a DNS label")
        counts = [group.get(key) for key in ("minReplicas", "replicas", "maxReplicas")]
        if not all(isinstance(count, int) for count in counts) or not counts[0] <= counts[1] <= counts[2]:
            problems.append(f"{at}: need integers minReplicas <= replicas <= maxReplicas")
        problems += group_problems(group, at)
    return problems


def group_problems(group: dict[str, Any], where: str) -> list[str]:
    problems = []
    if not isinstance(group.get("rayStartParams"), dict):
        problems.append(f"{where}.rayStartParams must be a mapping (may be empty)")
    containers = (((group.get("template") or {}).get("spec")) or {}).get("containers") or []
    if not containers:
        problems.append(f"{where}.template.spec.containers must list the Ray container")
    for i, container in enumerate(containers):
        if not container.get("name") or not container.get("image"):
            problems.append(f"{where}.template.spec.containers[{i}] needs name and image")
        elif image_ray_version(container["image"]) != RAY_MAJOR_MINOR:
            problems.append(f"{where}.template.spec.containers[{i}].image is not Ray {RAY_MAJOR_MINOR}")
    return problems


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    cluster_key = KUBERAY_KINDS[manifest["kind"]][0]
    return manifest["spec"] if cluster_key is None else manifest["spec"][cluster_key]


def pod_specs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = cluster_spec(manifest)
    return [group["template"]["spec"] for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]]


@pytest.mark.parametrize("relative", KUBERAY_MANIFESTS)
def test_kuberay_manifest_has_the_fields_kuberay_requires(relative: str) -> None:
    assert kuberay_problems(load(relative)) == []


def test_kuberay_check_catches_missing_fields() -> None:
    manifest = load("kuberay/rayservice.yaml")
    broken = copy.deepcopy(manifest)
    del broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"]
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = 9
    broken["spec"]["rayClusterConfig"]["rayVersion"] = "2.9.0"
    del broken["spec"]["rayClusterConfig"]["authOptions"]
    problems = kuberay_problems(broken)
    assert len(problems) == 4, problems
    renamed = copy.deepcopy(manifest)
    renamed["spec"]["rayClusterSpec"] = renamed["spec"].pop("rayClusterConfig")  # RayJob's key, not RayService's
    assert kuberay_problems(renamed) == ["spec.rayClusterConfig is missing"]


@pytest.mark.parametrize("relative", KUBERAY_MANIFESTS)
def test_kuberay_pods_mount_the_shared_volume(relative: str) -> None:
    claim = load("kuberay/storage.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for pod in pod_specs(load(relative)):
        volumes = {volume["name"]: volume["persistentVolumeClaim"]["claimName"] for volume in pod["volumes"]}
        mounts = {mount["name"]: mount["mountPath"] for mount in pod["containers"][0]["volumeMounts"]}
        assert {volumes[name] for name, path in mounts.items() if path == SHARED_MOUNT} == {claim["metadata"]["name"]}


def test_rayjob_runs_the_pipeline_onto_shared_storage() -> None:
    from raysys.config import load_config

    manifest = load("kuberay/rayjob.yaml")
    words = manifest["spec"]["entrypoint"].split()
    assert words[words.index("python") + 1] == "jobs/pipeline.py"
    config = words[words.index("--config") + 1]
    assert words[words.index("--out") + 1].startswith(SHARED_MOUNT + "/")
    overrides = [word for word in words if "=" in word]
    cfg = load_config(ROOT / config, overrides)  # the config exists and the overrides name real keys
    assert cfg.data.path == f"{SHARED_MOUNT}/data/ml-100k"
    assert cfg.data.cache_dir.startswith(SHARED_MOUNT + "/")
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True
    workers = cluster_spec(manifest)["workerGroupSpecs"]
    assert any(group["minReplicas"] == 0 < group["maxReplicas"] for group in workers), "GPU workers autoscale from 0"
    assert any("nvidia.com/gpu" in pod["containers"][0]["resources"]["limits"] for pod in pod_specs(manifest))


def test_rayservice_serves_the_application_of_serve_yaml() -> None:
    from ray.serve.schema import ServeDeploySchema

    from raysys.config import ServeConfig
    from raysys.serve.deploy import IMPORT_PATH
    from raysys.serve.settings import ReplicaSettings

    serve_config = yaml.safe_load(load("kuberay/rayservice.yaml")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)  # what KubeRay hands to Serve must be a valid config
    reference = yaml.safe_load((ROOT / "jobs" / "configs" / "serve.yaml").read_text())
    (app,) = serve_config["applications"]
    (reference_app,) = reference["applications"]
    assert app["import_path"] == reference_app["import_path"] == IMPORT_PATH
    (deployment,) = app["deployments"]
    (reference_deployment,) = reference_app["deployments"]
    assert deployment["name"] == reference_deployment["name"]
    assert set(deployment["user_config"]) == set(reference_deployment["user_config"])
    assert set(deployment["user_config"]) == set(ReplicaSettings.from_config(ServeConfig(), "unused").model_dump())
    assert deployment["user_config"]["model_dir"].startswith(SHARED_MOUNT + "/")
    assert serve_config["http_options"]["host"] == "0.0.0.0", "reachable from the Kubernetes Service"


# -------------------------------------------------------------------------------- Prometheus alerts


def exported_series() -> tuple[set[str], set[str]]:
    """(series names, label names) raysys's ServeMetrics produce in Prometheus, following Ray 2.60's
    exporter: `ray_` prefix, counters as `_total`, histograms as `_bucket` (label le) / `_sum` / `_count`."""
    from ray.util.metrics import Counter, Histogram

    from raysys.serve.metrics import ServeMetrics

    names: set[str] = set()
    labels = {"le", "application", "deployment", "replica"}  # le: buckets; the rest Serve adds
    for metric in vars(ServeMetrics()).values():
        base = f"ray_{metric.info['name']}"
        labels |= set(metric.info["tag_keys"])
        if isinstance(metric, Counter):
            names.add(f"{base}_total")
        elif isinstance(metric, Histogram):
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return names, labels


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    assert [group["name"] for group in groups] == ["raysys-serve"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_are_well_formed() -> None:
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        assert rule["expr"].count("{") == rule["expr"].count("}"), rule["alert"]


def test_alert_rules_use_only_exported_raysys_metrics_and_labels() -> None:
    names, labels = exported_series()
    assert "ray_raysys_serve_requests_total" in names and "ray_raysys_serve_latency_ms_bucket" in names
    for rule in alert_rules():
        expr = rule["expr"]
        used = set(re.findall(r"\bray_raysys_\w+", expr))
        assert used and used <= names, (rule["alert"], used - names)
        matchers = re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr)
        grouped = [label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")]
        assert set(matchers) | set(grouped) <= labels, (rule["alert"], set(matchers) | set(grouped) - labels)


def test_alert_rules_cover_errors_latency_and_fallbacks() -> None:
    exprs = {rule["alert"]: " ".join(rule["expr"].split()) for rule in alert_rules()}
    assert 'ray_raysys_serve_requests_total{status=~"5.."}' in exprs["RaysysServeHighErrorRate"]
    for alert in ("RaysysServeP99LatencyHigh", "RaysysServeP99LatencyCritical"):
        assert exprs[alert].startswith("histogram_quantile(0.99, ")
        assert "sum by (application, le) (rate(ray_raysys_serve_latency_ms_bucket" in exprs[alert]
    fallback = exprs["RaysysServeFallbackRateHigh"]
    assert (
        fallback.index("ray_raysys_serve_fallbacks_total")
        < fallback.index("/")
        < fallback.index('ray_raysys_serve_requests_total{endpoint="/recommend", status="200"}')
    )
