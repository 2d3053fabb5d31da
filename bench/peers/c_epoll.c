/* bench/peers/c_epoll.c - peer (e): a plain C server, one send() per message per subscriber.
 *
 * Single-threaded, non-blocking sockets, level-triggered epoll, no libraries.
 * It speaks the same protocol as the Python peers (bench/peers/_common.py):
 *
 *   --port      WebSocket: `GET /connection/uni_websocket` upgrade, then one masked text
 *               frame `{"token":..,"subs":{"<ch>":{},..}}` (the token is ignored), answered
 *               with the connect push `{"type":6,"data":{"client":"<n>","version":"peer",
 *               "subs":{"<ch>":{},..}}}`. Close frames are answered and the connection is
 *               dropped; pings get pongs; other text frames are ignored.
 *   --api-port  HTTP/1.1 (keep-alive, pipelining, Content-Length bodies): `POST /api` with
 *               one `{"method":"publish","params":{"channel":..,"data":..}}` per line,
 *               answered with one `{"result":{}}` line per command (or
 *               `{"error":{"code":107,"message":"bad request"}}`).
 *
 * Each publication is framed once, `{"channel":"<ch>","data":{"data":<data>}}` with `data`
 * copied as raw JSON text (never re-encoded), and then sent with one send() per subscriber:
 * no coalescing across publications. Only when the kernel does not take a whole frame does
 * the rest go to that connection's output buffer; while the buffer is not empty, later
 * frames are appended to it (order kept, nothing dropped) and EPOLLOUT drains it.
 *
 * Channel names are compared as the raw bytes between the quotes of the JSON string (the
 * bench uses plain ASCII names, so no escapes). Connections of a channel are kept in an
 * array (swap-remove on unsubscribe); channels live in a chained hash table and are freed
 * when their last subscriber leaves. A connection that fails is closed at once, but its
 * memory and subscriptions are released only after the current epoll batch, so a fan-out
 * loop never sees its subscriber array change.
 *
 * Build: gcc -O2 -Wall -o c_epoll c_epoll.c   (bench/gen.py build() does this)
 * Usage: c_epoll --host 127.0.0.1 --port WS_PORT --api-port API_PORT
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define WS_PATH "/connection/uni_websocket"
#define RBUF (256 * 1024)             /* one shared read buffer */
#define MAX_WS_HEAD (16 * 1024)       /* upgrade request head */
#define MAX_WS_MSG (1024 * 1024)      /* client frame / message payload */
#define MAX_API_HEAD (64 * 1024)
#define MAX_API_BODY (256u * 1024 * 1024)
#define HDR_ROOM 10                   /* room for a frame header in front of a payload */

static const char BAD_LINE[] = "{\"error\":{\"code\":107,\"message\":\"bad request\"}}";
static const char OK_LINE[] = "{\"result\":{}}";

/* ---------------------------------------------------------------- buffers */
typedef struct {
    char *d;
    size_t off, len, cap; /* bytes d[off .. off+len) are pending */
} buf_t;

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p) {
        perror("c_epoll: realloc");
        exit(2);
    }
    return p;
}

static void buf_reserve(buf_t *b, size_t more) {
    if (b->off + b->len + more <= b->cap) return;
    if (b->off) { /* compact first */
        memmove(b->d, b->d + b->off, b->len);
        b->off = 0;
        if (b->len + more <= b->cap) return;
    }
    size_t n = b->cap ? b->cap : 512;
    while (n < b->len + more) n *= 2;
    b->d = xrealloc(b->d, n);
    b->cap = n;
}

static void buf_put(buf_t *b, const void *p, size_t n) {
    buf_reserve(b, n);
    memcpy(b->d + b->off + b->len, p, n);
    b->len += n;
}

static void buf_puts(buf_t *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_free(buf_t *b) {
    free(b->d);
    memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------- connections and channels */
enum { K_LISTEN_WS, K_LISTEN_API, K_WS_HS, K_WS, K_API };

struct channel;
typedef struct {
    struct channel *ch;
    uint32_t idx; /* position of the connection in ch->subs */
} sub_t;

typedef struct conn {
    int fd;
    uint8_t kind;
    uint8_t dead;      /* closed; freed after the current epoll batch */
    uint8_t closing;   /* last bytes queued: close once the output buffer is drained */
    uint8_t greeted;   /* the connect message was answered */
    uint8_t frag_op;   /* opcode of a fragmented message being collected (0 = none) */
    uint32_t events;   /* what epoll watches */
    uint32_t nsubs, subcap;
    sub_t *subs;
    buf_t in, out, frag;
    struct conn *next_dead;
} conn_t;

typedef struct channel {
    struct channel *next;
    uint32_t hash, nlen, n, cap;
    conn_t **subs;
    char name[];
} channel_t;

static int ep;
static volatile sig_atomic_t g_stop;
static char *rbuf;
static conn_t *graveyard;
static buf_t g_frame, g_body, g_reply; /* scratch */
static uint64_t g_client_id;
static int g_reserve_fd = -1;          /* spare fd, given up to shed a connection on EMFILE */

static channel_t **g_tab;
static uint32_t g_tab_size, g_nchan;

static uint32_t hash_name(const char *p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 16777619u;
    return h;
}

static channel_t *channel_find(const char *name, size_t n, uint32_t h) {
    for (channel_t *c = g_tab[h & (g_tab_size - 1)]; c; c = c->next)
        if (c->hash == h && c->nlen == n && memcmp(c->name, name, n) == 0) return c;
    return NULL;
}

static void table_grow(void) {
    uint32_t size = g_tab_size * 2;
    channel_t **t = calloc(size, sizeof *t);
    if (!t) {
        perror("c_epoll: calloc");
        exit(2);
    }
    for (uint32_t i = 0; i < g_tab_size; i++)
        for (channel_t *c = g_tab[i], *next; c; c = next) {
            next = c->next;
            c->next = t[c->hash & (size - 1)];
            t[c->hash & (size - 1)] = c;
        }
    free(g_tab);
    g_tab = t;
    g_tab_size = size;
}

static channel_t *channel_get(const char *name, size_t n) {
    uint32_t h = hash_name(name, n);
    channel_t *c = channel_find(name, n, h);
    if (c) return c;
    if (g_nchan >= g_tab_size) table_grow();
    c = calloc(1, sizeof *c + n + 1);
    if (!c) {
        perror("c_epoll: calloc");
        exit(2);
    }
    c->hash = h;
    c->nlen = (uint32_t)n;
    memcpy(c->name, name, n);
    c->next = g_tab[h & (g_tab_size - 1)];
    g_tab[h & (g_tab_size - 1)] = c;
    g_nchan++;
    return c;
}

static void channel_drop(channel_t *c) {
    channel_t **pp = &g_tab[c->hash & (g_tab_size - 1)];
    while (*pp != c) pp = &(*pp)->next;
    *pp = c->next;
    g_nchan--;
    free(c->subs);
    free(c);
}

static void subscribe(conn_t *k, const char *name, size_t n) {
    channel_t *c = channel_get(name, n);
    for (uint32_t i = 0; i < k->nsubs; i++)
        if (k->subs[i].ch == c) return; /* already */
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 4;
        c->subs = xrealloc(c->subs, c->cap * sizeof *c->subs);
    }
    if (k->nsubs == k->subcap) {
        k->subcap = k->subcap ? k->subcap * 2 : 1;
        k->subs = xrealloc(k->subs, k->subcap * sizeof *k->subs);
    }
    k->subs[k->nsubs++] = (sub_t){c, c->n};
    c->subs[c->n++] = k;
}

static void unsubscribe_all(conn_t *k) {
    for (uint32_t i = 0; i < k->nsubs; i++) {
        channel_t *c = k->subs[i].ch;
        uint32_t idx = k->subs[i].idx, last = --c->n;
        if (idx != last) { /* move the last subscriber into the hole */
            conn_t *m = c->subs[last];
            c->subs[idx] = m;
            for (uint32_t j = 0; j < m->nsubs; j++)
                if (m->subs[j].ch == c) {
                    m->subs[j].idx = idx;
                    break;
                }
        }
        if (c->n == 0) channel_drop(c);
    }
    free(k->subs);
    k->subs = NULL;
    k->nsubs = k->subcap = 0;
}

static void set_events(conn_t *c) {
    uint32_t want = (c->closing ? 0 : EPOLLIN) | (c->out.len ? EPOLLOUT : 0);
    if (want != c->events) {
        struct epoll_event ev = {.events = want, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->events = want;
    }
}

/* Close now; memory and subscriptions are released by reap() after the epoll batch. */
static void conn_close(conn_t *c) {
    if (c->dead) return;
    c->dead = 1;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->next_dead = graveyard;
    graveyard = c;
}

static void reap(void) {
    while (graveyard) {
        conn_t *c = graveyard;
        graveyard = c->next_dead;
        unsubscribe_all(c);
        buf_free(&c->in);
        buf_free(&c->out);
        buf_free(&c->frag);
        free(c);
    }
}

/* One send() of the whole thing, unless earlier bytes are still buffered. */
static void conn_send(conn_t *c, const char *p, size_t n) {
    if (c->dead) return;
    if (c->out.len) {
        buf_put(&c->out, p, n);
        return;
    }
    ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
    if (w == (ssize_t)n) return;
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            conn_close(c);
            return;
        }
        w = 0;
    }
    buf_put(&c->out, p + w, n - (size_t)w);
    set_events(c);
}

static void conn_flush(conn_t *c) {
    while (c->out.len) {
        ssize_t w = send(c->fd, c->out.d + c->out.off, c->out.len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
            conn_close(c);
            return;
        }
        c->out.off += (size_t)w;
        c->out.len -= (size_t)w;
    }
    buf_free(&c->out);
    if (c->closing) conn_close(c);
    else set_events(c);
}

/* Queue the last bytes of a connection: it is closed once they are written. */
static void conn_finish(conn_t *c, const char *p, size_t n) {
    conn_send(c, p, n);
    if (c->dead) return;
    c->closing = 1;
    if (!c->out.len) conn_close(c);
    else set_events(c);
}

/* ---------------------------------------------------------------- SHA-1, base64 */
static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1_block(uint32_t h[5], const uint8_t *p) {
    uint32_t w[80], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) f = (b & c) | (~b & d), k = 0x5a827999;
        else if (i < 40) f = b ^ c ^ d, k = 0x6ed9eba1;
        else if (i < 60) f = (b & c) | (b & d) | (c & d), k = 0x8f1bbcdc;
        else f = b ^ c ^ d, k = 0xca62c1d6;
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d, d = c, c = rol(b, 30), b = a, a = t;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
}

static void sha1(const uint8_t *data, size_t n, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0};
    uint8_t tail[128];
    size_t i = 0;
    for (; i + 64 <= n; i += 64) sha1_block(h, data + i);
    size_t r = n - i, tl = r < 56 ? 64 : 128;
    memcpy(tail, data + i, r);
    tail[r++] = 0x80;
    memset(tail + r, 0, tl - r);
    uint64_t bits = (uint64_t)n * 8;
    for (int j = 0; j < 8; j++) tail[tl - 1 - j] = (uint8_t)(bits >> (8 * j));
    sha1_block(h, tail);
    if (tl == 128) sha1_block(h, tail + 64);
    for (int j = 0; j < 5; j++)
        for (int b = 0; b < 4; b++) out[4 * j + b] = (uint8_t)(h[j] >> (24 - 8 * b));
}

static size_t base64(const uint8_t *p, size_t n, char *out) {
    static const char T[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        out[o++] = T[v >> 18 & 63];
        out[o++] = T[v >> 12 & 63];
        out[o++] = i + 1 < n ? T[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? T[v & 63] : '=';
    }
    out[o] = 0;
    return o;
}

/* ---------------------------------------------------------------- minimal JSON scanning */
static const char *skip_ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    return p;
}

/* p at '"': returns the byte after the closing quote, or NULL. */
static const char *skip_string(const char *p, const char *e) {
    for (p++; p < e; p++) {
        if (*p == '\\') {
            if (++p >= e) return NULL;
        } else if (*p == '"') {
            return p + 1;
        } else if ((uint8_t)*p < 0x20) {
            return NULL;
        }
    }
    return NULL;
}

static int is_scalar_char(char ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || ch == '-' || ch == '+' || ch == '.' ||
           ch == 'E';
}

/* One JSON value starting at p (after whitespace): returns its end, or NULL. Containers
 * are scanned with string/escape awareness and matched brackets; scalars loosely. */
static const char *skip_value(const char *p, const char *e) {
    char stack[256];
    int depth = 0;
    if (p >= e) return NULL;
    if (*p == '"') return skip_string(p, e);
    if (*p != '{' && *p != '[') {
        const char *s = p;
        while (p < e && is_scalar_char(*p)) p++;
        return p > s ? p : NULL;
    }
    while (p < e) {
        char ch = *p;
        if (ch == '"') {
            if (!(p = skip_string(p, e))) return NULL;
            continue;
        }
        if (ch == '{' || ch == '[') {
            if (depth == (int)sizeof stack) return NULL;
            stack[depth++] = ch == '{' ? '}' : ']';
        } else if (ch == '}' || ch == ']') {
            if (!depth || stack[depth - 1] != ch) return NULL;
            if (--depth == 0) return p + 1;
        }
        p++;
    }
    return NULL;
}

/* Iterates the members of the object at it->p: 1 = a member (key without its quotes,
 * value as raw text), 0 = end of the object (it->p is after '}'), -1 = not valid. */
typedef struct {
    const char *p, *e;
    int started;
} objit_t;

static int obj_next(objit_t *it, const char **k, size_t *kn, const char **v, const char **ve) {
    const char *p = skip_ws(it->p, it->e), *e = it->e, *q;
    if (p >= e) return -1;
    if (!it->started) {
        if (*p != '{') return -1;
        it->started = 1;
        p = skip_ws(p + 1, e);
        if (p < e && *p == '}') {
            it->p = p + 1;
            return 0;
        }
    } else if (*p == '}') {
        it->p = p + 1;
        return 0;
    } else if (*p == ',') {
        p = skip_ws(p + 1, e);
    } else {
        return -1;
    }
    if (p >= e || *p != '"' || !(q = skip_string(p, e))) return -1;
    *k = p + 1;
    *kn = (size_t)(q - 1 - (p + 1));
    p = skip_ws(q, e);
    if (p >= e || *p != ':') return -1;
    p = skip_ws(p + 1, e);
    if (!(q = skip_value(p, e))) return -1;
    *v = p;
    *ve = q;
    it->p = q;
    return 1;
}

static int key_is(const char *k, size_t kn, const char *want) {
    return kn == strlen(want) && memcmp(k, want, kn) == 0;
}

/* ---------------------------------------------------------------- WebSocket frames */
/* Writes the header of an unmasked final frame (opcode op, n payload bytes) to h. */
static size_t ws_header(uint8_t *h, int op, size_t n) {
    h[0] = (uint8_t)(0x80 | op);
    if (n < 126) {
        h[1] = (uint8_t)n;
        return 2;
    }
    if (n < 65536) {
        h[1] = 126;
        h[2] = (uint8_t)(n >> 8);
        h[3] = (uint8_t)n;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
    return 10;
}

/* b holds HDR_ROOM spare bytes and then the payload: returns the framed text frame. */
static const char *frame_text(buf_t *b, size_t *len) {
    uint8_t h[HDR_ROOM];
    size_t n = b->len - HDR_ROOM, hl = ws_header(h, 1, n);
    char *start = b->d + b->off + HDR_ROOM - hl;
    memcpy(start, h, hl);
    *len = hl + n;
    return start;
}

static void ws_fail(conn_t *c, uint16_t code) {
    char f[4] = {(char)0x88, 2, (char)(code >> 8), (char)code};
    conn_finish(c, f, sizeof f);
}

/* The connect message: subscribe to the keys of "subs" and answer the connect push. */
static void on_connect_message(conn_t *c, const char *p, size_t n) {
    const char *e = p + n, *k, *v, *ve, *subs = NULL, *subs_end = NULL;
    size_t kn;
    objit_t it = {skip_ws(p, e), e, 0};
    int r;
    while ((r = obj_next(&it, &k, &kn, &v, &ve)) == 1)
        if (key_is(k, kn, "subs")) subs = v, subs_end = ve;
    if (r < 0 || skip_ws(it.p, e) != e) subs = NULL; /* not one JSON object: no subscriptions */
    if (subs && *subs == '{') {
        objit_t s = {subs, subs_end, 0};
        while (obj_next(&s, &k, &kn, &v, &ve) == 1) subscribe(c, k, kn);
    }
    buf_t *b = &g_frame;
    b->off = 0;
    b->len = HDR_ROOM;
    char num[32];
    snprintf(num, sizeof num, "%llu", (unsigned long long)++g_client_id);
    buf_puts(b, "{\"type\":6,\"data\":{\"client\":\"");
    buf_puts(b, num);
    buf_puts(b, "\",\"version\":\"peer\",\"subs\":{");
    for (uint32_t i = 0; i < c->nsubs; i++) {
        buf_puts(b, i ? ",\"" : "\"");
        buf_put(b, c->subs[i].ch->name, c->subs[i].ch->nlen);
        buf_puts(b, "\":{}");
    }
    buf_puts(b, "}}}");
    size_t len;
    const char *f = frame_text(b, &len);
    conn_send(c, f, len);
}

static void on_ws_message(conn_t *c, int op, const char *p, size_t n) {
    if (op == 1 && !c->greeted) {
        c->greeted = 1;
        on_connect_message(c, p, n);
    }
}

/* Complete client frames of p[0..len): returns the bytes consumed. */
static size_t ws_feed(conn_t *c, char *p, size_t len) {
    size_t pos = 0;
    while (!c->dead && !c->closing && len - pos >= 2) {
        uint8_t b0 = (uint8_t)p[pos], b1 = (uint8_t)p[pos + 1];
        uint64_t plen = b1 & 0x7f;
        size_t h = 2;
        if (plen == 126) {
            if (len - pos < 4) break;
            plen = (uint64_t)(uint8_t)p[pos + 2] << 8 | (uint8_t)p[pos + 3];
            h = 4;
        } else if (plen == 127) {
            if (len - pos < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = plen << 8 | (uint8_t)p[pos + 2 + i];
            h = 10;
        }
        int op = b0 & 0x0f, fin = b0 & 0x80;
        if (!(b1 & 0x80) || (b0 & 0x70) || (op >= 8 && (!fin || plen > 125)) || (op > 2 && op < 8) || op > 10) {
            ws_fail(c, 1002); /* unmasked, reserved bits or opcodes, bad control frame */
            break;
        }
        if (plen > MAX_WS_MSG) {
            ws_fail(c, 1009);
            break;
        }
        if (len - pos < h + 4 + plen) break;
        char *mask = p + pos + h, *pl = mask + 4;
        for (uint64_t i = 0; i < plen; i++) pl[i] ^= mask[i & 3];
        pos += h + 4 + plen;
        if (op == 8) { /* close: answer with the same status code, then drop */
            char f[4] = {(char)0x88, 0};
            if (plen >= 2) f[1] = 2, f[2] = pl[0], f[3] = pl[1];
            conn_finish(c, f, plen >= 2 ? 4 : 2);
        } else if (op == 9) { /* ping: pong with the same payload */
            uint8_t hdr[HDR_ROOM];
            size_t hl = ws_header(hdr, 10, plen);
            char f[HDR_ROOM + 125];
            memcpy(f, hdr, hl);
            memcpy(f + hl, pl, plen);
            conn_send(c, f, hl + plen);
        } else if (op == 10) {
            /* pong: nothing to do */
        } else if (op == 0) { /* continuation */
            if (!c->frag_op) {
                ws_fail(c, 1002);
                break;
            }
            if (c->frag.len + plen > MAX_WS_MSG) {
                ws_fail(c, 1009);
                break;
            }
            buf_put(&c->frag, pl, plen);
            if (fin) {
                on_ws_message(c, c->frag_op, c->frag.d + c->frag.off, c->frag.len);
                buf_free(&c->frag);
                c->frag_op = 0;
            }
        } else { /* 1 text, 2 binary */
            if (c->frag_op) {
                ws_fail(c, 1002);
                break;
            }
            if (fin) {
                on_ws_message(c, op, pl, plen);
            } else {
                c->frag_op = (uint8_t)op;
                buf_put(&c->frag, pl, plen);
            }
        }
    }
    return pos;
}

static void http_fail(conn_t *c, const char *status) {
    char r[256];
    int n = snprintf(r, sizeof r, "HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status);
    conn_finish(c, r, (size_t)n);
}

/* The upgrade request: returns the bytes consumed (0 while the head is incomplete). */
static size_t ws_handshake(conn_t *c, char *p, size_t len) {
    char *eoh = memmem(p, len, "\r\n\r\n", 4);
    if (!eoh) {
        if (len > MAX_WS_HEAD) http_fail(c, "431 Request Header Fields Too Large");
        return 0;
    }
    size_t pl = sizeof WS_PATH - 1;
    if (eoh - p < 4 || memcmp(p, "GET ", 4) != 0) {
        http_fail(c, "405 Method Not Allowed");
        return 0;
    }
    if ((size_t)(eoh - p) < 4 + pl + 1 || memcmp(p + 4, WS_PATH, pl) != 0 || (p[4 + pl] != ' ' && p[4 + pl] != '?')) {
        http_fail(c, "404 Not Found");
        return 0;
    }
    const char *key = NULL;
    size_t keylen = 0;
    for (char *line = memmem(p, (size_t)(eoh - p), "\r\n", 2); line && line < eoh;) {
        line += 2;
        char *eol = memmem(line, (size_t)(eoh + 2 - line), "\r\n", 2);
        char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon && colon - line == 17 && strncasecmp(line, "sec-websocket-key", 17) == 0) {
            const char *v = colon + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            key = v;
            keylen = (size_t)(ve - v);
        }
        line = eol;
    }
    if (!key || keylen == 0 || keylen > 64) {
        http_fail(c, "400 Bad Request");
        return 0;
    }
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    uint8_t cat[64 + sizeof guid], digest[20];
    memcpy(cat, key, keylen);
    memcpy(cat + keylen, guid, sizeof guid - 1);
    sha1(cat, keylen + sizeof guid - 1, digest);
    char accept[32], resp[256];
    base64(digest, 20, accept);
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    conn_send(c, resp, (size_t)n);
    c->kind = K_WS;
    return (size_t)(eoh + 4 - p);
}

/* ---------------------------------------------------------------- the publish API */
static void publish(const char *ch, size_t chn, const char *data, size_t dn) {
    channel_t *c = channel_find(ch, chn, hash_name(ch, chn));
    if (!c || !c->n) return;
    buf_t *b = &g_frame;
    b->off = 0;
    b->len = HDR_ROOM;
    buf_puts(b, "{\"channel\":\"");
    buf_put(b, ch, chn);
    buf_puts(b, "\",\"data\":{\"data\":");
    buf_put(b, data, dn);
    buf_puts(b, "}}");
    size_t len;
    const char *f = frame_text(b, &len);
    for (uint32_t i = 0; i < c->n; i++) { /* one send() per subscriber (c->subs cannot change here) */
        conn_t *s = c->subs[i];
        if (!s->dead && !s->closing) conn_send(s, f, len);
    }
}

/* One command line: 0 = published, -1 = bad request. */
static int api_command(const char *p, const char *e) {
    const char *k, *v, *ve, *params = NULL, *params_end = NULL, *ch = NULL, *data = NULL, *data_end = NULL;
    size_t kn, chn = 0;
    objit_t it = {skip_ws(p, e), e, 0};
    int r;
    while ((r = obj_next(&it, &k, &kn, &v, &ve)) == 1) {
        if (key_is(k, kn, "params")) params = v, params_end = ve;
        else if (key_is(k, kn, "method") && !(ve - v == 9 && memcmp(v, "\"publish\"", 9) == 0)) return -1;
    }
    if (r < 0 || skip_ws(it.p, e) != e || !params || *params != '{') return -1;
    objit_t pi = {params, params_end, 0};
    while ((r = obj_next(&pi, &k, &kn, &v, &ve)) == 1) {
        if (key_is(k, kn, "channel")) {
            if (*v != '"') return -1;
            ch = v + 1, chn = (size_t)(ve - v - 2);
        } else if (key_is(k, kn, "data")) {
            data = v, data_end = ve;
        }
    }
    if (r < 0 || !ch || !data) return -1;
    publish(ch, chn, data, (size_t)(data_end - data));
    return 0;
}

/* Complete requests of p[0..len): returns the bytes consumed; the replies go out in one send. */
static size_t api_feed(conn_t *c, char *p, size_t len) {
    size_t pos = 0;
    g_reply.off = g_reply.len = 0;
    while (!c->dead && !c->closing) {
        char *q = p + pos, *eoh = memmem(q, len - pos, "\r\n\r\n", 4);
        if (!eoh) {
            if (len - pos > MAX_API_HEAD) {
                if (g_reply.len) conn_send(c, g_reply.d, g_reply.len);
                g_reply.len = 0;
                http_fail(c, "431 Request Header Fields Too Large");
            }
            break;
        }
        size_t clen = 0;
        int bad = 0;
        char *line = memmem(q, (size_t)(eoh - q), "\r\n", 2);
        while (line && line < eoh) {
            line += 2;
            char *eol = memmem(line, (size_t)(eoh + 2 - line), "\r\n", 2);
            char *colon = memchr(line, ':', (size_t)(eol - line));
            if (colon) {
                char *ne = colon;
                while (ne > line && (ne[-1] == ' ' || ne[-1] == '\t')) ne--;
                if (ne - line == 14 && strncasecmp(line, "content-length", 14) == 0) {
                    char *v = colon + 1;
                    while (v < eol && (*v == ' ' || *v == '\t')) v++;
                    clen = 0;
                    if (v == eol) bad = 1;
                    for (; v < eol && *v >= '0' && *v <= '9'; v++) {
                        clen = clen * 10 + (size_t)(*v - '0');
                        if (clen > MAX_API_BODY) bad = 1;
                    }
                    while (v < eol && (*v == ' ' || *v == '\t')) v++;
                    if (v != eol) bad = 1;
                }
            }
            line = eol;
        }
        if (bad) {
            if (g_reply.len) conn_send(c, g_reply.d, g_reply.len);
            g_reply.len = 0;
            http_fail(c, clen > MAX_API_BODY ? "413 Payload Too Large" : "400 Bad Request");
            break;
        }
        size_t head = (size_t)(eoh + 4 - q);
        if (len - pos < head + clen) break;
        const char *body = eoh + 4, *be = body + clen;
        g_body.off = g_body.len = 0;
        for (const char *l = body; l < be;) {
            const char *nl = memchr(l, '\n', (size_t)(be - l)), *le = nl ? nl : be;
            if (skip_ws(l, le) != le) { /* not a blank line */
                if (g_body.len) buf_put(&g_body, "\n", 1);
                if (api_command(l, le) == 0) buf_put(&g_body, OK_LINE, sizeof OK_LINE - 1);
                else buf_put(&g_body, BAD_LINE, sizeof BAD_LINE - 1);
            }
            l = le + 1;
        }
        char hdr[160];
        int hn = snprintf(hdr, sizeof hdr,
                          "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                          g_body.len);
        buf_put(&g_reply, hdr, (size_t)hn);
        buf_put(&g_reply, g_body.d + g_body.off, g_body.len);
        pos += head + clen;
    }
    if (g_reply.len) conn_send(c, g_reply.d + g_reply.off, g_reply.len);
    return pos;
}

/* ---------------------------------------------------------------- the event loop */
static size_t feed(conn_t *c, char *p, size_t len) {
    if (c->kind == K_API) return api_feed(c, p, len);
    size_t used = 0;
    if (c->kind == K_WS_HS) {
        used = ws_handshake(c, p, len);
        if (c->kind == K_WS_HS) return used;
    }
    return used + ws_feed(c, p + used, len - used);
}

static void on_readable(conn_t *c) {
    char *base;
    size_t have;
    ssize_t r;
    if (!c->in.len) { /* the usual case: nothing left over, read into the shared buffer */
        r = recv(c->fd, rbuf, RBUF, 0);
        base = rbuf;
    } else {
        buf_reserve(&c->in, 64 * 1024);
        r = recv(c->fd, c->in.d + c->in.off + c->in.len, c->in.cap - c->in.off - c->in.len, 0);
        base = c->in.d + c->in.off;
    }
    if (r <= 0) {
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
        conn_close(c); /* EOF or error */
        return;
    }
    if (base == rbuf) have = (size_t)r;
    else have = c->in.len += (size_t)r;
    size_t used = feed(c, base, have);
    if (c->dead) return;
    if (c->closing) { /* whatever follows is not read */
        buf_free(&c->in);
        return;
    }
    if (base == rbuf) {
        if (used < have) buf_put(&c->in, rbuf + used, have - used);
    } else if (used == have) {
        buf_free(&c->in);
    } else {
        c->in.off += used;
        c->in.len -= used;
    }
}

static void do_accept(conn_t *l) {
    for (int i = 0; i < 256; i++) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if ((errno == EMFILE || errno == ENFILE) && g_reserve_fd >= 0) { /* shed one, do not spin */
                close(g_reserve_fd);
                fd = accept(l->fd, NULL, NULL);
                if (fd >= 0) close(fd);
                g_reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                continue;
            }
            return; /* EAGAIN, or an error of that one connection */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            return;
        }
        c->fd = fd;
        c->kind = l->kind == K_LISTEN_WS ? K_WS_HS : K_API;
        c->events = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
        }
    }
}

static int listen_on(const char *host, int port) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &ai);
    if (rc) {
        fprintf(stderr, "c_epoll: %s: %s\n", host, gai_strerror(rc));
        exit(2);
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
        fprintf(stderr, "c_epoll: listen on %s:%d: %s\n", host, port, strerror(errno));
        exit(2);
    }
    freeaddrinfo(ai);
    return fd;
}

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, api_port = 0;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        i++;
        if (!strcmp(k, "--host")) host = v;
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--api-port")) api_port = atoi(v);
        else goto usage;
    }
    if (port <= 0 || api_port <= 0) goto usage;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* SIGTERM/SIGINT are blocked except inside epoll_pwait, so a stop request is never
     * missed between the check of g_stop and the wait. */
    struct sigaction sa = {.sa_handler = on_signal};
    sigset_t stopsigs, waitmask;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&stopsigs);
    sigaddset(&stopsigs, SIGTERM);
    sigaddset(&stopsigs, SIGINT);
    sigprocmask(SIG_BLOCK, &stopsigs, &waitmask);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);

    rbuf = malloc(RBUF);
    g_tab_size = 1024;
    g_tab = calloc(g_tab_size, sizeof *g_tab);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!rbuf || !g_tab || ep < 0) {
        perror("c_epoll: setup");
        return 2;
    }
    g_reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    static conn_t lws = {.kind = K_LISTEN_WS}, lapi = {.kind = K_LISTEN_API};
    lws.fd = listen_on(host, port);
    lapi.fd = listen_on(host, api_port);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &lws};
    epoll_ctl(ep, EPOLL_CTL_ADD, lws.fd, &ev);
    ev.data.ptr = &lapi;
    epoll_ctl(ep, EPOLL_CTL_ADD, lapi.fd, &ev);

    static struct epoll_event evs[1024];
    while (!g_stop) {
        int n = epoll_pwait(ep, evs, 1024, -1, &waitmask);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("c_epoll: epoll_pwait");
            return 2;
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            if (c->kind == K_LISTEN_WS || c->kind == K_LISTEN_API) {
                do_accept(c);
                continue;
            }
            if (c->dead) continue;
            if (e & EPOLLOUT) conn_flush(c);
            if (c->dead) continue;
            if ((e & EPOLLIN) && !c->closing) on_readable(c);
            else if (e & (EPOLLHUP | EPOLLERR)) conn_close(c);
        }
        reap();
    }
    close(lws.fd);
    close(lapi.fd);
    return 0;

usage:
    fprintf(stderr, "usage: c_epoll [--host 127.0.0.1] --port WS_PORT --api-port API_PORT\n");
    return 2;
}
