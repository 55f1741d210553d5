# The runner image: everything `make migrate` needs, installed at build time, so nothing is
# downloaded when the Job runs. Runs as a numeric non-root user on a read-only root filesystem
# (the Job mounts an emptyDir at /tmp, the only place anything is written).

# Bases: current releases (Node.js 24 LTS; Python 3.12 on Debian 12), pinned by tag. Pin them by
# digest as well when you build (README, "Updating the base images and locks"): a digest is written here only
# once it is checked against the registry, and the repository has none verified yet, so the tags stay.

# mongosh, for the JavaScript data patches in mongo/: exactly the packages of the committed npm lockfile.
FROM node:24.21.0-bookworm-slim AS mongosh
WORKDIR /opt/mongosh
COPY tools/mongosh/package.json tools/mongosh/package-lock.json ./
# --ignore-scripts: no package's install script runs (they build or download native add-ons: Kerberos, client-side
# encryption, OS DNS, ssh tunnels, none of which a patch uses; a download would bypass the lockfile's hashes).
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM python:3.12.12-slim-bookworm

# PYTHON=python3: the Makefile uses the system packages instead of making a .venv.
# HOME=/tmp: mongosh and boto3 may write under $HOME; the root filesystem is read-only.
ENV PYTHON=python3 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp

RUN apt-get update \
    && apt-get install --yes --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=mongosh /usr/local/bin/node /usr/local/bin/node
COPY --from=mongosh /opt/mongosh/node_modules /opt/mongosh/node_modules
RUN ln -s /opt/mongosh/node_modules/mongosh/bin/mongosh.js /usr/local/bin/mongosh
# No telemetry from the Job, whatever a patch calls.
COPY tools/mongosh/mongosh.conf /etc/mongosh.conf

WORKDIR /app
# Every runtime package, transitive ones too, checked against the hashes in the lock.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock

COPY Makefile runner.py ./
COPY migrator/ migrator/
COPY sql/ sql/
COPY mongo/ mongo/
# Bytecode compiled now: at run time the filesystem is read-only.
RUN python -m compileall -q runner.py migrator

USER 10001:10001
# The default command is for DIGIT's chart, which runs the image as an init container with no command and can set
# only variables: ARGS (e.g. ARGS="--parallel 4") holds the runner's options. migrator.image splits ARGS into
# words as a shell would but runs no shell, so nothing in ARGS is executed; the runner's exit code is the pod's.
# k8s/job.yaml and k8s/job-per-schema.yaml set their own command, `python3 runner.py migrate`.
CMD ["python3", "-m", "migrator.image", "migrate"]
