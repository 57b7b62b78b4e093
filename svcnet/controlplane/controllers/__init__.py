"""The controller-manager: controllers that keep derived objects in step with the API.

* `endpointslice` — EndpointSlices for every Service with a selector (pure planning).
* `scheduler` — binds pods without a node to a Ready node that fits.
* `node_lifecycle` — marks nodes NotReady when their Lease stops, and their pods unready.
* `deployment` — apps/v1 Deployments as pods (no ReplicaSets; see the module docstring).
* `manager` — informers, work queues and the write side that applies the plans.

Every controller has the same shape: a pure function computes what should exist as
plain data from the informer caches; a `sync(key)` coroutine writes the difference.
"""
