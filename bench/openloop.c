/*
 * openloop: an open-loop HTTP/1.1 load generator for the overload benchmark.
 *
 * Request i of a run is due at t0 + i / rate whatever the server does, and its latency is
 * counted from that scheduled time, not from when it was written: a server that stalls makes
 * every request scheduled behind the stall late, which a closed loop (wrk, ab) would hide by
 * sending less. One thread, epoll, non-blocking sockets; nothing in the loop blocks.
 *
 * A due request goes out on an idle pooled connection (keep-alive, one outstanding request
 * per connection, no pipelining); if none is idle a new connection is opened, up to
 * --max-connections; beyond that the request waits in the generator's own queue, where its
 * latency keeps counting and where it can time out. With --fresh every request gets a new
 * connection, closed after its answer (the request template should say Connection: close).
 *
 * Every request ends in exactly one of: a status (2xx, 429, 503, other), a timeout (not fully
 * answered within --timeout of its scheduled time; its connection is closed), a connect error
 * (a connection attempt failed, which fails the request at the head of the queue), or
 * server-closed (the connection was closed or reset before the whole answer arrived).
 *
 * Output, on stdout, one JSON object per line: one per --window seconds of the run, counting
 * what happened in that window (sent = requests that fell due; answers and timeouts by when
 * they ended), then, once every request has ended, one with "total": true for the whole run.
 * Latencies are kept in log-bucketed histograms (128 sub-buckets per power of two of
 * microseconds: at most 0.8 % high), never as samples.
 *
 * With --record FILE, each 2xx appends "<first id of "ids":[...]> <scheduled> <answered>\n",
 * the times in Unix microseconds.
 *
 * Cost: on loopback most of it is the kernel's (each send runs the peer's TCP receive and
 * wakes it), and a wake-up per answer cost as much again: 0.55 of a core at 50,000
 * requests/s. While answers stream in, the loop therefore sleeps out the rest of a tick
 * (--tick-us, 100 µs) before collecting them: 0.25 of a core at 50,000/s, 0.41 at 80,000/s,
 * at the price of up to one tick on the latencies measured under such load.
 *
 * Build: gcc -O2 -o openloop openloop.c -lm  (bench/openloop.py does this and runs it)
 * Run:   openloop --port 8080 --rate 5000 --duration 60 --request post.http
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
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
#include <time.h>
#include <unistd.h>

/* Histogram: values below HIST_SUB µs are exact; above, each power of two is split into
 * HIST_SUB buckets, so a bucket is at most 1/128 of its value wide (HdrHistogram's layout
 * with two significant digits). Values are clamped to HIST_MAX_US (60 s). */
#define HIST_SUB_BITS 7
#define HIST_SUB (1 << HIST_SUB_BITS)
#define HIST_MAX_US (60LL * 1000 * 1000)
/* 60 s < 2^26 µs: shifts 0..18 above the exact range, plus the exact range itself. */
#define HIST_BUCKETS (HIST_SUB * 21)

/* Largest response kept while it arrives; Sluice's answers are a few hundred bytes. */
#define MAX_RESPONSE_BYTES (1 << 20)
#define READ_CHUNK 2048
#define MAX_EVENTS 512
/* While answers stream in, events are collected at most once per tick. */
#define DEFAULT_TICK_US 100

enum outcome { OK_2XX, REFUSED_429, REFUSED_503, OTHER_STATUS, TIMEOUT, CONNECT_ERROR,
               SERVER_CLOSED, OUTCOMES };
static const char *const OUTCOME_KEYS[OUTCOMES] = {
    "ok", "r429", "r503", "other", "timeouts", "connect_errors", "server_closed"};

typedef struct {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    int64_t max;
} histogram;

/* What happened in one window (or, merged, in the whole run). */
typedef struct {
    uint64_t sent;
    uint64_t outcomes[OUTCOMES];
    uint64_t no_retry_after; /* 429/503 answered without a Retry-After header */
    uint64_t queued_timeouts; /* of the timeouts, those that never left the queue */
    uint64_t conn_closed;    /* connections the server closed after an answer or while idle */
    uint64_t queue_max;      /* most requests waiting in the generator's queue */
    uint64_t open_max;       /* most connections open (connecting included) */
    int64_t lag_max_us;      /* worst delay between a request falling due and the loop seeing it */
    histogram ok_latency;
    histogram refused_latency;
} window_stats;

enum conn_state { FREE, CONNECTING, IDLE, BUSY };
enum list_id { LIST_NONE, LIST_CONNECTING, LIST_IDLE, LIST_BUSY, LISTS };

typedef struct {
    int fd;
    uint32_t generation; /* bumped per connection opened in the slot: stale events show */
    enum conn_state state;
    enum list_id list;
    int prev, next;     /* links in the list named by `list` (-1 ends) */
    int64_t since_us;   /* CONNECTING: when opened; BUSY: the request's scheduled time */
    size_t written;     /* bytes of the request written */
    char *buf;          /* the answer so far */
    size_t len, cap;
    size_t header_len;  /* 0 until the header block is complete */
    long long body_len; /* Content-Length; -1: the body runs to the close */
    int status;
    int close_after;
    int retry_after;
} conn;

typedef struct {
    int head, tail;
    uint64_t size;
} conn_list;

/* Errno values of failed connection attempts over the whole run, for the total line. */
typedef struct {
    int err;
    uint64_t count;
} errno_count;

typedef struct {
    const char *host;
    int port;
    double rate;
    double duration_s;
    const char *request_path;
    int fresh;
    int max_connections;
    double timeout_s;
    double window_s;
    const char *record_path;
    int64_t tick_us;
} options;

typedef struct {
    options opt;
    struct sockaddr_in addr;
    char *request;
    size_t request_len;
    int epoll_fd;
    int64_t t0_us, t0_unix_us, timeout_us, window_us;
    uint64_t planned;       /* requests in the schedule */
    uint64_t due;           /* requests that have fallen due */
    uint64_t dispatched;    /* requests that left the queue (sent, timed out, failed) */
    uint64_t window_index;
    conn *conns;
    int free_head;
    conn_list lists[LISTS];
    uint64_t open;
    window_stats window, total;
    errno_count errnos[16];
    int errno_kinds;
    FILE *record;
} generator;

/* The one global: all a signal handler may touch. SIGTERM/SIGINT end the schedule early;
 * requests already due still end (answered or timed out) and the total is printed. */
static volatile sig_atomic_t stop_requested = 0;

static void on_stop_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static int64_t clock_us(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t now_us(void) { return clock_us(CLOCK_MONOTONIC); }

/* ---------------------------------------------------------------------------- histogram */

static int hist_index(int64_t value) {
    if (value < 0) value = 0;
    if (value > HIST_MAX_US) value = HIST_MAX_US;
    if (value < HIST_SUB) return (int)value;
    int msb = 63 - __builtin_clzll((unsigned long long)value);
    int shift = msb - HIST_SUB_BITS;
    int top = (int)(value >> shift); /* HIST_SUB .. 2 * HIST_SUB - 1 */
    return HIST_SUB + shift * HIST_SUB + (top - HIST_SUB);
}

/* The highest value a bucket holds (what HdrHistogram reports for a percentile). */
static int64_t hist_bucket_top(int index) {
    if (index < HIST_SUB) return index;
    int shift = (index - HIST_SUB) / HIST_SUB;
    int64_t top = HIST_SUB + (index - HIST_SUB) % HIST_SUB;
    return ((top + 1) << shift) - 1;
}

static void hist_record(histogram *h, int64_t value) {
    h->counts[hist_index(value)]++;
    h->total++;
    if (value > h->max) h->max = value;
}

static int64_t hist_percentile(const histogram *h, double q) {
    uint64_t rank = (uint64_t)ceil(q * (double)h->total);
    if (rank == 0) rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            int64_t top = hist_bucket_top(i);
            return top < h->max ? top : h->max;
        }
    }
    return h->max;
}

static void hist_merge(histogram *into, const histogram *from) {
    for (int i = 0; i < HIST_BUCKETS; i++) into->counts[i] += from->counts[i];
    into->total += from->total;
    if (from->max > into->max) into->max = from->max;
}

/* ------------------------------------------------------------------------------- output */

static void print_latency(const char *key, const histogram *h) {
    if (h->total == 0) {
        printf(",\"%s\":null", key);
        return;
    }
    printf(",\"%s\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f}", key,
           hist_percentile(h, 0.50) / 1000.0, hist_percentile(h, 0.90) / 1000.0,
           hist_percentile(h, 0.99) / 1000.0, h->max / 1000.0);
}

static void print_counts(const window_stats *w) {
    printf("\"sent\":%llu", (unsigned long long)w->sent);
    for (int i = 0; i < OUTCOMES; i++)
        printf(",\"%s\":%llu", OUTCOME_KEYS[i], (unsigned long long)w->outcomes[i]);
    printf(",\"no_retry_after\":%llu,\"queued_timeouts\":%llu,\"conn_closed\":%llu,"
           "\"queue_max\":%llu,\"open_max\":%llu,\"lag_max_ms\":%.3f",
           (unsigned long long)w->no_retry_after, (unsigned long long)w->queued_timeouts,
           (unsigned long long)w->conn_closed,
           (unsigned long long)w->queue_max, (unsigned long long)w->open_max,
           w->lag_max_us / 1000.0);
    print_latency("ok_ms", &w->ok_latency);
    print_latency("refused_ms", &w->refused_latency);
}

static void merge_window(window_stats *into, const window_stats *from) {
    into->sent += from->sent;
    for (int i = 0; i < OUTCOMES; i++) into->outcomes[i] += from->outcomes[i];
    into->no_retry_after += from->no_retry_after;
    into->queued_timeouts += from->queued_timeouts;
    into->conn_closed += from->conn_closed;
    if (from->queue_max > into->queue_max) into->queue_max = from->queue_max;
    if (from->open_max > into->open_max) into->open_max = from->open_max;
    if (from->lag_max_us > into->lag_max_us) into->lag_max_us = from->lag_max_us;
    hist_merge(&into->ok_latency, &from->ok_latency);
    hist_merge(&into->refused_latency, &from->refused_latency);
}

/* Print the current window as [start, end) seconds from t0, fold it into the total, clear it. */
static void flush_window(generator *g, double end_s) {
    printf("{\"window\":%llu,\"start_s\":%.3f,\"end_s\":%.3f,",
           (unsigned long long)g->window_index, g->window_index * g->opt.window_s, end_s);
    print_counts(&g->window);
    printf("}\n");
    fflush(stdout);
    merge_window(&g->total, &g->window);
    memset(&g->window, 0, sizeof g->window);
    g->window.queue_max = g->due - g->dispatched;
    g->window.open_max = g->open;
    g->window_index++;
}

static void print_total(generator *g, int64_t now) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    double cpu_s = usage.ru_utime.tv_sec + usage.ru_stime.tv_sec +
                   (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
    printf("{\"total\":true,\"rate\":%.3f,\"planned\":%llu,\"t0_unix_us\":%lld,"
           "\"elapsed_s\":%.3f,\"cpu_s\":%.3f,",
           g->opt.rate, (unsigned long long)g->planned, (long long)g->t0_unix_us,
           (now - g->t0_us) / 1e6, cpu_s);
    print_counts(&g->total);
    printf(",\"connect_errnos\":{");
    for (int i = 0; i < g->errno_kinds; i++) {
        const char *name = strerrorname_np(g->errnos[i].err);
        printf("%s\"%s\":%llu", i ? "," : "", name ? name : "?",
               (unsigned long long)g->errnos[i].count);
    }
    printf("}}\n");
    fflush(stdout);
}

static void note_errno(generator *g, int err) {
    for (int i = 0; i < g->errno_kinds; i++) {
        if (g->errnos[i].err == err) {
            g->errnos[i].count++;
            return;
        }
    }
    if (g->errno_kinds < (int)(sizeof g->errnos / sizeof g->errnos[0])) {
        g->errnos[g->errno_kinds].err = err;
        g->errnos[g->errno_kinds].count = 1;
        g->errno_kinds++;
    }
}

/* -------------------------------------------------------------------------------- lists */

static void list_push(generator *g, int slot, enum list_id id) {
    conn *c = &g->conns[slot];
    conn_list *l = &g->lists[id];
    c->list = id;
    c->next = -1;
    c->prev = l->tail;
    if (l->tail >= 0) g->conns[l->tail].next = slot;
    else l->head = slot;
    l->tail = slot;
    l->size++;
}

static void list_remove(generator *g, int slot) {
    conn *c = &g->conns[slot];
    if (c->list == LIST_NONE) return;
    conn_list *l = &g->lists[c->list];
    if (c->prev >= 0) g->conns[c->prev].next = c->next;
    else l->head = c->next;
    if (c->next >= 0) g->conns[c->next].prev = c->prev;
    else l->tail = c->prev;
    l->size--;
    c->list = LIST_NONE;
    c->prev = c->next = -1;
}

/* The most recently idle connection: its socket is the warmest. */
static int idle_take(generator *g) {
    int slot = g->lists[LIST_IDLE].tail;
    if (slot >= 0) list_remove(g, slot);
    return slot;
}

/* ---------------------------------------------------------------------------- schedule */

static int64_t scheduled_us(const generator *g, uint64_t index) {
    return g->t0_us + (int64_t)((double)index * 1e6 / g->opt.rate);
}

static uint64_t queued(const generator *g) { return g->due - g->dispatched; }

static void end_request(generator *g, enum outcome outcome) { g->window.outcomes[outcome]++; }

/* Move every request whose time has come into the queue. */
static void advance_schedule(generator *g, int64_t now) {
    if (stop_requested && g->planned > g->due) g->planned = g->due;
    while (g->due < g->planned) {
        int64_t at = scheduled_us(g, g->due);
        if (at > now) break;
        if (now - at > g->window.lag_max_us) g->window.lag_max_us = now - at;
        g->due++;
        g->window.sent++;
    }
    if (queued(g) > g->window.queue_max) g->window.queue_max = queued(g);
}

/* --------------------------------------------------------------------------- connections */

static void close_conn(generator *g, int slot) {
    conn *c = &g->conns[slot];
    list_remove(g, slot);
    close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    c->state = FREE;
    c->len = 0;
    c->next = g->free_head;
    g->free_head = slot;
    g->open--;
}

static void fail_head_request(generator *g) {
    if (queued(g) > 0) {
        g->dispatched++;
        end_request(g, CONNECT_ERROR);
    }
}

/* Open one connection towards the queue; a failure here fails the request at its head. */
static void open_conn(generator *g, int64_t now) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        note_errno(g, errno); /* EMFILE, ENFILE: reported, not fatal */
        fail_head_request(g);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&g->addr, sizeof g->addr) < 0 && errno != EINPROGRESS) {
        note_errno(g, errno);
        close(fd);
        fail_head_request(g);
        return;
    }
    int slot = g->free_head;
    conn *c = &g->conns[slot];
    g->free_head = c->next;
    c->fd = fd;
    c->state = CONNECTING;
    c->since_us = now;
    c->len = 0;
    c->generation++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                             .data.u64 = (uint64_t)slot | (uint64_t)c->generation << 32};
    if (epoll_ctl(g->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        perror("openloop: epoll_ctl");
        exit(1);
    }
    g->open++;
    list_push(g, slot, LIST_CONNECTING);
    if (g->open > g->window.open_max) g->window.open_max = g->open;
}

/* Write what is left of the request; 0 when written or waiting for room, -1 when the
 * connection failed (the request is then ended as server-closed). */
static int write_request(generator *g, int slot) {
    conn *c = &g->conns[slot];
    while (c->written < g->request_len) {
        ssize_t n = send(c->fd, g->request + c->written, g->request_len - c->written,
                         MSG_NOSIGNAL);
        if (n > 0) {
            c->written += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0; /* EPOLLOUT (edge-triggered) says when there is room again */
        } else {
            return -1;
        }
    }
    return 0;
}

static void start_request(generator *g, int slot) {
    conn *c = &g->conns[slot];
    c->state = BUSY;
    c->since_us = scheduled_us(g, g->dispatched);
    g->dispatched++;
    c->written = 0;
    c->len = 0;
    c->header_len = 0;
    c->body_len = -1;
    c->status = 0;
    c->close_after = g->opt.fresh;
    c->retry_after = 0;
    /* Requests leave the queue in schedule order, so the busy list stays sorted by
     * deadline and the timeout check only ever looks at its head. */
    list_push(g, slot, LIST_BUSY);
    if (write_request(g, slot) < 0) {
        end_request(g, SERVER_CLOSED);
        close_conn(g, slot);
    }
}

/* Queued requests onto idle connections; new connections for those still waiting. */
static void dispatch(generator *g, int64_t now) {
    while (queued(g) > 0) {
        int slot = idle_take(g);
        if (slot < 0) break;
        start_request(g, slot);
    }
    while (queued(g) > g->lists[LIST_CONNECTING].size &&
           g->open < (uint64_t)g->opt.max_connections)
        open_conn(g, now);
}

/* Requests not answered in time, queued or on a connection; connects that never finish. */
static void expire(generator *g, int64_t now) {
    while (queued(g) > 0 && scheduled_us(g, g->dispatched) + g->timeout_us <= now) {
        g->dispatched++;
        end_request(g, TIMEOUT);
        g->window.queued_timeouts++;
    }
    int slot;
    while ((slot = g->lists[LIST_BUSY].head) >= 0 &&
           g->conns[slot].since_us + g->timeout_us <= now) {
        end_request(g, TIMEOUT);
        close_conn(g, slot);
    }
    while ((slot = g->lists[LIST_CONNECTING].head) >= 0 &&
           g->conns[slot].since_us + g->timeout_us <= now) {
        note_errno(g, ETIMEDOUT);
        close_conn(g, slot);
        fail_head_request(g);
    }
}

/* ----------------------------------------------------------------------------- responses */

static int header_is(const char *line, size_t len, const char *name) {
    size_t n = strlen(name);
    return len > n && line[n] == ':' && strncasecmp(line, name, n) == 0;
}

static const char *header_value(const char *line, size_t len, size_t name_len, size_t *out) {
    const char *v = line + name_len + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
    *out = (size_t)(end - v);
    return v;
}

/* Parse the header block in c->buf[0, header_end); 0 on success, -1 if malformed. */
static int parse_headers(conn *c, size_t header_end) {
    const char *p = c->buf, *end = c->buf + header_end;
    const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
    if (eol == NULL || eol - p < 12 || strncmp(p, "HTTP/1.", 7) != 0) return -1;
    if (p[7] == '0') c->close_after = 1; /* HTTP/1.0: no keep-alive assumed */
    c->status = atoi(p + 9);
    if (c->status < 100 || c->status > 999) return -1;
    for (p = eol + 2; p < end; p = eol + 2) {
        eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (eol == NULL || eol == p) break;
        size_t len = (size_t)(eol - p), vlen;
        if (header_is(p, len, "content-length")) {
            const char *v = header_value(p, len, 14, &vlen);
            c->body_len = strtoll(v, NULL, 10);
        } else if (header_is(p, len, "connection")) {
            const char *v = header_value(p, len, 10, &vlen);
            if (vlen >= 5 && memmem(v, vlen, "close", 5) != NULL) c->close_after = 1;
        } else if (header_is(p, len, "retry-after")) {
            c->retry_after = 1;
        } else if (header_is(p, len, "transfer-encoding")) {
            return -1; /* Sluice always sends Content-Length; chunked is not read here */
        }
    }
    c->header_len = header_end;
    return 0;
}

static void record_accept(generator *g, const conn *c, int64_t now) {
    static const char key[] = "\"ids\":[\"";
    const char *body = c->buf + c->header_len, *end = c->buf + c->len;
    const char *at = memmem(body, (size_t)(end - body), key, sizeof key - 1);
    if (at == NULL) return;
    at += sizeof key - 1;
    const char *close_quote = memchr(at, '"', (size_t)(end - at));
    if (close_quote == NULL) return;
    int64_t offset = g->t0_unix_us - g->t0_us;
    fprintf(g->record, "%.*s %lld %lld\n", (int)(close_quote - at), at,
            (long long)(c->since_us + offset), (long long)(now + offset));
}

static void complete_response(generator *g, int slot, int64_t now) {
    conn *c = &g->conns[slot];
    int64_t latency = now - c->since_us;
    if (c->status >= 200 && c->status < 300) {
        end_request(g, OK_2XX);
        hist_record(&g->window.ok_latency, latency);
        if (g->record != NULL) record_accept(g, c, now);
    } else if (c->status == 429 || c->status == 503) {
        end_request(g, c->status == 429 ? REFUSED_429 : REFUSED_503);
        hist_record(&g->window.refused_latency, latency);
        if (!c->retry_after) g->window.no_retry_after++;
    } else {
        end_request(g, OTHER_STATUS);
    }
    list_remove(g, slot);
    if (c->close_after) {
        if (!g->opt.fresh) g->window.conn_closed++;
        close_conn(g, slot);
    } else {
        c->state = IDLE;
        c->len = 0;
        list_push(g, slot, LIST_IDLE);
    }
}

/* 1 when the answer in c->buf is complete, 0 when more is needed, -1 when it is malformed. */
static int response_ready(conn *c) {
    if (c->header_len == 0) {
        const char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (end == NULL) return c->len > MAX_RESPONSE_BYTES ? -1 : 0;
        if (parse_headers(c, (size_t)(end - c->buf) + 4) < 0) return -1;
        if (c->status >= 100 && c->status < 200) { /* interim answer: drop it, read on */
            size_t rest = c->len - c->header_len;
            memmove(c->buf, c->buf + c->header_len, rest);
            c->len = rest;
            c->header_len = 0;
            c->body_len = -1;
            return response_ready(c);
        }
    }
    if (c->body_len < 0) return 0; /* runs to the close */
    return c->len >= c->header_len + (size_t)c->body_len ? 1 : 0;
}

static void on_readable(generator *g, int slot, uint32_t events, int64_t now) {
    conn *c = &g->conns[slot];
    for (;;) {
        if (c->cap - c->len < READ_CHUNK) {
            size_t cap = c->cap ? c->cap * 2 : 2 * READ_CHUNK;
            char *grown = realloc(c->buf, cap);
            if (grown == NULL) {
                perror("openloop: realloc");
                exit(1);
            }
            c->buf = grown;
            c->cap = cap;
        }
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (n > 0) {
            if (c->state != BUSY) { /* bytes nobody asked for: drop the connection */
                close_conn(g, slot);
                return;
            }
            c->len += (size_t)n;
            int ready = response_ready(c);
            if (ready > 0) {
                complete_response(g, slot, now);
                /* Nothing more is owed on this connection (no pipelining), so unless the
                 * event also reported the peer's close, skip the read that would only say
                 * EAGAIN: edge-triggered epoll reports any later bytes or FIN anew. */
                if (c->state == FREE || !(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return;
            } else if (ready < 0) {
                end_request(g, OTHER_STATUS);
                close_conn(g, slot);
                return;
            }
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        /* End of stream or an error (reset): the server closed the connection. */
        if (c->state == BUSY) {
            if (c->header_len > 0 && c->body_len < 0) {
                complete_response(g, slot, now); /* an answer delimited by the close */
                if (c->state == FREE) return;
            } else {
                end_request(g, SERVER_CLOSED);
            }
        } else if (c->state == IDLE) {
            g->window.conn_closed++;
        } else if (c->state == CONNECTING) {
            note_errno(g, n < 0 ? errno : ECONNRESET);
            fail_head_request(g);
        }
        close_conn(g, slot);
        return;
    }
}

static void on_connected(generator *g, int slot, int64_t now) {
    conn *c = &g->conns[slot];
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
        note_errno(g, err);
        close_conn(g, slot);
        fail_head_request(g);
        return;
    }
    list_remove(g, slot);
    c->state = IDLE;
    list_push(g, slot, LIST_IDLE);
    dispatch(g, now);
}

static void on_event(generator *g, int slot, uint32_t events, int64_t now) {
    conn *c = &g->conns[slot];
    if (c->state == CONNECTING) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(g, slot, now);
        if (c->state == FREE || c->state == CONNECTING) return;
    }
    if (c->state == BUSY && (events & EPOLLOUT) && c->written < g->request_len) {
        if (write_request(g, slot) < 0) {
            end_request(g, SERVER_CLOSED);
            close_conn(g, slot);
            return;
        }
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(g, slot, events, now);
}

/* --------------------------------------------------------------------------------- loop */

/* The next moment the loop must act without an event: a request due, a deadline, a window. */
static int64_t next_wakeup(const generator *g) {
    int64_t at = g->t0_us + (int64_t)(g->window_index + 1) * g->window_us;
    if (g->due < g->planned) {
        int64_t due = scheduled_us(g, g->due);
        if (due < at) at = due;
    }
    if (queued(g) > 0) {
        int64_t deadline = scheduled_us(g, g->dispatched) + g->timeout_us;
        if (deadline < at) at = deadline;
    }
    static const enum list_id timed[] = {LIST_CONNECTING, LIST_BUSY};
    for (size_t i = 0; i < sizeof timed / sizeof timed[0]; i++) {
        int slot = g->lists[timed[i]].head;
        if (slot >= 0 && g->conns[slot].since_us + g->timeout_us < at)
            at = g->conns[slot].since_us + g->timeout_us;
    }
    return at;
}

static int finished(const generator *g) {
    return g->due >= g->planned && queued(g) == 0 && g->lists[LIST_BUSY].size == 0;
}

static struct timespec timespec_of(int64_t us) {
    return (struct timespec){.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
}

static void run(generator *g) {
    struct epoll_event events[MAX_EVENTS];
    int busy = 0;     /* the last wait returned events */
    int64_t woke = 0; /* when it did */
    for (;;) {
        int64_t now = now_us();
        advance_schedule(g, now);
        expire(g, now);
        dispatch(g, now);
        while (now >= g->t0_us + (int64_t)(g->window_index + 1) * g->window_us)
            flush_window(g, (double)(g->window_index + 1) * g->opt.window_s);
        if (finished(g)) break;
        int64_t wait = next_wakeup(g) - now;
        if (busy && now - woke < g->opt.tick_us) {
            /* Answers are streaming in: take them a tick's worth at a time. A wake-up per
             * answer (one every 20 µs at 50,000/s) costs more than the answer itself. */
            struct timespec until = timespec_of(woke + g->opt.tick_us);
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
            wait = 0;
        }
        /* epoll_pwait2 sleeps to the microsecond with no timer of its own to re-arm. */
        struct timespec timeout = timespec_of(wait > 0 ? wait : 0);
        int n = epoll_pwait2(g->epoll_fd, events, MAX_EVENTS, &timeout, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("openloop: epoll_pwait2");
            exit(1);
        }
        now = now_us();
        busy = n > 0;
        if (busy) woke = now;
        for (int i = 0; i < n; i++) {
            int slot = (int)(uint32_t)events[i].data.u64;
            uint32_t generation = (uint32_t)(events[i].data.u64 >> 32);
            /* A connection closed earlier in this batch may have left stale events, and its
             * slot may already hold a new connection. */
            if (g->conns[slot].state == FREE || g->conns[slot].generation != generation)
                continue;
            on_event(g, slot, events[i].events, now);
        }
    }
    int64_t end = now_us();
    flush_window(g, (end - g->t0_us) / 1e6);
    print_total(g, end);
}

/* -------------------------------------------------------------------------------- setup */

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "openloop: cannot read --request %s: %s\n", path, strerror(errno));
        exit(2);
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    *len = n;
    return buf;
}

/* Room for every connection plus stdio and the record file; raise the soft limit to fit. */
static void raise_file_limit(int connections) {
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
    rlim_t want = (rlim_t)connections + 64;
    if (lim.rlim_cur < want) {
        lim.rlim_cur = lim.rlim_max < want ? lim.rlim_max : want;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    if (lim.rlim_cur < want)
        fprintf(stderr,
                "openloop: RLIMIT_NOFILE is %llu, below --max-connections %d + 64: "
                "connects past it fail with EMFILE (counted as connect errors)\n",
                (unsigned long long)lim.rlim_cur, connections);
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: openloop --port PORT --rate REQ_PER_S --duration S --request FILE\n"
            "                [--host 127.0.0.1] [--fresh] [--max-connections 2000]\n"
            "                [--timeout 10] [--window 5] [--record FILE] [--tick-us 100]\n"
            "Sends the raw HTTP/1.1 request in FILE at a fixed rate (open loop); prints one JSON\n"
            "line per window and a total line; latency counts from each request's schedule.\n");
}

static double positive(const char *name, const char *text) {
    char *end;
    double v = strtod(text, &end);
    if (*text == '\0' || *end != '\0' || !(v > 0) || !isfinite(v)) {
        fprintf(stderr, "openloop: --%s must be a positive number, got %s\n", name, text);
        exit(2);
    }
    return v;
}

static options parse_options(int argc, char **argv) {
    options opt = {.host = "127.0.0.1", .max_connections = 2000, .timeout_s = 10,
                   .window_s = 5, .tick_us = DEFAULT_TICK_US};
    static const struct option longs[] = {
        {"host", required_argument, 0, 'H'},  {"port", required_argument, 0, 'p'},
        {"rate", required_argument, 0, 'r'},  {"duration", required_argument, 0, 'd'},
        {"request", required_argument, 0, 'q'}, {"fresh", no_argument, 0, 'f'},
        {"max-connections", required_argument, 0, 'c'},
        {"timeout", required_argument, 0, 't'}, {"window", required_argument, 0, 'w'},
        {"record", required_argument, 0, 'R'}, {"tick-us", required_argument, 0, 'T'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (ch) {
        case 'H': opt.host = optarg; break;
        case 'p': opt.port = (int)positive("port", optarg); break;
        case 'r': opt.rate = positive("rate", optarg); break;
        case 'd': opt.duration_s = positive("duration", optarg); break;
        case 'q': opt.request_path = optarg; break;
        case 'f': opt.fresh = 1; break;
        case 'c': opt.max_connections = (int)positive("max-connections", optarg); break;
        case 't': opt.timeout_s = positive("timeout", optarg); break;
        case 'w': opt.window_s = positive("window", optarg); break;
        case 'R': opt.record_path = optarg; break;
        case 'T': opt.tick_us = (int64_t)positive("tick-us", optarg); break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (opt.port <= 0 || opt.port > 65535 || opt.rate <= 0 || opt.duration_s <= 0 ||
        opt.request_path == NULL) {
        fprintf(stderr, "openloop: --port, --rate, --duration and --request are required\n");
        usage(stderr);
        exit(2);
    }
    return opt;
}

static void setup(generator *g, options opt) {
    memset(g, 0, sizeof *g);
    g->opt = opt;
    g->addr.sin_family = AF_INET;
    g->addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &g->addr.sin_addr) != 1) {
        fprintf(stderr, "openloop: --host must be an IPv4 address, got %s\n", opt.host);
        exit(2);
    }
    g->request = read_file(opt.request_path, &g->request_len);
    if (g->request_len == 0) {
        fprintf(stderr, "openloop: the --request file %s is empty\n", opt.request_path);
        exit(2);
    }
    if (opt.record_path != NULL && (g->record = fopen(opt.record_path, "a")) == NULL) {
        fprintf(stderr, "openloop: cannot open --record %s: %s\n", opt.record_path,
                strerror(errno));
        exit(2);
    }
    raise_file_limit(opt.max_connections);
    g->conns = calloc((size_t)opt.max_connections, sizeof(conn));
    for (int i = 0; i < opt.max_connections; i++) {
        g->conns[i].fd = -1;
        g->conns[i].next = i + 1 < opt.max_connections ? i + 1 : -1;
        g->conns[i].prev = -1;
    }
    for (int id = 0; id < LISTS; id++) g->lists[id] = (conn_list){-1, -1, 0};
    g->planned = (uint64_t)floor(opt.rate * opt.duration_s);
    g->timeout_us = (int64_t)(opt.timeout_s * 1e6);
    g->window_us = (int64_t)(opt.window_s * 1e6);
    g->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (g->epoll_fd < 0) {
        perror("openloop: epoll_create1");
        exit(1);
    }
    g->t0_unix_us = clock_us(CLOCK_REALTIME);
    g->t0_us = now_us();
}

int main(int argc, char **argv) {
    static generator g; /* histograms make it large: keep it off the stack */
    setup(&g, parse_options(argc, argv));
    signal(SIGPIPE, SIG_IGN);
    struct sigaction stop = {.sa_handler = on_stop_signal};
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGINT, &stop, NULL);
    run(&g);
    if (g.record != NULL) fclose(g.record);
    return 0;
}
