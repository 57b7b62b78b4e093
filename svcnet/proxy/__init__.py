"""svcnet proxy: the kube-proxy equivalent (see README.md in this folder)."""
