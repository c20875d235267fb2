"""Processes started in their own session, so stopping one ends exactly what it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from .waiting import ProcessExited, wait_for

T = TypeVar("T")

#: The checkout: where service processes run from.
REPO = Path(__file__).resolve().parent.parent


def stop_group(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM the process group of ``process`` (started with ``start_new_session``), SIGKILL it
    after ``timeout`` seconds, and make sure no child lingers; return the exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    # Children (e.g. Dramatiq's worker processes) share the group and may outlive the parent.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


#: How service processes are started by default: this checkout's ``email-service``.
EMAIL_SERVICE = (sys.executable, "-m", "email_service")


class ServiceProcess:
    """``email-service <args>`` (or ``program`` + ``args``, e.g. a command run inside the built
    image) as a subprocess in its own process group, with its output in a log file.

    Parameters:
      args: the subcommand and its options (``["api", "--port", "8000"]``).
      env: its whole environment.
      log_path: where its output goes (appended).
      program: what runs ``args`` (default: this checkout's ``python -m email_service``).
      cwd: where it runs (default: the checkout).
    """

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path, *,
                 program: Sequence[str] = EMAIL_SERVICE, cwd: Path = REPO) -> None:
        self.args = args
        self.cwd = cwd
        self.env = dict(env)
        self.log_path = log_path
        self.program = tuple(program)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.program, *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=self.cwd, start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.args[0]} is not running"
        return self.process.pid

    def check(self, message: str = "the process") -> None:
        """Raise :class:`ProcessExited`, with the end of the log, if the process has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise ProcessExited(f"{message}: {self.args[0]} exited with "
                                f"{self.process.returncode}:\n{self.output()[-3000:]}")

    def wait_until(self, condition: Callable[[], T], *, timeout: float = 30,
                   message: str = "the process") -> T:
        """Wait for ``condition`` and return its value; fail at once with the log if the
        process exits first."""

        def check() -> T:
            self.check(message)
            return condition()

        return wait_for(check, timeout=timeout, message=message)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int, *, group: bool = True) -> None:
        """Signal the process group, or (``group=False``) only the main process, as
        Kubernetes does with a container's PID 1."""
        assert self.process is not None
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 20) -> int | None:
        if self.process is None:
            return None
        code = stop_group(self.process, timeout)
        self.process = None
        return code
