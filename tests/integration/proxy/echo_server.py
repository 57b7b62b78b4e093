"""Backend for proxy integration tests: answers every TCP connection and every UDP
datagram with `<name> <client-ip>` so a test sees which endpoint it reached and
which source address the endpoint saw (masquerade or not).

    python echo_server.py NAME TCP_PORT UDP_PORT
"""

import socket
import sys
import threading


def tcp(name: str, port: int) -> None:
    s = socket.socket(socket.AF_INET6 if ":" in HOST else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if ":" in HOST:  # IPv6 only: the IPv4 server owns the same port
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((HOST, port))
    s.listen(512)
    while True:
        c, addr = s.accept()
        try:
            c.sendall(f"{name} {addr[0]}\n".encode())
        finally:
            c.close()


def udp(name: str, port: int) -> None:
    s = socket.socket(socket.AF_INET6 if ":" in HOST else socket.AF_INET, socket.SOCK_DGRAM)
    if ":" in HOST:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((HOST, port))
    while True:
        _, addr = s.recvfrom(2048)
        s.sendto(f"{name} {addr[0]}\n".encode(), addr)


HOST = sys.argv[4] if len(sys.argv) > 4 else "0.0.0.0"

if __name__ == "__main__":
    name, tport, uport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    threading.Thread(target=udp, args=(name, uport), daemon=True).start()
    print("ready", flush=True)
    tcp(name, tport)
