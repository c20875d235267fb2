"""Sentinel settings: well-formed lists are read as given, every malformed one is one clear line
naming the variable, for the service's processes too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailcore.config import ConfigError, Settings, redis_configured
from mailcore.sentinel import MAX_SENTINELS, SentinelSettings

from .support import REPO

BASE = {"SECRETS_DIR": "/nonexistent"}


def test_sentinels_master_and_passwords(tmp_path: Path) -> None:
    (tmp_path / "redis_sentinel_password").write_text("s3ntinel\n")
    (tmp_path / "data").write_text("d@ta\n")
    settings = Settings.from_env({
        "SECRETS_DIR": str(tmp_path), "REDIS_PASSWORD_FILE": str(tmp_path / "data"),
        "REDIS_SENTINELS": " sentinel-0.redis:26379, 10.0.0.7:26380 ,[fd00::1]:5000",
        "REDIS_SENTINEL_MASTER": "email-primary", "REDIS_DB": "2"})
    assert settings.redis.sentinel == SentinelSettings(
        sentinels=(("sentinel-0.redis", 26379), ("10.0.0.7", 26380), ("fd00::1", 5000)),
        master="email-primary", sentinel_password="s3ntinel", password="d@ta", db=2)
    assert settings.redis.sentinel.describe() == (
        "sentinel://sentinel-0.redis:26379,10.0.0.7:26380,[fd00::1]:5000/email-primary/2")
    assert redis_configured({"REDIS_SENTINELS": "a:1"})


def test_a_kubernetes_service_link_port_is_not_read_behind_sentinel() -> None:
    # A Service named "redis" in the namespace gives every pod REDIS_PORT=tcp://10.0.0.3:6379.
    settings = Settings.from_env({**BASE, "REDIS_SENTINELS": "s:26379",
                                  "REDIS_PORT": "tcp://10.0.0.3:6379"})
    assert settings.redis.sentinel is not None
    assert settings.redis.where == settings.redis.sentinel


def test_without_sentinels_nothing_changes() -> None:
    settings = Settings.from_env({**BASE, "REDIS_SENTINEL_MASTER": "ignored-without-sentinels"})
    assert settings.redis.sentinel is None
    assert settings.redis.sentinel is None and settings.redis.wait_replicas == 0
    assert Settings.from_env({**BASE, "REDIS_SENTINELS": "a:1"}).redis.sentinel == \
        SentinelSettings(sentinels=(("a", 1),), master="mymaster")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_SENTINELS": "a:1,,b:2"}, "REDIS_SENTINELS: entry 2 is empty"),
        ({"REDIS_SENTINELS": "a:1,"}, "REDIS_SENTINELS: entry 2 is empty"),
        ({"REDIS_SENTINELS": ","}, "REDIS_SENTINELS: entry 1 is empty"),
        ({"REDIS_SENTINELS": "sentinel"}, "REDIS_SENTINELS: entry 1: 'sentinel' has no port"),
        ({"REDIS_SENTINELS": "a:0"}, "port must be a number from 1 to 65535"),
        ({"REDIS_SENTINELS": "a:65536"}, "port must be a number from 1 to 65535"),
        ({"REDIS_SENTINELS": "a:-1"}, "port must be a number from 1 to 65535"),
        ({"REDIS_SENTINELS": "a:\uff12\uff16\uff13"}, "port must be a number from 1 to"),
        ({"REDIS_SENTINELS": "a:"}, "port must be a number from 1 to 65535"),
        ({"REDIS_SENTINELS": "::1:26379"}, "write an IPv6 address in brackets"),
        ({"REDIS_SENTINELS": "[::1]"}, "is not [IPv6 address]:port"),
        ({"REDIS_SENTINELS": "[::1]26379"}, "is not [IPv6 address]:port"),
        ({"REDIS_SENTINELS": "[host.name]:1"}, "is not [IPv6 address]:port"),
        ({"REDIS_SENTINELS": "bad_host:1"}, "is not a host name or IPv4 address"),
        ({"REDIS_SENTINELS": "a b:1"}, "is not a host name or IPv4 address"),
        ({"REDIS_SENTINELS": "redis://a:1"}, "write an IPv6 address in brackets"),
        ({"REDIS_SENTINELS": "a:1,b:2,a:1"}, "entry 3 (a:1) is listed twice"),
        ({"REDIS_SENTINELS": ",".join(f"s{i}:1" for i in range(MAX_SENTINELS + 1))},
         f"at most {MAX_SENTINELS} sentinels"),
        ({"REDIS_SENTINELS": "a:1," * 100_000}, f"at most {MAX_SENTINELS} sentinels"),
        ({"REDIS_SENTINELS": "a:1", "REDIS_SENTINEL_MASTER": "my master"},
         "REDIS_SENTINEL_MASTER: must be 1-64 letters"),
        ({"REDIS_SENTINELS": "a:1", "REDIS_SENTINEL_MASTER": "m" * 65},
         "REDIS_SENTINEL_MASTER: must be 1-64 letters"),
        ({"REDIS_SENTINELS": "a:1", "REDIS_URL": "redis://r:6379/0"},
         "REDIS_SENTINELS: set either REDIS_SENTINELS or REDIS_URL, not both"),
        ({"REDIS_SENTINELS": "a:1", "REDIS_HOST": "redis"},
         "REDIS_SENTINELS: set either REDIS_SENTINELS or REDIS_HOST, not both"),
        ({"REDIS_SENTINELS": "a:1", "REDIS_SENTINEL_PASSWORD": "x",
          "REDIS_SENTINEL_PASSWORD_FILE": "/x"},
         "REDIS_SENTINEL_PASSWORD: set either REDIS_SENTINEL_PASSWORD or"),
        ({"REDIS_SENTINELS": "a:1", "REDIS_SENTINEL_PASSWORD_FILE": "/nonexistent/pw"},
         "REDIS_SENTINEL_PASSWORD_FILE: cannot read"),
        ({"REDIS_WAIT_REPLICAS": "-1"}, "REDIS_WAIT_REPLICAS: must be at least 0"),
        ({"REDIS_WAIT_TIMEOUT_MS": "0"}, "REDIS_WAIT_TIMEOUT_MS: must be at least 1"),
    ],
)
def test_malformed_sentinel_settings_name_the_variable(env: dict[str, str],
                                                        message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({**BASE, **env})
    text = str(error.value)
    assert message in text
    assert text.split(":")[0] in env or text.split(":")[0].removesuffix("_FILE") in {
        name.removesuffix("_FILE") for name in env}
    assert len(text) < 300 and "\n" not in text  # one short line, even for a huge list


def test_a_process_stops_with_one_line_naming_the_variable() -> None:
    env = {"PATH": "/usr/bin:/bin", "SECRETS_DIR": "/nonexistent", "JWT_SECRET": "x" * 32,
           "REDIS_SENTINELS": "sentinel-0:26379,,sentinel-2:26379"}
    for command in ("api", "worker"):
        run = subprocess.run([sys.executable, "-m", "email_service", command], env=env,
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert lines == ["email-service: configuration error: REDIS_SENTINELS: entry 2 is "
                         "empty (expected host:port,host:port)"]
