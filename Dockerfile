# flowgate's image: built in one stage (a compiler for the Cython modules), run from another that
# holds only the virtualenv (no compiler, no dev tools, no sources beyond the installed package).
#   docker build -t flowgate .
#   docker run -v $PWD/my.yaml:/etc/flowgate/flowgate.yaml:ro -p 8080:8080 flowgate
# The mounted config must listen on 0.0.0.0 (server.host) for the port to be reachable.

FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY proxy ./proxy
# the package and its runtime dependencies only (no dev extras); the compiled paths must be built
RUN python -m venv /opt/flowgate \
 && /opt/flowgate/bin/pip install --no-cache-dir . \
 && /opt/flowgate/bin/python -c "import proxy.stream.textpath, proxy.stream.tokenlines, proxy.upstream.chunked"

FROM python:3.11-slim
COPY --from=build /opt/flowgate /opt/flowgate
COPY config/flowgate.example.yaml /etc/flowgate/flowgate.example.yaml
RUN useradd --system --home-dir /var/lib/flowgate --shell /usr/sbin/nologin flowgate \
 && mkdir -p /var/lib/flowgate \
 && chown flowgate /var/lib/flowgate
USER flowgate
WORKDIR /var/lib/flowgate
VOLUME ["/var/lib/flowgate"]
EXPOSE 8080
ENV PATH=/opt/flowgate/bin:$PATH \
    FLOWGATE_CONFIG=/etc/flowgate/flowgate.yaml \
    PYTHONUNBUFFERED=1
# the image has no curl: flowgate probes itself (its config's listener, /healthz)
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["flowgate", "healthcheck", "--quiet"]
CMD ["flowgate", "serve"]
