"""docker-compose.yml, checked as far as it can be without a Docker engine: it parses, every command it runs exists and
loads in this virtualenv, every variable it needs is in .env.example (with no secret in it), and its health checks
point at real endpoints and commands."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet
from django.urls import resolve

from tests.support.workers import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = [name for name, service in SERVICES.items() if service.get("build")]
BIN = Path(sys.executable).parent
SECRETS = (
    "SECRET_KEY",
    "POSTGRES_PASSWORD",
    "FLOWER_BASIC_AUTH",
    "MORAN_WEBHOOK_SECRET",
    "MORAN_METRICS_TOKEN",
    "MORAN_SECRET_KEYS",
)
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Z0-9_]+)(?::?(?P<op>[-?])(?P<arg>[^}]*))?\}")
CONTAINER_VAR = re.compile(r"\$\$\{?(?P<name>[A-Z0-9_]+)")


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def filled_env() -> dict[str, str]:
    """.env.example with its blanks filled in, as an operator would."""
    values = env_example()
    values.update({key: secrets.token_urlsafe(40) for key in SECRETS})
    values["FLOWER_BASIC_AUTH"] = "ops:" + secrets.token_urlsafe(12)
    values["MORAN_SECRET_KEYS"] = Fernet.generate_key().decode()
    return values


def interpolate(text: str, values: dict) -> str:
    """What `docker compose` does to ${VAR}, ${VAR:-default} and ${VAR:?error}; `$$` stays `$` for the container."""

    def sub(match):
        name, op, arg = match["name"], match["op"], match["arg"]
        if values.get(name):
            return values[name]
        if op == "?":
            raise LookupError(f"{name}: {arg}")
        return arg if op == "-" else ""

    return INTERPOLATION.sub(sub, text).replace("$$", "$")


def service_env(name: str, values: dict) -> dict:
    service = SERVICES[name]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "MORAN_ENV")}
    env.update(values)  # env_file: .env
    env.update({k: interpolate(str(v), values) for k, v in (service.get("environment") or {}).items()})
    env["HOSTNAME"] = "moran-test-host"
    return env


def argv(name: str, env: dict) -> list[str]:
    """The service's command as the container's shell would run it."""
    command = SERVICES[name]["command"]
    command = [interpolate(str(part), env_example()) for part in command]
    if command[:2] == ["sh", "-c"]:
        script = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m[1]) or (m[2] or ""), command[2]).removeprefix(
            "exec "
        )
        command = shlex.split(script)
    return command


def run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def local(command: list[str]) -> list[str]:
    """The same command from this virtualenv."""
    head, *rest = command
    if head == "python":
        return [sys.executable, *rest]
    if head == "celery":
        return [sys.executable, "-m", "celery", *rest]
    return [str(BIN / head), *rest]


# --- the file ----------------------------------------------------------------------------------------------------
def test_it_has_every_process():
    assert set(SERVICES) >= {"postgres", "redis", "migrate", "web", "worker", "beat", "flower"}


@pytest.mark.parametrize("name", ["postgres", "redis"])
def test_the_stores_have_health_checks_and_volumes(name):
    service = SERVICES[name]
    assert service["healthcheck"]["test"]
    volume = service["volumes"][0].split(":")[0]
    assert volume in COMPOSE["volumes"], "a named volume: the data outlives the container"


def test_the_app_waits_for_healthy_stores_and_applied_migrations():
    for name in APP_SERVICES:
        depends = SERVICES[name]["depends_on"]
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy", name
    for name in ("web", "worker", "beat"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert argv("migrate", {})[:3] == ["python", "manage.py", "migrate"]


def test_the_ports_are_the_ones_operators_expect():
    assert interpolate(SERVICES["web"]["ports"][0], env_example()) == "4000:4000"
    assert SERVICES["flower"]["ports"] == ["127.0.0.1:5555:5555"], "Flower is published on loopback only"


# --- the env file ------------------------------------------------------------------------------------------------
def test_every_variable_it_needs_is_in_the_example():
    example = env_example()
    text = (ROOT / "docker-compose.yml").read_text()
    referenced = {m["name"] for m in INTERPOLATION.finditer(text)}
    in_container = {m["name"] for m in CONTAINER_VAR.finditer(text)} - {"HOSTNAME"}
    assert referenced and referenced <= set(example), referenced - set(example)
    assert in_container and in_container <= set(example), in_container - set(example)


def test_the_example_holds_no_secret_and_compose_refuses_to_run_without_them():
    example = env_example()
    for key in SECRETS:
        assert example[key] == "", f"{key} must be blank in .env.example"
    with pytest.raises(LookupError, match="POSTGRES_PASSWORD"):
        service_env("web", example)
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_every_setting_in_the_example_is_read_by_something():
    readers = (ROOT / "moran" / "settings.py").read_text() + (ROOT / "docker-compose.yml").read_text()
    for key in env_example():
        assert key.startswith("FLOWER_") or f'"{key}"' in readers or f"{{{key}" in readers, key


# --- the commands ------------------------------------------------------------------------------------------------
def test_the_web_command_loads_in_gunicorn():
    env = service_env("web", filled_env())
    command = argv("web", env)
    assert command[0] == "gunicorn" and "moran.wsgi:application" in command
    result = run([*local(command), "--check-config"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["gunicorn", "moran.wsgi:application", "--config", "python:moran.gunicorn_conf"]' in dockerfile
    assert "EXPOSE 4000" in dockerfile


@pytest.mark.parametrize("name", ["worker", "beat", "flower", "migrate"])
def test_each_process_command_exists_and_loads_the_app(name):
    env = service_env(name, filled_env())
    command = argv(name, env)
    result = run([*local(command), "--help"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Usage" in result.stdout or "usage" in result.stdout


def test_the_worker_consumes_both_queues_under_its_hostname():
    env = service_env("worker", filled_env())
    command = argv("worker", env)
    assert command[command.index("-Q") + 1] == "provisioning,notifications"
    assert command[command.index("-n") + 1] == "worker@moran-test-host"


def test_the_production_configuration_passes_the_deploy_checks():
    # given: the example env filled in, and the web service's own environment
    env = service_env("web", filled_env())
    # when
    result = run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"], env)
    # then
    assert result.returncode == 0, result.stdout + result.stderr
    # and left blank, as in the example, SECRET_KEY stops it (Django refuses an empty key before moran.E001 can)
    result = run([sys.executable, "manage.py", "check", "--deploy"], {**env, "SECRET_KEY": ""})
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


# --- the health checks -------------------------------------------------------------------------------------------
def test_the_web_health_check_calls_the_readiness_probe():
    probe = " ".join(SERVICES["web"]["healthcheck"]["test"])
    path = re.search(r"http://127\.0\.0\.1:4000(/\w+)", probe)[1]
    assert path == "/readyz"
    assert resolve(path).func.__name__ == "readyz"


def test_the_flower_health_check_calls_a_flower_endpoint():
    from flower.urls import handlers

    probe = " ".join(SERVICES["flower"]["healthcheck"]["test"])
    path = re.search(r"http://127\.0\.0\.1:5555(/\w+)", probe)[1]
    patterns = [h.regex.pattern if hasattr(h, "regex") else h[0] for h in handlers]
    assert any(re.fullmatch(pattern.rstrip("$"), path) for pattern in patterns), patterns


def test_the_worker_health_check_pings_this_worker():
    env = service_env("worker", filled_env())
    probe = shlex.split(re.sub(r"\$\$\{?HOSTNAME\}?", env["HOSTNAME"], SERVICES["worker"]["healthcheck"]["test"][1]))
    assert probe[:5] == ["celery", "-A", "celery_app", "inspect", "ping"]
    worker = argv("worker", env)
    assert probe[probe.index("-d") + 1] == worker[worker.index("-n") + 1]
    result = run([*local(probe), "--help"], env)
    assert result.returncode == 0, result.stderr


def test_the_store_health_checks_use_their_own_clients():
    assert "pg_isready" in SERVICES["postgres"]["healthcheck"]["test"][1]
    assert SERVICES["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


@pytest.mark.realpath
@pytest.mark.django_db  # so that the session creates the test database the server connects to
def test_the_web_command_serves_the_probes(tmp_path):
    # given: the web service's command, on a free loopback port (never 4000 in tests), against the test database
    from django.conf import settings

    from tests.support import workers

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **service_env("web", filled_env()),
        "DATABASE_URL": workers.worker_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "1",
        "MORAN_STATIC_ROOT": str(tmp_path / "static"),
    }
    # as the image's build does
    collected = run([sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"], env)
    assert collected.returncode == 0, collected.stderr
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(local(argv("web", env)), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # when
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                    alive = response.status
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/admin/css/base.css", timeout=10) as response:
            static = (response.status, response.headers["Content-Type"])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
                ready = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            ready = {"http": exc.code, **json.loads(exc.read())}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # then
    assert alive == 200
    assert static[0] == 200 and static[1].startswith("text/css"), "the admin's static files are served"
    assert ready == {"status": "ok", "checks": {"database": {"ok": True}, "broker": {"ok": True}}}
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert any(line["logger"] == "gunicorn.access" and "/readyz" in line["message"] for line in lines), lines
