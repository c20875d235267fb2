"""Clients behind Sentinel (``mailcore.redisclient`` with ``settings.redis.where``) follow the
primary through a failover (real redis-server and sentinel processes, passwords on both)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness.sentinel import SentinelSet
from mailcore.config import Settings
from mailcore.redisclient import async_client, sync_client

from .support import REPO, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    found = SentinelSet(tmp_path, password="data-pw", sentinel_password="sentinel-pw",
                        fsync_always=False, log=tmp_path / "redis.log")
    try:
        yield found.start()
    finally:
        found.stop()


def test_sync_and_async_clients_follow_a_failover(sentinels: SentinelSet,
                                                  tmp_path: Path) -> None:
    (tmp_path / "redis_sentinel_password").write_text("sentinel-pw\n")
    settings = Settings.from_env({"SECRETS_DIR": str(tmp_path), "REDIS_PASSWORD": "data-pw",
                                  "REDIS_SENTINELS": sentinels.addresses})
    where = settings.redis.sentinel
    assert where is not None
    sync = sync_client(where, "worker", single_connection=True)

    async def run() -> None:
        client = async_client(where, "ingress")
        try:
            await client.set("before", "1")
            old = sentinels.primary_port()
            sync.set("sync-before", "1")
            sentinels.kill_primary()
            new = await asyncio.to_thread(sentinels.wait_for_failover, old)
            assert new == sentinels.replica.port

            async def written() -> bool:
                try:
                    return bool(await client.set("after", "2"))
                except redis.ConnectionError:
                    return False  # the first command after the kill finds the old link gone

            deadline = asyncio.get_running_loop().time() + 10
            while not await written():
                assert asyncio.get_running_loop().time() < deadline, "async client stuck"
                await asyncio.sleep(0.05)
            assert await client.get("before") == b"1"
        finally:
            await client.aclose()

    try:
        asyncio.run(run())

        def sync_written() -> bool:
            try:
                return bool(sync.set("sync-after", "2"))
            except redis.ConnectionError:
                return False

        wait_for(sync_written, timeout=10, message="the sync client to reach the new primary")
        assert sync.get("sync-before") == b"1"
        with sentinels.replica.client() as promoted:
            assert promoted.get("after") == b"2" and promoted.get("sync-after") == b"2"
    finally:
        sync.close()


def test_the_command_line_reaches_the_primary_behind_sentinel(sentinels: SentinelSet,
                                                              tmp_path: Path) -> None:
    """``sync`` (the operator's store writer), ``dlq`` and ``publish-reset`` find the primary
    through the sentinels, with both passwords from secret files."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "redis_password").write_text("data-pw\n")
    (secrets / "redis_sentinel_password").write_text("sentinel-pw\n")
    env = {"PATH": "/usr/bin:/bin", "SECRETS_DIR": str(secrets), "JWT_SECRET": "x" * 32,
           "REDIS_SENTINELS": sentinels.addresses, "LOG_LEVEL": "WARNING"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "email_service", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    synced = run("sync", "templates")
    assert synced.returncode == 0, synced.stderr
    with sentinels.primary.client() as primary:
        assert primary.hlen("email-service:templates:versions") >= 2  # on the primary
    listed = run("dlq", "list")
    assert listed.returncode == 0 and "no dead letters" in listed.stdout, listed.stderr
    published = run("publish-reset", "ada@example.com", "123456")
    assert "0 listener(s)" in published.stdout, published.stderr
