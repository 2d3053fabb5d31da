/* bench/publisher.c - the publishing side of the uniws benchmarks.
 *
 * Sends --count publications at --rate publications/s (0 = as fast as the server
 * takes them), either as uniws server-API batches over one HTTP/1.1 keep-alive
 * connection (`--proto http`: POST --path, body = one publish command per line,
 * several requests pipelined), or as NATS `PUB`s over TCP (`--proto nats`, each
 * batch followed by a PING whose PONG acknowledges it).
 *
 * Publication k goes to channel --channel, or with --nchan N to channel
 * <--channel>(k % N) with sequence number k / N, and carries
 * {"t":<CLOCK_MONOTONIC ns at send>,"s":<sequence>,"pad":"xxx..."}.
 * Every due publication is sent at most --tick-us after it became due, in batches
 * of at most --batch. Prints one JSON line: what was sent, acknowledged, the
 * achieved rate and how far behind schedule it ever fell.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *o_host = "127.0.0.1", *o_path = "/api", *o_chan = "bench", *o_key = "";
static int o_port, o_nats, o_nchan, o_batch = 1000, o_inflight = 2, o_pad = 60, o_tick_us = 1000;
static long o_count = 1000, o_max_s = 600;
static double o_rate;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

typedef struct {
    char *p;
    size_t len, cap, off;
} buf_t;

static void put(buf_t *b, const char *s, size_t n) {
    if (b->len + n > b->cap) {
        while (b->len + n > b->cap) b->cap = b->cap ? b->cap * 2 : 65536;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static buf_t out, in, body;
static char pad[1024];
static long sent, acked, errors, requests, inflight, batch_sizes[64];
static int batch_q_head, batch_q_tail;

/* Append one batch of n publications starting at index `sent` to `out`. */
static void build_batch(long n, uint64_t t) {
    char one[1536], chan[256];
    body.len = 0;
    for (long i = 0; i < n; i++) {
        long k = sent + i, seq = o_nchan ? k / o_nchan : k;
        if (o_nchan) snprintf(chan, sizeof chan, "%s%ld", o_chan, k % o_nchan);
        else snprintf(chan, sizeof chan, "%s", o_chan);
        int m;
        if (o_nats) {
            char data[1200];
            int dl = snprintf(data, sizeof data, "{\"t\":%lu,\"s\":%ld,\"pad\":\"%s\"}", (unsigned long)t, seq, pad);
            m = snprintf(one, sizeof one, "PUB %s %d\r\n%s\r\n", chan, dl, data);
        } else {
            m = snprintf(one, sizeof one,
                         "%s{\"method\":\"publish\",\"params\":{\"channel\":\"%s\",\"data\":{\"t\":%lu,\"s\":%ld,"
                         "\"pad\":\"%s\"}}}",
                         i ? "\n" : "", chan, (unsigned long)t, seq, pad);
        }
        put(&body, one, (size_t)m);
    }
    if (o_nats) {
        put(&out, body.p, body.len);
        put(&out, "PING\r\n", 6);
    } else {
        char head[512];
        int hl = snprintf(head, sizeof head,
                          "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n%s%s%s"
                          "Content-Length: %zu\r\n\r\n",
                          o_path, o_host, o_port, *o_key ? "Authorization: apikey " : "", o_key,
                          *o_key ? "\r\n" : "", body.len);
        put(&out, head, (size_t)hl);
        put(&out, body.p, body.len);
    }
    batch_sizes[batch_q_tail] = n;
    batch_q_tail = (batch_q_tail + 1) % 64;
    sent += n;
    inflight++;
    requests++;
}

/* Consume complete responses from `in`; returns -1 on a protocol error. */
static int read_responses(void) {
    size_t pos = 0;
    for (;;) {
        char *p = in.p + pos;
        size_t n = in.len - pos;
        if (o_nats) {
            char *eol = memmem(p, n, "\r\n", 2);
            if (!eol) break;
            if (!strncmp(p, "PONG", 4)) {
                acked += batch_sizes[batch_q_head];
                batch_q_head = (batch_q_head + 1) % 64;
                inflight--;
            } else if (!strncmp(p, "-ERR", 4)) {
                fprintf(stderr, "publisher: %.*s\n", (int)(eol - p), p);
                errors++;
            }
            pos += (size_t)(eol + 2 - p);
            continue;
        }
        char *eoh = memmem(p, n, "\r\n\r\n", 4);
        if (!eoh) break;
        int status = atoi(p + 9);
        char *cl = memmem(p, (size_t)(eoh - p), "Content-Length:", 15);
        if (!cl) cl = memmem(p, (size_t)(eoh - p), "content-length:", 15);
        size_t blen = cl ? (size_t)atol(cl + 15) : 0;
        if ((size_t)(eoh + 4 - p) + blen > n) break;
        char *b = eoh + 4;
        long results = 0, errs = 0;
        for (char *q = b; q < b + blen; q++) { /* one reply line per command */
            if (*q != '{') continue;
            if (!strncmp(q, "{\"result\"", 9)) results++;
            else if (!strncmp(q, "{\"error\"", 8)) errs++;
            char *nl = memchr(q, '\n', (size_t)(b + blen - q));
            if (!nl) break;
            q = nl;
        }
        long size = batch_sizes[batch_q_head];
        batch_q_head = (batch_q_head + 1) % 64;
        inflight--;
        if (status != 200 || results + errs != size) {
            if (errors < 3) fprintf(stderr, "publisher: HTTP %d, %ld results and %ld errors for %ld commands: %.*s\n",
                                    status, results, errs, size, (int)(blen < 200 ? blen : 200), b);
            errs = size - results;
        }
        acked += results;
        errors += errs;
        pos += (size_t)(eoh + 4 - p) + blen;
    }
    if (pos) {
        memmove(in.p, in.p + pos, in.len - pos);
        in.len -= pos;
    }
    return 0;
}

int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--host")) o_host = v;
        else if (!strcmp(k, "--port")) o_port = atoi(v);
        else if (!strcmp(k, "--proto")) o_nats = !strcmp(v, "nats");
        else if (!strcmp(k, "--path")) o_path = v;
        else if (!strcmp(k, "--api-key")) o_key = v;
        else if (!strcmp(k, "--channel")) o_chan = v;
        else if (!strcmp(k, "--nchan")) o_nchan = atoi(v);
        else if (!strcmp(k, "--rate")) o_rate = atof(v);
        else if (!strcmp(k, "--count")) o_count = atol(v);
        else if (!strcmp(k, "--batch")) o_batch = atoi(v);
        else if (!strcmp(k, "--inflight")) o_inflight = atoi(v);
        else if (!strcmp(k, "--pad")) o_pad = atoi(v);
        else if (!strcmp(k, "--tick-us")) o_tick_us = atoi(v);
        else if (!strcmp(k, "--max-seconds")) o_max_s = atol(v);
        else {
            fprintf(stderr, "publisher: unknown option %s\n", k);
            return 2;
        }
    }
    if (!o_port) {
        fprintf(stderr, "usage: publisher --port P [--proto http|nats] [--path /api] [--api-key K] [--channel C]\n"
                        "       [--nchan N] [--rate R] [--count N] [--batch B] [--inflight K] [--pad N]\n"
                        "       [--tick-us U] [--max-seconds S]\n");
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* the driver died: stop */
    if (o_inflight > 60) o_inflight = 60;
    if (o_pad > 1000) o_pad = 1000;
    memset(pad, 'x', (size_t)o_pad);

    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o_port)};
    inet_pton(AF_INET, o_host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("publisher: connect");
        return 1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (o_nats) { /* NATS: the server speaks first (INFO); no +OK replies with verbose=false */
        const char *c = "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n";
        put(&out, c, strlen(c));
    }
    uint64_t t0 = now_ns(), t_first = 0, t_last = 0, t_done = 0, max_lag = 0, deadline = t0 + (uint64_t)o_max_s * 1000000000ull;
    double per_ns = o_rate > 0 ? o_rate / 1e9 : 0;
    int timed_out = 0;
    in.cap = 1 << 20;
    in.p = malloc(in.cap);
    while (acked + errors < o_count) {
        uint64_t now = now_ns();
        if (now > deadline) {
            timed_out = 1;
            break;
        }
        long due = per_ns > 0 ? (long)((double)(now - t0) * per_ns) + 1 : o_count;
        if (due > o_count) due = o_count;
        while (sent < due && inflight < o_inflight && out.off == out.len) {
            long n = due - sent;
            if (n > o_batch) n = o_batch;
            if (per_ns > 0) { /* how late the first publication of this batch is */
                uint64_t sched = t0 + (uint64_t)((double)sent / per_ns);
                if (now > sched && now - sched > max_lag) max_lag = now - sched;
            }
            out.len = out.off = 0;
            build_batch(n, now);
            if (!t_first) t_first = now;
            t_last = now;
        }
        if (out.off < out.len) {
            ssize_t w = send(fd, out.p + out.off, out.len - out.off, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w > 0) out.off += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                perror("publisher: send");
                break;
            }
        }
        /* Sleep until the next publication is due (or a response/writability arrives). */
        long long wait_ns = 50000000;
        if (sent < o_count && per_ns > 0 && inflight < o_inflight) {
            uint64_t next = t0 + (uint64_t)((double)sent / per_ns) + (uint64_t)o_tick_us * 1000ull;
            wait_ns = next > now ? (long long)(next - now) : 0;
        } else if (sent < o_count && per_ns == 0 && inflight < o_inflight) {
            wait_ns = 0;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN | (out.off < out.len ? POLLOUT : 0)};
        struct timespec ts = {.tv_sec = wait_ns / 1000000000ll, .tv_nsec = wait_ns % 1000000000ll};
        if (ppoll(&pfd, 1, &ts, NULL) > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR))) {
            if (in.cap - in.len < 65536) {
                in.cap *= 2;
                in.p = realloc(in.p, in.cap);
            }
            ssize_t r = recv(fd, in.p + in.len, in.cap - in.len, 0);
            if (r <= 0) {
                fprintf(stderr, "publisher: server closed the connection\n");
                break;
            }
            in.len += (size_t)r;
            read_responses();
            if (acked + errors >= o_count) t_done = now_ns();
        }
    }
    if (!t_done) t_done = now_ns();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    /* Achieved send rate: publications over the time their schedule needed (first send
     * to last send, plus one interval), so a rate that was kept reads as the target. */
    double span = (double)(t_last - t_first) / 1e9 + (o_rate > 0 ? 1.0 / o_rate : 0);
    double achieved = o_rate > 0 ? (span > 0 ? (double)sent / span : 0) : (double)acked / ((double)(t_done - t0) / 1e9);
    printf("{\"proto\":\"%s\",\"rate\":%.3f,\"count\":%ld,\"sent\":%ld,\"acked\":%ld,\"errors\":%ld,\"requests\":%ld,"
           "\"t_start\":%lu,\"t_first_send\":%lu,\"t_last_send\":%lu,\"t_done\":%lu,\"achieved_rate\":%.3f,"
           "\"ack_rate\":%.3f,\"max_lag_ms\":%.3f,\"timed_out\":%s,\"cpu_s\":%.3f}\n",
           o_nats ? "nats" : "http", o_rate, o_count, sent, acked, errors, requests, (unsigned long)t0,
           (unsigned long)t_first, (unsigned long)t_last, (unsigned long)t_done, achieved,
           (double)acked / ((double)(t_done - t0) / 1e9), (double)max_lag / 1e6, timed_out ? "true" : "false", cpu);
    close(fd);
    return timed_out || acked + errors < o_count ? 1 : 0;
}
