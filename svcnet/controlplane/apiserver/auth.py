"""Bearer-token authentication and a two-role authorizer.

Two static tokens live in `DATA_DIR/pki/tokens.json` (or the `--pki-dir` that several
API servers share; mode 0600, generated on first start, reused after): `admin` may do everything; `readonly` (for node agents, the proxy
and DNS) may only get, list and watch. This mirrors kube-apiserver's static token file
plus RBAC with two roles, which is all svcnet needs. As in Kubernetes' default RBAC,
the health endpoints and /version are public; everything else needs a valid token.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from svcnet.controlplane.errors import APIError

READ_VERBS = frozenset({"get", "list", "watch"})
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version"})


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]
    read_only: bool


ADMIN = User("svcnet:admin", ("system:masters", "system:authenticated"), read_only=False)
AGENT = User("svcnet:agent", ("svcnet:agents", "system:authenticated"), read_only=True)


@dataclass(frozen=True)
class Tokens:
    admin: str
    readonly: str

    def authenticate(self, authorization: str | None) -> User:
        """The user behind an `Authorization: Bearer …` header, or 401."""
        if authorization:
            scheme, _, token = authorization.partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token:
                # constant-time comparisons: the token is the only secret
                if hmac.compare_digest(token, self.admin):
                    return ADMIN
                if hmac.compare_digest(token, self.readonly):
                    return AGENT
        raise APIError(401, "Unauthorized", "Unauthorized")


def load_or_create_tokens(data_dir: Path, *, pki_dir: Path | None = None) -> Tokens:
    """Read `tokens.json` in `pki_dir` (default `data_dir/pki`), creating it with fresh
    random tokens when missing (under the directory's lock: servers sharing it agree)."""
    from svcnet.controlplane.apiserver.certs import directory_lock

    directory = pki_dir if pki_dir is not None else data_dir / "pki"
    path = directory / "tokens.json"
    with directory_lock(directory):
        return _load_or_create(path)


def _load_or_create(path: Path) -> Tokens:
    if path.exists():
        data = json.loads(path.read_text())
        return Tokens(admin=data["admin"], readonly=data["readonly"])
    tokens = Tokens(admin=secrets.token_urlsafe(32), readonly=secrets.token_urlsafe(32))
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"admin": tokens.admin, "readonly": tokens.readonly}, f)
    os.replace(tmp, path)
    return tokens


def authorize(user: User, verb: str, resource: str, group: str, namespace: str | None,
              name: str | None, subresource: str | None = None) -> None:
    """Raise 403 Forbidden (worded like RBAC's denial) unless `user` may do `verb`."""
    if not user.read_only or verb in READ_VERBS:
        return
    what = f"{resource}/{subresource}" if subresource else resource
    subject = f'{resource} "{name}"' if name else (f"{resource}.{group}" if group else resource)
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    details: dict[str, object] = {"kind": resource}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    raise APIError(403, "Forbidden",
                   f'{subject} is forbidden: User "{user.name}" cannot {verb} resource "{what}" '
                   f'in API group "{group}"{where}', details)
