"""The registry: what kube-apiserver does between HTTP and etcd, as a Python API.

* `kinds`       the served kinds, declared once (discovery, URLs, storage keys read it);
* `store`       `Registry`: CRUD, patch, delete with finalizers, lists, watches;
* `strategies/` per-kind defaulting and validation (Service as kube-apiserver does it);
* `allocators`  ClusterIPs and NodePorts, committed with the Service that holds them;
* `watch`       storage events to Kubernetes watch events (selectors, 410, bookmarks);
* `lifecycle`   Namespace deletion and garbage collection by ownerReferences (`gc`);
* `subresources` deployments/scale (`scale`), pods/binding, pods/eviction;
* `bootstrap`   the system namespaces and the `kubernetes` Service;
* `codec`       storage keys, JSON values, resourceVersions, continue tokens;
* `selectors`, `schema`, `patch`, `apply`: label/field selectors, Kubernetes' schemas,
  the four patch types and server-side apply (pure functions).

The HTTP layer (`svcnet.controlplane.apiserver`) only translates HTTP to these calls.
"""
