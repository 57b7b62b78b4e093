"""svcnet: Kubernetes service networking you can run, read and break on one Linux machine.

See DESIGN.md (shared) for the architecture. Packages:
  apiclient/     objects, kubeconfig, REST client, reflectors and informers (imports no svcnet)
  common/        logging, metrics and health servers shared by every agent
  controlplane/  the apiserver, its storage, registry and controllers
  proxy/         the kube-proxy equivalent (nftables and iptables backends)
  dns/           the CoreDNS equivalent
  lab/           network-namespace clusters: topology, node agent, pod runtime
"""

__version__ = "0.1.0"
