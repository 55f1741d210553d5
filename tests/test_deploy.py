"""The runner image and k8s/job.yaml: schema, security fields, and a simulated run of the Job.

No cluster can run here (`kubectl --dry-run` needs one), so the Job simulation reads the manifest,
resolves its env against a stand-in ConfigMap and Secret that point at the test PostgreSQL, and
runs the container's exact command from the repository root, as the image would from /app.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT
from test_postgres import SEED_INDEXES

JOB_FILE = PROJECT_ROOT / "k8s" / "job.yaml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


def manifests() -> dict:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(JOB_FILE.read_text())}


@pytest.fixture(scope="module")
def job() -> dict:
    return manifests()["Job"]


@pytest.fixture(scope="module")
def container(job) -> dict:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return only


def test_manifests_validate_strictly_against_kubernetes_1_30():
    done = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "-k", "1.30.0", str(JOB_FILE)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed for resource job/hcm-db-migrations against version 1.30" in done.stdout


def test_job_identity_and_command(job, container):
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["metadata"]["name"] == "hcm-db-migrations"
    assert job["metadata"]["namespace"] == "health"
    assert container["command"] == ["make", "migrate"]
    assert container["workingDir"] == "/app"
    image = container["image"]
    assert re.fullmatch(r"[\w./-]+/hcm-db-migrations:\d+\.\d+\.\d+", image), image  # a fixed tag, never latest


def test_env_comes_from_the_clusters_objects(container):
    env = {e["name"]: e for e in container["env"]}
    assert env["DB_HOST"]["valueFrom"]["configMapKeyRef"] == {"name": "egov-config", "key": "db-host"}
    assert env["DB_NAME"]["valueFrom"]["configMapKeyRef"] == {"name": "egov-config", "key": "db-name"}
    assert env["DB_USER"]["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "username"}
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "password"}
    assert env["DB_PORT"]["value"] == "5432"
    mongo = [e for e in container["env"] if e["name"].startswith("MONGO_")]
    assert mongo and all(e["valueFrom"]["secretKeyRef"]["optional"] is True for e in mongo)
    # Only the Mongo settings may be missing: the database ones must not be optional.
    assert not any(e.get("valueFrom", {}).get("secretKeyRef", {}).get("optional") for n, e in env.items() if n.startswith("DB_"))


def test_job_cleans_up_and_fails_fast(job):
    spec = job["spec"]
    assert 3600 <= spec["ttlSecondsAfterFinished"] <= 7 * 86400  # time to read the logs, then gone
    assert 0 <= spec["backoffLimit"] <= 2
    assert 0 < spec["activeDeadlineSeconds"] <= 3600
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    evictions = [r for r in rules if r["action"] == "Ignore"]
    assert evictions and {"type": "DisruptionTarget", "status": "True"} in evictions[0]["onPodConditions"]
    usage = [r for r in rules if r["action"] == "FailJob"]
    assert usage[0]["onExitCodes"]["values"] == [2, 3]  # configuration errors and drift are not retried


def test_restricted_pod_security_on_every_container(job):
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert sc["readOnlyRootFilesystem"] is True
        assert any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in c["volumeMounts"])
        for kind in ("requests", "limits"):
            assert set(c["resources"][kind]) == {"cpu", "memory"}


def test_network_policy_selects_the_job_pod(job):
    policy = manifests()["NetworkPolicy"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert policy["metadata"]["namespace"] == "health"
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 5432} <= ports
    assert policy["spec"]["ingress"] == []


def test_dockerfile_is_hadolint_clean():
    done = subprocess.run([str(BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_pins_its_parts_and_runs_as_the_jobs_user(job):
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    runtime = bases[-1]
    major, minor = map(int, re.match(r"python:(\d+)\.(\d+)\.\d+-slim", runtime).groups())
    assert (major, minor) >= (3, 12)
    assert all(re.search(r":\d+\.\d+\.\d+-", b) for b in bases), bases  # full versions, no floating tags
    assert re.search(r"mongosh@\d+\.\d+\.\d+", text)
    assert re.search(r"make=\S+", text)
    assert "pip install --no-cache-dir -r requirements.txt" in text
    user = re.findall(r"^USER (\d+):(\d+)$", text, re.M)[-1]
    assert int(user[0]) > 0
    assert int(user[0]) == job["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert image_env()["PYTHON"] == "python3"


def image_env() -> dict[str, str]:
    """The ENV the Dockerfile bakes into the image."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env = {}
    for line in re.findall(r"^ENV (.+)$", text, re.M):
        env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def resolve_env(container: dict, configmaps: dict, secrets: dict) -> dict[str, str]:
    """What the kubelet does with a container's env: literal values, ConfigMap and Secret keys."""
    resolved = {}
    for entry in container["env"]:
        if "value" in entry:
            resolved[entry["name"]] = entry["value"]
            continue
        source = entry["valueFrom"]
        ref, objects = (source["configMapKeyRef"], configmaps) if "configMapKeyRef" in source else (source["secretKeyRef"], secrets)
        value = objects.get(ref["name"], {}).get(ref["key"])
        if value is None:
            assert ref.get("optional"), f"{entry['name']}: {ref['name']}/{ref['key']} missing and not optional"
            continue
        resolved[entry["name"]] = value
    return resolved


def snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


def test_job_simulation_runs_the_same_make_migrate(container, db, tmp_path):
    server = db.server
    configmaps = {"egov-config": {"db-host": server.host, "db-name": db.name}}
    secrets = {"db": {"username": server.user, "password": server.password or "trusted-Anyway-1"}}  # no Mongo Secret
    env = resolve_env(container, configmaps, secrets)
    assert set(env) == {"DB_HOST", "DB_NAME", "DB_PORT", "DB_USER", "DB_PASSWORD"}
    if server.port != 5432:  # the manifest fixes 5432; the stand-in cluster's server listens elsewhere
        env["DB_PORT"] = str(server.port)

    # /app as the image has it: the files the Dockerfile copies, nothing else.
    app = tmp_path / "app"
    app.mkdir()
    for name in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M):
        for part in name.split():
            src = PROJECT_ROOT / part.rstrip("/")
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, app / src.name)
    (tmp_path / "tmp").mkdir()
    # The image's ENV, with its system python3 standing for this test's interpreter.
    run_env = {"PATH": os.environ["PATH"], **image_env(), "PYTHON": sys.executable, "HOME": str(tmp_path / "tmp"),
               "TMPDIR": str(tmp_path / "tmp"), **env}
    before = snapshot(app)
    done = subprocess.run(container["command"], cwd=app, env=run_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "applied 0001_create_hcm_report_metadata" in done.stdout
    assert "no database configured" not in done.stderr
    assert "MongoDB: not configured, skipped" in done.stdout  # no Mongo Secret in this cluster
    indexes = {r[0] for r in db.query("SELECT indexname FROM pg_indexes WHERE tablename = 'hcm_report_metadata'")}
    assert set(SEED_INDEXES) <= indexes
    assert snapshot(app) == before  # wrote nothing outside /tmp: fits readOnlyRootFilesystem

    again = subprocess.run(container["command"], cwd=app, env=run_env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "up to date" in again.stdout
    if server.password:
        assert server.password not in done.stdout + done.stderr
