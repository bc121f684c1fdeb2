# syntax=docker/dockerfile:1
# Build stage: build a wheel of inboxpilot and its runtime dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip wheel
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[rabbitmq]'

# Runtime stage: only the wheels, a non-root user, the shipped rules.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    INBOXPILOT_RULES_PATH=/etc/inboxpilot/rules \
    INBOXPILOT_LOG_FORMAT=json \
    INBOXPILOT_METRICS_PORT=9100
RUN useradd --create-home --uid 10001 inboxpilot
WORKDIR /home/inboxpilot
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels inboxpilot[rabbitmq] && rm -rf /wheels
# Rule files live here; mount your own over it (read-only is fine).
COPY rules /etc/inboxpilot/rules
USER inboxpilot
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os,sys,urllib.request; port=os.environ.get('INBOXPILOT_METRICS_PORT','9100'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["inboxpilot"]
CMD ["run"]
