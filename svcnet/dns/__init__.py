"""svcnet's cluster DNS server (the CoreDNS equivalent): zone model, wire format,
UDP/TCP server, forwarder and cache. See README.md in this folder."""
