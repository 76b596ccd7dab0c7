"""The Helm chart: lint, render, Kubernetes schemas, and what the rendered objects promise.

helm is the official binary (.ci/install-helm); objects are checked with
kubernetes-validate (strict) and the rules with promtool.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import exporter
from exporter import config as exporter_config
from tests.helmtool import CHART, MONITORING_API, helm, template
from tests.helpers import ROOT, require_binary, subprocess_env

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
ALERTS_SRC = ROOT / "deploy" / "prometheus" / "alerts.yaml"
# The recording rules that hold the day thresholds of the key alerts (the chart's
# prometheusRule.keyMaxAgeDays / keyUnusedDays).
NOT_ROTATED = "account_user_key:iam_access_key_created_timestamp_seconds_active:not_rotated"
UNUSED = "account_user_key:iam_access_key_last_used_timestamp_seconds_active:unused"
DASHBOARD_SRC = ROOT / "deploy" / "grafana" / "iam-key-exporter.json"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
FULL, SHARDED = CHART / "ci" / "full-values.yaml", CHART / "ci" / "sharded-values.yaml"


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Objects rendered for each case: default values (with and without the Prometheus
    Operator API), default values with every CRD feature on, and each ci/*-values.yaml."""
    api = ("--api-versions", MONITORING_API)
    on = ("--set", "serviceMonitor.enabled=true,prometheusRule.enabled=true,"
                   "grafanaDashboard.enabled=true")
    cases = {
        "default": template(),
        "default-api": template(*api),
        "default-on": template(*api, *on),
    }
    for f in CI_VALUES:
        cases[f.stem] = template("-f", f, *api)
    return cases


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def workload(objs: list[dict[str, Any]]) -> dict[str, Any]:
    [w] = [o for o in objs if o["kind"] in WORKLOAD_KINDS]
    return w


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    [c] = workload(objs)["spec"]["template"]["spec"]["containers"]
    return c


# --------------------------------------------------------------------------------------
# Chart metadata and the copies of the rules and the dashboard


def test_chart_metadata_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == exporter.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", chart["version"])
    assert chart["kubeVersion"].startswith(">=1.25")


@pytest.mark.parametrize(("copy_", "source"), [
    ("files/alerts.yaml", ALERTS_SRC), ("files/dashboard.json", DASHBOARD_SRC)])
def test_chart_copies_equal_their_sources(copy_: str, source: Path) -> None:
    assert source.is_file(), f"{source} is missing"
    assert (CHART / copy_).read_bytes() == source.read_bytes(), (
        f"{CHART / copy_} differs from {source.relative_to(ROOT)}: run `make chart`")


# --------------------------------------------------------------------------------------
# lint, kubeVersion, Kubernetes schemas


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.stem if v else "default")
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["-f", str(values)] if values else []
    r = helm("lint", "--strict", CHART, *args, "--set", "forceMonitoringCRDs=true")
    assert r.returncode == 0, r.stdout + r.stderr


def test_kube_version_is_enforced() -> None:
    assert helm("template", "rel", CHART, "--kube-version", "1.25.0").returncode == 0
    r = helm("template", "rel", CHART, "--kube-version", "1.24.9")
    assert r.returncode != 0 and "kubeVersion" in r.stderr + r.stdout


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_pass_kubernetes_validate_strict(
        rendered: dict[str, list[dict[str, Any]]], version: str) -> None:
    checked = 0
    for case, objs in rendered.items():
        for obj in objs:
            if obj["kind"] in CRD_KINDS:
                continue  # no schema in kubernetes-validate; checked field by field below
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{case}: {obj['kind']}/{obj['metadata']['name']}: {e}")
            checked += 1
    assert checked >= 20


# --------------------------------------------------------------------------------------
# What renders when


def test_default_values_render_the_minimal_set(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for case in ("default", "default-api"):
        kinds = sorted(o["kind"] for o in rendered[case])
        assert kinds == ["ConfigMap", "Deployment", "Service", "ServiceAccount"], case
    assert workload(rendered["default"])["spec"]["replicas"] == 1


def test_crd_objects_need_the_api_or_the_force_flag() -> None:
    on = "serviceMonitor.enabled=true,prometheusRule.enabled=true"
    kinds = {o["kind"] for o in template("--set", on)}
    assert not kinds & CRD_KINDS
    kinds = {o["kind"] for o in template("--set", on + ",forceMonitoringCRDs=true")}
    assert kinds >= CRD_KINDS
    kinds = {o["kind"] for o in template("--set", on, "--api-versions", MONITORING_API)}
    assert kinds >= CRD_KINDS


def test_ci_values_switch_every_optional_object_on(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds: set[str] = set()
    for f in CI_VALUES:
        kinds |= {o["kind"] for o in rendered[f.stem]}
    assert kinds >= {"Deployment", "StatefulSet", "Service", "ServiceAccount", "ConfigMap",
                     "ServiceMonitor", "PrometheusRule", "NetworkPolicy",
                     "PodDisruptionBudget"}
    for f in CI_VALUES:
        assert len(by_kind(rendered[f.stem], "ConfigMap")) == 2, f  # config + dashboard


# --------------------------------------------------------------------------------------
# Pods: hardening, probes, config, credentials


@pytest.mark.parametrize("case", ["default", "full-values", "sharded-values"])
def test_pods_are_hardened(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    pod = workload(rendered[case])["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65534
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container(rendered[case])["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65534
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The only writable place is an emptyDir on /tmp.
    mounts = {m["mountPath"]: m for m in container(rendered[case])["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols[mounts["/tmp"]["name"]]
    assert all(m.get("readOnly") for p, m in mounts.items() if p != "/tmp")


def test_no_default_resources(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert "resources" not in container(rendered["default"])
    assert container(rendered["full-values"])["resources"]["requests"]["memory"] == "96Mi"


@pytest.mark.parametrize("case", ["default", "sharded-values"])
def test_probes_and_ports(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    c = container(rendered[case])
    assert c["ports"] == [{"name": "http-metrics", "containerPort": 9877, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    listen = c["args"][c["args"].index("--listen") + 1]
    assert listen == exporter_config.DEFAULT_LISTEN


@pytest.mark.parametrize("case", ["default", "full-values", "sharded-values"])
def test_the_config_map_is_mounted_and_passes_check_config(
        rendered: dict[str, list[dict[str, Any]]], case: str, tmp_path: Path) -> None:
    effective = check_config(rendered[case], tmp_path, ordinal=2)
    assert effective["listen"] == "0.0.0.0:9877"
    w = workload(rendered[case])
    if w["kind"] == "StatefulSet":
        assert effective["sharding"] == {"total": w["spec"]["replicas"], "index": 2}


def check_config(objs: list[dict[str, Any]], tmp_path: Path, ordinal: int = 0) -> Any:
    """`iam-key-exporter check-config` as the pod would run it (the StatefulSet's pod
    <name>-<ordinal>): its arguments, with $(VAR) expanded from its environment as the
    kubelet does, and the ConfigMap file they name. The effective config."""
    w, c = workload(objs), container(objs)
    # The container's own environment: the StatefulSet's pod <name>-<ordinal>.
    env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
    if "POD_NAME" in env:
        env["POD_NAME"] = f"{w['metadata']['name']}-{ordinal}"
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c["args"]]
    config_path = args[args.index("--config") + 1]
    [mount] = [m for m in c["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")]
    [vol] = [v for v in w["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    [cm] = [o for o in by_kind(objs, "ConfigMap")
            if o["metadata"]["name"] == vol["configMap"]["name"]]
    key = config_path[len(mount["mountPath"]) + 1:]
    cfg = tmp_path / key
    cfg.write_text(cm["data"][key])
    # The container's arguments (mount path swapped for the temp file), then check-config.
    args = [str(cfg) if a == config_path else a for a in args]
    r = subprocess.run([sys.executable, "-m", "exporter", *args, "check-config"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env=subprocess_env(env))
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_pods_roll_when_the_config_changes() -> None:
    def checksum(*args: str) -> str:
        w = workload(template(*args))
        return str(w["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = checksum()
    assert checksum() == base
    assert checksum("--set", "config.interval_seconds=60") != base


def test_credentials_irsa_annotation_and_discouraged_secret(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    sa = one(rendered["full-values"], "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    pod = workload(rendered["full-values"])["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert container(rendered["full-values"])["envFrom"] == [
        {"secretRef": {"name": "iam-key-exporter-static-credentials"}}]
    # By default: no annotation (EKS Pod Identity needs none) and no secret.
    assert "annotations" not in one(rendered["default"], "ServiceAccount")["metadata"]
    assert "envFrom" not in container(rendered["default"])


# --------------------------------------------------------------------------------------
# Labels and selectors


def test_labels_and_selectors(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for case, objs in rendered.items():
        for o in objs:
            labels = o["metadata"]["labels"]
            assert labels.keys() >= SELECTOR_KEYS, (case, o["kind"])
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            assert labels["app.kubernetes.io/version"] == exporter.__version__
            assert labels["helm.sh/chart"] == f"iam-key-exporter-{chart_version()}"
            for selector in selectors(o):
                assert set(selector) == SELECTOR_KEYS, (case, o["kind"], selector)
                assert selector["app.kubernetes.io/instance"] == "rel"
        w = workload(objs)
        pod_labels = w["spec"]["template"]["metadata"]["labels"]
        for o in objs:
            if o["kind"] in ("Service", "PodDisruptionBudget", "NetworkPolicy", *WORKLOAD_KINDS):
                for selector in selectors(o):
                    assert selector.items() <= pod_labels.items(), (case, o["kind"])


def chart_version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["version"])


def selectors(o: dict[str, Any]) -> list[dict[str, str]]:
    spec = o.get("spec", {})
    kind = o["kind"]
    if kind in ("Deployment", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor"):
        return [spec["selector"]["matchLabels"]]
    if kind == "Service":
        return [spec["selector"]]
    if kind == "NetworkPolicy":
        return [spec["podSelector"]["matchLabels"]]
    return []


# --------------------------------------------------------------------------------------
# Service, ServiceMonitor, NetworkPolicy, PodDisruptionBudget


@pytest.mark.parametrize("case", ["default-on", "full-values", "sharded-values"])
def test_service_monitor_scrapes_the_named_port(
        rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    objs = rendered[case]
    svc, sm = one(objs, "Service"), one(objs, "ServiceMonitor")
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http-metrics"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http-metrics"
    [ep] = sm["spec"]["endpoints"]
    assert ep["port"] == "http-metrics" and ep["path"] == "/metrics"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["monitoring"]}
    # The job label the alert rules select on.
    assert {"action": "replace", "targetLabel": "job",
            "replacement": "iam-key-exporter"} in ep["relabelings"]


def test_service_monitor_values(rendered: dict[str, list[dict[str, Any]]]) -> None:
    sm = one(rendered["full-values"], "ServiceMonitor")
    [ep] = sm["spec"]["endpoints"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (ep["interval"], ep["scrapeTimeout"]) == ("2m", "30s")
    assert ep["relabelings"][1]["targetLabel"] == "node"
    assert ep["metricRelabelings"][0]["action"] == "drop"


def test_network_policy_ingress_metrics_only_egress_dns_https(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    np = one(rendered["full-values"], "NetworkPolicy")["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = np["ingress"]
    assert ingress["ports"] == [{"port": "http-metrics", "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}
    ports = {(p["port"], p["protocol"]) for rule in np["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP")} <= ports
    # Defaults: any scraper on the metrics port, any HTTPS destination.
    np = one(rendered["sharded-values"], "NetworkPolicy")["spec"]
    assert "from" not in np["ingress"][0]
    assert all("to" not in r for r in np["egress"] if r["ports"][0]["port"] in (53, 443))


def test_pod_disruption_budget(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert one(rendered["full-values"], "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    pdb = one(rendered["sharded-values"], "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 2 and "maxUnavailable" not in pdb


# --------------------------------------------------------------------------------------
# Rollouts


@pytest.mark.parametrize("case", ["default", "full-values"])
def test_the_deployment_rolls_without_a_gap(rendered: dict[str, list[dict[str, Any]]],
                                            case: str) -> None:
    """The new pod runs next to the old one until it is ready (its first cycle has data),
    so Prometheus never goes without the exporter's series during a rollout."""
    w = workload(rendered[case])
    assert w["kind"] == "Deployment"
    assert w["spec"]["replicas"] == 1
    assert w["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert container(rendered[case])["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_statefulset_replaces_one_shard_at_a_time(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    sts = workload(rendered["sharded-values"])
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    assert container(rendered["sharded-values"])["readinessProbe"]["httpGet"]["path"] == "/readyz"


# --------------------------------------------------------------------------------------
# Sharding


def test_sharding_renders_a_statefulset(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["sharded-values"]
    assert not by_kind(objs, "Deployment")
    sts = one(objs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == one(objs, "Service")["metadata"]["name"]
    env = {e["name"]: e for e in container(objs)["env"]}
    assert env["IAM_KEY_EXPORTER_SHARD_TOTAL"]["value"] == "3"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # One Deployment, no shard variables, by default.
    assert "env" not in container(rendered["default"])


# --------------------------------------------------------------------------------------
# Events (SQS queue of CloudTrail events)

QUEUE = "https://sqs.us-east-1.amazonaws.com/111111111111/iam-key-exporter-events-{}"


def config_map(objs: list[dict[str, Any]]) -> dict[str, str]:
    [cm] = [o for o in by_kind(objs, "ConfigMap") if "iam-key-exporter.json" not in o["data"]]
    return dict(cm["data"])


def test_events_off_by_default(rendered: dict[str, list[dict[str, Any]]],
                               tmp_path: Path) -> None:
    for case in ("default", "default-on"):
        [doc] = config_map(rendered[case]).values()
        assert "events" not in yaml.safe_load(doc), case
    assert check_config(rendered["default"], tmp_path)["events"]["queue_url"] is None


def test_events_queue_url_is_rendered_into_the_config(
        rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    url = load_values(FULL)["events"]["queueUrl"]
    data = config_map(rendered["full-values"])
    assert list(data) == ["config.yaml"]
    assert yaml.safe_load(data["config.yaml"])["events"] == {"queue_url": url}
    assert check_config(rendered["full-values"], tmp_path)["events"]["queue_url"] == url
    # Other events settings pass through config.events; the URL joins them.
    objs = template("--set", f"events.queueUrl={QUEUE.format(0)},config.events.wait_seconds=5")
    effective = check_config(objs, tmp_path)
    assert (effective["events"]["queue_url"], effective["events"]["wait_seconds"]) == (
        QUEUE.format(0), 5)


def test_sharded_pods_each_read_their_own_queue(
        rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    objs = rendered["sharded-values"]
    urls = load_values(SHARDED)["events"]["queueUrls"]
    sts = workload(objs)
    assert len(urls) == sts["spec"]["replicas"] == 3
    # One config per pod, named after it; nothing else differs between them.
    data = config_map(objs)
    assert sorted(data) == [f"{sts['metadata']['name']}-{i}.yaml" for i in range(3)]
    docs = [yaml.safe_load(data[f"{sts['metadata']['name']}-{i}.yaml"]) for i in range(3)]
    assert [d.pop("events") for d in docs] == [{"queue_url": u} for u in urls]
    assert docs[0] == docs[1] == docs[2]
    assert docs[0]["organizations"] == load_values(SHARDED)["config"]["organizations"]
    for i, url in enumerate(urls):
        effective = check_config(objs, tmp_path, ordinal=i)
        assert effective["sharding"] == {"total": 3, "index": i}
        assert effective["events"]["queue_url"] == url


def test_pods_roll_when_the_queues_change() -> None:
    def checksum(*args: str) -> str:
        w = workload(template(*args))
        return str(w["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = checksum()
    assert checksum("--set", f"events.queueUrl={QUEUE.format(0)}") != base
    urls = ",".join(QUEUE.format(i) for i in range(2))
    other = ",".join(QUEUE.format(i) for i in (1, 0))
    sharded = checksum("--set", f"sharding.replicas=2,events.queueUrls={{{urls}}}")
    assert sharded != checksum("--set", "sharding.replicas=2")
    assert sharded != checksum("--set", f"sharding.replicas=2,events.queueUrls={{{other}}}")


@pytest.mark.parametrize(("setting", "message"), [
    # Shards sharing one queue would each see only some of the events.
    (f"sharding.replicas=2,events.queueUrl={QUEUE.format(0)}", "events.queueUrl: with sharding"),
    (f"sharding.replicas=2,config.events.queue_url={QUEUE.format(0)}",
     "config.events.queue_url: with sharding"),
    (f"sharding.replicas=3,events.queueUrls={{{QUEUE.format(0)},{QUEUE.format(1)}}}",
     "events.queueUrls: 2 queue URLs for sharding.replicas 3"),
    (f"events.queueUrls={{{QUEUE.format(0)}}}", "events.queueUrls: only with sharding"),
    (f"events.queueUrl={QUEUE.format(0)},config.events.queue_url={QUEUE.format(1)}",
     "config.events.queue_url: set the queue with events.queueUrl"),
])
def test_events_values_that_would_lose_events_fail(setting: str, message: str) -> None:
    r = helm("template", "rel", CHART, "--set", setting)
    assert r.returncode != 0, setting
    assert message in r.stderr, r.stderr


# --------------------------------------------------------------------------------------
# PrometheusRule and dashboard


def expected_groups(values: dict[str, Any]) -> list[dict[str, Any]]:
    """deploy/prometheus/alerts.yaml with the chart's prometheusRule values applied."""
    pr = values.get("prometheusRule", {})
    job = values.get("serviceMonitor", {}).get("jobName", "iam-key-exporter")
    days = {NOT_ROTATED: pr.get("keyMaxAgeDays"), UNUSED: pr.get("keyUnusedDays")}
    overrides = pr.get("alerts", {})
    groups = []
    for g in yaml.safe_load(ALERTS_SRC.read_text())["groups"]:
        rules = []
        for r in copy.deepcopy(g["rules"]):
            o = overrides.get(r.get("alert"), {})
            if not o.get("enabled", True):
                continue
            r["expr"] = r["expr"].replace('job="iam-key-exporter"', f'job="{job}"')
            if days.get(r.get("record")) is not None:
                r["expr"] = re.sub(r"\d+ \* 86400", f"{days[r['record']]} * 86400", r["expr"])
            if "alert" in r:
                if "for" in o:
                    r["for"] = o["for"]
                labels = {**r.get("labels", {}), **pr.get("additionalAlertLabels", {}),
                          **o.get("labels", {})}
                if labels:
                    r["labels"] = labels
            rules.append(r)
        if rules:
            groups.append({**g, "rules": rules})
    return groups


def test_source_rules_write_substitutable_thresholds() -> None:
    """The day thresholds of IAMAccessKeyNotRotated / IAMAccessKeyUnused are in the recording
    rules that filter the keys (the alerts read those sets), written once each."""
    rules = {r.get("alert") or r["record"]: r
             for g in yaml.safe_load(ALERTS_SRC.read_text())["groups"] for r in g["rules"]}
    for name in (NOT_ROTATED, UNUSED):
        assert len(re.findall(r"\d+ \* 86400", rules[name]["expr"])) == 1, name
    assert NOT_ROTATED in rules["IAMAccessKeyNotRotated"]["expr"]
    assert UNUSED in rules["IAMAccessKeyUnused"]["expr"]


def test_prometheus_rule_equals_the_source_under_default_values(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    source = yaml.safe_load(ALERTS_SRC.read_text())["groups"]
    for case in ("default-on", "sharded-values"):
        assert one(rendered[case], "PrometheusRule")["spec"]["groups"] == source, case


def test_prometheus_rule_applies_value_overrides(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    groups = one(rendered["full-values"], "PrometheusRule")["spec"]["groups"]
    assert groups == expected_groups(load_values(FULL))
    rules = {r.get("alert") or r["record"]: r for g in groups for r in g["rules"]}
    assert "180 * 86400" in rules[NOT_ROTATED]["expr"]
    assert "IAMAccessKeyUnused" not in rules
    assert rules["IAMAccessKeyNotRotated"]["for"] == "24h"
    assert rules["IAMUserMultipleActiveAccessKeys"]["for"] == "2m"  # a debounce
    # Gaps are bridged in the expressions; keep_firing_for only where the data flaps.
    assert "keep_firing_for" not in rules["IAMUserMultipleActiveAccessKeys"]
    assert rules["IAMExporterCollectionFailing"]["keep_firing_for"] == "15m"
    assert rules["IAMUserMultipleActiveAccessKeys"]["labels"]["severity"] == "critical"
    assert all(r["labels"]["team"] == "security" for r in rules.values() if r.get("alert"))
    # The recording rules the alerts read are all there, unchanged but for the day
    # thresholds and without alert labels, whichever alerts are disabled; the grace period
    # stays in the headline alert.
    source = [r for g in yaml.safe_load(ALERTS_SRC.read_text())["groups"] for r in g["rules"]]
    recorded = [r for g in groups for r in g["rules"] if "record" in r]
    assert [r["record"] for r in recorded] == [r["record"] for r in source if "record" in r]
    assert [r for r in recorded if r["record"] not in (NOT_ROTATED, UNUSED)] == [
        r for r in source if "record" in r and r["record"] not in (NOT_ROTATED, UNUSED)]
    assert "30 * 86400" in rules[UNUSED]["expr"]  # its alert disabled, the record kept
    assert "4 * 3600" in rules["IAMUserMultipleActiveAccessKeys"]["expr"]


def test_prometheus_rule_job_name_follows_the_service_monitor() -> None:
    values = {"serviceMonitor": {"jobName": "iam-keys"}, "prometheusRule": {"keyUnusedDays": 7}}
    objs = template("--set", "prometheusRule.enabled=true,serviceMonitor.enabled=true,"
                    "serviceMonitor.jobName=iam-keys,prometheusRule.keyUnusedDays=7",
                    "--api-versions", MONITORING_API)
    groups = one(objs, "PrometheusRule")["spec"]["groups"]
    assert groups == expected_groups(values)
    assert 'job="iam-key-exporter"' not in json.dumps(groups)


def test_prometheus_rule_rejects_an_unknown_alert_override() -> None:
    r = helm("template", "rel", CHART, "--api-versions", MONITORING_API, "--set",
             "prometheusRule.enabled=true,prometheusRule.alerts.IAMNoSuchAlert.enabled=false")
    assert r.returncode != 0
    assert "prometheusRule.alerts.IAMNoSuchAlert" in r.stderr


@pytest.mark.parametrize("case", ["default-on", "full-values"])
def test_prometheus_rule_passes_promtool(rendered: dict[str, list[dict[str, Any]]], case: str,
                                         tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": one(rendered[case],
                                                   "PrometheusRule")["spec"]["groups"]}))
    r = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("case", ["default-on", "full-values", "sharded-values"])
def test_dashboard_config_map_holds_the_dashboard(
        rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    [cm] = [o for o in by_kind(rendered[case], "ConfigMap")
            if "iam-key-exporter.json" in o.get("data", {})]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["iam-key-exporter.json"]) == json.loads(
        DASHBOARD_SRC.read_text())


# --------------------------------------------------------------------------------------
# values.schema.json


@pytest.mark.parametrize(("setting", "message"), [
    ("serviceMonitor.enabeld=true", "enabeld"),          # misspelled key
    ("replicaCount=2", "replicaCount"),                  # unknown top-level key
    ("config.interval_second=60", "interval_second"),    # misspelled exporter config key
    ("service.port=http", "/service/port"),              # wrong type
    ("sharding.replicas=0", "/sharding/replicas"),       # out of range
    ("prometheusRule.alerts.IAMAccessKeyUnused.for=soon", "for"),
    ("events.queueUrl=sqs.us-east-1.amazonaws.com/1/q", "/events/queueUrl"),  # not a URL
    ("events.queueUrl=arn:aws:sqs:us-east-1:111111111111:q", "/events/queueUrl"),
    ("events.queueUrl=http://sqs.us-east-1.amazonaws.com/111111111111/q", "/events/queueUrl"),
    ("events.queueUrls={https://example.com/not-a-queue}", "/events/queueUrls/0"),
    ("events.queueURL=https://sqs.us-east-1.amazonaws.com/111111111111/q", "queueURL"),
])
def test_values_schema_rejects_typos_and_wrong_types(setting: str, message: str) -> None:
    for cmd in (("template", "rel"), ("lint", "--strict")):
        r = helm(*cmd, CHART, "--set", setting)
        assert r.returncode != 0, (cmd, setting)
        assert message in r.stdout + r.stderr, (cmd, r.stdout + r.stderr)


def test_values_schema_accepts_the_documented_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = load_values(CHART / "values.yaml")
    assert set(values) == set(schema["properties"]) - {"global"}
    # The exporter's own top-level config keys, no more and no fewer.
    config_keys = set(schema["properties"]["config"]["properties"])
    assert config_keys == {f.name for f in exporter_config.dataclasses.fields(
        exporter_config.Config)}


def test_readme_documents_every_value() -> None:
    """Every key of values.yaml is in the chart README's table (itself or a parent)."""
    readme = (CHART / "README.md").read_text()

    def leaves(d: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            if isinstance(v, dict) and v and k != "config":
                out += leaves(v, f"{prefix}{k}.")
            else:
                out.append(prefix + k)
        return out

    def documented(key: str) -> bool:
        parts = key.split(".")
        return any(f"| `{'.'.join(parts[:i])}` |" in readme for i in range(1, len(parts) + 1))

    missing = [k for k in leaves(load_values(CHART / "values.yaml")) if not documented(k)]
    assert not missing, f"chart README.md lacks {missing}"


@pytest.mark.parametrize("url", [
    None, "", "https://sqs.us-east-1.amazonaws.com/111111111111/iam-key-exporter-events-0",
    "https://sqs.eu-west-1.amazonaws.com/222222222222/events.fifo",
    "https://vpce-0a1b2c3d-e4f5.sqs.us-east-1.vpce.amazonaws.com/111111111111/q",
])
def test_values_schema_accepts_queue_urls(url: str | None, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"events": {"queueUrl": url}}))
    for cmd in (("template", "rel"), ("lint", "--strict")):
        r = helm(*cmd, CHART, "-f", values)
        assert r.returncode == 0, (cmd, r.stdout + r.stderr)
