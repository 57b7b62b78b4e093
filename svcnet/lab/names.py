"""Names of the kernel objects a lab creates, so a person can find them and a
program can own them.

Linux limits interface names to IFNAMSIZ - 1 = 15 bytes (mininet #1133, netlab #2570
broke on longer ones). A name that fits is used as is; a longer one keeps a
readable prefix and ends in a hash of the whole name, the way kube-proxy's
`hashAndTruncate` does, so two long names never collide just because they share
a prefix (systemd #10721 truncated veth names to 11 characters and they collided).

Every name a lab uses starts with the lab's name, so two labs coexist:

    <lab>-underlay          the lab's own namespace, holding the underlay bridge
    <lab>-br                the bridge in it (every node's eth0 is plugged in)
    <lab>-control-plane     a node's namespace; the node's Kubernetes name too
    <lab>-worker, <lab>-worker2 …
    <lab>-external          a client namespace outside the cluster
    <node>-<podns>-<pod>    a pod's namespace (hashed when long)

Names alone never decide ownership: `down` removes what the state file lists, and
links carry an alias (`ip -d link` shows it) saying who made them.
"""

from __future__ import annotations

import hashlib
import re

IFNAMSIZ = 15  # usable bytes of an interface name (the kernel's IFNAMSIZ counts the NUL)
NETNS_NAME_MAX = 63  # ours, not the kernel's: keeps `ip netns list` readable
LAB_NAME_MAX = 16

_LAB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# ip-link(8) rejects '/', whitespace and ':' is reserved for old-style aliases.
_BAD_IFNAME_CHARS = re.compile(r"[/\s:]")


class LabNameError(ValueError):
    """A name that the kernel or svcnet would refuse."""


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def hash_and_truncate(name: str, limit: int, hash_len: int = 8) -> str:
    """`name` if it fits in `limit`, else `<prefix>-<hash of name>` of exactly `limit`."""
    if len(name) <= limit:
        return name
    if limit < hash_len + 2:
        raise LabNameError(f"limit {limit} leaves no room for a readable prefix")
    prefix = name[: limit - hash_len - 1].rstrip("-")
    return f"{prefix}-{short_hash(name, hash_len)}"


def validate_lab_name(name: str) -> str:
    """A lab name: a DNS label of at most 16 characters (it prefixes every object)."""
    if not _LAB_NAME.match(name) or len(name) > LAB_NAME_MAX:
        raise LabNameError(
            f"lab name {name!r}: use lower-case letters, digits and '-', "
            f"start and end with a letter or digit, at most {LAB_NAME_MAX} characters")
    return name


def validate_ifname(name: str) -> str:
    if not name or len(name.encode()) > IFNAMSIZ or name in (".", "..") or _BAD_IFNAME_CHARS.search(name):
        raise LabNameError(f"{name!r} is not a valid interface name (1-{IFNAMSIZ} bytes, no '/', ':' or spaces)")
    return name


def link_name(*parts: str) -> str:
    """An interface name from readable parts, `-`-joined, hashed to fit IFNAMSIZ."""
    return validate_ifname(hash_and_truncate("-".join(p for p in parts if p), IFNAMSIZ))


def netns_name(*parts: str) -> str:
    return hash_and_truncate("-".join(p for p in parts if p), NETNS_NAME_MAX)


class LabNames:
    """Every fixed name of one lab, derived from its name; nothing else invents lab names."""

    def __init__(self, lab: str) -> None:
        self.lab = validate_lab_name(lab)

    @property
    def underlay_netns(self) -> str:
        return netns_name(self.lab, "underlay")

    @property
    def bridge(self) -> str:
        return link_name(self.lab, "br")

    @property
    def external_netns(self) -> str:
        return netns_name(self.lab, "external")

    def node(self, role_or_name: str) -> str:
        """The Kubernetes node name (and its namespace name) for a short node name."""
        if role_or_name.startswith(self.lab + "-"):
            return role_or_name
        return netns_name(self.lab, role_or_name)

    def underlay_port(self, member: str) -> str:
        """The bridge-side end of a member's underlay veth, in the underlay namespace.

        `member` is a node name or the external namespace name; the lab prefix is
        dropped first because the underlay namespace belongs to this lab alone.
        """
        short = member[len(self.lab) + 1:] if member.startswith(self.lab + "-") else member
        return link_name("u", short)

    def alias(self, **fields: str) -> str:
        """The ownership alias put on links: `svcnet lab=<lab> node=… pod=…`."""
        return " ".join(["svcnet", f"lab={self.lab}", *(f"{k}={v}" for k, v in fields.items())])


def pod_netns_name(node: str, namespace: str, pod: str) -> str:
    """A pod's network namespace: `<node>-<namespace>-<pod>`, hashed when long.

    The node name already carries the lab's name, and a pod never changes node, so
    this is unique across labs and readable in `ip netns list`.
    """
    return netns_name(node, namespace, pod)


def pod_host_veth(pod_uid: str) -> str:
    """The node-side end of a pod's veth: `veth<hash8>`, as CNI plugins name them.

    It lives in the node's own namespace, which belongs to one lab, so it cannot
    collide with another lab's; the alias names the pod for people.
    """
    return f"veth{short_hash(pod_uid)}"
