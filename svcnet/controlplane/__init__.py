"""The control plane: apiserver (HTTP), registry (kinds, defaulting, validation,
allocation, patching), storage (SQLite now, etcd later) and controllers."""
