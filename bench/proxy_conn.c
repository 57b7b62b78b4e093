/* New-TCP-connection load for bench/proxy.py (built on the fly with cc -O2).
 *   proxy_conn client IP PORT CONCURRENCY SECONDS   -> prints "<connections> <seconds>"
 *   proxy_conn server PORT                          -> accept-and-close forever
 * Bounded: the client stops after SECONDS; each connection is opened non-blocking,
 * counted when connect completes, and closed at once (RST-free close). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static int open_one(int ep, struct sockaddr_in *dst) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s < 0) return -1;
    struct linger l = {1, 0}; /* close with RST: no TIME_WAIT pile-up on the client */
    setsockopt(s, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    if (connect(s, (struct sockaddr *)dst, sizeof *dst) < 0 && errno != EINPROGRESS) { close(s); return -1; }
    struct epoll_event ev = {.events = EPOLLOUT, .data.fd = s};
    epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
    return s;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "server")) {
        int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
        if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4096)) { perror("server"); return 1; }
        printf("ready\n"); fflush(stdout);
        for (;;) { int c = accept(s, NULL, NULL); if (c >= 0) close(c); }
    }
    if (argc < 6 || strcmp(argv[1], "client")) { fprintf(stderr, "usage: see source\n"); return 2; }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &dst.sin_addr);
    int conc = atoi(argv[4]); double secs = atof(argv[5]);
    int ep = epoll_create1(0);
    struct epoll_event evs[256];
    long done = 0, failed = 0;
    for (int i = 0; i < conc; i++) open_one(ep, &dst);
    double start = now(), end = start + secs;
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            int s = evs[i].data.fd, err = 0; socklen_t len = sizeof err;
            getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) failed++; else done++;
            close(s);
            open_one(ep, &dst);
        }
    }
    printf("%ld %.3f %ld\n", done, now() - start, failed);
    return 0;
}
