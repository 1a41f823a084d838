"""The real node's pod network: a Linux bridge on a /24 of 198.18.0.0/15 and the firewall that
keeps every pod packet on this machine.

198.18.0.0/15 is reserved for network testing (RFC 2544): no real host lives there, and the
fixture takes a /24 of it that no route or address of this machine overlaps. Pods get an
address on the bridge and two routes only: their /24 (on-link, the bridge address being this
host) and the Service range via the bridge, so a pod has no default route at all. On top, the
firewall installed before the first pod starts (and removed at stop):

- raw PREROUTING: a packet from the bridge whose destination is neither the /24 nor the Service
  range is dropped before conntrack or NAT see it;
- filter FORWARD: nothing is forwarded from the bridge to outside the /24, nor from any other
  interface into it;
- filter OUTPUT: nothing leaves through the bridge to outside the /24; a host connection to the
  Service range that kube-proxy did not translate (or translated outside 198.18.0.0/15, e.g.
  to a kwok pod's fake IP) is dropped instead of going to the default route;
- nat POSTROUTING: pod traffic to outside the /24 is never masqueraded;
- IPv6: nothing at all to, from or through the bridge.

Nothing here starts a process that stays; every change is undone by :meth:`PodNetwork.remove`,
and :func:`remove_stale` undoes those of a run that was killed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import ControlPlaneError
from .flags import SERVICE_CIDR

#: Where every test node's /24 comes from (RFC 2544's benchmarking range).
POD_SUPERNET = ipaddress.IPv4Network("198.18.0.0/15")
#: One file per live network (its index): what a later run needs to undo a killed one.
STATE_DIR = Path("/run/mlship-node")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise ControlPlaneError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def _used_networks() -> list[ipaddress.IPv4Network]:
    routes = json.loads(_run("ip", "-j", "-4", "route", "show", "table", "all").stdout or "[]")
    addresses = json.loads(_run("ip", "-j", "-4", "addr", "show").stdout or "[]")
    used = [ipaddress.IPv4Network(route["dst"], strict=False) for route in routes
            if route.get("dst") not in (None, "default")]
    for link in addresses:
        used += [ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
                 for a in link.get("addr_info", [])]
    return used


@dataclass(frozen=True)
class PodNetwork:
    """Bridge ``bridge`` with address ``gateway`` on ``subnet``; index ``index`` of the supernet."""

    index: int
    subnet: ipaddress.IPv4Network
    gateway: str
    bridge: str

    @classmethod
    def choose(cls) -> PodNetwork:
        """A free /24 of 198.18.0.0/15, by random choice among those nothing here overlaps."""
        used = _used_networks()
        taken = {int(p.name) for p in STATE_DIR.glob("*") if p.name.isdigit()}
        free = [index for index, subnet in enumerate(POD_SUPERNET.subnets(new_prefix=24))
                if index not in taken and not any(subnet.overlaps(u) for u in used)]
        if not free:
            raise ControlPlaneError(f"no free /24 left in {POD_SUPERNET} for the pod network")
        return network_of(random.choice(free))

    @property
    def comment(self) -> str:
        return f"mlship-node-{self.index}"

    def _rules(self) -> list[tuple[str, str, list[str]]]:
        """(command, table, rule) of every rule, jumps last: a rule's chain exists before use."""
        subnet, service, bridge, family = str(self.subnet), SERVICE_CIDR, self.bridge, \
            str(POD_SUPERNET)
        tag = ["-m", "comment", "--comment", self.comment]
        raw, fwd, out = f"MLSHIP-RAW{self.index}", f"MLSHIP-FWD{self.index}", \
            f"MLSHIP-OUT{self.index}"
        v4 = "iptables"
        return [
            (v4, "raw", ["-A", raw, "-d", subnet, "-j", "RETURN"]),
            (v4, "raw", ["-A", raw, "-d", service, "-j", "RETURN"]),
            (v4, "raw", ["-A", raw, "-j", "DROP"]),
            (v4, "filter", ["-A", fwd, "-i", bridge, "!", "-d", subnet, "-j", "DROP"]),
            (v4, "filter", ["-A", fwd, "-s", subnet, "!", "-d", subnet, "-j", "DROP"]),
            (v4, "filter", ["-A", fwd, "-o", bridge, "!", "-i", bridge, "-j", "DROP"]),
            (v4, "filter", ["-A", out, "-o", bridge, "!", "-d", subnet, "-j", "DROP"]),
            (v4, "filter", ["-A", out, "-d", service, "-j", "DROP"]),
            # (Not to lo: an ICMP error about a translated connection is for this host.)
            (v4, "filter", ["-A", out, "!", "-o", "lo", "-m", "conntrack", "--ctstate", "DNAT",
                            "--ctorigdst", service, "!", "-d", family, "-j", "DROP"]),
            (v4, "raw", ["-I", "PREROUTING", "1", "-i", bridge, *tag, "-j", raw]),
            (v4, "filter", ["-I", "FORWARD", "1", *tag, "-j", fwd]),
            (v4, "filter", ["-I", "OUTPUT", "1", *tag, "-j", out]),
            (v4, "nat", ["-I", "POSTROUTING", "1", "-s", subnet, "!", "-d", subnet, *tag,
                         "-j", "RETURN"]),
            ("ip6tables", "raw", ["-I", "PREROUTING", "1", "-i", bridge, *tag, "-j", "DROP"]),
            ("ip6tables", "filter", ["-I", "FORWARD", "1", "-i", bridge, *tag, "-j", "DROP"]),
            ("ip6tables", "filter", ["-I", "FORWARD", "1", "-o", bridge, *tag, "-j", "DROP"]),
            ("ip6tables", "filter", ["-I", "INPUT", "1", "-i", bridge, *tag, "-j", "DROP"]),
            ("ip6tables", "filter", ["-I", "OUTPUT", "1", "-o", bridge, *tag, "-j", "DROP"]),
        ]

    def _chains(self) -> list[tuple[str, str]]:
        return [("raw", f"MLSHIP-RAW{self.index}"), ("filter", f"MLSHIP-FWD{self.index}"),
                ("filter", f"MLSHIP-OUT{self.index}")]

    def install(self, state: dict[str, object]) -> None:
        """Bridge and firewall, after the state file (``state``: what a later run needs to undo
        this one if it is killed, see ``node.py``)."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / str(self.index)).write_text(json.dumps(state))
        try:
            for table, chain in self._chains():
                _run("iptables", "-w", "-t", table, "-N", chain)
            for command, table, rule in self._rules():
                _run(command, "-w", "-t", table, *rule)
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            # The bridge takes no IPv6 address: pods speak IPv4 to their /24 only.
            Path(f"/proc/sys/net/ipv6/conf/{self.bridge}/disable_ipv6").write_text("1\n")
            _run("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev",
                 self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            # kube-proxy's rules must see bridged pod-to-pod packets (Service hairpin).
            Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1\n")
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Undo :meth:`install` (whatever part of it was done)."""
        _run("ip", "link", "del", self.bridge, check=False)
        for command, table, rule in reversed(self._rules()):
            if rule[0] in ("-I", "-A") and not rule[1].startswith("MLSHIP-"):
                spec = rule[3:] if rule[0] == "-I" else rule[2:]
                _run(command, "-w", "-t", table, "-D", rule[1], *spec, check=False)
        for table, chain in self._chains():
            _run("iptables", "-w", "-t", table, "-F", chain, check=False)
            _run("iptables", "-w", "-t", table, "-X", chain, check=False)
        with contextlib.suppress(FileNotFoundError):
            (STATE_DIR / str(self.index)).unlink()

    def cni_config(self, ipam_dir: Path) -> dict[str, object]:
        """The CNI network list: the bridge plugin, host-local addresses, no default route."""
        return {
            "cniVersion": "1.0.0",
            "name": f"mlship-{self.index}",
            "plugins": [{
                "type": "bridge", "bridge": self.bridge, "isGateway": True,
                "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                         "ranges": [[{"subnet": str(self.subnet), "gateway": self.gateway}]],
                         "routes": [{"dst": SERVICE_CIDR, "gw": self.gateway}]},
            }],
        }


def load_state(index: int) -> dict[str, object] | None:
    try:
        state = json.loads((STATE_DIR / str(index)).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def states() -> dict[int, dict[str, object]]:
    """Every live (or killed) network's state file, by index."""
    found = {}
    for path in STATE_DIR.glob("*"):
        state = load_state(int(path.name)) if path.name.isdigit() else None
        if state is not None:
            found[int(path.name)] = state
    return found


def network_of(index: int) -> PodNetwork:
    subnet = list(POD_SUPERNET.subnets(new_prefix=24))[index]
    return PodNetwork(index, subnet, str(subnet.network_address + 1), f"mlship{index}")
