# cutover in a container: `cutover serve` as a non-root user.
#
#   docker build -t cutover .
#   docker run -d --name cutover --stop-timeout 30 \
#       -e CUTOVER_TOKEN=... -e CUTOVER_BLUE=app-blue:8000 -e CUTOVER_GREEN=app-green:8000 \
#       -v cutover-state:/var/lib/cutover -p 8080:8080 -p 9901:9901 cutover
#
# - Config: /app/config/cutover.yaml is config/docker.yaml (listens on 0.0.0.0, so the admin
#   token is required: without CUTOVER_TOKEN the container exits naming it). Mount your own
#   file there for more: -v $PWD/cutover.yaml:/app/config/cutover.yaml:ro
# - State: /var/lib/cutover is a volume; keep it (a named volume) so a recreated container
#   keeps the live environment, generation, hold, lock and history instead of starting from
#   `live:` again.
# - Stopping: SIGTERM drains in-flight requests for up to drain_timeout (20s in the image's
#   config). The engine's grace period must be longer, or it kills the drain: docker stop -t 30,
#   docker run --stop-timeout 30, compose `stop_grace_period: 30s`, Kubernetes
#   terminationGracePeriodSeconds: 30.
# - Health: the HEALTHCHECK asks /readyz (503 while the live environment has no healthy
#   server or while shutting down); /healthz is liveness.
# The build stage has a C compiler, so the wheel carries the data plane compiled with mypyc
# (see setup.py); `docker run --rm cutover version` says which build is inside.
FROM python:3.11-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY proxy ./proxy
COPY admin ./admin
RUN CUTOVER_COMPILE=require pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 10001 cutover
WORKDIR /app
COPY --from=build /wheels /wheels
COPY config/docker.yaml ./config/cutover.yaml
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && mkdir -p /var/lib/cutover && chown cutover:cutover /var/lib/cutover
VOLUME ["/var/lib/cutover"]
USER cutover
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9901/readyz', timeout=2).status != 200)"]
ENTRYPOINT ["cutover"]
CMD ["serve", "--config", "/app/config/cutover.yaml"]
