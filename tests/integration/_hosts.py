"""Hosts made of Linux network namespaces, cabled to one switch.

::

            switch namespace (<prefix>-sw)
      ┌──────────── bridge br0 ────────────┐
      p1               p2                 p3        veth ends in the switch
      │                │                  │
      eth0             eth0               eth0      veth ends in the hosts
   <prefix>-h1      <prefix>-h2       <prefix>-h3
   10.231.0.2/24    10.231.0.3/24     10.231.0.4/24

Every link is made inside the namespaces (``ip -n NS link add ... peer name
eth0 netns HOST``), so the root namespace's interfaces are never touched and
interface names cannot collide across runs; namespace names carry a random
suffix instead. Deleting a namespace deletes the veth ends inside it.

Pulling a host's cable is ``ip link set pN down`` in the switch: the host's
``eth0`` loses carrier and every packet to or from it is dropped.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterator

SUBNET = "10.231.0"


def _ip(command: str) -> None:
    """Run ``ip`` with the words of ``command`` (names here never hold spaces)."""
    result = subprocess.run(["ip", *command.split()], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {command} failed: {result.stderr.strip()}")


@functools.cache
def netns_unavailable() -> str | None:
    """Why this machine cannot make network namespaces, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"trioactors-probe-{secrets.token_hex(3)}"
    try:
        _ip(f"netns add {probe}")
    except RuntimeError as error:
        return f"cannot make network namespaces (no CAP_SYS_ADMIN?): {error}"
    _ip(f"netns delete {probe}")
    return None


@attrs.frozen
class Host:
    """One namespace with one interface on the switch."""

    namespace: str
    address: str  # of its eth0
    port: str  # its cable's end in the switch

    @property
    def prefix(self) -> list[str]:
        """Run a command on this host: ``[*host.prefix, "python", ...]``."""
        return ["ip", "netns", "exec", self.namespace]


@attrs.frozen
class Network:
    switch: str  # the switch's namespace
    hosts: list[Host]

    def unplug(self, host: Host) -> None:
        _ip(f"-n {self.switch} link set {host.port} down")

    def plug(self, host: Host) -> None:
        _ip(f"-n {self.switch} link set {host.port} up")


@contextmanager
def open_hosts(count: int) -> Iterator[Network]:
    """Make ``count`` hosts on one switch (host i is 10.231.0.(i+1)); delete them on exit."""
    prefix = f"trioactors-{secrets.token_hex(3)}"
    switch = f"{prefix}-sw"
    with ExitStack() as cleanup:  # deletes every namespace made, even if one delete fails
        _ip(f"netns add {switch}")
        cleanup.callback(_ip, f"netns delete {switch}")
        _ip(f"-n {switch} link add br0 type bridge")
        _ip(f"-n {switch} link set br0 up")
        hosts = []
        for i in range(1, count + 1):
            host = Host(f"{prefix}-h{i}", f"{SUBNET}.{i + 1}", f"p{i}")
            _ip(f"netns add {host.namespace}")
            cleanup.callback(_ip, f"netns delete {host.namespace}")
            _ip(f"-n {switch} link add {host.port} type veth peer name eth0 netns {host.namespace}")
            _ip(f"-n {switch} link set {host.port} master br0 up")
            _ip(f"-n {host.namespace} addr add {host.address}/24 dev eth0")
            _ip(f"-n {host.namespace} link set eth0 up")
            _ip(f"-n {host.namespace} link set lo up")
            hosts.append(host)
        yield Network(switch, hosts)
