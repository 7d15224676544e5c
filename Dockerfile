# The germinate image: the same install as `make run` (the Makefile's `install`, so the two
# cannot drift), CPU-only; generation goes to the vllm service over HTTP.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN make install
ENV PATH=/app/.venv/bin:$PATH \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1
CMD ["germinate", "--help"]
