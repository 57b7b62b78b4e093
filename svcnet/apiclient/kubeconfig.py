"""Kubeconfig loading the way kubectl (client-go `clientcmd`) does it.

Which files:

* an explicit path (`--kubeconfig F`): only that file, and it must exist;
* else `$KUBECONFIG`, a list separated by `os.pathsep`: every file that exists,
  merged, duplicates and empty entries skipped;
* else `~/.kube/config`;
* else, inside a pod (`KUBERNETES_SERVICE_HOST` set), the service-account
  credentials (`in_cluster_config()`), as client-go's `InClusterConfig` does for
  kube-proxy and CoreDNS.

How files merge (clientcmd `Load`): the *first* file to define a cluster, user or
context name wins, and the first file to set `current-context` wins. Relative
paths (`certificate-authority`, `client-certificate`, `client-key`, `tokenFile`)
are relative to the file that names them.

Several API servers (a svcnet extension). A kubeconfig cluster has one `server`;
svcnet clients also read a list of equivalent servers from the cluster's
`extensions`, which kubectl keeps but ignores:

    clusters:
    - name: svcnet
      cluster:
        server: https://192.0.2.10:6443          # kubectl uses this one
        certificate-authority-data: ...
        extensions:
        - name: svcnet.io/servers
          extension:
            servers: [https://192.0.2.10:6443, https://192.0.2.11:6443]

`KubeConfig.servers` is `server` followed by the listed ones (duplicates dropped); the
servers share the CA and credentials. `RestClient` moves to the next one when a server
cannot be reached (see client.py). `svcnet apiserver --apiserver-peers` writes it.

The result is one frozen `KubeConfig` for the chosen context. It reads nothing
after loading except `tokenFile` (re-read when it changes, because bound
service-account tokens rotate) and the client certificate files (read when the
TLS context is built). Every problem raises `KubeconfigError` naming the file and
the field, e.g. `/root/.kube/config: contexts[0] "svcnet": cluster "lab" is not
defined in any kubeconfig file`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVERS_EXTENSION = "svcnet.io/servers"


class KubeconfigError(ValueError):
    """A kubeconfig that cannot give a usable connection; the message says where."""


@dataclass(frozen=True)
class KubeConfig:
    """Everything needed to reach and authenticate to one API server."""

    server: str
    context: str = ""
    cluster: str = ""
    user: str = ""
    namespace: str = "default"
    ca_data: bytes | None = None  # PEM
    ca_file: str | None = None
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None
    token: str | None = None
    token_file: str | None = None
    username: str | None = None
    password: str | None = None
    client_cert_data: bytes | None = None  # PEM
    client_cert_file: str | None = None
    client_key_data: bytes | None = field(default=None, repr=False)  # PEM
    client_key_file: str | None = None
    origin: str = ""  # the file(s) this came from, for messages
    servers: tuple[str, ...] = ()  # every equivalent server, `server` first (svcnet.io/servers)

    def __post_init__(self) -> None:
        if not self.servers or self.servers[0] != self.server:
            rest = tuple(s for s in self.servers if s != self.server)
            object.__setattr__(self, "servers", (self.server, *rest))

    @property
    def is_tls(self) -> bool:
        return self.server.startswith("https://")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS client context for `server`, or None for plain http."""
        if not self.is_tls:
            return None
        try:
            if self.ca_data or self.ca_file:
                # A kubeconfig CA replaces the system roots, as in client-go.
                ctx = ssl.create_default_context(
                    cafile=self.ca_file,
                    cadata=self.ca_data.decode("ascii", "replace") if self.ca_data else None)
            else:
                ctx = ssl.create_default_context()
        except (ssl.SSLError, OSError, ValueError) as e:
            raise KubeconfigError(f"{self.origin}: cluster {self.cluster!r}: cannot load the "
                                  f"certificate authority: {e}") from None
        if self.insecure_skip_tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert_data or self.client_cert_file:
            self._load_client_cert(ctx)
        return ctx

    def _load_client_cert(self, ctx: ssl.SSLContext) -> None:
        # ssl can only load a certificate chain from files: inline data goes through a
        # private temporary directory that is removed at once.
        try:
            if self.client_cert_data is None and self.client_key_data is None:
                ctx.load_cert_chain(str(self.client_cert_file), str(self.client_key_file))
                return
            cert = self.client_cert_data or Path(str(self.client_cert_file)).read_bytes()
            key = self.client_key_data or Path(str(self.client_key_file)).read_bytes()
            with tempfile.TemporaryDirectory(prefix="svcnet-tls-") as tmp:
                cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
                for p, data in ((cert_path, cert), (key_path, key)):
                    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                ctx.load_cert_chain(str(cert_path), str(key_path))
        except (ssl.SSLError, OSError) as e:
            raise KubeconfigError(f"{self.origin}: user {self.user!r}: cannot load the client "
                                  f"certificate and key: {e}") from None

    def bearer_token(self) -> str | None:
        """The token to send: `token`, else the current content of `tokenFile`."""
        if self.token:
            return self.token
        if self.token_file:
            return _TOKEN_FILES.read(self.token_file)
        return None


class _TokenFileCache:
    """Re-reads token files only when they change (kubelet rotates projected tokens)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int], str]] = {}

    def read(self, path: str) -> str:
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size)
            cached = self._cache.get(path)
            if cached and cached[0] == stamp:
                return cached[1]
            token = Path(path).read_text().strip()
        except OSError as e:
            raise KubeconfigError(f"tokenFile {path}: cannot read: {e.strerror}") from None
        self._cache[path] = (stamp, token)
        return token


_TOKEN_FILES = _TokenFileCache()


# -- loading ---------------------------------------------------------------------


@dataclass
class _Named:
    """One clusters/users/contexts entry with where it came from."""

    body: dict[str, Any]
    file: Path
    where: str  # e.g. `clusters[2] "lab"`


@dataclass
class _Merged:
    clusters: dict[str, _Named] = field(default_factory=dict)
    users: dict[str, _Named] = field(default_factory=dict)
    contexts: dict[str, _Named] = field(default_factory=dict)
    current_context: str = ""
    current_context_file: Path | None = None
    files: list[Path] = field(default_factory=list)


def kubeconfig_paths(explicit: str | os.PathLike[str] | None = None,
                     env: Mapping[str, str] | None = None) -> list[Path]:
    """The files kubectl would read, in precedence order (only existing ones for $KUBECONFIG)."""
    env = os.environ if env is None else env
    if explicit:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise KubeconfigError(f"{p}: kubeconfig file does not exist")
        return [p]
    listed = env.get("KUBECONFIG", "")
    if listed:
        seen: list[Path] = []
        for entry in listed.split(os.pathsep):
            if not entry:
                continue
            p = Path(entry).expanduser()
            if p not in seen and p.exists():
                seen.append(p)
        return seen
    home = Path(env.get("HOME") or Path.home()) / ".kube" / "config"
    return [home] if home.exists() else []


def load_kubeconfig(path: str | os.PathLike[str] | None = None, *, context: str | None = None,
                    env: Mapping[str, str] | None = None) -> KubeConfig:
    """Load the kubeconfig kubectl would use and resolve one context (default: current)."""
    files = kubeconfig_paths(path, env)
    if not files:
        raise KubeconfigError("no kubeconfig found: pass --kubeconfig, set KUBECONFIG, or "
                              "create ~/.kube/config")
    merged = _Merged(files=files)
    for f in files:
        _merge_file(merged, f)
    return _resolve(merged, context)


def load_config(path: str | os.PathLike[str] | None = None, *, context: str | None = None,
                env: Mapping[str, str] | None = None) -> KubeConfig:
    """What an agent uses: the kubeconfig if one is given or found, else in-cluster."""
    env = os.environ if env is None else env
    if path or kubeconfig_paths(None, env):
        return load_kubeconfig(path, context=context, env=env)
    if env.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster_config(env)
    raise KubeconfigError("no kubeconfig found (pass --kubeconfig, set KUBECONFIG, or create "
                          "~/.kube/config) and not running in a pod (KUBERNETES_SERVICE_HOST unset)")


def in_cluster_config(env: Mapping[str, str] | None = None,
                      sa_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeConfig:
    """The service-account credentials a pod gets (client-go `rest.InClusterConfig`)."""
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeconfigError("not running in a pod: KUBERNETES_SERVICE_HOST and "
                              "KUBERNETES_SERVICE_PORT must be set")
    token_file = sa_dir / "token"
    if not token_file.exists():
        raise KubeconfigError(f"{token_file}: service-account token missing")
    ns_file = sa_dir / "namespace"
    namespace = ns_file.read_text().strip() if ns_file.exists() else "default"
    ca = sa_dir / "ca.crt"
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return KubeConfig(server=f"https://{hostport}", context="in-cluster", namespace=namespace,
                      ca_file=str(ca) if ca.exists() else None, token_file=str(token_file),
                      origin=str(sa_dir))


def _merge_file(merged: _Merged, path: Path) -> None:
    try:
        text = path.read_text()
    except OSError as e:
        raise KubeconfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KubeconfigError(f"{path}: not valid YAML: {e}") from None
    if doc is None:
        return  # an empty file is an empty config, as in kubectl
    if not isinstance(doc, dict):
        raise KubeconfigError(f"{path}: expected a Config mapping, got {type(doc).__name__}")
    kind = doc.get("kind")
    if kind not in (None, "", "Config"):
        raise KubeconfigError(f"{path}: kind: expected Config, got {kind!r}")
    for section, inner, target in (("clusters", "cluster", merged.clusters),
                                   ("users", "user", merged.users),
                                   ("contexts", "context", merged.contexts)):
        entries = doc.get(section) or []
        if not isinstance(entries, list):
            raise KubeconfigError(f"{path}: {section}: expected a list")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise KubeconfigError(f"{path}: {section}[{i}]: needs a name")
            name = entry["name"]
            body = entry.get(inner) or {}
            if not isinstance(body, dict):
                raise KubeconfigError(f"{path}: {section}[{i}] {name!r}: {inner}: expected a mapping")
            target.setdefault(name, _Named(body, path, f"{section}[{i}] {name!r}"))  # first wins
    current = doc.get("current-context")
    if current and not merged.current_context:
        merged.current_context, merged.current_context_file = str(current), path


def _resolve(m: _Merged, context: str | None) -> KubeConfig:
    origin = os.pathsep.join(str(f) for f in m.files)
    name = context or m.current_context
    if not name:
        raise KubeconfigError(f"{origin}: current-context is not set and no context was requested")
    ctx = m.contexts.get(name)
    if ctx is None:
        where = f"{m.current_context_file}: current-context" if not context else origin
        raise KubeconfigError(f"{where}: context {name!r} is not defined in any kubeconfig file")
    cluster_name = ctx.body.get("cluster")
    if not cluster_name:
        raise KubeconfigError(f"{ctx.file}: {ctx.where}: context.cluster is not set")
    cluster = m.clusters.get(str(cluster_name))
    if cluster is None:
        raise KubeconfigError(f"{ctx.file}: {ctx.where}: cluster {cluster_name!r} is not defined "
                              "in any kubeconfig file")
    user_name = str(ctx.body.get("user") or "")
    user = m.users.get(user_name) if user_name else None
    if user_name and user is None:
        raise KubeconfigError(f"{ctx.file}: {ctx.where}: user {user_name!r} is not defined in "
                              "any kubeconfig file")
    c, cw = cluster.body, f"{cluster.file}: {cluster.where}: cluster"
    server = str(c.get("server") or "").rstrip("/")
    if not server:
        raise KubeconfigError(f"{cw}.server is not set")
    if not server.startswith(("https://", "http://")):
        raise KubeconfigError(f"{cw}.server: {server!r} must start with https:// or http://")
    servers = _servers_extension(c, server, cw)
    insecure = bool(c.get("insecure-skip-tls-verify") or False)
    ca_data = _b64(c, "certificate-authority-data", cw)
    ca_file = _local_path(c, "certificate-authority", cluster.file, cw)
    if insecure and (ca_data or ca_file):
        raise KubeconfigError(f"{cw}: certificate-authority(-data) and insecure-skip-tls-verify "
                              "cannot both be set")
    u: dict[str, Any] = user.body if user else {}
    uw = f"{user.file}: {user.where}: user" if user else ""
    if user is not None:
        for unsupported in ("exec", "auth-provider"):
            if u.get(unsupported):
                raise KubeconfigError(f"{uw}.{unsupported}: credential plugins are not supported; "
                                      "use a token, tokenFile or client certificate")
    cert_data = _b64(u, "client-certificate-data", uw)
    key_data = _b64(u, "client-key-data", uw)
    cert_file = _local_path(u, "client-certificate", user.file, uw) if user else None
    key_file = _local_path(u, "client-key", user.file, uw) if user else None
    if bool(cert_data or cert_file) != bool(key_data or key_file):
        raise KubeconfigError(f"{uw}: client-certificate(-data) and client-key(-data) must be "
                              "given together")
    token_file = _local_path(u, "tokenFile", user.file, uw) if user else None
    if token_file and not u.get("token") and not os.path.exists(token_file):
        raise KubeconfigError(f"{uw}.tokenFile: {token_file} does not exist")
    namespace = str(ctx.body.get("namespace") or "default")
    return KubeConfig(
        server=server, servers=servers, context=name, cluster=str(cluster_name), user=user_name,
        namespace=namespace, ca_data=ca_data, ca_file=ca_file, insecure_skip_tls_verify=insecure,
        tls_server_name=str(c["tls-server-name"]) if c.get("tls-server-name") else None,
        token=str(u["token"]) if u.get("token") else None, token_file=token_file,
        username=str(u["username"]) if u.get("username") else None,
        password=str(u["password"]) if u.get("password") else None,
        client_cert_data=cert_data, client_cert_file=cert_file,
        client_key_data=key_data, client_key_file=key_file, origin=origin,
    )


def _servers_extension(cluster: Mapping[str, Any], server: str, where: str) -> tuple[str, ...]:
    """`server`, then the `svcnet.io/servers` extension's list (see the module doc)."""
    out = [server]
    extensions = cluster.get("extensions") or []
    if not isinstance(extensions, list):
        raise KubeconfigError(f"{where}.extensions: expected a list")
    for i, ext in enumerate(extensions):
        if not isinstance(ext, dict) or ext.get("name") != SERVERS_EXTENSION:
            continue  # other tools' extensions are theirs
        body = ext.get("extension")
        listed = body.get("servers") if isinstance(body, dict) else None
        ew = f"{where}.extensions[{i}] {SERVERS_EXTENSION!r}: extension.servers"
        if not isinstance(listed, list):
            raise KubeconfigError(f"{ew}: expected a list of URLs")
        for url in listed:
            url = str(url).rstrip("/")
            if not url.startswith(("https://", "http://")):
                raise KubeconfigError(f"{ew}: {url!r} must start with https:// or http://")
            if url not in out:
                out.append(url)
    return tuple(out)


def servers_extension(servers: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The cluster `extensions` entry that lists several servers (for kubeconfig writers)."""
    return {"name": SERVERS_EXTENSION, "extension": {"servers": list(servers)}}


def _b64(body: Mapping[str, Any], key: str, where: str) -> bytes | None:
    value = body.get(key)
    if not value:
        return None
    try:
        return base64.b64decode("".join(str(value).split()), validate=True)
    except (binascii.Error, ValueError):
        raise KubeconfigError(f"{where}.{key}: not valid base64") from None


def _local_path(body: Mapping[str, Any], key: str, file: Path, where: str) -> str | None:
    value = body.get(key)
    if not value:
        return None
    p = Path(str(value)).expanduser()
    if not p.is_absolute():
        p = file.parent / p  # relative to the file that names it (clientcmd ResolveLocalPaths)
    if key != "tokenFile" and not p.exists():
        raise KubeconfigError(f"{where}.{key}: {p} does not exist")
    return str(p)
