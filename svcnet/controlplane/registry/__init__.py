"""The registry: what kube-apiserver does between HTTP and etcd, as a Python API.

* `kinds`       the served kinds, declared once (discovery, URLs, storage keys read it);
* `store`       `Registry`: CRUD, patch, delete with finalizers, lists, watches;
* `strategies/` per-kind defaulting and validation (Service as kube-apiserver does it);
* `allocators`  ClusterIPs and NodePorts, committed with the Service that holds them;
* `codec`       storage keys, JSON values, resourceVersions, continue tokens;
* `selectors`, `schema`, `patch`, `apply`: label/field selectors, Kubernetes' schemas,
  the four patch types and server-side apply (pure functions).

The HTTP layer (`svcnet.controlplane.apiserver`) only translates HTTP to these calls.
"""
