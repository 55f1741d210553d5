"""The runner image and k8s/job.yaml: schema, security fields, and a simulated run of the Job.

No cluster can run here (`kubectl --dry-run` needs one), so the Job simulation reads the manifest,
resolves its env against a stand-in ConfigMap and Secret that point at the test PostgreSQL, and
runs the container's exact command from the repository root, as the image would from /app.
"""

import copy
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT, SEED_INDEXES

JOB_FILE = PROJECT_ROOT / "k8s" / "job.yaml"
SECRETS_POLICY = PROJECT_ROOT / "k8s" / "networkpolicy-secrets-manager.yaml"
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
    # The runner itself, not `make migrate`: make folds every failure into 2, the podFailurePolicy needs 1/2/3.
    assert container["command"] == ["python3", "runner.py", "migrate"]
    assert container["workingDir"] == "/app"
    image = container["image"]
    assert re.fullmatch(r"[\w./-]+/hcm-db-migrations:\d+\.\d+\.\d+", image), image  # a fixed tag, never latest


def volume_of(job, container, path: str) -> dict:
    """The pod volume mounted where `path` lies."""
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    return next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])


def test_env_comes_from_the_clusters_objects_and_secrets_from_mounted_files(job, container):
    env = {e["name"]: e for e in container["env"]}
    assert env["DB_HOST"]["valueFrom"]["configMapKeyRef"] == {"name": "egov-config", "key": "db-host"}
    assert env["DB_NAME"]["valueFrom"]["configMapKeyRef"] == {"name": "egov-config", "key": "db-name"}
    assert env["SCHEMA_NAME"]["valueFrom"]["configMapKeyRef"] == {"name": "egov-config", "key": "db-schema-names",
                                                                  "optional": True}
    assert env["DB_PORT"]["value"] == "5432"
    # No credential in the environment: no secretKeyRef at all, and no DB_PASSWORD/MONGO_URL variable.
    assert not [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert not {"DB_PASSWORD", "DB_USER", "MONGO_URL", "DATABASE_URL"} & set(env)
    db = volume_of(job, container, env["DB_PASSWORD_FILE"]["value"])
    assert db["secret"]["secretName"] == "db" and not db["secret"].get("optional")
    assert {i["key"] for i in db["secret"]["items"]} == {"username", "password"}
    assert volume_of(job, container, env["DB_USER_FILE"]["value"]) == db
    mongo = volume_of(job, container, env["MONGO_URL_FILE"]["value"])
    assert mongo["secret"]["secretName"] == "hcm-db-migrations-mongo" and mongo["secret"]["optional"] is True
    assert volume_of(job, container, env["MONGO_DB_FILE"]["value"]) == mongo
    ca = volume_of(job, container, env["CA_BUNDLE"]["value"])
    # The ConfigMap may be absent (the runner then refuses in one line); unverified TLS is never the default.
    assert ca["configMap"]["optional"] is True and not {"CA_BUNDLE_OPTIONAL", "DB_TLS_INSECURE"} & set(env)
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["name"] != "tmp")


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


def test_network_policy_names_every_destination(job):
    policy = manifests()["NetworkPolicy"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert policy["metadata"]["namespace"] == "health"
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["ingress"] == []
    rules = policy["spec"]["egress"]
    assert all(rule.get("to") for rule in rules), "an egress rule without `to:` allows every destination"
    by_port = {p["port"]: rule for rule in rules for p in rule["ports"]}
    assert set(by_port) == {53, 5432, 27017}  # no 443: only with the Secrets Manager policy
    (dns,) = by_port[53]["to"]
    assert dns["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    assert dns["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    for port in (5432, 27017):
        assert all("ipBlock" in peer for peer in by_port[port]["to"])


def test_secrets_manager_egress_is_a_separate_policy_for_https_only():
    (policy,) = yaml.safe_load_all(SECRETS_POLICY.read_text())
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Egress"]
    assert [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]] == [443]
    assert all(rule.get("to") for rule in policy["spec"]["egress"])
    done = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "-k", "1.30.0", str(SECRETS_POLICY)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_is_hadolint_clean():
    done = subprocess.run([str(BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_pins_its_parts_and_runs_as_the_jobs_user(job):
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert all(re.search(r":\d+\.\d+\.\d+-", b) for b in bases), bases  # full versions, no floating tags
    node = next(b for b in bases if b.startswith("node:"))
    assert int(re.match(r"node:(\d+)\.", node).group(1)) >= 24  # Node 20 ended 2026-04-30; 22 ends 2027-04
    major, minor = map(int, re.match(r"python:(\d+)\.(\d+)\.\d+-slim", bases[-1]).groups())
    assert (major, minor) >= (3, 12)
    assert "COPY tools/mongosh/package.json tools/mongosh/package-lock.json ./" in text
    assert re.search(r"^RUN npm ci\b", text, re.M) and "npm install" not in text
    assert "pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock" in text
    assert "COPY tools/mongosh/mongosh.conf /etc/mongosh.conf" in text
    assert re.search(r"make=\S+", text)
    user = re.findall(r"^USER (\d+):(\d+)$", text, re.M)[-1]
    assert int(user[0]) > 0
    assert int(user[0]) == job["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert image_env()["PYTHON"] == "python3"


def test_the_runtime_lock_pins_every_requirement_with_hashes():
    lock = (PROJECT_ROOT / "requirements.lock").read_text()
    entries = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", lock, re.M)
    pinned = {name.lower(): version for name, version, _ in entries}
    assert len(entries) == len(re.findall(r"^\S+==", lock, re.M)), "every package in the lock carries hashes"
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            assert pinned.get(name.lower().split("[")[0]) == version, f"{name}: run `make lock`"
    assert {"botocore", "urllib3", "dnspython", "sqlparse"} <= set(pinned)  # transitive ones too


def test_mongosh_comes_from_the_committed_npm_lockfile_with_telemetry_off():
    import json

    folder = PROJECT_ROOT / "tools" / "mongosh"
    package = json.loads((folder / "package.json").read_text())
    lock = json.loads((folder / "package-lock.json").read_text())
    version = package["dependencies"]["mongosh"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)  # exact, no ^ range
    assert lock["packages"]["node_modules/mongosh"]["version"] == version
    packages = {k: v for k, v in lock["packages"].items() if k}
    assert len(packages) > 100 and all(p.get("integrity", "").startswith("sha512-") for p in packages.values())
    conf = yaml.safe_load((folder / "mongosh.conf").read_text())
    assert conf == {"mongosh": {"forceDisableTelemetry": True}}  # mongosh's global setting


def image_env() -> dict[str, str]:
    """The ENV the Dockerfile bakes into the image."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env = {}
    for line in re.findall(r"^ENV (.+)$", text, re.M):
        env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


# --- the Job as it really runs --------------------------------------------------------------------
#
# uid 10001 without a passwd entry, an environment holding only what the image and the manifest set,
# the project's files read-only, secrets and the CA bundle as mounted files, /tmp the only place to
# write. PostgreSQL is the suite's server behind a TLS front (verify-full with the mounted bundle);
# MongoDB is the suite's FerretDB (without Go the test that applies a patch skips, saying so: mongomock cannot
# follow a patch into its own process).

JOB_UID = 10001
COUNT_PATCH = "def run(db, dry_run):\n    if not dry_run:\n        db.counters.update_one({'_id': 'deploys'}, {'$inc': {'n': 1}}, upsert=True)\n    return 'counted'\n"


@pytest.fixture(scope="session")
def job_python() -> Path:
    """An interpreter uid 10001 can run, with exactly the image's packages (from the hash-pinned lock)."""
    import hashlib

    system_python = Path("/usr/bin/python3")
    if os.geteuid() != 0 or not shutil.which("setpriv") or not system_python.exists():
        pytest.skip("running as another uid needs root, setpriv and /usr/bin/python3")
    lock = (PROJECT_ROOT / "requirements.lock").read_bytes()
    venv = Path("/tmp") / f"hcm-job-venv-{hashlib.sha256(lock).hexdigest()[:12]}"
    # Parallel workers (and other checkouts' suites) share the venv: one builds it, the others wait on the lock.
    with open(f"{venv}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if not (venv / ".ready").exists():  # built once per lock (~20 s), then reused
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([str(system_python), "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
            subprocess.run([*pip, "--require-hashes", "--no-deps", "-r", str(PROJECT_ROOT / "requirements.lock")],
                           check=True)
            (venv / ".ready").touch()
    return venv / "bin" / "python"


def image_files(app: Path) -> None:
    """/app as the image has it: what the final stage COPYs into WORKDIR /app, nothing else."""
    final = DOCKERFILE.read_text().split("\nFROM ")[-1]
    after_workdir = final.split("\nWORKDIR /app\n", 1)[1]
    for line in re.findall(r"^COPY (?!--from)(.+)$", after_workdir, re.M):
        *sources, dest = line.split()
        for source in sources:
            src = PROJECT_ROOT / source.rstrip("/")
            target = app / dest / (src.name if dest.endswith("/") and not source.endswith("/") else "")
            if source.endswith("/"):
                target = app / dest
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, target, **({"dirs_exist_ok": True} if src.is_dir() else {}))


def kubelet_env(job: dict, container: dict, configmaps: dict, secrets: dict, root: Path,
                annotations: dict | None = None) -> dict[str, str]:
    """What the kubelet gives the container: env values, ConfigMap keys, the pod's annotations (fieldRef),
    and Secret/ConfigMap volumes written as files (root:10001, 0440 as fsGroup makes them) under `root`
    instead of their mountPath."""
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    mounts = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            continue
        local = root / mount["mountPath"].strip("/")
        mounts[mount["mountPath"]] = local
        kind, name = ("secret", volume["secret"]["secretName"]) if "secret" in volume else ("configMap", volume["configMap"]["name"])
        data = (secrets if kind == "secret" else configmaps).get(name)
        if data is None:
            assert volume[kind].get("optional"), f"{name} missing and not optional"
            continue
        local.mkdir(parents=True)
        for key, value in data.items():
            (local / key).write_text(value)
            os.chown(local / key, 0, JOB_UID)
            (local / key).chmod(0o440)
    env = {}
    for entry in container["env"]:
        if "value" in entry:
            value = entry["value"]
            for mount_path, local in mounts.items():
                if value.startswith(mount_path + "/"):
                    value = str(local) + value[len(mount_path):]
            env[entry["name"]] = value
        elif "fieldRef" in entry["valueFrom"]:
            path = entry["valueFrom"]["fieldRef"]["fieldPath"]
            key = re.fullmatch(r"metadata\.annotations\['([^']+)'\]", path).group(1)
            env[entry["name"]] = (annotations or {}).get(key, "")  # the kubelet's "" for a missing one
        else:
            ref = entry["valueFrom"]["configMapKeyRef"]
            if ref["key"] not in configmaps[ref["name"]]:
                assert ref.get("optional"), f"{ref['name']} lacks {ref['key']} and it is not optional"
                continue
            env[entry["name"]] = configmaps[ref["name"]][ref["key"]]
    return env


def snapshot(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.stat().st_mtime, p.stat().st_size) for p in root.rglob("*")}


@pytest.fixture
def pod_runner(job_python, pg, db, tmp_path, ferret):
    """pod_runner(job) -> run: run(secrets=..., configmaps=...) runs that Job's container command as its pod would."""
    import tempfile
    import uuid

    from tls_proxy import PlainTlsFront, TlsFront, make_pki

    if not pg.host.startswith("/"):
        pytest.skip("the TLS front relays to the suite's own server's Unix socket")
    root = Path(tempfile.mkdtemp(prefix="hcm-job-", dir="/tmp"))  # outside pytest's root-only folders
    root.chmod(0o755)
    app = root / "app"
    app.mkdir()
    image_files(app)
    (root / "tmp").mkdir()
    os.chown(root / "tmp", JOB_UID, JOB_UID)
    (root / "tmp").chmod(0o700)
    # The image's python3 (/usr/local/bin) has the lock's packages installed: here, the job venv's.
    (root / "bin").mkdir()
    (root / "bin" / "python3").write_text(f'#!/bin/sh\nexec {job_python} "$@"\n')
    (root / "bin" / "python3").chmod(0o755)
    harness = root / "harness"
    (harness / "patches").mkdir(parents=True)
    (harness / "patches" / "0001_count_deploys.py").write_text(COUNT_PATCH)
    mongo_db = "hcm_deploy_" + uuid.uuid4().hex[:8]
    # Without Go (no FerretDB) a Mongo URL nothing listens on: the tests that apply a patch skip.
    pki = make_pki(tmp_path / "pki", ["127.0.0.1"])
    front = TlsFront(pg.host, pg.port, pki)
    mongo_front = PlainTlsFront(ferret.port, pki) if ferret else None  # the Job verifies Mongo's TLS with the bundle
    mongo_url = f"mongodb://app:Mongo-Pw-77@127.0.0.1:{mongo_front.port if ferret else 9}/?authMechanism=PLAIN"
    configmaps = {"egov-config": {"db-host": "127.0.0.1", "db-name": db.name},
                  "hcm-db-ca": {"global-bundle.pem": pki.ca.read_text()}}
    db_secret = {"username": pg.user, "password": pg.password or "trusted-Anyway-1"}
    runs = 0

    def pod(job: dict):
        (container,) = job["spec"]["template"]["spec"]["containers"]

        def run(with_mongo: bool = False, with_ca: bool = True, schemas: str | None = None, index: int | None = None,
                port: int | None = None, command: list[str] | None = None, extra_env: dict | None = None,
                unset: tuple[str, ...] = ()):
            nonlocal runs
            runs += 1
            secrets = {"db": db_secret}
            if with_mongo:
                secrets["hcm-db-migrations-mongo"] = {"url": mongo_url, "database": mongo_db}
            maps = {k: dict(v) for k, v in configmaps.items()} if with_ca else {"egov-config": dict(configmaps["egov-config"])}
            if schemas is not None:
                maps["egov-config"]["db-schema-names"] = schemas
            annotations = {} if index is None else {"batch.kubernetes.io/job-completion-index": str(index)}
            env = kubelet_env(job, container, maps, secrets, root / f"mounts{runs}", annotations)
            env["DB_PORT"] = str(port or front.port)  # the manifest's 5432; the stand-in server listens elsewhere
            image = {**image_env(), "HOME": str(root / "tmp"), "TMPDIR": str(root / "tmp"), "PYTHON": str(job_python)}
            harness_env = {"PYTHONPATH": str(harness), "MONGO_DIR": str(harness / "patches")}
            path = f"{root / 'bin'}:/usr/local/bin:/usr/bin:/bin"
            everything = {"PATH": path, **image, **env, **harness_env, **(extra_env or {})}
            variables = [f"{k}={v}" for k, v in everything.items() if k not in unset]
            argv = ["setpriv", f"--reuid={JOB_UID}", f"--regid={JOB_UID}", "--clear-groups", "env", "-i", *variables,
                    *(command or container["command"])]
            return subprocess.run(argv, cwd=app, capture_output=True, text=True, timeout=180)

        run.app, run.front, run.root = app, front, root
        run.mongo = lambda: mongo_state(ferret, mongo_db)
        return run

    yield pod
    front.close()
    if ferret:
        mongo_front.close()
        import pymongo

        with pymongo.MongoClient(ferret.url) as client:
            client.drop_database(mongo_db)
    shutil.rmtree(root, ignore_errors=True)


def mongo_state(ferret, database: str) -> dict[str, list]:
    """The Job's Mongo database on the suite's FerretDB: collection -> documents."""
    import pymongo

    with pymongo.MongoClient(ferret.url, tz_aware=True) as client:
        return {name: list(client[database][name].find()) for name in client[database].list_collection_names()}


@pytest.fixture
def job_run(job, pod_runner):
    """Runs k8s/job.yaml's command as the Job runs it: job_run(with_mongo=..., with_ca=...) -> CompletedProcess."""
    return pod_runner(job)


def test_the_job_migrates_as_uid_10001_without_a_passwd_entry(job_run, db):
    import pwd

    with pytest.raises(KeyError):
        pwd.getpwuid(JOB_UID)  # the point: no passwd entry, as in the image
    before = snapshot(job_run.app)
    first = job_run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "applied 0001_create_hcm_report_metadata" in first.stdout
    assert "MongoDB: not configured, skipped" in first.stdout  # the optional Mongo Secret is absent
    assert "MONGO_URL_FILE" in first.stderr and "which does not exist" in first.stderr
    assert job_run.front.handshakes >= 1 and "warning" not in first.stderr  # verify-full with the mounted bundle
    indexes = {r[0] for r in db.query("SELECT indexname FROM pg_indexes WHERE tablename = 'hcm_report_metadata'")}
    assert set(SEED_INDEXES) <= indexes
    assert db.query("SELECT DISTINCT username FROM _yoyo_log") == [(f"uid {JOB_UID}",)]
    assert snapshot(job_run.app) == before  # wrote nothing outside /tmp: fits readOnlyRootFilesystem

    again = job_run()
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr
    assert db.query("SELECT count(*) FROM _yoyo_log WHERE operation = 'apply'") == [(1,)]
    for run in (first, again):
        assert "Traceback" not in run.stderr and "trusted-Anyway-1" not in run.stdout + run.stderr


def test_a_uid_without_passwd_entry_or_home_runs_as_libpq_would_without_a_password_file(job_run, db):
    """OpenShift's random uid, `docker run --user`, a systemd unit: no passwd entry and no HOME. libpq then has no
    ~/.pgpass; the runner must not fail on looking for one (it did: "unexpected RuntimeError ... home directory")."""
    first = job_run(unset=("HOME",))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "applied 0001_create_hcm_report_metadata" in first.stdout
    status = job_run(unset=("HOME",), command=["python3", "runner.py", "status"])
    assert status.returncode == 0 and "0001_create_hcm_report_metadata" in status.stdout, status.stdout + status.stderr
    for run in (first, status):
        assert "unexpected" not in run.stderr and "Traceback" not in run.stderr


def test_a_services_flyway_folder_runs_in_the_image_with_the_charts_variables(job_run, db):
    """A service swaps `FROM egovio/flyway` for this image, keeps `COPY <folder> /flyway/sql` and the chart's
    FLYWAY_LOCATIONS and SCHEMA_TABLE: its V files run, recorded in Flyway's table of that name."""
    folder = job_run.root / "flyway" / "sql"  # /flyway/sql in the service's image
    folder.mkdir(parents=True)
    (folder / "V20230101120000__create_plan.sql").write_text("CREATE TABLE plan (id INT PRIMARY KEY);\n")
    (folder / "V20242112141500__alter plan_add-name.sql").write_text("ALTER TABLE plan ADD COLUMN name TEXT;\n")
    for path in (job_run.root / "flyway", folder, *folder.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    chart = {"FLYWAY_LOCATIONS": f"filesystem:{folder}", "SCHEMA_TABLE": "plan_service_schema"}
    first = job_run(extra_env=chart)
    assert first.returncode == 0, first.stdout + first.stderr
    assert db.query("SELECT version, description, script, success FROM plan_service_schema ORDER BY installed_rank") == [
        ("20230101120000", "create plan", "V20230101120000__create_plan.sql", True),
        ("20242112141500", "alter plan add-name", "V20242112141500__alter plan_add-name.sql", True)]
    assert "hcm_report_metadata" not in db.tables()  # the image's own sql/ is not the service's
    again = job_run(extra_env=chart)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr


def test_the_job_applies_a_mongo_patch_once_and_logs_it_as_uid_10001(job_run, ferret):
    if ferret is None:
        pytest.skip("needs FerretDB (install Go): the patch runs in a process of its own, out of mongomock's reach")
    first = job_run(with_mongo=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "applied 0001_count_deploys" in first.stdout
    again = job_run(with_mongo=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "MongoDB: up to date" in again.stdout
    state = job_run.mongo()
    assert state["counters"] == [{"_id": "deploys", "n": 1}]  # applied exactly once over two deploys
    (record,) = state["applied_patches"]
    assert (record["patch"], record["status"], record["user"]) == ("0001_count_deploys", "applied", f"uid {JOB_UID}")
    for run in (first, again):
        assert "Mongo-Pw-77" not in run.stdout + run.stderr


def test_without_the_ca_configmap_the_job_refuses_before_sending_the_password(job, job_run, pod_runner):
    """attack 23 #4: it used to fall back to sslmode=require, and a fake server got the password."""
    handshakes = job_run.front.handshakes
    result = job_run(with_ca=False)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "CA bundle" in line and "not found" in line and "DB_TLS_INSECURE=unverified" in line
    assert job_run.front.handshakes == handshakes  # no TLS session, so no password, reached the server
    assert pod_failure_action(job, result.returncode) == "FailJob"

    explicit = copy.deepcopy(job)  # the manifest saying so in words: runs, and the log says it is insecure
    (container,) = explicit["spec"]["template"]["spec"]["containers"]
    container["env"] += [{"name": "CA_BUNDLE_OPTIONAL", "value": "true"},
                         {"name": "DB_TLS_INSECURE", "value": "unverified"}]
    insecure = pod_runner(explicit)(with_ca=False)
    assert insecure.returncode == 0, insecure.stdout + insecure.stderr
    assert "warning: INSECURE TLS" in insecure.stderr and "NOT verified" in insecure.stderr


# --- the exit codes the pod reports, as the Job's podFailurePolicy reads them (attack16b 5, 10) ---------

PER_SCHEMA_FILE = PROJECT_ROOT / "k8s" / "job-per-schema.yaml"


def pod_failure_action(job: dict, exit_code: int) -> str:
    """What Kubernetes does with a failed pod of this Job: the first podFailurePolicy rule matching the
    migrate container's exit code (FailJob, FailIndex, Ignore), else "Count" (retried within the limit)."""
    for rule in job["spec"]["podFailurePolicy"]["rules"]:
        codes = rule.get("onExitCodes")
        if not codes or codes.get("containerName", "migrate") != "migrate":
            continue
        if (exit_code in codes["values"]) == (codes["operator"] == "In"):
            return rule["action"]
    return "Count"


def edit_an_applied_migration(app: Path) -> None:
    with (app / "sql" / "0001_create_hcm_report_metadata.sql").open("a") as file:
        file.write("\nSELECT 1;\n")


def test_the_jobs_pod_exits_with_the_runners_code_so_drift_fails_the_job_and_a_lost_server_is_retried(job, job_run):
    first = job_run()
    assert first.returncode == 0, first.stdout + first.stderr
    edit_an_applied_migration(job_run.app)
    drift = job_run()
    assert drift.returncode == 3, drift.stdout + drift.stderr
    assert "0001_create_hcm_report_metadata.sql changed since applied" in drift.stderr, drift.stderr
    assert pod_failure_action(job, drift.returncode) == "FailJob"  # retrying cannot help
    # Why not `make migrate`: make folds the runner's 3 into its own 2; the policy could not tell them apart.
    through_make = job_run(command=["make", "migrate"])
    assert through_make.returncode == 2 and "changed since applied" in through_make.stderr, through_make.stderr

    with socket.socket() as closed:  # a port nothing listens on: the server is down, or not reachable yet
        closed.bind(("127.0.0.1", 0))
        lost = job_run(port=closed.getsockname()[1])
    assert lost.returncode == 1, lost.stdout + lost.stderr
    assert "cannot connect to PostgreSQL" in lost.stderr
    assert pod_failure_action(job, lost.returncode) == "Count" and job["spec"]["backoffLimit"] >= 1  # retried


@pytest.fixture
def per_schema_job() -> dict:
    return yaml.safe_load(PER_SCHEMA_FILE.read_text())


def test_the_per_schema_manifest_runs_the_runner_sql_only_with_the_charts_schema_key(per_schema_job):
    spec = per_schema_job["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert container["command"] == ["python3", "runner.py", "migrate"]
    assert env["SCHEMA_NAME"]["valueFrom"]["configMapKeyRef"] == {"name": "egov-config", "key": "db-schema-names"}
    assert env["SCHEMA_COUNT"]["value"] == str(spec["completions"])
    # No Mongo settings: N pods would race for the one patch lock (the patches run in k8s/job.yaml).
    assert not [name for name in env if name.startswith("MONGO")]
    assert not [v for v in spec["template"]["spec"]["volumes"] if "mongo" in v.get("secret", {}).get("secretName", "")]
    assert (pod_failure_action(per_schema_job, 2), pod_failure_action(per_schema_job, 3)) == ("FailJob", "FailIndex")
    assert pod_failure_action(per_schema_job, 1) == "Count" and spec["backoffLimitPerIndex"] >= 1


def test_each_indexed_pod_migrates_its_schema_and_reports_drift_and_lost_servers_per_index(per_schema_job, pod_runner, db,
                                                                                           ferret):
    pods = pod_runner(per_schema_job)
    schemas = ["pb", "mz", "ng"]
    for schema in schemas:  # the DBA's tenant schemas (or CREATE_SCHEMAS=true)
        db.query(f"CREATE SCHEMA {schema}")
    for index in (2, 0, 1):
        done = pods(schemas=",".join(schemas), index=index, with_mongo=True)  # the Mongo Secret exists: unused
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"[{schemas[index]}] applied 0001_create_hcm_report_metadata" in done.stdout, done.stdout
        assert "MongoDB: not configured" in done.stdout
    for schema in schemas:
        assert db.query(f"SELECT migration_id FROM {schema}._yoyo_migration") == [("0001_create_hcm_report_metadata",)]
    assert ferret is None or "counters" not in pods.mongo()

    missing = pods(schemas=",".join(schemas), index=None)  # the annotation absent: never every schema
    assert missing.returncode == 2 and "SCHEMA_INDEX is empty or unset" in missing.stderr, missing.stderr
    assert pod_failure_action(per_schema_job, missing.returncode) == "FailJob"

    edit_an_applied_migration(pods.app)
    drift = pods(schemas=",".join(schemas), index=1)
    assert drift.returncode == 3 and "changed since applied" in drift.stderr, drift.stdout + drift.stderr
    assert pod_failure_action(per_schema_job, drift.returncode) == "FailIndex"  # this schema; the others go on
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        lost = pods(schemas=",".join(schemas), index=0, port=closed.getsockname()[1])
    assert lost.returncode == 1, lost.stdout + lost.stderr
    assert pod_failure_action(per_schema_job, lost.returncode) == "Count"  # retried for index 0 alone
