# flowgate: the same install step as the README (`make install` creates .venv with the package and
# compiles proxy/textpath.pyx; the C compiler is removed again once it has).
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends make gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml setup.py README.md Makefile ./
COPY proxy ./proxy
COPY config ./config
RUN make install \
 && .venv/bin/python -c "import proxy.textpath" \
 && apt-get purge -y --auto-remove gcc libc6-dev

RUN useradd --system --home /var/lib/flowgate flowgate \
 && mkdir -p /var/lib/flowgate /etc/flowgate \
 && chown flowgate /var/lib/flowgate
USER flowgate
VOLUME ["/var/lib/flowgate"]
EXPOSE 8080

ENV FLOWGATE_CONFIG=/etc/flowgate/flowgate.yaml
# server.host must be 0.0.0.0 in the mounted config for the port to be reachable from outside.
CMD ["/app/.venv/bin/flowgate", "serve"]
