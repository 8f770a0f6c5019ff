/* drivers._pump — the receive engine's compiled read path (Linux: epoll).
 *
 * After picows has done a connection's handshake, the engine hands the socket's reading to a Pump (picows keeps
 * writing). Pump.process() waits on nothing: it takes what its epoll set has ready, and with the GIL released reads
 * each ready socket, cuts the bytes into WebSocket frames (server to client: unmasked) and sorts them:
 *
 *   - a push — a final text frame whose payload starts  PREFIX <digits> SEQ_KEY  (the layout of
 *     reference_server.protocol.encode_push, passed in by the engine) — becomes a record (message id, slot,
 *     receive time). A message's frames are the same bytes on every connection, so each distinct payload is kept
 *     once and the record names it by index;
 *   - any other frame (a reply, a pong, a ping, a close, a fragment), the end of a stream and a protocol error
 *     become "events", returned in order with the number of push records before each (so the caller can keep a
 *     connection's order: its pushes before a reply, then the reply).
 *
 * take() hands the records over as packed arrays (int32 ids, int64 slots, int64 receive times in ns since the
 * epoch, CLOCK_REALTIME like time.time_ns()) with the distinct payloads as bytes.
 *
 * Receive time: when the kernel received the bytes (SO_TIMESTAMPNS: the last segment a read took), not when this
 * thread got round to reading them — so a late engine thread does not add its lateness to the latencies it
 * measures. The kernel's clock is the real one; the process's may be shifted (libfaketime in the tests, the
 * clock module corrects offsets in the process's clock), so each stamp is moved by the process clock's offset from
 * the kernel's, measured at most once a second by stamping a datagram sent to itself (CALIBRATE_NS). A read without
 * a kernel stamp (the option refused; or a segment that arrived before the kernel turned stamping on: when no
 * socket of the system had asked for stamps, the first to ask — the pump's calibration pair, made with it — has
 * it turned on by a work item moments later) is stamped with the process clock when read; stats counts both.
 *
 * Limits: a frame longer than max_frame_bytes is an error event (the connection is dropped from the pump, nothing
 * grows past the limit); a partial frame waits in a per-connection carry buffer about its own size (at most
 * max_frame_bytes + 14 + one read of 64 KiB while a frame that long comes in), freed when the frame is complete;
 * one process() call stops once max_frames records are pending (not taken) or after max_reads socket reads.
 *
 * Readiness is edge-triggered: epoll reports a socket once per arrival of bytes, so a socket read empty is not
 * polled again (level-triggered, every ready socket was polled twice: when reported and in the next wait, to find
 * it empty). A socket that may still hold bytes no new edge will announce — READS_PER_SOCKET full reads, or its
 * event left unread when a pass stopped at a limit — goes into the again list, read first by the next pass; `more`
 * says the caller should not wait before that pass. Every method is for one thread (the engine's); a call from a
 * second thread while another runs raises RuntimeError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define EV_FRAME 0
#define EV_EOF 1
#define EV_ERROR 2

#define CHUNK 65536            /* bytes asked of one recv() */
#define SMALL 16384            /* a partial frame up to this long is read on in the shared buffer */
#define READS_PER_SOCKET 4     /* recv()s per ready socket in one pass, when each fills the buffer */
#define EPOLL_BATCH 512
#define PROBE_GEN 0xFFFFFFFFu  /* the probe's tag: never a connection's generation */
#define MAX_KEY 32
#define CALIBRATE_NS 1000000000LL /* how often the process clock's offset from the kernel's is measured */

typedef struct {
    int64_t cid, slot;
    uint32_t gen;
    int active;
    int again; /* in the pump's again list (kept across a reuse of the fd: its entry then reads the new one) */
    char *carry;
    Py_ssize_t carry_len, carry_cap;
} conn_t;

typedef struct {
    uint64_t hash;
    Py_ssize_t off, len;
    PyObject *obj; /* the payload as bytes, made at take() */
} distinct_t;

typedef struct {
    Py_ssize_t pos;
    int64_t cid;
    int kind, opcode, fin, code;
    char *data;
    Py_ssize_t len;
} event_t;

typedef struct {
    PyObject_HEAD
    int epfd;
    int probe_fd;
    conn_t *conns; /* indexed by fd */
    Py_ssize_t nconns;
    /* sockets that may hold bytes no event will announce again (edge-triggered): read first in the next pass.
     * Two lists of nconns entries each, swapped at a pass's start; an fd is in at most one (conn_t.again). */
    int *again, *again_next;
    Py_ssize_t nagain;
    int more;             /* the last pass stopped at a limit: more may be ready */
    Py_ssize_t pass_reads; /* socket reads of the last pass */
    uint32_t gen;
    Py_ssize_t max_frame;
    char prefix[MAX_KEY];
    Py_ssize_t prefix_len;
    char seqkey[MAX_KEY];
    Py_ssize_t seqkey_len;
    char *scratch;
    /* push records */
    int32_t *ids;
    int64_t *slots, *times;
    Py_ssize_t nrec, caprec;
    /* distinct payloads: entries, an open-addressing index (entry + 1; 0 = empty), their bytes */
    distinct_t *dist;
    Py_ssize_t ndist, capdist;
    Py_ssize_t *table;
    Py_ssize_t tabcap;
    char *arena;
    Py_ssize_t arena_len, arena_cap;
    Py_ssize_t last_match;
    /* events of the current process() call */
    event_t *events;
    Py_ssize_t nevents, capevents;
    int64_t probe_lag_ns;
    int cal[2];          /* a datagram pair: the kernel stamps what one end sends the other */
    int64_t skew_ns;     /* the process's CLOCK_REALTIME less the kernel's, at the last calibration */
    int64_t calibrated;  /* CLOCK_MONOTONIC of the last calibration (0: never) */
    unsigned long long stamped; /* reads with a kernel stamp */
    unsigned long long unstamped; /* reads stamped when read (no kernel stamp), since take_unstamped() */
    int busy;
    int oom;
    unsigned long long reads, frames, pushes;
} Pump;

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The kernel's receive stamp of what a recvmsg() read (CLOCK_REALTIME, ns), or 0 if it carries none. */
static int64_t kernel_stamp(struct msghdr *mh) {
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS &&
            cm->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(cm), sizeof ts);
            return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        }
    }
    return 0;
}

/* recvmsg() into buf, with the kernel's receive stamp of what it read in *stamp (0: none, or nothing read). */
static ssize_t recv_stamped(int fd, void *buf, size_t len, int flags, int64_t *stamp) {
    struct iovec iov = {buf, len};
    union {
        char buf[CMSG_SPACE(sizeof(struct timespec))];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = sizeof ctl.buf;
    ssize_t r = recvmsg(fd, &mh, flags);
    *stamp = r > 0 ? kernel_stamp(&mh) : 0;
    return r;
}

/* The process clock's offset from the kernel's: a byte sent to ourselves, stamped by the kernel between two
 * readings of the process clock. Kept as it was if the datagram pair fails. */
static void calibrate(Pump *self) {
    int64_t mono = now_ns(CLOCK_MONOTONIC);
    if (self->calibrated && mono - self->calibrated < CALIBRATE_NS) return;
    if (self->cal[0] < 0) return;
    self->calibrated = mono;
    char b = 0, back;
    int64_t before = now_ns(CLOCK_REALTIME), k;
    if (send(self->cal[0], &b, 1, MSG_DONTWAIT) != 1) return;
    ssize_t r = recv_stamped(self->cal[1], &back, 1, MSG_DONTWAIT, &k);
    int64_t after = now_ns(CLOCK_REALTIME);
    if (r == 1 && k) self->skew_ns = before + (after - before) / 2 - k;
}

static uint64_t hash_bytes(const char *p, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)n;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
    }
    for (; i < n; i++) h = (h ^ (unsigned char)p[i]) * 0x100000001b3ULL;
    return h ^ (h >> 32);
}

/* grow *buf (elements of size sz) to hold at least need; 0 on failure (then *buf is unchanged) */
static int grow(void **buf, Py_ssize_t *cap, Py_ssize_t need, size_t sz) {
    if (need <= *cap) return 1;
    Py_ssize_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *nb = realloc(*buf, (size_t)c * sz);
    if (!nb) return 0;
    *buf = nb;
    *cap = c;
    return 1;
}

/* ---- events ---------------------------------------------------------------------------------------------- */

static void add_event(Pump *self, int64_t cid, int kind, int opcode, int fin, int code, const char *data,
                      Py_ssize_t len) {
    if (!grow((void **)&self->events, &self->capevents, self->nevents + 1, sizeof(event_t))) {
        self->oom = 1;
        return;
    }
    char *copy = NULL;
    if (len > 0) {
        copy = malloc((size_t)len);
        if (!copy) {
            self->oom = 1;
            return;
        }
        memcpy(copy, data, (size_t)len);
    }
    event_t *e = &self->events[self->nevents++];
    e->pos = self->nrec;
    e->cid = cid;
    e->kind = kind;
    e->opcode = opcode;
    e->fin = fin;
    e->code = code;
    e->data = copy;
    e->len = len;
}

static void add_error(Pump *self, int64_t cid, int code, const char *msg) {
    add_event(self, cid, EV_ERROR, 0, 0, code, msg, (Py_ssize_t)strlen(msg));
}

static void free_events(Pump *self) {
    for (Py_ssize_t i = 0; i < self->nevents; i++) free(self->events[i].data);
    self->nevents = 0;
}

/* ---- push records and distinct payloads ------------------------------------------------------------------ */

static int table_insert(Pump *self, Py_ssize_t idx) {
    Py_ssize_t mask = self->tabcap - 1;
    Py_ssize_t i = (Py_ssize_t)(self->dist[idx].hash & (uint64_t)mask);
    while (self->table[i]) i = (i + 1) & mask;
    self->table[i] = idx + 1;
    return 1;
}

static int rehash(Pump *self, Py_ssize_t cap) {
    Py_ssize_t *t = calloc((size_t)cap, sizeof(Py_ssize_t));
    if (!t) return 0;
    free(self->table);
    self->table = t;
    self->tabcap = cap;
    for (Py_ssize_t i = 0; i < self->ndist; i++) table_insert(self, i);
    return 1;
}

static Py_ssize_t distinct_id(Pump *self, const char *p, Py_ssize_t n) {
    Py_ssize_t lm = self->last_match;
    if (lm >= 0 && self->dist[lm].len == n && memcmp(self->arena + self->dist[lm].off, p, (size_t)n) == 0)
        return lm;
    uint64_t h = hash_bytes(p, n);
    if (self->tabcap) {
        Py_ssize_t mask = self->tabcap - 1;
        for (Py_ssize_t i = (Py_ssize_t)(h & (uint64_t)mask); self->table[i]; i = (i + 1) & mask) {
            distinct_t *d = &self->dist[self->table[i] - 1];
            if (d->hash == h && d->len == n && memcmp(self->arena + d->off, p, (size_t)n) == 0)
                return self->last_match = self->table[i] - 1;
        }
    }
    if (self->ndist >= INT32_MAX) return -1;
    if (!grow((void **)&self->dist, &self->capdist, self->ndist + 1, sizeof(distinct_t)) ||
        !grow((void **)&self->arena, &self->arena_cap, self->arena_len + n, 1))
        return -1;
    if (2 * (self->ndist + 1) > self->tabcap && !rehash(self, self->tabcap ? 2 * self->tabcap : 256)) return -1;
    Py_ssize_t idx = self->ndist++;
    distinct_t *d = &self->dist[idx];
    d->hash = h;
    d->off = self->arena_len;
    d->len = n;
    d->obj = NULL;
    memcpy(self->arena + self->arena_len, p, (size_t)n);
    self->arena_len += n;
    table_insert(self, idx);
    return self->last_match = idx;
}

static int add_push(Pump *self, int64_t slot, const char *p, Py_ssize_t n, int64_t t) {
    Py_ssize_t id = distinct_id(self, p, n);
    if (id < 0) return 0;
    if (self->nrec >= self->caprec) {
        Py_ssize_t c = self->caprec ? 2 * self->caprec : 4096;
        int32_t *ids = realloc(self->ids, (size_t)c * sizeof(int32_t));
        if (!ids) return 0;
        self->ids = ids;
        int64_t *slots = realloc(self->slots, (size_t)c * sizeof(int64_t));
        if (!slots) return 0;
        self->slots = slots;
        int64_t *times = realloc(self->times, (size_t)c * sizeof(int64_t));
        if (!times) return 0;
        self->times = times;
        self->caprec = c;
    }
    self->ids[self->nrec] = (int32_t)id;
    self->slots[self->nrec] = slot;
    self->times[self->nrec] = t;
    self->nrec++;
    self->pushes++;
    return 1;
}

static void reset_distinct(Pump *self) {
    for (Py_ssize_t i = 0; i < self->ndist; i++) Py_CLEAR(self->dist[i].obj);
    self->ndist = 0;
    self->arena_len = 0;
    self->last_match = -1;
    if (self->tabcap) memset(self->table, 0, (size_t)self->tabcap * sizeof(Py_ssize_t));
    /* a burst's arena may be large: give it back once it is unused */
    if (self->arena_cap > (1 << 22)) {
        free(self->arena);
        self->arena = NULL;
        self->arena_cap = 0;
    }
}

/* ---- connections ----------------------------------------------------------------------------------------- */

/* The socket at fd may hold unread bytes that no edge will announce: read it in the next pass. */
static void mark_again(Pump *self, int fd) {
    conn_t *c = &self->conns[fd];
    if (c->again) return;
    c->again = 1;
    self->again[self->nagain++] = fd; /* never full: nconns entries, an fd at most once */
}

static void drop_conn(Pump *self, int fd) {
    conn_t *c = &self->conns[fd];
    epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL); /* fails harmlessly when the fd was closed already */
    free(c->carry);
    c->carry = NULL;
    c->carry_len = c->carry_cap = 0;
    c->active = 0;
}

static int is_push(const Pump *self, const char *p, Py_ssize_t n) {
    Py_ssize_t k = self->prefix_len;
    if (n < k + 1 + self->seqkey_len || memcmp(p, self->prefix, (size_t)k) != 0) return 0;
    Py_ssize_t i = k;
    if (p[i] == '-') i++;
    Py_ssize_t d = i;
    while (i < n && p[i] >= '0' && p[i] <= '9') i++;
    if (i == d || i - d > 19) return 0;
    return n - i >= self->seqkey_len && memcmp(p + i, self->seqkey, (size_t)self->seqkey_len) == 0;
}

/* Cut frames from buf[0:n]; returns the bytes consumed, or -1 after a protocol error (the connection is dropped
 * and an error event says why). */
static Py_ssize_t parse(Pump *self, int fd, conn_t *c, const char *buf, Py_ssize_t n, int64_t t) {
    Py_ssize_t off = 0;
    char msg[128];
    while (n - off >= 2 && !self->oom) {
        const unsigned char *p = (const unsigned char *)buf + off;
        Py_ssize_t avail = n - off;
        int fin = p[0] >> 7, op = p[0] & 0x0f;
        Py_ssize_t hdr = 2;
        uint64_t plen = p[1] & 0x7f;
        if (p[1] & 0x80) {
            add_error(self, c->cid, 1002, "protocol error: a masked frame from the server");
            drop_conn(self, fd);
            return -1;
        }
        if (p[0] & 0x70) {
            add_error(self, c->cid, 1002, "protocol error: reserved bits set (no extension was negotiated)");
            drop_conn(self, fd);
            return -1;
        }
        if (plen == 126) {
            if (avail < 4) break;
            plen = ((uint64_t)p[2] << 8) | p[3];
            hdr = 4;
        } else if (plen == 127) {
            if (avail < 10) break;
            plen = 0;
            for (int i = 2; i < 10; i++) plen = (plen << 8) | p[i];
            hdr = 10;
        }
        if (op >= 8 ? (op > 10 || !fin || plen > 125) : op > 2) {
            snprintf(msg, sizeof msg, "protocol error: %s (opcode %d, fin %d, %llu bytes)",
                     op >= 8 && op <= 10 ? "a fragmented or long control frame" : "an unknown opcode", op, fin,
                     (unsigned long long)plen);
            add_error(self, c->cid, 1002, msg);
            drop_conn(self, fd);
            return -1;
        }
        if (plen > (uint64_t)self->max_frame) {
            snprintf(msg, sizeof msg, "a frame of %llu bytes, over the limit of %zd",
                     (unsigned long long)plen, self->max_frame);
            add_error(self, c->cid, 1009, msg);
            drop_conn(self, fd);
            return -1;
        }
        if ((uint64_t)(avail - hdr) < plen) break;
        const char *payload = buf + off + hdr;
        self->frames++;
        if (fin && op == 1 && is_push(self, payload, (Py_ssize_t)plen)) {
            if (!add_push(self, c->slot, payload, (Py_ssize_t)plen, t)) {
                self->oom = 1;
                break;
            }
        } else {
            add_event(self, c->cid, EV_FRAME, op, fin, 0, payload, (Py_ssize_t)plen);
        }
        off += hdr + (Py_ssize_t)plen;
    }
    return off;
}

/* room for need bytes in the carry buffer (a frame larger than SMALL in progress): doubling, but never past the
 * largest frame + a read */
static int grow_carry(const Pump *self, conn_t *c, Py_ssize_t need) {
    if (need <= c->carry_cap) return 1;
    Py_ssize_t limit = self->max_frame + 14 + CHUNK, cap = 2 * c->carry_cap;
    if (cap > limit) cap = limit;
    if (cap < need) cap = need;
    char *nb = realloc(c->carry, (size_t)cap);
    if (!nb) return 0;
    c->carry = nb;
    c->carry_cap = cap;
    return 1;
}

/* the connection's carry becomes src[0:rest] (a partial frame); src may lie inside the carry itself. The buffer
 * keeps about what it holds: 10,000 connections each ending a read inside a frame must not hold a read's room each.
 * in_carry: src lies inside the carry buffer itself */
static int set_carry(conn_t *c, int in_carry, const char *src, Py_ssize_t rest) {
    if (rest == 0) {
        free(c->carry);
        c->carry = NULL;
        c->carry_len = c->carry_cap = 0;
        return 1;
    }
    if (in_carry) {
        memmove(c->carry, src, (size_t)rest);
        c->carry_len = rest;
        if (c->carry_cap > 2 * rest && c->carry_cap > SMALL) {
            char *nb = realloc(c->carry, (size_t)rest);
            if (nb) {
                c->carry = nb;
                c->carry_cap = rest;
            }
        }
        return 1;
    }
    if (c->carry_cap < rest || c->carry_cap > 2 * rest + 256) {
        char *nb = realloc(c->carry, (size_t)rest);
        if (!nb) return 0;
        c->carry = nb;
        c->carry_cap = rest;
    }
    memcpy(c->carry, src, (size_t)rest);
    c->carry_len = rest;
    return 1;
}

/* Read a ready socket: until a read leaves it empty (shorter than asked), or — `drain`: the peer has shut down or
 * the socket is in the again list, where a short read does not prove there is no end behind the bytes — until
 * the end, an error or EAGAIN; at most READS_PER_SOCKET reads (then it goes into the again list). */
static void read_conn(Pump *self, int fd, conn_t *c, int drain) {
    for (int k = 0; k < READS_PER_SOCKET; k++) {
        char *buf;
        Py_ssize_t have = c->carry_len, room;
        if (have > SMALL) { /* a large frame in progress: read on in its own buffer */
            if (!grow_carry(self, c, have + CHUNK)) {
                self->oom = 1;
                mark_again(self, fd); /* nothing read: the bytes wait for the next pass */
                return;
            }
            buf = c->carry;
            room = c->carry_cap - have;
        } else { /* the start of a frame (if any) before the new bytes, in the shared buffer */
            buf = self->scratch;
            if (have) memcpy(buf, c->carry, (size_t)have);
            room = CHUNK;
        }
        int64_t t;
        ssize_t r = recv_stamped(fd, buf + have, (size_t)room, 0, &t);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            char msg[96];
            snprintf(msg, sizeof msg, "read failed: %s", strerror(errno));
            add_event(self, c->cid, EV_EOF, 0, 0, errno, msg, (Py_ssize_t)strlen(msg));
            drop_conn(self, fd);
            return;
        }
        self->reads++;
        if (r == 0) {
            add_event(self, c->cid, EV_EOF, 0, 0, 0, NULL, 0);
            drop_conn(self, fd);
            return;
        }
        if (t) {
            t += self->skew_ns;
            self->stamped++;
        } else {
            t = now_ns(CLOCK_REALTIME);
            self->unstamped++;
        }
        Py_ssize_t total = have + r;
        Py_ssize_t used = parse(self, fd, c, buf, total, t);
        if (used < 0) return; /* dropped */
        if (!set_carry(c, buf == c->carry, buf + used, total - used)) self->oom = 1;
        if (self->oom) { /* process() raises MemoryError; what the socket still holds waits for the next pass */
            mark_again(self, fd);
            return;
        }
        if (r < room && !drain) return; /* the socket is empty: its next bytes (or its end) are a new edge */
    }
    mark_again(self, fd); /* READS_PER_SOCKET full reads: more may wait */
}

static void read_probe(Pump *self) {
    unsigned char b[4096];
    for (;;) {
        ssize_t r = read(self->probe_fd, b, sizeof b);
        if (r <= 0) return;
        int64_t now = now_ns(CLOCK_MONOTONIC);
        for (ssize_t i = 0; i + 8 <= r; i += 8) {
            int64_t stamp = 0;
            for (int j = 7; j >= 0; j--) stamp = (stamp << 8) | b[i + j];
            if (now - stamp > self->probe_lag_ns) self->probe_lag_ns = now - stamp;
        }
        if (r < (ssize_t)sizeof b) return;
    }
}

/* ---- the Python type ------------------------------------------------------------------------------------- */

static int enter(Pump *self) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Pump: used from two threads at once (it belongs to the engine's)");
        return 0;
    }
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "Pump: closed");
        return 0;
    }
    return 1;
}

static int copy_key(PyObject *o, char *dst, Py_ssize_t *len, const char *what) {
    char *p;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(o, &p, &n) < 0) return 0;
    if (n < 1 || n >= MAX_KEY) {
        PyErr_Format(PyExc_ValueError, "Pump: %s must be 1 to %d bytes", what, MAX_KEY - 1);
        return 0;
    }
    memcpy(dst, p, (size_t)n);
    *len = n;
    return 1;
}

static int Pump_init(Pump *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"prefix", "seq_key", "max_frame_bytes", NULL};
    PyObject *prefix, *seqkey;
    Py_ssize_t max_frame;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "SSn", kwlist, &prefix, &seqkey, &max_frame)) return -1;
    if (self->epfd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "Pump: already initialised");
        return -1;
    }
    if (max_frame < 125 || max_frame > ((Py_ssize_t)1 << 40)) {
        PyErr_SetString(PyExc_ValueError, "Pump: max_frame_bytes must be in [125, 2**40]");
        return -1;
    }
    if (!copy_key(prefix, self->prefix, &self->prefix_len, "prefix") ||
        !copy_key(seqkey, self->seqkey, &self->seqkey_len, "seq_key"))
        return -1;
    self->max_frame = max_frame;
    self->scratch = malloc(SMALL + CHUNK);
    if (!self->scratch) {
        PyErr_NoMemory();
        return -1;
    }
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    int on = 1;
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, self->cal) < 0 ||
        setsockopt(self->cal[1], SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    calibrate(self);
    return 0;
}

static PyObject *Pump_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kw)) {
    Pump *self = (Pump *)type->tp_alloc(type, 0);
    if (self) {
        self->epfd = -1;
        self->probe_fd = -1;
        self->cal[0] = self->cal[1] = -1;
        self->last_match = -1;
    }
    return (PyObject *)self;
}

static void release_all(Pump *self) {
    for (Py_ssize_t fd = 0; fd < self->nconns; fd++) free(self->conns[fd].carry);
    free(self->conns);
    self->conns = NULL;
    self->nconns = 0;
    free(self->again);
    free(self->again_next);
    self->again = self->again_next = NULL;
    self->nagain = 0;
    reset_distinct(self);
    free(self->dist);
    free(self->table);
    free(self->arena);
    self->dist = NULL;
    self->table = NULL;
    self->arena = NULL;
    self->capdist = self->tabcap = self->arena_cap = 0;
    free(self->ids);
    free(self->slots);
    free(self->times);
    self->ids = NULL;
    self->slots = self->times = NULL;
    self->nrec = self->caprec = 0;
    free_events(self);
    free(self->events);
    self->events = NULL;
    self->capevents = 0;
    free(self->scratch);
    self->scratch = NULL;
    if (self->epfd >= 0) close(self->epfd);
    self->epfd = -1;
    for (int k = 0; k < 2; k++) {
        if (self->cal[k] >= 0) close(self->cal[k]);
        self->cal[k] = -1;
    }
}

static void Pump_dealloc(Pump *self) {
    release_all(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Pump_close(Pump *self, PyObject *Py_UNUSED(ignored)) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Pump: used from two threads at once (it belongs to the engine's)");
        return NULL;
    }
    release_all(self);
    Py_RETURN_NONE;
}

static PyObject *Pump_fileno(Pump *self, PyObject *Py_UNUSED(ignored)) {
    if (!enter(self)) return NULL;
    return PyLong_FromLong(self->epfd);
}

static PyObject *Pump_add(Pump *self, PyObject *args) {
    int fd;
    long long cid, slot;
    if (!PyArg_ParseTuple(args, "iLL", &fd, &cid, &slot)) return NULL;
    if (!enter(self)) return NULL;
    if (fd < 0 || fd == self->probe_fd || fd == self->epfd) {
        PyErr_Format(PyExc_ValueError, "Pump.add: %d is not a connection's descriptor", fd);
        return NULL;
    }
    if (fd >= self->nconns) {
        Py_ssize_t n = self->nconns ? self->nconns : 1024;
        while (n <= fd) n *= 2;
        conn_t *cs = realloc(self->conns, (size_t)n * sizeof(conn_t));
        if (!cs) return PyErr_NoMemory();
        memset(cs + self->nconns, 0, (size_t)(n - self->nconns) * sizeof(conn_t));
        self->conns = cs;
        int *a = realloc(self->again, (size_t)n * sizeof(int));
        if (a) self->again = a;
        int *b = a ? realloc(self->again_next, (size_t)n * sizeof(int)) : NULL;
        if (b) self->again_next = b;
        if (!a || !b) return PyErr_NoMemory(); /* nconns stays: every array holds at least that many */
        self->nconns = n;
    }
    conn_t *c = &self->conns[fd];
    if (c->active) drop_conn(self, fd); /* a closed connection's leftover: its fd number is reused */
    if (++self->gen == PROBE_GEN) self->gen = 1;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    /* an event per arrival: a socket read empty is not polled again; the peer's end is flagged (EPOLLRDHUP) when
     * it came with the bytes of the same edge, so the read goes on to it */
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = ((uint64_t)self->gen << 32) | (uint32_t)fd;
    int on = 1; /* refused (not a socket that stamps): its reads are stamped when read, and counted apart */
    (void)setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    c->cid = cid;
    c->slot = slot;
    c->gen = self->gen;
    c->active = 1;
    c->carry_len = 0;
    Py_RETURN_NONE;
}

static PyObject *Pump_remove(Pump *self, PyObject *args) {
    int fd;
    long long cid;
    if (!PyArg_ParseTuple(args, "iL", &fd, &cid)) return NULL;
    if (!enter(self)) return NULL;
    if (fd < 0 || fd >= self->nconns || !self->conns[fd].active || self->conns[fd].cid != cid) Py_RETURN_FALSE;
    drop_conn(self, fd);
    Py_RETURN_TRUE;
}

static PyObject *Pump_add_probe(Pump *self, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd)) return NULL;
    if (!enter(self)) return NULL;
    if (self->probe_fd >= 0) {
        PyErr_SetString(PyExc_ValueError, "Pump.add_probe: the pump has its probe already");
        return NULL;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = ((uint64_t)PROBE_GEN << 32) | (uint32_t)fd;
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    self->probe_fd = fd;
    Py_RETURN_NONE;
}

static PyObject *Pump_take_unstamped(Pump *self, PyObject *Py_UNUSED(ignored)) {
    unsigned long long v = self->unstamped;
    self->unstamped = 0;
    return PyLong_FromUnsignedLongLong(v);
}

static PyObject *Pump_take_probe_ns(Pump *self, PyObject *Py_UNUSED(ignored)) {
    int64_t v = self->probe_lag_ns;
    self->probe_lag_ns = 0;
    return PyLong_FromLongLong(v);
}

static PyObject *events_to_list(Pump *self) {
    PyObject *out = PyList_New(self->nevents);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < self->nevents; i++) {
        event_t *e = &self->events[i];
        PyObject *data = e->kind == EV_FRAME ? PyBytes_FromStringAndSize(e->data ? e->data : "", e->len)
                                             : PyUnicode_DecodeUTF8(e->data ? e->data : "", e->len, "replace");
        if (!data) {
            Py_DECREF(out);
            return NULL;
        }
        PyObject *t = Py_BuildValue("(nLiiiiN)", e->pos, (long long)e->cid, e->kind, e->opcode, e->fin, e->code,
                                    data);
        if (!t) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
}

static PyObject *Pump_process(Pump *self, PyObject *args) {
    Py_ssize_t max_frames, max_reads;
    if (!PyArg_ParseTuple(args, "nn", &max_frames, &max_reads)) return NULL;
    if (!enter(self)) return NULL;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    struct epoll_event evs[EPOLL_BATCH];
    unsigned long long reads0 = self->reads;
    int stop = 0;
    calibrate(self);
    /* first the sockets left with bytes by the last pass (the list is swapped: what this pass leaves goes to
     * the other one) */
    Py_ssize_t nold = self->nagain;
    int *old = self->again;
    self->again = self->again_next;
    self->again_next = old;
    self->nagain = 0;
    for (Py_ssize_t i = 0; i < nold; i++) {
        int fd = old[i];
        conn_t *c = &self->conns[fd];
        if (stop) { /* still marked: moved over as it is */
            self->again[self->nagain++] = fd;
            continue;
        }
        c->again = 0;
        if (!c->active) continue;
        read_conn(self, fd, c, 1);
        stop = self->oom || self->nrec >= max_frames || (Py_ssize_t)(self->reads - reads0) >= max_reads;
    }
    while (!stop) {
        int n = epoll_wait(self->epfd, evs, EPOLL_BATCH, 0);
        if (n <= 0) break;
        for (int i = 0; i < n; i++) {
            uint32_t gen = (uint32_t)(evs[i].data.u64 >> 32);
            int fd = (int)(uint32_t)evs[i].data.u64;
            if (gen == PROBE_GEN) {
                read_probe(self);
                continue;
            }
            if (fd >= self->nconns) continue;
            conn_t *c = &self->conns[fd];
            if (!c->active || c->gen != gen) continue;
            if (stop) { /* its edge is taken: read it next pass */
                mark_again(self, fd);
                continue;
            }
            read_conn(self, fd, c, (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0);
            stop = self->oom || self->nrec >= max_frames || (Py_ssize_t)(self->reads - reads0) >= max_reads;
        }
        if (n < EPOLL_BATCH) break;
    }
    self->more = stop;
    self->pass_reads = (Py_ssize_t)(self->reads - reads0);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyObject *out = events_to_list(self);
    free_events(self);
    if (self->oom) {
        self->oom = 0;
        Py_XDECREF(out);
        return PyErr_NoMemory();
    }
    return out;
}

static PyObject *Pump_push(Pump *self, PyObject *args) {
    long long slot, t;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "Ly*L", &slot, &b, &t)) return NULL;
    if (!enter(self)) {
        PyBuffer_Release(&b);
        return NULL;
    }
    int ok = add_push(self, slot, b.buf, b.len, t);
    PyBuffer_Release(&b);
    if (!ok) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *Pump_take(Pump *self, PyObject *args) {
    Py_ssize_t upto = -1;
    if (!PyArg_ParseTuple(args, "|n", &upto)) return NULL;
    if (!enter(self)) return NULL;
    Py_ssize_t n = upto < 0 || upto > self->nrec ? self->nrec : upto;
    if (n == 0) Py_RETURN_NONE;
    PyObject *distinct = PyList_New(self->ndist);
    if (!distinct) return NULL;
    for (Py_ssize_t i = 0; i < self->ndist; i++) {
        distinct_t *d = &self->dist[i];
        if (!d->obj && !(d->obj = PyBytes_FromStringAndSize(self->arena + d->off, d->len))) {
            Py_DECREF(distinct);
            return NULL;
        }
        Py_INCREF(d->obj);
        PyList_SET_ITEM(distinct, i, d->obj);
    }
    PyObject *r = Py_BuildValue("(Ny#y#y#)", distinct, (const char *)self->ids, n * (Py_ssize_t)sizeof(int32_t),
                                (const char *)self->slots, n * (Py_ssize_t)sizeof(int64_t),
                                (const char *)self->times, n * (Py_ssize_t)sizeof(int64_t));
    if (!r) return NULL;
    Py_ssize_t rest = self->nrec - n;
    if (rest) {
        memmove(self->ids, self->ids + n, (size_t)rest * sizeof(int32_t));
        memmove(self->slots, self->slots + n, (size_t)rest * sizeof(int64_t));
        memmove(self->times, self->times + n, (size_t)rest * sizeof(int64_t));
    }
    self->nrec = rest;
    if (!rest) reset_distinct(self); /* the ids left over still name these payloads otherwise */
    return r;
}

static PyObject *Pump_holds(Pump *self, PyObject *args) {
    long long slot;
    Py_ssize_t upto = -1;
    if (!PyArg_ParseTuple(args, "L|n", &slot, &upto)) return NULL;
    if (!enter(self)) return NULL;
    Py_ssize_t n = upto < 0 || upto > self->nrec ? self->nrec : upto;
    for (Py_ssize_t i = 0; i < n; i++)
        if (self->slots[i] == slot) Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

static PyObject *Pump_get_pending(Pump *self, void *Py_UNUSED(closure)) { return PyLong_FromSsize_t(self->nrec); }

static PyObject *Pump_get_more(Pump *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(self->more || self->nagain > 0);
}

static PyObject *Pump_get_pass_reads(Pump *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->pass_reads);
}

static PyObject *Pump_get_stats(Pump *self, void *Py_UNUSED(closure)) {
    Py_ssize_t active = 0, carried = 0;
    for (Py_ssize_t fd = 0; fd < self->nconns; fd++) {
        if (self->conns[fd].active) active++;
        carried += self->conns[fd].carry_cap;
    }
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:n,s:n,s:n,s:L}", "reads", self->reads, "stamped_reads", self->stamped,
                         "frames", self->frames, "pushes", self->pushes, "connections", active, "carry_bytes",
                         carried, "distinct", self->ndist, "clock_skew_ns", (long long)self->skew_ns);
}

static PyMethodDef Pump_methods[] = {
    {"fileno", (PyCFunction)Pump_fileno, METH_NOARGS, "The epoll descriptor: readable when a socket of the pump is."},
    {"add", (PyCFunction)Pump_add, METH_VARARGS, "add(fd, cid, slot): read this connected, handshaken socket."},
    {"remove", (PyCFunction)Pump_remove, METH_VARARGS,
     "remove(fd, cid) -> bool: stop reading it (before its descriptor is closed); False if it was not there."},
    {"add_probe", (PyCFunction)Pump_add_probe, METH_VARARGS,
     "add_probe(fd): a pipe of 8-byte little-endian CLOCK_MONOTONIC stamps; each one's wait goes into take_probe_ns."},
    {"take_probe_ns", (PyCFunction)Pump_take_probe_ns, METH_NOARGS, "The longest probe wait since the last call."},
    {"take_unstamped", (PyCFunction)Pump_take_unstamped, METH_NOARGS,
     "Reads without the kernel's receive stamp (stamped when read) since the last call."},
    {"process", (PyCFunction)Pump_process, METH_VARARGS,
     "process(max_frames, max_reads) -> events: read what is ready (GIL released) until max_frames records are "
     "pending or max_reads reads were made; events are tuples "
     "(pos, cid, kind, opcode, fin, code, data)."},
    {"push", (PyCFunction)Pump_push, METH_VARARGS, "push(slot, payload, t_ns): a push read elsewhere, in order."},
    {"take", (PyCFunction)Pump_take, METH_VARARGS,
     "take(upto=-1) -> (distinct payloads, int32 ids, int64 slots, int64 times) or None: the first records."},
    {"holds", (PyCFunction)Pump_holds, METH_VARARGS,
     "holds(slot, upto=-1): whether one of the first upto pending push records (-1: all) is of this slot."},
    {"close", (PyCFunction)Pump_close, METH_NOARGS, "Close the epoll descriptor and free everything."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Pump_getset[] = {
    {"pending", (getter)Pump_get_pending, NULL, "push records not taken yet", NULL},
    {"more", (getter)Pump_get_more, NULL,
     "the last process() stopped at a limit, or left sockets with bytes: call it again without waiting", NULL},
    {"pass_reads", (getter)Pump_get_pass_reads, NULL, "socket reads the last process() made", NULL},
    {"stats", (getter)Pump_get_stats, NULL, "counters: reads, stamped_reads (with the kernel's receive stamp), frames, pushes, connections, carry_bytes, distinct, clock_skew_ns (the process clock less the kernel's)",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "drivers._pump.Pump",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The receive engine's compiled read path (see the module source).",
    .tp_new = Pump_new,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_methods = Pump_methods,
    .tp_getset = Pump_getset,
};

static struct PyModuleDef pump_module = {
    PyModuleDef_HEAD_INIT, "_pump", "The receive engine's compiled read path (Linux, epoll).", -1, NULL, NULL, NULL,
    NULL, NULL,
};

PyMODINIT_FUNC PyInit__pump(void) {
    if (PyType_Ready(&PumpType) < 0) return NULL;
    PyObject *m = PyModule_Create(&pump_module);
    if (!m) return NULL;
    Py_INCREF(&PumpType);
    if (PyModule_AddObject(m, "Pump", (PyObject *)&PumpType) < 0 || PyModule_AddIntConstant(m, "FRAME", EV_FRAME) < 0 ||
        PyModule_AddIntConstant(m, "EOF", EV_EOF) < 0 || PyModule_AddIntConstant(m, "ERROR", EV_ERROR) < 0) {
        Py_DECREF(&PumpType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
