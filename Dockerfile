# syntax=docker/dockerfile:1
# The connector as a container: a build stage makes the wheel, a slim runtime stage runs
# it as a non-root user. Read-only root filesystem friendly: the only writable path is
# the spool volume (and /tmp, which compose and the chart mount as tmpfs/emptyDir).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY connector ./connector
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ARG UID=10001
RUN useradd --system --uid ${UID} --no-create-home --home-dir /nonexistent connector \
    && mkdir -p /var/lib/connector/spool \
    && chown ${UID}:${UID} /var/lib/connector/spool
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY schemas /opt/connector/schemas
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONNECTOR_SCHEMA_DIR=/opt/connector/schemas \
    CONNECTOR_SPOOL_DIR=/var/lib/connector/spool \
    CONNECTOR_HTTP_PORT=9102
VOLUME ["/var/lib/connector/spool"]
USER ${UID}
EXPOSE 9102
# Ready = producer connected and every subscription live (see README, Operations).
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('CONNECTOR_HTTP_PORT', '9102'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["connector", "run"]
