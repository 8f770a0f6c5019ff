"""deploy/kubernetes/ parses, and its pieces agree: the workers find the master through its Service on 5557, every
resource the kustomization names exists, every ConfigMap/Secret a pod reads is defined. (The manifests could not be
applied here — no cluster — so this is what is checked; docs/distributed.md.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def documents() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"), path
            if doc["kind"] != "Kustomization":
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def container(doc: dict[str, Any]) -> dict[str, Any]:
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_every_manifest_parses_and_the_kustomization_names_them() -> None:
    files = sorted(p.name for p in DEPLOY.glob("*.yaml"))
    assert files, "no manifests"
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted([*kustomization["resources"], "kustomization.yaml"]) == files
    assert documents()


def test_workers_reach_the_master_through_its_service() -> None:
    docs = documents()
    master, service = docs[("Deployment", "chatbench-master")], docs[("Service", "chatbench-master")]
    worker = docs[("Deployment", "chatbench-worker")]
    assert master["spec"]["replicas"] == 1
    args = container(worker)["args"]
    assert "--worker" in args and args[args.index("--master-host") + 1] == "chatbench-master"
    port = int(args[args.index("--master-port") + 1])
    assert port == 5557
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["workers"]["port"] == port
    assert {p["name"]: p["containerPort"] for p in container(master)["ports"]}["workers"] == port
    margs = container(master)["args"]
    assert "--master" in margs and margs[margs.index("--master-bind-port") + 1] == str(port)
    labels = master["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert master["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert worker["spec"]["selector"]["matchLabels"].items() <= worker["spec"]["template"]["metadata"]["labels"].items()


def test_pods_read_only_what_is_defined() -> None:
    docs = documents()
    for name in ("chatbench-master", "chatbench-worker"):
        c = container(docs[("Deployment", name)])
        refs = [(kind, src[key]["name"]) for src in c.get("envFrom", [])
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")) if key in src]
        refs += [("ConfigMap", e["valueFrom"]["configMapKeyRef"]["name"]) for e in c.get("env", [])
                 if "configMapKeyRef" in e.get("valueFrom", {})]
        assert refs, name
        for ref in refs:
            assert ref in docs, (name, ref)
    run = docs[("ConfigMap", "chatbench-run")]["data"]
    assert run["LOCUST_LOCUSTFILE"].startswith("/chatbench/scenarios/")  # where the image puts scenarios/
    assert all(isinstance(v, str) for v in run.values())  # ConfigMap values must be strings


def test_the_image_builds_from_every_package_and_the_compiled_part() -> None:
    """The Dockerfile (not built here) copies every package pyproject.toml installs and setup.py into the stage that
    builds the wheel (the receive engine's pump is compiled there), and scenarios/ into the image."""
    import tomllib

    repo = DEPLOY.parents[1]
    stages = (DEPLOY / "Dockerfile").read_text().split("\nFROM ")[1:]
    assert len(stages) == 2, "a build stage (compiler) and the image"
    build, image = stages
    copied = {word for line in build.splitlines() if line.startswith("COPY ") for word in line.split()[1:-1]}
    packages = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    wanted = {p.rstrip("*") for p in packages["include"]} | {"pyproject.toml", "setup.py", "README.md"}
    assert wanted <= copied, wanted - copied
    assert "drivers/_pump.c" in (repo / "setup.py").read_text()
    assert "pip wheel" in build and "COPY scenarios scenarios" in image and "/wheels/*.whl" in image
