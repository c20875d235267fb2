"""A Redis that fails over, as real processes: a primary, a replica and three sentinels (the
same ``redis-server`` binary in ``--sentinel`` mode), each on a free port.

Sentinel's timings are set short (``down_after_ms``, ``failover_timeout_ms``) so a failover takes
a few seconds in a test; everything else is as a production set would run it (AOF on the data
nodes, quorum 2 of 3, passwords when given).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import redis

from .ports import free_port
from .processes import stop_group
from .redis import RedisServer
from .waiting import ProcessExited, wait_for

MASTER = "mymaster"


class SentinelProcess:
    """One ``redis-server <conf> --sentinel`` watching ``MASTER``."""

    def __init__(self, workdir: Path, primary_port: int, *, password: str | None,
                 data_password: str | None, down_after_ms: int, failover_timeout_ms: int,
                 log: Path | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.password = password
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        lines = [f"port {self.port}", "bind 127.0.0.1", "protected-mode no", f"dir {workdir}",
                 f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2",
                 f"sentinel down-after-milliseconds {MASTER} {down_after_ms}",
                 f"sentinel failover-timeout {MASTER} {failover_timeout_ms}",
                 f"sentinel parallel-syncs {MASTER} 1"]
        if data_password:
            lines.append(f"sentinel auth-pass {MASTER} {data_password}")
        if password:  # clients must authenticate, and so must the other sentinels
            lines += [f"requirepass {password}", f"sentinel sentinel-pass {password}"]
        self.conf = workdir / "sentinel.conf"
        self._conf_text = "\n".join(lines) + "\n"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=5)

    def start(self) -> SentinelProcess:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (make install installs it)"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self._conf_text)  # sentinel rewrites its file: a fresh one
        output = self.log.open("ab") if self.log else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen([binary, str(self.conf), "--sentinel"],
                                            stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        finally:
            if self.log and not isinstance(output, int):
                output.close()
        with self.client() as client:

            def answers() -> bool:
                if self.process is not None and self.process.poll() is not None:
                    raise ProcessExited(f"sentinel on {self.port} exited with "
                                        f"{self.process.returncode}")
                return bool(client.ping())

            wait_for(answers, timeout=10, message=f"sentinel on {self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, timeout=10)
            self.process = None


class SentinelSet:
    """A primary, a replica and three sentinels; :meth:`kill_primary` SIGKILLs the primary and
    :meth:`wait_for_failover` waits until the sentinels name the replica as the new primary.

    Parameters:
      workdir: each node's files go in a folder of their own below it.
      password: the data nodes' ``requirepass`` (what ``REDIS_PASSWORD`` holds).
      sentinel_password: the sentinels' ``requirepass`` (``REDIS_SENTINEL_PASSWORD``).
      fsync_always: ``appendfsync always`` on the data nodes.
      min_replicas_to_write: the primary refuses writes unless this many replicas are
        connected (``min-replicas-to-write``, with ``min-replicas-max-lag`` 1 s); 0: off.
    """

    def __init__(self, workdir: Path, *, password: str | None = None,
                 sentinel_password: str | None = None, fsync_always: bool = True,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 5000,
                 min_replicas_to_write: int = 0, log: Path | None = None) -> None:
        self.password = password
        self.sentinel_password = sentinel_password
        guard = ("--min-replicas-to-write", str(min_replicas_to_write),
                 "--min-replicas-max-lag", "1") if min_replicas_to_write else ()
        self.primary = RedisServer(workdir / "primary", fsync_always=fsync_always, log=log,
                                   password=password, extra=guard)
        self.replica = RedisServer(
            workdir / "replica", fsync_always=fsync_always, log=log, password=password,
            extra=("--replicaof", "127.0.0.1", str(self.primary.port), *guard))
        self.sentinels = [
            SentinelProcess(workdir / f"sentinel{i}", self.primary.port,
                            password=sentinel_password, data_password=password,
                            down_after_ms=down_after_ms,
                            failover_timeout_ms=failover_timeout_ms, log=log)
            for i in range(3)]

    @property
    def addresses(self) -> str:
        """The sentinels as ``REDIS_SENTINELS`` takes them."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def env(self) -> dict[str, str]:
        """What a service process needs to reach this set (passwords as plain variables)."""
        env = {"REDIS_SENTINELS": self.addresses, "REDIS_SENTINEL_MASTER": MASTER}
        if self.password:
            env["REDIS_PASSWORD"] = self.password
        if self.sentinel_password:
            env["REDIS_SENTINEL_PASSWORD"] = self.sentinel_password
        return env

    def start(self) -> SentinelSet:
        self.primary.start()
        self.replica.start()
        with self.replica.client() as replica:
            wait_for(lambda: replica.info("replication").get("master_link_status") == "up",
                     timeout=15, message="the replica to sync")
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_until_watching()
        return self

    def wait_until_watching(self, timeout: float = 20) -> None:
        """Until every sentinel knows the replica and the two other sentinels: before that,
        a failover cannot be agreed on."""
        for sentinel in self.sentinels:
            with sentinel.client() as client:

                def ready(client: redis.Redis = client) -> bool:
                    replicas = client.sentinel_slaves(MASTER)
                    others = client.sentinel_sentinels(MASTER)
                    assert isinstance(others, list)
                    return len(replicas) >= 1 and len(others) >= 2

                wait_for(ready, timeout=timeout, interval=0.1,
                         message=f"sentinel {sentinel.port} to see the replica and its peers")

    def primary_port(self) -> int:
        """The port the sentinels currently name as the primary's (a majority of them)."""
        ports = []
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            with sentinel.client() as client:
                host_port = client.sentinel_get_master_addr_by_name(MASTER)
            ports.append(int(host_port[1]))
        return max(set(ports), key=ports.count)

    def current_primary(self) -> RedisServer:
        port = self.primary_port()
        return self.primary if port == self.primary.port else self.replica

    def kill_primary(self) -> None:
        """SIGKILL the current primary: no shutdown, no final fsync, no last replication."""
        node = self.current_primary()
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()
        node.process = None

    def wait_for_failover(self, old_port: int, timeout: float = 30) -> int:
        """Until a majority of sentinels names another primary, and it accepts writes."""

        def promoted() -> int | None:
            port = self.primary_port()
            if port == old_port:
                return None
            node = self.primary if port == self.primary.port else self.replica
            with node.client() as client:
                if client.info("replication").get("role") != "master":
                    return None
            return port

        return wait_for(promoted, timeout=timeout, interval=0.05,
                        message="Sentinel to promote the replica")

    def rejoin(self, node: RedisServer, timeout: float = 30) -> None:
        """Restart ``node`` (a killed old primary) as a replica of the current primary, as the
        chart's start script does (it asks the sentinels first: a node that came back as a
        primary with its stale data could be promoted again). Return once the set has one
        primary and the other node replicates it."""
        primary = self.current_primary()
        node.extra = (*_without_replicaof(node.extra), "--replicaof", "127.0.0.1",
                      str(primary.port))
        node.start()
        wait_for(self.replicating, timeout=timeout, interval=0.05,
                 message="the old primary to rejoin as a replica")

    def replicating(self) -> bool:
        """The sentinels agree on a primary, and the other node replicates it."""
        primary = self.current_primary()
        other = self.replica if primary is self.primary else self.primary
        with other.client() as client:
            info = client.info("replication")
        return bool(info.get("role") == "slave" and info.get("master_link_status") == "up"
                    and int(info.get("master_port", 0)) == primary.port)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop()
        self.primary.stop()


def _without_replicaof(args: tuple[str, ...]) -> tuple[str, ...]:
    """``args`` without a ``--replicaof host port`` triple."""
    if "--replicaof" not in args:
        return args
    at = args.index("--replicaof")
    return args[:at] + args[at + 3:]
