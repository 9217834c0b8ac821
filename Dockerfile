# The bot in a container: `docker build -t kling-bot .` then
# `docker run --env-file .env -v kling-data:/data -p 8080:8080 kling-bot`
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    DATABASE_URL=sqlite:////data/kling-bot.db \
    WEBHOOK_HOST=0.0.0.0 \
    WEBHOOK_PORT=8080

RUN useradd --create-home --uid 10001 kling \
    && mkdir -p /data && chown kling:kling /data
WORKDIR /app

# Dependencies in their own layer: rebuilt only when pyproject.toml changes. setuptools reads
# `readme = "README.md"` for the metadata, so an empty stand-in serves here; the real one comes
# with the code below, and editing it does not reinstall the dependencies. `./` (not `.`)
# before the extra: the same folder to pip, and to hadolint a path, not a PyPI name to pin.
COPY pyproject.toml ./
RUN mkdir -p bot cogs kling_sim && touch README.md bot/__init__.py cogs/__init__.py \
        kling_sim/__init__.py \
    && pip install './[video-sim]' && pip uninstall -y kling-discord-bot

COPY README.md ./
COPY bot ./bot
COPY cogs ./cogs
COPY kling_sim ./kling_sim
RUN pip install --no-deps .

# By uid: a host or orchestrator can check it is not root without the image's /etc/passwd.
USER 10001
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WEBHOOK_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["kling-bot"]
CMD ["run"]
