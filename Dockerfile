# The operator image: `sidecarless run`, as a non-root user, from a wheel.
# Build: docker build -t sidecarless:dev .   The local cluster builds this same file without a
# container engine: buildah on a Debian base it makes with debootstrap, passed as BASE
# (tools/devcluster/operator_image.py). Any base with python3 and its venv module works.
ARG BASE=python:3.11.7-slim-bookworm

FROM ${BASE} AS build
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir uv==0.13.9
WORKDIR /src
# Dependencies first, pinned with hashes from the lock, so a code change reuses this layer.
COPY pyproject.toml uv.lock README.md ./
RUN /opt/uv/bin/uv export --frozen --no-dev --no-emit-project --format requirements-txt -o /out/requirements.txt
COPY csi_client ./csi_client
COPY operator ./operator
RUN /opt/uv/bin/uv build --wheel --out-dir /out/dist

FROM ${BASE}
COPY --from=build /out/requirements.txt /tmp/install/requirements.txt
RUN python3 -m venv /opt/sidecarless \
    && /opt/sidecarless/bin/pip install --no-cache-dir --require-hashes -r /tmp/install/requirements.txt
COPY --from=build /out/dist/ /tmp/install/dist/
RUN /opt/sidecarless/bin/pip install --no-cache-dir --no-deps /tmp/install/dist/*.whl \
    && rm -rf /tmp/install \
    && useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin sidecarless
# The chart mounts nothing writable: the root filesystem can be read-only.
ENV PATH=/opt/sidecarless/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["sidecarless"]
CMD ["run"]
