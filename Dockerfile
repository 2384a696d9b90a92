# cutover in a container: `cutover serve` as a non-root user.
# Mount your own config (listen on 0.0.0.0 inside the container, a real admin.token):
#   docker run -e CUTOVER_TOKEN=... -v $PWD/cutover.yaml:/app/config/cutover.yaml -p 8080:8080 -p 9901:9901 cutover
# The build stage has a C compiler, so the wheel carries the data plane compiled with mypyc
# (see setup.py); `docker run ... cutover version` says which build is inside.
FROM python:3.11-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
COPY admin ./admin
RUN CUTOVER_COMPILE=require pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 10001 cutover
WORKDIR /app
COPY --from=build /wheels /wheels
COPY config ./config
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && mkdir -p /app/config/var && chown -R cutover:cutover /app/config/var
USER cutover
EXPOSE 8080 9901
ENTRYPOINT ["cutover"]
CMD ["serve", "--config", "/app/config/cutover.yaml"]
