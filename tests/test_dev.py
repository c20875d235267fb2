"""``email-service dev``: from nothing to a caught, rendered email with the printed curl."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import REPO, ProcessExited, free_port, wait_for

pytestmark = pytest.mark.slow

HELLO = """apiVersion: email.platform.example.com/v1
kind: EmailTemplate
metadata:
  name: hello
spec:
  subject: "Hello {{ name }}"
  html: "<p>Hello {{ name }}</p>"
"""


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_dev_stack_prints_a_curl_that_produces_an_email_file(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    log = tmp_path / "dev.log"
    resources = tmp_path / "resources"
    resources.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("REDIS_", "SMTP_", "JWT_"))}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "email_service", "dev", "--port", str(free_port()),
             "--outbox", str(outbox), "--sync", str(REPO / "templates"), "--sync",
             str(resources), "--env-file", str(tmp_path / "dev.env")],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        def banner() -> re.Match[str] | None:
            assert dev.poll() is None, log.read_text()
            return re.search(r"(curl -sS -X POST \S+/email-service/send-reset-code.*?\}')",
                             log.read_text(), re.DOTALL)

        match = wait_for(banner, timeout=60, message="the dev banner")
        curl = match.group(1).replace("\\\n", " ")
        result = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
        assert '"Password reset code sent successfully"' in result.stdout, result
        html = wait_for(lambda: list(outbox.glob("*.html")), timeout=60, message="the caught email")
        assert "123456" in html[0].read_text()
        eml = list(outbox.glob("*.eml"))
        assert len(eml) == 1 and b"Subject:" in eml[0].read_bytes()

        # A new EmailTemplate file is synced into the store and can be sent at once.
        (resources / "hello.yaml").write_text(HELLO)
        found_url = re.search(r"(http://\S+)/email-service/send-reset-code", curl)
        found_token = re.search(r"Bearer (\S+)'", curl)
        assert found_url and found_token, curl
        url, token = found_url.group(1), found_token.group(1)

        def hello_sent() -> bool:
            answer = httpx.post(f"{url}/v1/messages", headers={"Authorization": f"Bearer {token}"},
                                json={"template": "hello", "to": "grace@example.com",
                                      "data": {"name": "Grace"}})
            return answer.status_code == 202

        wait_for(hello_sent, timeout=30, message="the synced template to be usable")
        wait_for(lambda: any("Hello Grace" in p.read_text() for p in outbox.glob("*.html")),
                 message="the email from the synced template")
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        assert dev.wait(timeout=30) == 0


def test_a_closed_terminal_stops_the_whole_stack(tmp_path: Path) -> None:
    """SIGHUP (the terminal went away) reaches only dev's own process group: dev must stop its
    children itself, or they would run on without it."""
    log = tmp_path / "dev.log"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("REDIS_", "SMTP_", "JWT_"))}
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "email_service", "dev", "--port", str(free_port())],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def values() -> dict[str, str] | None:
            if dev.poll() is not None:
                raise ProcessExited(log.read_text())
            if "Ctrl-C stops everything" not in log.read_text():
                return None
            return read_env_file(tmp_path / ".email-service-dev.env")

        found = wait_for(values, timeout=60, message="the dev banner")
        os.killpg(dev.pid, signal.SIGHUP)
        assert dev.wait(timeout=60) == 0
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait(timeout=30)
    for url in (found["REDIS_URL"], found["EMAIL_SERVICE_URL"]):
        port = int(url.split("//", 1)[1].split("/")[0].rsplit(":", 1)[1])
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"{url} still answers"


# --- one dev stack for the rest of this module: the second shell, the examples, Ctrl-C ---------

class DevStack:
    """A running ``email-service dev`` in its own session (as in a terminal: Ctrl-C reaches only
    its process group), and the settings it wrote to its env file."""

    def __init__(self, process: subprocess.Popen[bytes], folder: Path, log: Path) -> None:
        self.process = process
        self.folder = folder
        self.log = log
        self.env_file = folder / ".email-service-dev.env"
        self.outbox = folder / "outbox"
        self.values: dict[str, str] = {}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def shell_env(self) -> dict[str, str]:
        """A second shell after `source .venv/bin/activate` and `source <env file>`."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("REDIS_", "SMTP_", "JWT_"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return {**env, **self.values}


def read_env_file(path: Path) -> dict[str, str]:
    """What `source FILE` defines, read by bash itself."""
    script = f'set -a; source {shlex.quote(str(path))}; env -0'
    out = subprocess.run(["bash", "-c", script], env={"PATH": os.environ["PATH"]},
                         capture_output=True, check=True, timeout=30).stdout.decode()
    names = ("EMAIL_SERVICE_URL", "REDIS_URL", "JWT_SECRET", "TOKEN", "ADMIN_TOKEN")
    pairs = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {name: pairs[name] for name in names}


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    folder = tmp_path_factory.mktemp("dev-stack")
    log = folder / "dev.log"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("REDIS_", "SMTP_", "JWT_"))}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as out:
        # The default --env-file, in the folder it is run from (as `make dev` does).
        process = subprocess.Popen(
            [sys.executable, "-m", "email_service", "dev", "--port", str(free_port()),
             "--outbox", "outbox", "--sync", str(REPO / "templates")],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    stack = DevStack(process, folder, log)
    # The folder stands for the checkout: the examples `source .venv/bin/activate` there.
    (folder / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    try:
        def up() -> bool:
            if process.poll() is not None:
                raise ProcessExited(stack.output())
            return "Ctrl-C stops everything" in stack.output()

        wait_for(up, timeout=60, message="the dev banner")
        stack.values = read_env_file(stack.env_file)
        yield stack
    finally:
        if process.poll() is None:
            # SIGTERM: dev stops its children (in their own process groups) before exiting;
            # a SIGKILL would orphan them.
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def test_a_second_shell_gets_tokens_the_secret_and_the_redis(dev_stack: DevStack) -> None:
    values = dev_stack.values
    banner = dev_stack.output()
    assert f"Redis: {values['REDIS_URL']}" in banner
    assert f"JWT secret: {values['JWT_SECRET']}" in banner
    assert f"source {Path(sys.prefix) / 'bin' / 'activate'}" in banner
    assert "source .email-service-dev.env" in banner
    assert dev_stack.env_file.stat().st_mode & 0o077 == 0  # it holds the secret
    env = dev_stack.shell_env()
    url = values["EMAIL_SERVICE_URL"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["email-service", *args], env=env, capture_output=True,
                              text=True, timeout=60, cwd=dev_stack.folder, check=False)

    minted = run("token", "--subject", "checkout")
    assert minted.returncode == 0, minted.stderr
    auth = {"Authorization": f"Bearer {minted.stdout.strip()}"}
    assert httpx.get(f"{url}/v1/templates", headers=auth).status_code == 200

    admin = {"Authorization": f"Bearer {values['ADMIN_TOKEN']}"}
    assert httpx.get(f"{url}/v1/dead-letters", headers=admin).json() == {"dead_letters": []}
    refused = httpx.get(f"{url}/v1/dead-letters",
                        headers={"Authorization": f"Bearer {values['TOKEN']}"})
    assert refused.status_code == 403
    listed = run("dlq", "list")
    assert (listed.returncode, listed.stdout) == (0, "no dead letters\n"), listed.stderr

    published = run("publish-reset", "grace@example.com", "271828")
    assert published.returncode == 0, published.stderr
    assert "1 listener" in published.stdout
    wait_for(lambda: any("271828" in p.read_text() for p in dev_stack.outbox.glob("*.html")),
             timeout=30, message="the email of the published event")


# --- every example of the README and NOTES.txt runs as written --------------------------------

#: Stand-ins for a shell in which the examples run: curl and redis-cli report their answers,
#: and kubectl (the cluster examples) runs `exec … -- CMD` here
#: and forwards nothing (the dev stack is already listening).
PRELUDE = r"""set -euo pipefail
curl() {
  local out
  out=$(command curl -sS -w '\n@@status %{http_code}' "$@")
  printf '%s\n' "$out"
  LAST_ID=$(printf '%s' "$out" | grep -o '"id":"[0-9a-f-]*"' | head -1 | cut -d'"' -f4 || true)
}
redis-cli() { printf '@@redis %s\n' "$(command redis-cli "$@")"; }
kubectl() {
  case " $* " in
    *" exec "*) while [ "$1" != "--" ]; do shift; done; shift; "$@" ;;
    *" port-forward "*) ;;
    *) echo "kubectl stand-in: $*: needs a cluster" >&2; return 1 ;;
  esac
}
"""

#: Hosts the examples name, all answered by the dev stack here.
HOSTS = ("http://localhost:8000", "http://email-service.email-service.svc", "localhost:8000")


def shell_blocks(markdown: str) -> list[str]:
    """The ```sh blocks (also indented ones, in lists) that call the API."""
    blocks = re.findall(r"^( *)```sh\n(.*?)^\1```", markdown, re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(body) for _, body in blocks if "curl " in body]


def expected_statuses(block: str) -> list[int | None]:
    """For each curl in the block, the status its `# -> NNN` comment promises (None: any 2xx)."""
    expected: list[int | None] = []
    for line in block.splitlines():
        if line.lstrip().startswith("curl "):
            expected.append(None)
        promised = re.match(r"\s*# -> (\d{3})", line)
        if promised and expected:
            expected[-1] = int(promised.group(1))
    return expected


def run_example(dev_stack: DevStack, block: str) -> list[int]:
    """Run one block as written (hosts pointed at the dev stack) and return curl's statuses."""
    url = dev_stack.values["EMAIL_SERVICE_URL"]
    script = block.replace("JWT_SECRET=...", 'JWT_SECRET="$JWT_SECRET"')
    script = script.replace("<id>", "$LAST_ID")
    for host in HOSTS:
        script = script.replace(host, url)
    result = subprocess.run(["bash", "-c", PRELUDE + script], env=dev_stack.shell_env(),
                            capture_output=True, text=True, timeout=120, cwd=dev_stack.folder,
                            check=False)
    assert result.returncode == 0, (block, result.stdout, result.stderr)
    for published in re.findall(r"^@@redis (.*)$", result.stdout, re.MULTILINE):
        assert int(published) >= 1, (block, "no ingress subscribed")
    return [int(code) for code in re.findall(r"^@@status (\d+)$", result.stdout, re.MULTILINE)]


def check_block(dev_stack: DevStack, block: str) -> None:
    expected = expected_statuses(block)
    statuses = run_example(dev_stack, block)
    assert len(statuses) == len(expected), (block, statuses)
    for status, promised in zip(statuses, expected, strict=True):
        assert status == promised if promised else 200 <= status < 300, (block, statuses)


README_BLOCKS = shell_blocks((REPO / "README.md").read_text())


def test_the_readme_has_api_examples() -> None:
    assert len(README_BLOCKS) >= 3
    assert sum(len(expected_statuses(block)) for block in README_BLOCKS) >= 7


@pytest.mark.parametrize("block", README_BLOCKS, ids=lambda b: b.strip().splitlines()[0][:40])
def test_readme_example_runs_as_written(dev_stack: DevStack, block: str) -> None:
    check_block(dev_stack, block)


def test_notes_examples_run_as_written(dev_stack: DevStack) -> None:
    helm = REPO / ".tools" / "bin" / "helm"
    binary = str(helm) if helm.is_file() else shutil.which("helm")
    if binary is None:
        pytest.skip("helm is not installed (make install-test-tools)")
    rendered = subprocess.run(
        [binary, "install", "mail", str(REPO / "charts" / "email-service"), "--dry-run=client",
         "--namespace", "email", "--set", "jwt.secret=notes-secret-0123456789abcdef-0123",
         "--set", "redis.password=redis-pw-1"],
        capture_output=True, text=True, timeout=120, check=True).stdout
    notes = rendered.split("NOTES:", 1)[1]
    commands = re.search(r"Try it from your machine:\n\n(.*?)\n\n", notes, re.DOTALL)
    assert commands, notes
    block = textwrap.dedent(commands.group(1))
    assert block.count("curl ") == 2 and "kubectl" in block
    statuses = run_example(dev_stack, block)
    assert statuses == [202, 200], (block, statuses)


# Last in the module: it stops the shared stack.
def test_ctrl_c_stops_the_stack_quietly_with_exit_0(dev_stack: DevStack) -> None:
    redis_port = int(dev_stack.values["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    api_port = int(dev_stack.values["EMAIL_SERVICE_URL"].rsplit(":", 1)[1])
    os.killpg(dev_stack.process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
    assert dev_stack.process.wait(timeout=60) == 0
    output = dev_stack.output()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert "CRITICAL" not in output and "ERROR" not in output, output[-3000:]
    assert not dev_stack.env_file.exists()  # its secret and tokens died with the stack
    for port in (redis_port, api_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
