"""Client for proxy integration tests: N new connections (or datagrams from new
sockets), one JSON line of results: [["name", "seen-source"] | ["!refused"] | ["!timeout"]].

    python probe.py tcp|udp IP PORT COUNT [TIMEOUT] [SRC_PORT]
"""

import json
import socket
import sys


def one(proto: str, ip: str, port: int, timeout: float, sport: int) -> list[str]:
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(timeout)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
    try:
        if proto == "tcp":
            s.connect((ip, port))
            data = s.recv(200)
        else:
            s.connect((ip, port))  # connected: ICMP port unreachable surfaces as ECONNREFUSED
            s.send(b"hello")
            data = s.recv(200)
        return data.decode().split()
    except ConnectionRefusedError:
        return ["!refused"]
    except (socket.timeout, TimeoutError):
        return ["!timeout"]
    except OSError as e:
        return [f"!{e.errno}"]
    finally:
        s.close()


if __name__ == "__main__":
    proto, ip, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 2.0
    sport = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    print(json.dumps([one(proto, ip, port, timeout, sport) for _ in range(count)]))
