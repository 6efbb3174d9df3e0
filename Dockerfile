# syntax=docker/dockerfile:1
# One image for every zapstream service (serve, work, project, run, and the operator commands).
# Build: docker build -t zapstream .     Run: docker run --env-file .env -p 8000:8000 zapstream

# --- builder: the project and its runtime dependencies in a venv, nothing else ---------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv

WORKDIR /src
# Dependencies first (from pyproject alone), so a change of code does not reinstall them.
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt

# Then the project itself, as a wheel (no dev or bench extras).
COPY zapstream ./zapstream
COPY ingest ./ingest
COPY processors ./processors
COPY projections ./projections
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install /wheels/*.whl

# --- runtime: the venv, streams.yaml, a non-root user -----------------------------------------
FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 zapstream \
 && useradd --system --uid 10001 --gid zapstream --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin zapstream

COPY --from=builder /opt/venv /opt/venv

# The code and streams.yaml stay root-owned (read-only to the service); only data/ is writable.
# DUCKDB_PATH defaults to data/analytics.duckdb, relative to this directory. A named volume
# mounted on /app/data starts with this directory's owner, so the user can write there.
WORKDIR /app
COPY streams.yaml ./
RUN mkdir -p /app/data && chown zapstream:zapstream /app/data

USER 10001:10001

EXPOSE 8000
ENTRYPOINT ["zapstream"]
CMD ["run", "--host", "0.0.0.0", "--port", "8000"]
