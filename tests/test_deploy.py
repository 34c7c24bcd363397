"""deploy/: what can be checked without a container runtime or a cluster (none on this machine).

Every otelgate config in deploy/ (files and ConfigMaps) passes `otelgate check`; the Kubernetes
manifests parse and refer only to objects, ports and labels they define; the Dockerfile copies
what exists and runs the same `otelgate run` as the README; the systemd unit runs what pip installs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _configs(tmp_path: Path) -> list[Path]:
    paths = [DEPLOY / "otelgate.yaml"]
    for doc in _manifests():
        if doc["kind"] == "ConfigMap":
            target = tmp_path / f"{doc['metadata']['name']}.yaml"
            target.write_text(doc["data"]["otelgate.yaml"])
            paths.append(target)
    return paths


def test_every_config_in_deploy_passes_otelgate_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    monkeypatch.setenv("OTELGATE_BACKEND", "backend.example:4317")
    configs = _configs(tmp_path)
    assert len(configs) == 3
    for path in configs:
        code = main(["check", "-c", str(path)])
        out = capsys.readouterr()
        assert code == 0, f"{path.name}: {out.err}"
        assert "warning" not in out.err and "valid" in out.out, out.err


def test_the_manifests_refer_only_to_what_they_define() -> None:
    docs = _manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert len(deployments) == 2
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] in namespaces
    pod_labels = []
    for dep in deployments:
        spec = dep["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        pod_labels.append(labels)
        pod = spec["template"]["spec"]
        for volume in pod["volumes"]:
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in kinds
        (container,) = pod["containers"]
        port_names = {p["name"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health"
            assert container[probe]["httpGet"]["port"] in port_names
        mounts = {m["name"] for m in container["volumeMounts"]}
        assert mounts == {v["name"] for v in pod["volumes"]}
        assert pod["securityContext"]["runAsNonRoot"] is True
    services = [d for d in docs if d["kind"] == "Service"]
    for svc in services:
        matching = [labels for labels in pod_labels if svc["spec"]["selector"].items() <= labels.items()]
        assert len(matching) == 1, f"service {svc['metadata']['name']} selects {len(matching)} deployments"
        dep = deployments[pod_labels.index(matching[0])]
        names = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert all(p["targetPort"] in names for p in svc["spec"]["ports"])
    # Tier 1's dns resolver reads tier 2's headless Service.
    tier1 = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "otelgate-tier1")
                           ["data"]["otelgate.yaml"])
    dns = tier1["sinks"]["tier2"]["resolver"]["dns"]
    service, namespace = dns["hostname"].split(".")[:2]
    headless = next(s for s in services if s["metadata"]["name"] == service)
    assert headless["spec"]["clusterIP"] == "None" and headless["metadata"]["namespace"] == namespace
    assert dns["port"] in {p["port"] for p in headless["spec"]["ports"]}
    tier2 = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "otelgate-tier2")
                           ["data"]["otelgate.yaml"])
    assert "tail" in tier2["sampling"] and tier2["service"]["workers"] == 1


def test_the_dockerfile_installs_and_runs_as_the_readme_says() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim$", text, re.M)  # the image that runs: slim, no compiler
    build = re.search(r"^FROM (python:3\.\d+-slim) AS build$", text, re.M)
    assert build and f"FROM {build.group(1)}\n" in text  # the venv is copied into the image it was built on
    assert "COPY --from=build /opt/otelgate/.venv /opt/otelgate/.venv" in text
    copied = [source for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M) for source in line.split()[:-1]]
    for source in copied:
        assert (ROOT / source).exists(), source
    assert {"pyproject.toml", "setup.py", "gateway"} <= set(copied)  # all `pip install .` reads (setup.py: the C split)
    assert "pip install --no-cache-dir ." in text  # the README's `.venv/bin/pip install .`
    assert ".venv/bin/pip install ." in (ROOT / "README.md").read_text()
    assert re.search(r"^USER otelgate$", text, re.M)
    assert 'ENTRYPOINT ["otelgate", "run"]' in text
    assert "/health" in text and "13133" in text
    admin = yaml.safe_load((DEPLOY / "otelgate.yaml").read_text())["admin"]["endpoint"]
    assert admin.endswith(":13133") and not admin.startswith("127.")
    assert 'otelgate = "gateway.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_the_systemd_unit_runs_the_installed_gateway() -> None:
    unit = (DEPLOY / "otelgate.service").read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M)
    assert exec_start is not None
    argv = exec_start.group(1).split()
    assert argv[0] == "/opt/otelgate/.venv/bin/otelgate" and argv[1:3] == ["run", "-c"]
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit and "KillSignal=SIGTERM" in unit


@pytest.mark.parametrize("cpu_max, cores", [("max 100000", None), ("200000 100000", 2), ("150000 100000", 2)])
def test_workers_auto_reads_a_container_cpu_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  cpu_max: str, cores: int | None) -> None:
    from gateway import config

    fake = tmp_path / "cpu.max"
    fake.write_text(cpu_max + "\n")
    real = config.Path
    monkeypatch.setattr(config, "Path", lambda p: fake if p == "/sys/fs/cgroup/cpu.max" else real(p))
    assert config._cgroup_cpus() == cores
