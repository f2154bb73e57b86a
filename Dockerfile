# The example email service, run by `oada-jobs run`.
#   docker build -t oada-jobs-email .
#   docker run -e OADA_DOMAIN=https://oada.example.org -e OADA_TOKEN=... oada-jobs-email
# See compose.yaml for the service together with an embedded OADA server.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY examples ./examples
COPY oada_jobs ./oada_jobs
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# The core install is all a service needs; compose.yaml builds the embedded
# server's image with EXTRAS="[server]".
ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    OADA_JOBS_METRICS_PORT=9100 \
    EMAIL_OUTBOX=/app/outbox
COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/oada_jobs-*.whl)${EXTRAS}" && rm -rf /wheels \
    && useradd --create-home --uid 10001 oada
WORKDIR /app
COPY examples/__init__.py examples/email_service.py ./examples/
RUN mkdir -p /app/outbox && chown oada /app/outbox
USER oada
EXPOSE 9100
# Healthy while the service is ready: its event loop runs and every queue's
# watch is established with the OADA server reachable (/readyz). For
# Kubernetes, probe /healthz for liveness and /readyz for readiness.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ['OADA_JOBS_METRICS_PORT'], timeout=4)"]
# SIGTERM stops taking jobs; running ones get OADA_JOBS_GRACE_PERIOD seconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["oada-jobs", "run", "examples.email_service:service"]
