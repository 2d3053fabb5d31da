/* bench/loadgen.c - the subscriber side of the uniws benchmarks.
 *
 * `loadgen sub ...`   opens many WebSocket client connections from several forked
 *                     processes (epoll, non-blocking sockets), sends each one its
 *                     connect message, counts every message per connection, checks
 *                     the publisher's sequence numbers and records publish-to-receive
 *                     latency (the `"t":` CLOCK_MONOTONIC ns stamp) in a log-linear
 *                     histogram kept per process in shared memory and merged by the parent.
 * `loadgen blast ...` a tiny C WebSocket server that floods pre-framed publications,
 *                     used to measure the ceiling of `sub` itself (bench selftest).
 *
 * `sub` talks to its driver (bench/gen.py) with JSON lines on stdout and commands on
 * stdin:  reset | wait EXPECT TIMEOUT_MS IDLE_MS | quit    (EOF on stdin = quit).
 * Protocols: `uni` (Centrifugo uni_websocket: text connect message, connect push
 * {"type":6..}, one push per text frame) and `nats` (NATS text protocol inside
 * WebSocket frames: CONNECT/SUB/PING, then MSG ops).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAXP 64
#define RBUF (512 * 1024)
#define SEQMAX (1 << 17) /* per-sequence completion times are kept for this many publications */

/* ---------------------------------------------------------------- histogram */
/* Values in ns. Exact below 64, then 32 linear sub-buckets per power of two (~3%). */
#define HSUB_BITS 5
#define HSUB (1 << HSUB_BITS)
#define HIST_N (2 * HSUB + 40 * HSUB)

static inline int hist_bucket(uint64_t v) {
    if (v < 2 * HSUB) return (int)v;
    int shift = 63 - __builtin_clzll(v) - HSUB_BITS;
    int idx = 2 * HSUB + (shift - 1) * HSUB + (int)((v >> shift) - HSUB);
    return idx < HIST_N ? idx : HIST_N - 1;
}
static uint64_t hist_low(int idx) {
    if (idx < 2 * HSUB) return (uint64_t)idx;
    int shift = (idx - 2 * HSUB) / HSUB + 1;
    return (uint64_t)((idx - 2 * HSUB) % HSUB + HSUB) << shift;
}
static uint64_t hist_mid(int idx) {
    if (idx < 2 * HSUB) return (uint64_t)idx;
    int shift = (idx - 2 * HSUB) / HSUB + 1;
    return hist_low(idx) + ((1ull << shift) >> 1);
}

/* ---------------------------------------------------------------- shared memory */
enum { CMD_NONE, CMD_RESET, CMD_SNAPSHOT, CMD_QUIT };

typedef struct {
    volatile uint64_t ack;                 /* last command sequence handled */
    volatile uint64_t started, ready, failed, closed, share;
    volatile uint64_t t_first_start, t_last_ready;
    volatile uint64_t msgs, bytes, bad, t_first_msg, t_last_msg;
    /* filled on SNAPSHOT */
    uint64_t n_exact, n_short, lost, n_over, dup, seq_err, n_dead_short, cpu_ns, lat_max, lat_n;
    uint64_t hist[HIST_N];
    uint64_t last_rx[SEQMAX];  /* when this process last received publication s (any connection) */
    uint64_t sent_at[SEQMAX];  /* its "t" */
} child_t;

typedef struct {
    volatile uint64_t cmd_seq;
    volatile int cmd;
    volatile uint64_t expect;
    child_t c[];
} shm_t;

static shm_t *S;

/* ---------------------------------------------------------------- options */
static const char *o_host = "127.0.0.1", *o_path = "/connection/uni_websocket", *o_conns;
static int o_port, o_clients, o_procs = 2, o_nats, o_inflight = 512, o_src = 8;
static int o_connect_timeout = 60;
static long o_count = 100000;
static int o_pad = 60;
static int o_max_s = 3600; /* every mode stops by itself after this */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static uint64_t cpu_ns(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}
static void die(const char *what) {
    perror(what);
    exit(2);
}

/* ---------------------------------------------------------------- connections */
enum { ST_IDLE, ST_CONNECTING, ST_HANDSHAKE, ST_WAITPUSH, ST_READY, ST_CLOSED, ST_FAILED };

typedef struct {
    int fd, idx;
    uint8_t state;
    uint32_t count, next_seq, seq_err;
    char *buf;                  /* bytes of an unfinished frame (or HTTP head) */
    uint32_t blen, bcap;
    char *nbuf;                 /* NATS: protocol bytes not parsed yet */
    uint32_t nlen, ncap;
    uint64_t t_start;
} conn_t;

static char **g_chan, **g_msg;  /* per client index: channel, connect message */
static conn_t *C;
static int nmine, started_n, handshaking;
static int epfd;
static child_t *me;
static char *rbuf;
static uint64_t l_msgs, l_bytes, l_bad, l_first, l_last, l_max;

static void grow(char **b, uint32_t *cap, uint32_t need) {
    if (need <= *cap) return;
    uint32_t n = *cap ? *cap : 256;
    while (n < need) n *= 2;
    *b = realloc(*b, n);
    if (!*b) die("realloc");
    *cap = n;
}

/* A masked client frame (opcode 1 text or 2 binary). */
static int send_frame(conn_t *c, int opcode, const char *p, size_t n) {
    char hdr[14];
    size_t h = 2;
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    hdr[0] = (char)(0x80 | opcode);
    if (n < 126) {
        hdr[1] = (char)(0x80 | n);
    } else if (n < 65536) {
        hdr[1] = (char)(0x80 | 126);
        hdr[2] = (char)(n >> 8);
        hdr[3] = (char)n;
        h = 4;
    } else {
        hdr[1] = (char)(0x80 | 127);
        for (int i = 0; i < 8; i++) hdr[2 + i] = (char)((uint64_t)n >> (56 - 8 * i));
        h = 10;
    }
    memcpy(hdr + h, key, 4);
    h += 4;
    char *out = malloc(h + n);
    memcpy(out, hdr, h);
    for (size_t i = 0; i < n; i++) out[h + i] = (char)(p[i] ^ key[i & 3]);
    ssize_t w = send(c->fd, out, h + n, MSG_NOSIGNAL);
    free(out);
    return w == (ssize_t)(h + n) ? 0 : -1;
}

static void conn_end(conn_t *c, int state) {
    if (c->state == ST_HANDSHAKE || c->state == ST_WAITPUSH || c->state == ST_CONNECTING) handshaking--;
    if (state == ST_FAILED) me->failed++;
    else me->closed++;
    c->state = (uint8_t)state;
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
}

static void conn_ready(conn_t *c, uint64_t now) {
    c->state = ST_READY;
    handshaking--;
    me->ready++;
    me->t_last_ready = now;
}

static void start_conn(conn_t *c) {
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET};
    int one = 1;
    c->t_start = now_ns();
    if (!me->t_first_start) me->t_first_start = c->t_start;
    me->started++;
    handshaking++;
    c->state = ST_CONNECTING;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        conn_end(c, ST_FAILED);
        return;
    }
    if (o_src > 0) { /* spread over 127.0.0.2.. so ports never run out */
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(c->idx % o_src));
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0) {
            conn_end(c, ST_FAILED);
            return;
        }
    }
    dst.sin_port = htons((uint16_t)o_port);
    inet_pton(AF_INET, o_host, &dst.sin_addr);
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
        conn_end(c, ST_FAILED);
        return;
    }
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    char req[1024];
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        conn_end(c, ST_FAILED);
        return;
    }
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     o_path, o_host, o_port);
    if (send(c->fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        conn_end(c, ST_FAILED);
        return;
    }
    c->state = ST_HANDSHAKE;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* ---------------------------------------------------------------- message handling */
static inline uint64_t parse_u64(const char **pp, const char *end) {
    const char *p = *pp;
    uint64_t v = 0;
    while (p < end && *p == ' ') p++;
    while (p < end && (unsigned)(*p - '0') < 10) v = v * 10 + (uint64_t)(*p++ - '0');
    *pp = p;
    return v;
}

/* One publication: count it, check its sequence number, record its latency. */
static inline void on_pub(conn_t *c, const char *p, size_t n, uint64_t now) {
    c->count++;
    l_msgs++;
    const char *end = p + n;
    const char *q = memmem(p, n, "\"t\":", 4);
    if (!q) {
        l_bad++;
        return;
    }
    q += 4;
    uint64_t t = parse_u64(&q, end);
    uint64_t lat = now > t ? now - t : 0;
    me->hist[hist_bucket(lat)]++;
    if (lat > l_max) l_max = lat;
    if (end - q > 5 && memcmp(q, ",\"s\":", 5) == 0) {
        q += 5;
        uint64_t s = parse_u64(&q, end);
        if (s != c->next_seq) c->seq_err++;
        c->next_seq = (uint32_t)s + 1;
        if (s < SEQMAX) {
            if (now > me->last_rx[s]) me->last_rx[s] = now;
            me->sent_at[s] = t;
        }
    }
}

static void nats_feed(conn_t *c, const char *p, size_t n, uint64_t now) {
    grow(&c->nbuf, &c->ncap, c->nlen + (uint32_t)n);
    memcpy(c->nbuf + c->nlen, p, n);
    c->nlen += (uint32_t)n;
    char *b = c->nbuf, *end = b + c->nlen, *pos = b;
    while (pos < end) {
        char *eol = memmem(pos, (size_t)(end - pos), "\r\n", 2);
        if (!eol) break;
        if (eol - pos >= 4 && memcmp(pos, "MSG ", 4) == 0) {
            char *sp = eol; /* the byte count is the last token of the line */
            while (sp > pos && sp[-1] != ' ') sp--;
            const char *q = sp;
            size_t len = (size_t)parse_u64(&q, eol);
            if ((size_t)(end - eol) < 2 + len + 2) break;
            on_pub(c, eol + 2, len, now);
            l_bytes += len;
            pos = eol + 2 + len + 2;
            continue;
        }
        if (eol - pos >= 4 && memcmp(pos, "PING", 4) == 0) {
            send_frame(c, 2, "PONG\r\n", 6);
        } else if (eol - pos >= 4 && memcmp(pos, "PONG", 4) == 0) {
            if (c->state == ST_WAITPUSH) conn_ready(c, now);
        } else if (eol - pos >= 4 && memcmp(pos, "-ERR", 4) == 0) {
            fprintf(stderr, "loadgen: nats error: %.*s\n", (int)(eol - pos), pos);
            l_bad++;
        }
        pos = eol + 2;
    }
    c->nlen = (uint32_t)(end - pos);
    if (c->nlen && pos != b) memmove(b, pos, c->nlen);
}

static void on_message(conn_t *c, int opcode, const char *p, size_t n, uint64_t now) {
    if (o_nats) {
        nats_feed(c, p, n, now);
        return;
    }
    (void)opcode;
    if (c->state == ST_WAITPUSH) {
        if (memmem(p, n < 16 ? n : 16, "\"type\":6", 8)) conn_ready(c, now);
        else {
            fprintf(stderr, "loadgen: unexpected first message: %.*s\n", (int)(n < 200 ? n : 200), p);
            conn_end(c, ST_FAILED);
        }
        return;
    }
    l_bytes += n;
    on_pub(c, p, n, now);
}

/* Parse complete frames of p[0..len); returns bytes consumed, -1 when the conn ended. */
static ssize_t parse_frames(conn_t *c, char *p, size_t len, uint64_t now) {
    size_t pos = 0;
    while (len - pos >= 2) {
        uint8_t b0 = (uint8_t)p[pos], b1 = (uint8_t)p[pos + 1];
        uint64_t plen = b1 & 0x7f;
        size_t h = 2;
        if (plen == 126) {
            if (len - pos < 4) break;
            plen = ((uint64_t)(uint8_t)p[pos + 2] << 8) | (uint8_t)p[pos + 3];
            h = 4;
        } else if (plen == 127) {
            if (len - pos < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = (plen << 8) | (uint8_t)p[pos + 2 + i];
            h = 10;
        }
        size_t mh = (b1 & 0x80) ? 4 : 0;
        if (len - pos < h + mh + plen) break;
        char *pl = p + pos + h + mh;
        if (mh)
            for (uint64_t i = 0; i < plen; i++) pl[i] ^= p[pos + h + (i & 3)];
        int opcode = b0 & 0x0f;
        pos += h + mh + plen;
        if (opcode <= 2) {
            on_message(c, opcode, pl, plen, now);
            if (c->state >= ST_CLOSED) return -1;
        } else if (opcode == 8) {
            conn_end(c, c->state == ST_READY ? ST_CLOSED : ST_FAILED);
            return -1;
        } else if (opcode == 9) {
            static const char pong[6] = {(char)0x8a, (char)0x80, 0, 0, 0, 0}; /* masked, empty */
            send(c->fd, pong, 6, MSG_NOSIGNAL);
        }
    }
    return (ssize_t)pos;
}

static void on_handshake(conn_t *c, char *p, size_t len, uint64_t now) {
    char *eoh = memmem(p, len, "\r\n\r\n", 4);
    if (!eoh) {
        if (len > 8192) conn_end(c, ST_FAILED);
        else {
            grow(&c->buf, &c->bcap, (uint32_t)len);
            memcpy(c->buf, p, len);
            c->blen = (uint32_t)len;
        }
        return;
    }
    if (len < 12 || memcmp(p + 9, "101", 3) != 0) {
        fprintf(stderr, "loadgen: upgrade refused: %.*s\n", (int)(eoh - p < 80 ? eoh - p : 80), p);
        conn_end(c, ST_FAILED);
        return;
    }
    c->state = ST_WAITPUSH;
    int rc;
    if (o_nats) {
        char cmd[512];
        int n = snprintf(cmd, sizeof cmd,
                         "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nSUB %s 1\r\nPING\r\n",
                         g_chan[c->idx]);
        rc = send_frame(c, 2, cmd, (size_t)n);
    } else {
        rc = send_frame(c, 1, g_msg[c->idx], strlen(g_msg[c->idx]));
    }
    if (rc < 0) {
        conn_end(c, ST_FAILED);
        return;
    }
    size_t rest = len - (size_t)(eoh + 4 - p);
    if (rest) { /* frames right behind the 101 (NATS sends INFO at once) */
        ssize_t used = parse_frames(c, eoh + 4, rest, now);
        if (used < 0) return;
        c->blen = (uint32_t)(rest - (size_t)used);
        if (c->blen) {
            grow(&c->buf, &c->bcap, c->blen);
            memmove(c->buf, eoh + 4 + used, c->blen);
        }
    }
}

static void on_readable(conn_t *c, uint64_t *now) {
    size_t off = c->blen;
    if (off) memcpy(rbuf, c->buf, off);
    c->blen = 0;
    ssize_t n = recv(c->fd, rbuf + off, RBUF - off, 0);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            c->blen = (uint32_t)off; /* still in c->buf */
            return;
        }
        conn_end(c, c->state == ST_READY ? ST_CLOSED : ST_FAILED);
        return;
    }
    *now = now_ns(); /* one clock read per recv: every message in it arrived by now */
    size_t len = off + (size_t)n;
    if (c->state == ST_HANDSHAKE) {
        on_handshake(c, rbuf, len, *now);
        return;
    }
    uint64_t before = l_msgs;
    ssize_t used = parse_frames(c, rbuf, len, *now);
    if (l_msgs != before) {
        if (!l_first) l_first = *now;
        l_last = *now;
    }
    if (used < 0) return;
    if ((size_t)used < len) {
        if (len - (size_t)used >= RBUF / 2) { /* a frame bigger than we ever expect */
            conn_end(c, ST_FAILED);
            return;
        }
        grow(&c->buf, &c->bcap, (uint32_t)(len - (size_t)used));
        memcpy(c->buf, rbuf + used, len - (size_t)used);
        c->blen = (uint32_t)(len - (size_t)used);
    }
}

static void publish_counters(void) {
    me->msgs = l_msgs;
    me->bytes = l_bytes;
    me->bad = l_bad;
    me->t_first_msg = l_first;
    me->t_last_msg = l_last;
}

static void do_command(int cmd) {
    if (cmd == CMD_RESET) {
        for (int i = 0; i < nmine; i++) {
            C[i].count = 0;
            C[i].next_seq = 0;
            C[i].seq_err = 0;
        }
        memset(me->hist, 0, sizeof me->hist);
        memset(me->last_rx, 0, sizeof me->last_rx);
        memset(me->sent_at, 0, sizeof me->sent_at);
        l_msgs = l_bytes = l_bad = l_first = l_last = l_max = 0;
    } else if (cmd == CMD_SNAPSHOT) {
        uint64_t e = S->expect, exact = 0, shrt = 0, lost = 0, over = 0, dup = 0, serr = 0, dead = 0, latn = 0;
        for (int i = 0; i < nmine; i++) {
            conn_t *c = &C[i];
            if (c->state != ST_READY && c->state != ST_CLOSED) continue; /* never connected */
            serr += c->seq_err;
            if (c->count == e) exact++;
            else if (c->count < e) {
                shrt++;
                lost += e - c->count;
                if (c->state == ST_CLOSED) dead++;
            } else {
                over++;
                dup += c->count - e;
            }
        }
        for (int i = 0; i < HIST_N; i++) latn += me->hist[i];
        me->n_exact = exact, me->n_short = shrt, me->lost = lost, me->n_over = over, me->dup = dup;
        me->seq_err = serr, me->n_dead_short = dead, me->lat_max = l_max, me->lat_n = latn;
    }
    me->cpu_ns = cpu_ns();
    publish_counters();
}

static void child_main(int k) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    me = &S->c[k];
    rbuf = malloc(RBUF);
    for (int i = k; i < o_clients; i += o_procs) nmine++;
    me->share = (uint64_t)nmine;
    C = calloc((size_t)nmine + 1, sizeof(conn_t));
    for (int j = 0, i = k; i < o_clients; i += o_procs, j++) {
        C[j].idx = i;
        C[j].fd = -1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event evs[1024];
    uint64_t seen = S->cmd_seq, last_check = 0;
    for (;;) {
        while (handshaking < o_inflight && started_n < nmine) start_conn(&C[started_n++]);
        int n = epoll_wait(epfd, evs, 1024, 2);
        uint64_t now = now_ns();
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->state == ST_CONNECTING) on_connected(c);
            else if (c->fd >= 0) on_readable(c, &now);
        }
        if (now - last_check > 200000000ull) { /* connect timeouts */
            last_check = now;
            for (int i = 0; i < started_n; i++) {
                conn_t *c = &C[i];
                if (c->state >= ST_CONNECTING && c->state <= ST_WAITPUSH &&
                    now - c->t_start > (uint64_t)o_connect_timeout * 1000000000ull)
                    conn_end(c, ST_FAILED);
            }
        }
        publish_counters();
        if (S->cmd_seq != seen) {
            __sync_synchronize();
            seen = S->cmd_seq;
            if (S->cmd == CMD_QUIT) _exit(0);
            do_command(S->cmd);
            __sync_synchronize();
            me->ack = seen;
        }
    }
}

/* ---------------------------------------------------------------- parent */
static pid_t kids[MAXP];

static void kill_kids(void) {
    for (int k = 0; k < o_procs; k++)
        if (kids[k] > 0) kill(kids[k], SIGKILL);
    for (int k = 0; k < o_procs; k++)
        if (kids[k] > 0) waitpid(kids[k], NULL, 0);
}
static void on_signal(int sig) {
    (void)sig;
    for (int k = 0; k < o_procs; k++)
        if (kids[k] > 0) kill(kids[k], SIGKILL);
    _exit(1);
}

static int command(int cmd) { /* 0 when every live child acknowledged */
    S->cmd = cmd;
    __sync_synchronize();
    uint64_t seq = ++S->cmd_seq;
    uint64_t deadline = now_ns() + 10000000000ull;
    for (;;) {
        int all = 1;
        for (int k = 0; k < o_procs; k++)
            if (S->c[k].ack != seq) all = 0;
        if (all) return 0;
        if (now_ns() > deadline) return -1;
        usleep(1000);
    }
}

static uint64_t sum_field(size_t off) {
    uint64_t s = 0;
    for (int k = 0; k < o_procs; k++) s += *(volatile uint64_t *)((char *)&S->c[k] + off);
    return s;
}
#define SUM(f) sum_field(__builtin_offsetof(child_t, f))

static void connect_phase(void) {
    uint64_t t0 = now_ns(), last_print = 0, last_done = 0, t_change = t0;
    for (;;) {
        uint64_t ready = SUM(ready), failed = SUM(failed), closed = SUM(closed), now = now_ns();
        uint64_t done = ready + failed + closed;
        if (done != last_done) last_done = done, t_change = now;
        if (now - last_print > 250000000ull) {
            printf("{\"ev\":\"progress\",\"phase\":\"connect\",\"ready\":%lu,\"failed\":%lu,\"total\":%d}\n",
                   ready, failed, o_clients);
            fflush(stdout);
            last_print = now;
        }
        if (done >= (uint64_t)o_clients ||
            now - t_change > (uint64_t)(o_connect_timeout + 5) * 1000000000ull)
            break;
        usleep(2000);
    }
    uint64_t first = 0, last = 0;
    for (int k = 0; k < o_procs; k++) {
        if (S->c[k].t_first_start && (!first || S->c[k].t_first_start < first)) first = S->c[k].t_first_start;
        if (S->c[k].t_last_ready > last) last = S->c[k].t_last_ready;
    }
    double secs = last > first ? (double)(last - first) / 1e9 : 0;
    printf("{\"ev\":\"ready\",\"clients\":%d,\"ready\":%lu,\"failed\":%lu,\"closed\":%lu,\"procs\":%d,"
           "\"t_first_start\":%lu,\"t_last_ready\":%lu,\"connect_s\":%.6f,\"connects_per_s\":%.1f,"
           "\"wall_s\":%.3f}\n",
           o_clients, SUM(ready), SUM(failed), SUM(closed), o_procs, first, last, secs,
           secs > 0 ? (double)SUM(ready) / secs : 0.0, (double)(now_ns() - t0) / 1e9);
    fflush(stdout);
}

static double pct(const uint64_t *h, uint64_t n, double q) {
    if (!n) return 0;
    uint64_t rank = (uint64_t)(q * (double)n), acc = 0;
    if (rank >= n) rank = n - 1;
    for (int i = 0; i < HIST_N; i++) {
        acc += h[i];
        if (acc > rank) return (double)hist_mid(i) / 1e6;
    }
    return 0;
}

static void wait_cmd(uint64_t expect, uint64_t timeout_ms, uint64_t idle_ms) {
    uint64_t conns = SUM(ready);
    uint64_t target = expect * SUM(ready);
    uint64_t t0 = now_ns(), t_change = t0, last = (uint64_t)-1, last_print = 0;
    uint64_t cpu0[MAXP];
    for (int k = 0; k < o_procs; k++) cpu0[k] = S->c[k].cpu_ns;
    const char *why = "complete";
    for (;;) {
        uint64_t m = SUM(msgs), now = now_ns();
        if (m != last) last = m, t_change = now;
        if (now - last_print > 250000000ull) {
            printf("{\"ev\":\"progress\",\"phase\":\"wait\",\"msgs\":%lu,\"target\":%lu}\n", m, target);
            fflush(stdout);
            last_print = now;
        }
        if (m >= target) break;
        if (now - t_change > idle_ms * 1000000ull) { why = "idle"; break; }
        if (now - t0 > timeout_ms * 1000000ull) { why = "timeout"; break; }
        usleep(2000);
    }
    S->expect = expect;
    int ok = command(CMD_SNAPSHOT);
    static uint64_t h[HIST_N];
    memset(h, 0, sizeof h);
    uint64_t lmax = 0, first = 0, lastm = 0;
    double cpu_max = 0, cpu_tot = 0;
    for (int k = 0; k < o_procs; k++) {
        child_t *c = &S->c[k];
        for (int i = 0; i < HIST_N; i++) h[i] += c->hist[i];
        if (c->lat_max > lmax) lmax = c->lat_max;
        if (c->t_first_msg && (!first || c->t_first_msg < first)) first = c->t_first_msg;
        if (c->t_last_msg > lastm) lastm = c->t_last_msg;
        double cs = (double)(c->cpu_ns - cpu0[k]) / 1e9;
        cpu_tot += cs;
        if (cs > cpu_max) cpu_max = cs;
    }
    uint64_t n = SUM(lat_n);
    /* Completion of the first and last publication (seq 0 and expect-1): when the last
     * connection got it. Their difference is the time the server needed for the step. */
    uint64_t done0 = 0, doneN = 0, sent0 = 0, sentN = 0, lastseq = expect ? expect - 1 : 0;
    if (expect && lastseq < SEQMAX)
        for (int k = 0; k < o_procs; k++) {
            child_t *c = &S->c[k];
            if (c->last_rx[0] > done0) done0 = c->last_rx[0], sent0 = c->sent_at[0];
            if (c->last_rx[lastseq] > doneN) doneN = c->last_rx[lastseq], sentN = c->sent_at[lastseq];
        }
    printf("{\"ev\":\"report\",\"why\":\"%s\",\"snapshot_ok\":%s,\"expect\":%lu,\"conns\":%lu,\"ready\":%lu,"
           "\"closed\":%lu,\"msgs\":%lu,\"target\":%lu,\"bytes\":%lu,\"bad\":%lu,\"n_exact\":%lu,"
           "\"n_short\":%lu,\"lost\":%lu,\"n_dead_short\":%lu,\"n_over\":%lu,\"dup\":%lu,\"seq_err\":%lu,"
           "\"t_first_msg\":%lu,\"t_last_msg\":%lu,\"lat_n\":%lu,\"p50_ms\":%.3f,\"p90_ms\":%.3f,"
           "\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,\"cpu_s\":%.3f,\"cpu_max_proc_s\":%.3f,"
           "\"wait_s\":%.3f,\"done_first\":%lu,\"done_last\":%lu,\"sent_first\":%lu,\"sent_last\":%lu,"
           "\"hist\":[",
           why, ok == 0 ? "true" : "false", expect, conns, SUM(ready), SUM(closed), SUM(msgs), target,
           SUM(bytes), SUM(bad), SUM(n_exact), SUM(n_short), SUM(lost), SUM(n_dead_short), SUM(n_over),
           SUM(dup), SUM(seq_err), first, lastm, n, pct(h, n, .5), pct(h, n, .9), pct(h, n, .99),
           pct(h, n, .999), (double)lmax / 1e6, cpu_tot, cpu_max, (double)(now_ns() - t0) / 1e9, done0, doneN,
           sent0, sentN);
    int sep = 0; /* sparse histogram: [bucket low ns, count] pairs, mergeable across runs */
    for (int i = 0; i < HIST_N; i++)
        if (h[i]) printf("%s[%lu,%lu]", sep++ ? "," : "", hist_low(i), h[i]);
    printf("]}\n");
    fflush(stdout);
}

static void read_conns(void) {
    FILE *f = fopen(o_conns, "r");
    if (!f) die(o_conns);
    g_chan = calloc((size_t)o_clients, sizeof(char *));
    g_msg = calloc((size_t)o_clients, sizeof(char *));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int i = 0;
    while (i < o_clients && (n = getline(&line, &cap, f)) > 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        char *tab = strchr(line, '\t');
        if (!tab) continue;
        *tab = 0;
        g_chan[i] = strdup(line);
        g_msg[i] = strdup(tab + 1);
        i++;
    }
    fclose(f);
    free(line);
    if (i < o_clients) {
        fprintf(stderr, "loadgen: %s has %d lines, %d clients asked\n", o_conns, i, o_clients);
        exit(2);
    }
}

static void raise_nofile(void) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

static int sub_main(void) {
    if (!o_port || !o_conns || o_clients <= 0) {
        fprintf(stderr, "loadgen sub: --port, --conns and --clients are required\n");
        return 2;
    }
    if (o_procs < 1 || o_procs > MAXP) o_procs = 2;
    raise_nofile();
    read_conns();
    S = mmap(NULL, sizeof(shm_t) + (size_t)o_procs * sizeof(child_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (S == MAP_FAILED) die("mmap");
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_signal);
    alarm((unsigned)o_max_s); /* bounded: the parent (and so its children) stop by themselves */
    for (int k = 0; k < o_procs; k++) {
        pid_t p = fork();
        if (p < 0) die("fork");
        if (p == 0) {
            child_main(k);
            _exit(0);
        }
        kids[k] = p;
    }
    printf("{\"ev\":\"started\",\"pid\":%d,\"children\":[", getpid());
    for (int k = 0; k < o_procs; k++) printf("%s%d", k ? "," : "", kids[k]);
    printf("]}\n");
    connect_phase();
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        unsigned long a = 0, b = 0, c = 0;
        for (int k = 0; k < o_procs; k++) {
            int st;
            if (kids[k] > 0 && waitpid(kids[k], &st, WNOHANG) == kids[k]) {
                fprintf(stderr, "loadgen: child %d died (status %d)\n", kids[k], st);
                kids[k] = -1;
            }
        }
        if (strncmp(line, "quit", 4) == 0) break;
        if (strncmp(line, "reset", 5) == 0) {
            int rc = command(CMD_RESET);
            printf("{\"ev\":\"reset\",\"ok\":%s}\n", rc == 0 ? "true" : "false");
        } else if (sscanf(line, "wait %lu %lu %lu", &a, &b, &c) == 3) {
            wait_cmd(a, b, c);
        } else {
            printf("{\"ev\":\"error\",\"what\":\"unknown command\"}\n");
        }
        fflush(stdout);
    }
    kill_kids();
    return 0;
}

/* ---------------------------------------------------------------- blast server */
/* Accepts --clients WebSocket connections, answers 101 and a connect push, then, once
 * all are connected, writes --count publications to each, framed exactly like a
 * uni_websocket push, with space-padded "t" and "s" fields patched in per chunk. */
#define BCHUNK (64 * 1024)
typedef struct {
    int fd, st;
    long sent;
    char *chunk;
    size_t clen, coff;
    char in[4096];
    size_t inlen;
} bconn_t;

static size_t frame_len, t_at, s_at;
static char frame_tpl[512];

static void blast_fill(bconn_t *b) {
    long left = o_count - b->sent;
    long nf = (long)(BCHUNK / frame_len);
    if (nf > left) nf = left;
    uint64_t t = now_ns();
    char tdig[21], sdig[21];
    snprintf(tdig, sizeof tdig, "%20lu", (unsigned long)t);
    for (long i = 0; i < nf; i++) {
        char *f = b->chunk + (size_t)i * frame_len;
        memcpy(f, frame_tpl, frame_len);
        memcpy(f + t_at, tdig, 20);
        snprintf(sdig, sizeof sdig, "%10ld", b->sent + i);
        memcpy(f + s_at, sdig, 10);
    }
    b->sent += nf;
    b->clen = (size_t)nf * frame_len;
    b->coff = 0;
}

static int blast_main(void) {
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    char pad[256];
    if (o_pad > 200) o_pad = 200;
    memset(pad, 'x', (size_t)o_pad);
    pad[o_pad] = 0;
    char payload[400];
    int n = snprintf(payload, sizeof payload,
                     "{\"channel\":\"bench\",\"data\":{\"data\":{\"t\":%20s,\"s\":%10s,\"pad\":\"%s\"}}}", "", "",
                     pad);
    size_t h = n < 126 ? 2 : 4;
    frame_tpl[0] = (char)0x81;
    frame_tpl[1] = (char)(n < 126 ? n : 126);
    frame_tpl[2] = (char)(n >> 8);
    frame_tpl[3] = (char)n;
    memcpy(frame_tpl + h, payload, (size_t)n);
    frame_len = (size_t)n + h;
    t_at = h + (size_t)(strstr(payload, "\"t\":") - payload) + 4;
    s_at = h + (size_t)(strstr(payload, "\"s\":") - payload) + 4;

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o_port)};
    inet_pton(AF_INET, o_host, &a.sin_addr);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) die("blast listen");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, evs[512];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    bconn_t **all = calloc((size_t)o_clients + 1, sizeof(bconn_t *));
    int nconn = 0, nready = 0, flooding = 0;
    printf("{\"ev\":\"listening\",\"port\":%d}\n", o_port);
    fflush(stdout);
    uint64_t t_end = now_ns() + (uint64_t)o_max_s * 1000000000ull;
    while (now_ns() < t_end) { /* bounded: stops by itself */
        int k = epoll_wait(ep, evs, 512, 100);
        for (int i = 0; i < k; i++) {
            bconn_t *b = evs[i].data.ptr;
            if (!b) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (nconn >= o_clients) {
                        close(fd);
                        continue;
                    }
                    b = calloc(1, sizeof *b);
                    b->fd = fd;
                    b->chunk = malloc(BCHUNK);
                    all[nconn++] = b;
                    struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = b};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e2);
                }
                continue;
            }
            if (evs[i].events & EPOLLIN) {
                ssize_t r = recv(b->fd, b->in + b->inlen, sizeof b->in - b->inlen, 0);
                if (r <= 0) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, b->fd, NULL);
                    continue;
                }
                b->inlen += (size_t)r;
                if (b->st == 0 && memmem(b->in, b->inlen, "\r\n\r\n", 4)) {
                    const char *resp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                       "Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n";
                    send(b->fd, resp, strlen(resp), MSG_NOSIGNAL);
                    b->st = 1;
                    b->inlen = 0;
                } else if (b->st == 1 && b->inlen >= 2) { /* the connect message: answer the push */
                    const char push[] = "\x81\x14{\"type\":6,\"data\":{}}";
                    send(b->fd, push, sizeof push - 1, MSG_NOSIGNAL);
                    b->st = 2;
                    b->inlen = 0;
                    if (++nready == o_clients) flooding = 1;
                } else if (b->st == 2) {
                    b->inlen = 0;
                }
            }
            if ((evs[i].events & EPOLLOUT) && b->st == 3) {
                while (b->coff < b->clen || b->sent < o_count) {
                    if (b->coff == b->clen) blast_fill(b);
                    ssize_t w = send(b->fd, b->chunk + b->coff, b->clen - b->coff, MSG_NOSIGNAL);
                    if (w <= 0) break;
                    b->coff += (size_t)w;
                }
                if (b->coff == b->clen && b->sent >= o_count) {
                    struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = b};
                    epoll_ctl(ep, EPOLL_CTL_MOD, b->fd, &e2);
                    b->st = 4;
                }
            }
        }
        if (flooding == 1) { /* everyone is connected: start writing (edge-triggered) */
            flooding = 2;
            for (int i = 0; i < nconn; i++) {
                all[i]->st = 3;
                struct epoll_event e2 = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = all[i]};
                epoll_ctl(ep, EPOLL_CTL_MOD, all[i]->fd, &e2);
            }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- main */
static void usage(void) {
    fprintf(stderr,
            "usage: loadgen sub --port P --conns FILE --clients N [--host H] [--path PATH] [--procs K]\n"
            "                   [--proto uni|nats] [--inflight N] [--src-addrs N] [--connect-timeout S]\n"
            "         FILE: one line per client, CHANNEL<TAB>CONNECT-MESSAGE\n"
            "         stdin commands: reset | wait EXPECT TIMEOUT_MS IDLE_MS | quit\n"
            "       loadgen blast --port P --clients N --count M [--pad N]\n"
            "       both: [--max-seconds S] (default 3600) after which the process exits by itself\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        i++;
        if (!strcmp(k, "--host")) o_host = v;
        else if (!strcmp(k, "--port")) o_port = atoi(v);
        else if (!strcmp(k, "--path")) o_path = v;
        else if (!strcmp(k, "--conns")) o_conns = v;
        else if (!strcmp(k, "--clients")) o_clients = atoi(v);
        else if (!strcmp(k, "--procs")) o_procs = atoi(v);
        else if (!strcmp(k, "--proto")) o_nats = !strcmp(v, "nats");
        else if (!strcmp(k, "--inflight")) o_inflight = atoi(v);
        else if (!strcmp(k, "--src-addrs")) o_src = atoi(v);
        else if (!strcmp(k, "--connect-timeout")) o_connect_timeout = atoi(v);
        else if (!strcmp(k, "--count")) o_count = atol(v);
        else if (!strcmp(k, "--pad")) o_pad = atoi(v);
        else if (!strcmp(k, "--max-seconds")) o_max_s = atoi(v);
        else usage();
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* the driver died: stop (the children follow) */
    if (!strcmp(mode, "sub")) return sub_main();
    if (!strcmp(mode, "blast")) return blast_main();
    usage();
    return 2;
}
