/* A pcap replayer for ``python -m bench live --replay``: sendmmsg on an AF_PACKET socket.
 *
 * Why not tcpreplay: measured here, ``tcpreplay --topspeed --preload-pcap`` into a veth offers
 * about 330k packets/s of the short-flow capture with nobody capturing the peer (one send() per
 * packet, and its build has debugging on), less than the 400k/s the live target asks for. This
 * sends batches of 256 frames per sendmmsg with PACKET_QDISC_BYPASS, paced per batch.
 *
 * usage: replay IFACE PCAP PPS LIMIT     (PPS 0: as fast as it goes; LIMIT 0: the whole file)
 * prints: "sent PACKETS BYTES SECONDS"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: replay IFACE PCAP PPS LIMIT\n");
        return 2;
    }
    double pps = atof(argv[3]);
    long limit = atol(argv[4]);
    int fd = open(argv[2], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) { perror(argv[2]); return 1; }
    const uint8_t *p = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED || st.st_size < 24) { perror("mmap"); return 1; }
    uint32_t magic;
    memcpy(&magic, p, 4);
    if (magic != 0xa1b2c3d4 && magic != 0xa1b23c4d) {
        fprintf(stderr, "%s: not a little-endian pcap\n", argv[2]);
        return 1;
    }
    /* index the records */
    size_t cap = 1 << 20, n = 0;
    struct iovec *iov = malloc(cap * sizeof *iov);
    for (off_t off = 24; off + 16 <= st.st_size && (limit == 0 || (long)n < limit);) {
        uint32_t incl;
        memcpy(&incl, p + off + 8, 4);
        if (off + 16 + incl > st.st_size) break;
        if (n == cap) iov = realloc(iov, (cap *= 2) * sizeof *iov);
        iov[n].iov_base = (void *)(p + off + 16);
        iov[n].iov_len = incl;
        n++;
        off += 16 + incl;
    }
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    int sndbuf = 64 << 20;
    setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf);
    struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = if_nametoindex(argv[1])};
    if (!to.sll_ifindex) { perror(argv[1]); return 1; }
    if (bind(s, (struct sockaddr *)&to, sizeof to) < 0) { perror("bind"); return 1; }
    struct mmsghdr msgs[BATCH];
    size_t sent = 0;
    uint64_t bytes = 0;
    double t0 = now();
    while (sent < n) {
        size_t k = n - sent < BATCH ? n - sent : BATCH;
        if (pps > 0) { /* pace: batch i starts no earlier than t0 + i*BATCH/pps */
            double due = t0 + sent / pps;
            while (now() < due) {
                double wait = due - now();
                if (wait > 0.0002) {
                    struct timespec ts = {0, (long)((wait - 0.0001) * 1e9)};
                    nanosleep(&ts, NULL);
                }
            }
        }
        memset(msgs, 0, k * sizeof *msgs);
        for (size_t i = 0; i < k; i++) {
            msgs[i].msg_hdr.msg_iov = &iov[sent + i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int r = sendmmsg(s, msgs, k, 0);
        if (r < 0) {
            usleep(50); /* ENOBUFS: the peer's backlog is full; try again */
            continue;
        }
        for (int i = 0; i < r; i++) bytes += iov[sent + i].iov_len;
        sent += r;
    }
    double secs = now() - t0;
    printf("sent %zu %llu %.6f\n", sent, (unsigned long long)bytes, secs);
    return 0;
}
