"""Configuration: original variable names, secrets from files, one clear line per mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailcore import settings_table
from mailcore.config import GROUPS, SECRET_NAMES, ConfigError, Settings
from mailcore.envfields import variables

from .support import REPO, RedisServer, ServiceProcess, SMTPServer, base_env, free_port

BASE = {"SECRETS_DIR": "/nonexistent"}


def test_original_names_compose_the_redis_url() -> None:
    settings = Settings.from_env({**BASE, "REDIS_HOST": "redis.internal", "REDIS_PORT": "6380",
                                  "REDIS_PASSWORD": "p@ss/word"})
    assert settings.redis.url == "redis://:p%40ss%2Fword@redis.internal:6380/0"


def test_redis_url_wins_and_smtp_defaults_follow_security() -> None:
    settings = Settings.from_env({**BASE, "REDIS_URL": "rediss://h:1/2", "SMTP_SECURITY": "ssl"})
    assert settings.redis.url == "rediss://h:1/2"
    assert settings.smtp.port == 465
    assert Settings.from_env(BASE).smtp.port == 587
    assert Settings.from_env({**BASE, "SMTP_SECURITY": "none"}).smtp.port == 25


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SMTP_PORT": "smtp"}, "SMTP_PORT"),
        ({"SMTP_PORT": "70000"}, "SMTP_PORT"),
        ({"REDIS_PORT": "-1"}, "REDIS_PORT"),
        ({"SMTP_SECURITY": "tls13"}, "SMTP_SECURITY"),
        ({"SENDER_EMAIL": "nobody"}, "SENDER_EMAIL"),
        ({"SENDER_NAME": "Shop\r\nBcc: x@evil.com"}, "SENDER_NAME"),
        ({"EVENTS_ENABLED": "maybe"}, "EVENTS_ENABLED"),
        ({"REDIS_URL": "http://redis"}, "REDIS_URL"),
        ({"MAX_BODY_BYTES": "10"}, "MAX_BODY_BYTES"),
        ({"RETRY_MIN_BACKOFF_MS": "9000", "RETRY_MAX_BACKOFF_MS": "10"}, "RETRY_MIN_BACKOFF_MS"),
        ({"JWT_SECRET": "a", "JWT_SECRET_FILE": "/x"}, "JWT_SECRET"),
        ({"JWT_SECRET_FILE": "/nonexistent/secret"}, "JWT_SECRET_FILE"),
        ({"TEMPLATES_DIR": "/nonexistent"}, "TEMPLATES_DIR"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({"JWT_MAX_LIFETIME": "a day"}, "JWT_MAX_LIFETIME"),
        ({"JWT_MAX_LIFETIME": "0"}, "JWT_MAX_LIFETIME"),
        ({"HTTP_HEADER_TIMEOUT_SECONDS": "0"}, "HTTP_HEADER_TIMEOUT_SECONDS"),
        ({"HTTP_BODY_TIMEOUT_SECONDS": "soon"}, "HTTP_BODY_TIMEOUT_SECONDS"),
        ({"HTTP_KEEPALIVE_SECONDS": "0.5"}, "HTTP_KEEPALIVE_SECONDS"),
        ({"HTTP_MAX_HEADER_BYTES": "100"}, "HTTP_MAX_HEADER_BYTES"),
        ({"HTTP_MAX_CONCURRENCY": "0"}, "HTTP_MAX_CONCURRENCY"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"LOG_RECIPIENTS": "perhaps"}, "LOG_RECIPIENTS"),
        ({"PORT": "http"}, "PORT"),
        ({"WORKER_THREADS": "0"}, "WORKER_THREADS"),
        ({"REDIS_PASSWORD": "a", "REDIS_PASSWORD_FILE": "/x"}, "REDIS_PASSWORD"),
    ],
)
def test_invalid_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({**BASE, **env})
    assert str(error.value).startswith(f"{variable}:")


def test_secrets_from_file_and_from_run_secrets(tmp_path: Path) -> None:
    (tmp_path / "jwt").write_text("from-file\n")
    (tmp_path / "smtp_password").write_text("from-secrets-dir")
    settings = Settings.from_env({"SECRETS_DIR": str(tmp_path),
                                  "JWT_SECRET_FILE": str(tmp_path / "jwt")})
    assert settings.auth.secret == "from-file"
    assert settings.smtp.password == "from-secrets-dir"


def test_no_secret_means_no_service_outside_dev() -> None:
    with pytest.raises(ConfigError, match=r"^JWT_SECRET: required"):
        Settings.from_env(BASE).auth.require_keys()
    Settings.from_env({**BASE, "EMAIL_SERVICE_DEV": "1"}).auth.require_keys()


def test_processes_stop_with_one_line_naming_the_variable() -> None:
    env = {"PATH": "/usr/bin:/bin", "SECRETS_DIR": "/nonexistent"}
    api = subprocess.run([sys.executable, "-m", "email_service", "api"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert api.returncode == 2
    lines = api.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("email-service: configuration error: JWT_SECRET: required")
    worker = subprocess.run([sys.executable, "-m", "email_service", "worker"],
                            env={**env, "SMTP_PORT": "x"}, cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert worker.returncode == 2
    assert len(worker.stderr.strip().splitlines()) == 1
    assert "SMTP_PORT: must be an integer" in worker.stderr


def test_door_bounds_default_and_override() -> None:
    default = Settings.from_env(BASE)
    assert default.auth.max_lifetime is None and default.worker.metrics_host == "127.0.0.1"
    assert (default.http.header_timeout_seconds, default.http.body_timeout_seconds,
            default.http.keepalive_seconds, default.http.max_header_bytes,
            default.http.max_concurrency) == (10.0, 30.0, 5, 16384, 1000)
    tuned = Settings.from_env({**BASE, "JWT_MAX_LIFETIME": "3600", "WORKER_METRICS_HOST": "0.0.0.0",
                               "HTTP_MAX_CONCURRENCY": "50"})
    assert (tuned.auth.max_lifetime, tuned.worker.metrics_host,
            tuned.http.max_concurrency) == (3600, "0.0.0.0", 50)



def test_each_variable_is_declared_once_with_its_default() -> None:
    declared = [var.name for group in GROUPS.values() for _, var in variables(group)]
    assert len(declared) == len(set(declared))
    secrets = {"JWT_SECRET", "SMTP_PASSWORD", "SMTP_USERNAME", "REDIS_PASSWORD", "REDIS_URL",
               "MAILTRAP_API_TOKEN", "REDIS_SENTINEL_PASSWORD", "UNSUBSCRIBE_SECRETS",
               "BOUNCE_SECRET", "MAILTRAP_WEBHOOK_SECRET"}
    assert secrets == SECRET_NAMES
    # The dataclasses' defaults are the declared defaults read as if from the environment.
    assert Settings() == Settings.from_env(BASE)


def test_redis_parts_are_not_read_when_a_url_is_given(tmp_path: Path) -> None:
    # Kubernetes gives pods beside a Service named "redis" REDIS_PORT=tcp://10.0.0.5:6379.
    (tmp_path / "redis_password").write_text("not read")
    settings = Settings.from_env({"SECRETS_DIR": str(tmp_path), "REDIS_URL": "redis://r:1/0",
                                  "REDIS_PORT": "tcp://10.0.0.5:6379"})
    assert settings.redis.url == "redis://r:1/0" and settings.redis.password is None
    with pytest.raises(ConfigError, match=r"^REDIS_PORT: must be an integer"):
        Settings.from_env({**BASE, "REDIS_PORT": "tcp://10.0.0.5:6379"})


def test_fallbacks_follow_the_variables_they_name() -> None:
    settings = Settings.from_env({**BASE, "SENDER_NAME": "Shop", "SMTP_SECURITY": "ssl"})
    assert (settings.brand.name, settings.smtp.port) == ("Shop", 465)
    assert Settings.from_env({**BASE, "SENDER_NAME": "Shop", "BRAND_NAME": "Brand"}
                             ).brand.name == "Brand"


def test_process_variables_are_settings_too() -> None:
    settings = Settings.from_env({**BASE, "HOST": "127.0.0.1", "PORT": "8080",
                                  "WORKER_PROCESSES": "3", "WORKER_THREADS": "4",
                                  "LOG_FORMAT": "TEXT", "LOG_RECIPIENTS": "yes",
                                  "OTEL_TRACES_EXPORTER": "console, otlp"})
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)
    assert (settings.worker.processes, settings.worker.threads) == (3, 4)
    assert (settings.telemetry.log_format, settings.telemetry.log_recipients) == ("text", True)
    assert settings.telemetry.traces_exporter == ("console", "otlp")


def test_the_service_reads_the_environment_only_through_settings() -> None:
    # What remains: the sandbox child's limits from its parent, prometheus_client's own folder,
    # and copying the environment for child processes.
    allowed = {("mailcore/sandbox_process.py", "EMAIL_SERVICE_CHILD_LIMITS"),
               ("mailcore/metrics_dir.py", "PROMETHEUS_MULTIPROC_DIR"),
               ("service/metrics.py", "PROMETHEUS_MULTIPROC_DIR"),
               ("service/processes.py", "PROMETHEUS_MULTIPROC_DIR")}
    for package in ("mailcore", "service", "workers", "email_service", "operator"):
        for module in (REPO / package).rglob("*.py"):
            if module.name in {"config.py", "envfields.py"} and package == "mailcore":
                continue  # the reader itself
            for line in module.read_text().splitlines():
                if "getenv(" in line or "environ.get(" in line or "environ[" in line:
                    relative = str(module.relative_to(REPO))
                    assert any(relative == path and name in line for path, name in allowed), (
                        f"{relative}: {line.strip()}")


def test_the_readme_table_is_generated_from_the_settings() -> None:
    assert settings_table.main(["--check", str(REPO / "README.md")]) == 0, (
        "run: python -m mailcore.settings_table --write README.md")
    for name in SECRET_NAMES:
        assert f"| `{name}` |" in settings_table.markdown()

def _listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp, IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


@pytest.mark.slow
@pytest.mark.parametrize(("host", "expected"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_worker_metrics_bind_to_loopback_unless_told(
    redis_server: RedisServer, smtp_server: SMTPServer, tmp_path: Path, host: str | None,
    expected: str,
) -> None:
    port = free_port()
    env = base_env(redis_server.url, smtp_server.port, WORKER_METRICS_PORT=str(port),
                   PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
    if host is not None:
        env["WORKER_METRICS_HOST"] = host
    worker = ServiceProcess(["worker", "--processes", "1", "--threads", "1"], env,
                            tmp_path / "worker.log").start()
    try:
        assert worker.wait_until(lambda: _listening(port), message="the metrics port") == {
            expected}
    finally:
        worker.stop()
