import pytest

from svcnet.lab.agent.podspec import (
    ClusterDNS, PodContext, PodSpecError, container_argv, container_env, hosts_file, image_name, parse_probe,
    resolv_conf,
)

CTX = PodContext("web-1", "shop", "10.244.1.5", "lab-worker", "172.18.0.3", "/k/admin.kubeconfig")


def pod(**spec):
    return {"metadata": {"name": "web-1", "namespace": "shop", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"containers": [], **spec}}


@pytest.mark.parametrize("image,name", [
    ("svcnet/echo", "svcnet/echo"), ("svcnet/echo:1.2", "svcnet/echo"), ("docker.io/svcnet/echo:latest", "svcnet/echo"),
    ("svcnet/echo@sha256:abc", "svcnet/echo"), ("localhost:5000/x/y:3", "localhost:5000/x/y"),
])
def test_image_names(image, name):
    assert image_name(image) == name


def test_echo_gets_its_container_ports_per_protocol():
    argv = container_argv({"image": "svcnet/echo", "ports": [
        {"containerPort": 8080}, {"containerPort": 8080, "protocol": "UDP"},
        {"containerPort": 9000, "protocol": "SCTP"}, {"containerPort": 8443}]}, CTX, python="py")
    assert argv == ["py", "-m", "svcnet.lab.apps.echo", "--name", "web-1", "--tcp", "8080,8443", "--udp", "8080",
                    "--sctp", "9000"]


def test_echo_without_ports_listens_on_8080_everywhere_and_args_append():
    argv = container_argv({"image": "svcnet/echo", "args": ["--listen", "0.0.0.0"]}, CTX, python="py")
    assert argv[-4:] == ["--port", "8080", "--listen", "0.0.0.0"]


def test_dns_image_gets_the_kubeconfig_unless_args_say_otherwise():
    argv = container_argv({"image": "svcnet/dns", "args": ["--zone", "cluster.local"]}, CTX, python="py")
    assert argv == ["py", "-m", "svcnet", "dns", "--kubeconfig", "/k/admin.kubeconfig", "--listen", "0.0.0.0:53",
                    "--zone", "cluster.local"]
    argv = container_argv({"image": "svcnet/dns", "args": ["--objects", "f.yaml", "--listen", ":5353"]}, CTX, "py")
    assert "--kubeconfig" not in argv and argv.count("--listen") == 1


def test_command_overrides_and_unknown_images_need_one():
    assert container_argv({"image": "busybox", "command": ["sleep"], "args": ["10"]}, CTX) == ["sleep", "10"]
    with pytest.raises(PodSpecError) as e:
        container_argv({"image": "nginx"}, CTX)
    assert e.value.reason == "CreateContainerError" and "not built in" in str(e.value)


def test_env_with_downward_api_and_expansion():
    c = {"env": [{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)-$(NOPE)-$$(A)"},
                 {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                 {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}]}
    env = container_env(c, pod(), CTX, {"PATH": "/bin", "SECRET": "no"}, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    assert env["B"] == "x-$(NOPE)-$(A)" and env["IP"] == "10.244.1.5" and env["APP"] == "web"
    assert env["HOSTNAME"] == "web-1" and env["PATH"] == "/bin" and "SECRET" not in env
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    with pytest.raises(PodSpecError):
        container_env({"env": [{"name": "S", "valueFrom": {"secretKeyRef": {}}}]}, pod(), CTX, {})


def test_resolv_conf_cluster_first():
    text = resolv_conf(pod(), ClusterDNS("10.96.0.10", "cluster.local"))
    assert text == ("nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\n"
                    "options ndots:5\n")


def test_resolv_conf_default_none_and_dns_config():
    host = "nameserver 127.0.0.53\nsearch corp.example\noptions edns0\n"
    assert resolv_conf(pod(dnsPolicy="Default"), ClusterDNS(), host) == (
        "nameserver 127.0.0.53\nsearch corp.example\noptions edns0\n")
    text = resolv_conf(pod(dnsPolicy="None", dnsConfig={"nameservers": ["1.1.1.1"], "searches": ["a.b"],
                                                       "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}),
                       ClusterDNS())
    assert text == "nameserver 1.1.1.1\nsearch a.b\noptions ndots:2 rotate\n"
    merged = resolv_conf(pod(dnsConfig={"options": [{"name": "ndots", "value": "1"}]}), ClusterDNS())
    assert "options ndots:1\n" in merged and "ndots:5" not in merged


def test_hosts_file_with_hostname_and_subdomain():
    text = hosts_file(pod(hostname="db-0", subdomain="db"), "10.244.1.5", "cluster.local")
    assert "10.244.1.5\tdb-0.db.shop.svc.cluster.local db-0\n" in text
    assert "127.0.0.1\tlocalhost" in text


def test_probes_resolve_named_ports_and_defaults():
    c = {"ports": [{"name": "http", "containerPort": 8080}]}
    p = parse_probe({"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 2}, c)
    assert p is not None and p.kind == "http" and p.port == 8080 and p.period == 2 and p.failure_threshold == 3
    assert parse_probe(None, c) is None
    e = parse_probe({"exec": {"command": ["true"]}}, c)
    assert e is not None and e.command == ("true",)
    with pytest.raises(PodSpecError, match="names no container port"):
        parse_probe({"tcpSocket": {"port": "grpc"}}, c)
    with pytest.raises(PodSpecError, match="grpc is not supported"):
        parse_probe({"grpc": {"port": 1}}, c)
