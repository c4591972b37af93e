# syntax=docker/dockerfile:1
#
# prefs: production image. Runs `prefs serve` with PREFS_ENV=production, which refuses to start
# unless these are set: PREFS_DATABASE_URL, PREFS_MASTER_KEYS, PREFS_INDEX_KEY, PREFS_RECEIPT_KEYS,
# PREFS_JWT_ISSUER, PREFS_JWT_AUDIENCE, PREFS_JWT_JWKS (a JWKS file path or URL; mount the file
# read-only). Set the PREFS_CONTROLLER_* details and PREFS_POLICY_URL too: receipts carry them.
# Migrations ship inside the package and run to head at start-up.
#
# No container engine runs where this project is developed, so this file is kept correct by
# reading; build with: docker build -t prefs .

ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

# ---- build: resolve the locked, non-dev dependencies and the project into /app/.venv ----------
FROM ${PYTHON_IMAGE} AS build

# The same uv release that writes this repository's uv.lock.
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /src

# Dependencies first (their layer is reused while only the code changes) ...
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --no-install-project

# ... then the project itself, built as a wheel: src/prefs plus migrations/ as prefs/migrations.
COPY README.md ./
COPY src ./src
COPY migrations ./migrations
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable \
 && test -f /app/.venv/lib/python3.11/site-packages/prefs/migrations/env.py

# ---- runtime: the interpreter and the virtual environment, nothing else ------------------------
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 prefs \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/prefs --no-create-home \
        --shell /usr/sbin/nologin prefs \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/prefs

# Owned by root: the application cannot modify its own code.
COPY --from=build /app/.venv /app/.venv

ENV PREFS_ENV=production \
    PREFS_DATA_DIR=/var/lib/prefs \
    PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /var/lib/prefs
USER 10001:10001
EXPOSE 8000

# slim has no curl: ask the readiness endpoint with the standard library (non-2xx raises).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4)"]

CMD ["prefs", "serve", "--host", "0.0.0.0", "--port", "8000"]
