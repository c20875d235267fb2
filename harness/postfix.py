"""A private Postfix instance (Debian's ``postfix`` package) that accepts mail and then bounces
it, producing genuine RFC 3464 delivery status notifications.

It listens on a free port of 127.0.0.1 and keeps its configuration, queue and log in a folder of
its own (``postfix -c <dir>``), so it touches neither the system's Postfix nor another test's:

- ``<user>@<LOCAL_DOMAIN>``: delivered locally; a user that does not exist is accepted, then
  bounced by local(8) (``5.1.1 unknown user``): a hard bounce.
- each domain of ``routes`` goes where its route says (``smtp:[127.0.0.1]:<port>``): the bounce
  domain to ``email-service bounces``, a domain to a server that answers 550 (a remote hard
  bounce), or to a port nobody listens on (deferred; with ``maximal_queue_lifetime = 0``
  bounced at once with ``4.4.1``: a soft bounce).

Starting it needs root (Postfix's master drops to the ``postfix`` user); :func:`unavailable` says
why it cannot run here, for a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .ports import free_port
from .waiting import wait_for

#: The domain whose (nonexistent) users Postfix delivers to locally, and bounces.
LOCAL_DOMAIN = "relay.example.net"
POSTFIX = "/usr/sbin/postfix"


def unavailable() -> str | None:
    """Why a private Postfix cannot run here, or None."""
    if not Path(POSTFIX).exists():
        return "postfix is not installed (apt-get install postfix; see install-test-tools.sh)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (its master drops to the postfix user)"
    return None


class PostfixRelay:
    """A Postfix listening on ``port`` (127.0.0.1), configured in a folder of its own under the
    system's temporary folder (the ``postfix`` user must reach its queue: pytest's own temporary
    folders are private to root), removed by :meth:`stop`.

    Parameters:
      routes: domain -> Postfix transport (``smtp:[127.0.0.1]:2525``); these domains are relayed.
    """

    def __init__(self, routes: Mapping[str, str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="email-service-postfix-"))
        self.root.chmod(0o755)
        self.routes = dict(routes)
        self.port = free_port()
        self.conf = self.root / "conf"

    def _configure(self) -> None:
        for name in ("conf", "queue", "data"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root / "data", user="postfix")
        master = Path("/etc/postfix/master.cf").read_text().splitlines()
        lines = [f"127.0.0.1:{self.port} inet n - n - - smtpd"]
        for line in master:
            fields = line.split()
            if not line or line.startswith(("#", " ", "\t")) or len(fields) < 8:
                lines.append(line)
            elif fields[1] == "inet":
                continue  # the system's port 25 listener
            else:
                fields[4] = "n"  # no chroot: the queue is not where a chroot expects it
                lines.append(" ".join(fields))
        (self.conf / "master.cf").write_text("\n".join(lines) + "\n")
        (self.conf / "transport").write_text(
            "".join(f"{domain} {route}\n" for domain, route in self.routes.items()))
        root = self.root
        (self.conf / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {LOCAL_DOMAIN}
mydomain = {LOCAL_DOMAIN}
myorigin = {LOCAL_DOMAIN}
mydestination = {LOCAL_DOMAIN}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
local_recipient_maps =
alias_maps =
alias_database =
relay_domains = {", ".join(self.routes)}
transport_maps = texthash:{self.conf}/transport
maximal_queue_lifetime = 0
bounce_queue_lifetime = 0
smtp_host_lookup = native
disable_dns_lookups = yes
smtputf8_enable = no
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
""")

    def start(self) -> PostfixRelay:
        self._configure()
        subprocess.run([POSTFIX, "-c", str(self.conf), "start"], check=True,
                       capture_output=True, timeout=60)
        wait_for(self._listening, timeout=30, message="postfix to listen")
        return self

    def _listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.conf), "stop"], check=False,
                       capture_output=True, timeout=60)
        wait_for(lambda: not (self.root / "data" / "master.lock").exists() or not self._running(),
                 timeout=30, message="postfix to stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _running(self) -> bool:
        result = subprocess.run([POSTFIX, "-c", str(self.conf), "status"], check=False,
                                capture_output=True, timeout=30)
        return result.returncode == 0
