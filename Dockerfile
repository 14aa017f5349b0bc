# syntax=docker/dockerfile:1
# Images of execution-operator, one target each:
#   docker build --target operator     -t ghcr.io/execution-operator/operator:<tag> .
#   docker build --target sandbox      -t ghcr.io/execution-operator/sandbox:<tag> .
#   docker build --target sandbox-data -t ghcr.io/execution-operator/sandbox-data:<tag> .
# Build stages compile wheels and virtualenvs; the final stages copy only the finished virtualenv onto the
# slim base, run as uid/gid 65532 and carry no compilers or pip.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- The project wheel, built once for every image ----------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY operator/ ./operator/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- Operator virtualenv: the project and its runtime dependencies -------------------------------------------
FROM ${PYTHON_IMAGE} AS operator-venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/execution_operator-*.whl \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# --- Sandbox virtualenv: the runner needs only the standard library ------------------------------------------
FROM ${PYTHON_IMAGE} AS sandbox-venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/execution_operator-*.whl \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# --- Data sandbox virtualenv: the runner plus pandas and numpy (pinned) --------------------------------------
FROM ${PYTHON_IMAGE} AS sandbox-data-venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/execution_operator-*.whl \
    && /opt/venv/bin/pip install --no-cache-dir numpy==2.2.1 pandas==2.2.3 \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# --- Final: the operator ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="execution-operator" \
      org.opencontainers.image.description="Kubernetes operator that runs untrusted Python code in sandbox pods" \
      org.opencontainers.image.source="https://github.com/execution-operator/execution-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=operator-venv /opt/venv /opt/venv
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["execution-operator"]

# --- Final: the default sandbox (plain Python) ----------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS sandbox
LABEL org.opencontainers.image.title="execution-operator sandbox" \
      org.opencontainers.image.description="Runner for the default ExecutionClass" \
      org.opencontainers.image.source="https://github.com/execution-operator/execution-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
# The root filesystem is read-only in the pod: no bytecode caches, HOME and cwd on the writable /tmp.
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
COPY --from=sandbox-venv /opt/venv /opt/venv
WORKDIR /tmp
USER 65532:65532
ENTRYPOINT ["python", "-m", "execution_operator.runner"]

# --- Final: the data-processing sandbox (pandas, numpy) -------------------------------------------------------
FROM ${PYTHON_IMAGE} AS sandbox-data
LABEL org.opencontainers.image.title="execution-operator sandbox-data" \
      org.opencontainers.image.description="Runner for the data-processing ExecutionClass (pandas, numpy)" \
      org.opencontainers.image.source="https://github.com/execution-operator/execution-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
COPY --from=sandbox-data-venv /opt/venv /opt/venv
WORKDIR /tmp
USER 65532:65532
ENTRYPOINT ["python", "-m", "execution_operator.runner"]
