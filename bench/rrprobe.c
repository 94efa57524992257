/* rrprobe: a netperf-like TCP request/response probe (1-byte ping-pong).
 *   rrprobe srv ADDR PORT SECONDS        serve until SECONDS pass
 *   rrprobe rr  ADDR PORT SECONDS        one connection, ping-pong; prints transactions/s
 *   rrprobe crr ADDR PORT SECONDS        connect, 1 byte each way, close; prints transactions/s
 *   rrprobe udp ADDR PORT SECONDS RATE   send RATE 1-byte datagrams a second (paced per ms); prints sent/s */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int connect_to(struct sockaddr_in *sa) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s, (struct sockaddr *)sa, sizeof *sa) < 0) { perror("connect"); exit(1); }
    return s;
}

int main(int argc, char **argv) {
    if (argc != 5 && !(argc == 6 && !strcmp(argv[1], "udp"))) {
        fprintf(stderr, "usage: rrprobe srv|rr|crr ADDR PORT SECONDS | rrprobe udp ADDR PORT SECONDS RATE\n");
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &sa.sin_addr);
    double seconds = atof(argv[4]);
    char b = 'x';
    alarm((unsigned)seconds + 30);
    if (!strcmp(argv[1], "srv")) {
        int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(l, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(l, 1024) < 0) { perror("listen"); return 1; }
        signal(SIGCHLD, SIG_IGN);
        for (;;) {
            int c = accept(l, NULL, NULL);
            if (c < 0) continue;
            setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            while (read(c, &b, 1) == 1 && write(c, &b, 1) == 1) {}
            close(c);
        }
    }
    long n = 0;
    double end = now() + seconds, start = now();
    if (!strcmp(argv[1], "udp")) {
        double rate = atof(argv[5]);
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        while (now() < end) {
            long due = (long)((now() - start) * rate);  /* packets that should be out by now */
            for (; n < due; n++)
                if (sendto(s, &b, 1, 0, (struct sockaddr *)&sa, sizeof sa) != 1) { perror("udp"); return 1; }
            usleep(1000);
        }
        printf("%.0f\n", n / (now() - start));
        return 0;
    }
    if (!strcmp(argv[1], "rr")) {
        int s = connect_to(&sa);
        while (now() < end) {
            for (int i = 0; i < 100; i++) {
                if (write(s, &b, 1) != 1 || read(s, &b, 1) != 1) { perror("rr"); return 1; }
                n++;
            }
        }
        close(s);
    } else {
        while (now() < end) {
            int s = connect_to(&sa);
            if (write(s, &b, 1) != 1 || read(s, &b, 1) != 1) { perror("crr"); return 1; }
            close(s);
            n++;
        }
    }
    printf("%.0f\n", n / (now() - start));
    return 0;
}
