# The application image: web (gunicorn), worker, beat and Flower all run from it with different commands.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=moran.settings \
    LOG_FORMAT=json \
    MORAN_VAR_DIR=/app/var

WORKDIR /app

# Dependencies first: the layer is reused until requirements.txt changes (psycopg2-binary and the rest ship wheels).
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# The admin's static files, collected into the image with the production storage (hashed names and a manifest),
# which WhiteNoise serves.
RUN MORAN_ENV=production python manage.py collectstatic --noinput --verbosity 0

# Never run as root: a compromised step or receiver URL handler gets an unprivileged user.
RUN useradd --create-home --uid 10001 moran && mkdir -p /app/var && chown -R moran /app/var
USER moran

EXPOSE 4000
CMD ["gunicorn", "moran.wsgi:application", "--config", "python:moran.gunicorn_conf"]
