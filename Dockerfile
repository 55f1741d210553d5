# The runner image: everything `make migrate` needs, installed at build time, so nothing is
# downloaded when the Job runs. Runs as a numeric non-root user on a read-only root filesystem
# (the Job mounts an emptyDir at /tmp, the only place anything is written).

# mongosh, for the JavaScript data patches in mongo/, from npm (pinned).
FROM node:20.19.5-bookworm-slim AS mongosh
RUN npm install --global --omit=dev --no-audit --no-fund mongosh@2.12.0

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
COPY --from=mongosh /usr/local/lib/node_modules/mongosh /usr/local/lib/node_modules/mongosh
RUN ln -s /usr/local/lib/node_modules/mongosh/bin/mongosh.js /usr/local/bin/mongosh

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY Makefile runner.py ./
COPY migrator/ migrator/
COPY sql/ sql/
COPY mongo/ mongo/
# Bytecode compiled now: at run time the filesystem is read-only.
RUN python -m compileall -q runner.py migrator

USER 10001:10001
CMD ["make", "migrate"]
