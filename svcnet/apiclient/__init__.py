"""Talking to a Kubernetes API: objects, kubeconfig, REST, reflectors, informers.

This package imports nothing else of svcnet, and is written to Kubernetes' API
semantics rather than to svcnet's own server, so every agent built on it would run
against a real cluster too.

Agents obtain objects through an `ObjectSource` (see `source.py`): either the API
(`--kubeconfig`) or a manifest file (`--objects`). Both feed the same `Informer`.
"""
