"""svcnet's Kubernetes-compatible API server over HTTPS (aiohttp).

app.py routes and authenticates; handlers.py serves the REST verbs against the
Registry; negotiation.py and protobuf.py decode bodies and pick response forms;
discovery.py, openapi.py and tables.py build what kubectl asks for besides objects;
watch.py streams events; certs.py and auth.py hold the PKI and tokens; metrics.py the
Prometheus collectors. The Registry (svcnet.controlplane.registry) owns semantics.
"""
