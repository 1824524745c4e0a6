# refund-mcp over streamable HTTP. Build: docker build -t refund-mcp .
# Not exercised in CI (no container engine there); linted with hadolint (tests/test_packaging.py).

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps -w /dist .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REFUND_MCP_DB=sqlite+aiosqlite:////data/refunds.sqlite3 \
    REFUND_MCP_LOG_FORMAT=json
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl \
    && rm /tmp/*.whl \
    && useradd --system --uid 10001 --home-dir /data --create-home refund
USER 10001
WORKDIR /data
EXPOSE 8765
# /healthz answers 200 when the database answers; no curl in the image, so Python asks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["refund-mcp"]
# Binding to 0.0.0.0 requires authentication (REFUND_MCP_TOKENS or OAuth settings): the server refuses otherwise.
CMD ["serve", "--transport", "http", "--host", "0.0.0.0", "--port", "8765"]
