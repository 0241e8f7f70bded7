/* The compiled packet path: normalizer/core/engine.py's Normalizer, transcribed to C.
 *
 * Why: the Python engine costs more CPU per packet than the Suricata it feeds (issue 13).
 * engine.py stays the specification; this file follows it function by function (same names,
 * same order of checks, same counters) so the differential tests can hold the two to identical
 * bytes. Python is called only where engine.py does something once per flow or rare:
 * parsing a header C does not parse itself (header_cb; _headers.c parses the common ones and
 * queues the events Python builds HeaderEvents from when drained), an address family change
 * (family_cb), and tallying untrusted SYN sources (untrusted_cb).
 *
 * The flow table is a chained hash table plus a doubly linked list in insertion order, which is
 * exactly the order a Python dict iterates in: the oldest flow is evicted first, and tick() /
 * flush() visit flows (and so release held frames) in the same order as engine.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MASK 0xFFFFFFFFULL
#define HALF 0x80000000ULL
#define FIN 0x01
#define SYN 0x02
#define RST 0x04
#define ACK 0x10
#define PENDING 0
#define ACTIVE 1
#define PASSING 2
#define SACK_KIND 5
#define NS 1000000000LL
#define TS_LIMIT (4294967296LL * NS) /* pcap_io.TS_LIMIT: seconds are an unsigned 32-bit field */

enum {
    C_PACKETS_IN, C_PACKETS_OUT, C_PASSED_NOT_TCP, C_PASSED_UNTRACKED, C_PASSED_UNPARSED_FLOW,
    C_REWRITTEN, C_HEADER_ONLY_DROPPED, C_MIDSTREAM_DROPPED, C_FLOWS_CREATED, C_FLOWS_RESTARTED,
    C_FLOWS_EXPIRED, C_FLOWS_EVICTED, C_RESTORE_UNSUPPORTED,
    C_HEADER_MISSING, C_HEADER_TRUNCATED, C_HOLD_OVERFLOW, C_HOLD_TIMEOUT, C_NCOUNTERS
};
static const char *counter_names[C_NCOUNTERS] = {
    "packets_in", "packets_out", "passed_not_tcp", "passed_untracked", "passed_unparsed_flow",
    "rewritten", "header_only_dropped", "midstream_dropped", "flows_created", "flows_restarted",
    "flows_expired", "flows_evicted", "restore_unsupported",
    "header_missing", "header_truncated", "hold_overflow", "hold_timeout",
};

/* header_malformed / header_none / header_excluded are counted by the Python callback that
 * parses the header (fastpath.py), which alone can tell them apart. */

/* Offsets of one TCP segment (frame.TcpFrame). */
typedef struct {
    Py_ssize_t ip, tcp, payload, end;
    uint8_t vlan[8];
    int vlanlen;
} tcpframe;

typedef struct {
    int64_t ts;
    PyObject *frame;
    int64_t origlen;
} held;

typedef struct {
    uint8_t *buf;
    Py_ssize_t buflen, bufcap;
    held *frames;
    Py_ssize_t n, cap;
    int64_t nbytes;
    int64_t started;
} hold_t;

typedef struct flow {
    struct flow *hnext, *prev, *next;
    uint64_t hash;
    hold_t *hold;
    int64_t last_seen, closed_at, hdr_len;
    uint32_t isn;
    uint8_t client_first, state, fins, reallen; /* reallen: 0 (none), 12 or 36 */
    uint8_t real[72];                          /* client->server block, then server->client */
    Py_ssize_t keylen;
    uint8_t key[];
} flow;

typedef struct {
    PyObject_HEAD
    int linktype;
    int midstream_drop;
    uint8_t *trust4; Py_ssize_t ntrust4; /* (net, mask) pairs, 4+4 bytes */
    uint8_t *trust6; Py_ssize_t ntrust6; /* 16+16 bytes */
    Py_ssize_t max_flows, count;
    flow **buckets;
    size_t nbuckets;
    flow *oldest, *youngest;
    uint64_t seed;
    int64_t idle, closed, pending, next_sweep, held_total;
    int64_t max_hold_packets, max_hold_bytes, max_total_hold_bytes;
    int64_t c[C_NCOUNTERS];
    PyObject *out;          /* list of (ts, frame) */
    PyObject *header_cb;    /* (buf) -> None|False|(len, real, kind, local, header): _headers.c */
    PyObject *family_cb;    /* (frame, ip, tcp, payload, end, block) -> bytes | None */
    PyObject *untrusted_cb; /* (addr) -> None */
    PyObject *cur;          /* list mode: the rewritten frame under construction */
    struct header_state_s *hs; /* _headers.c */
    int pcap_sink, sink_nano;
    uint8_t *sink;          /* pcap mode: the records written so far */
    Py_ssize_t sink_len, sink_cap, rec_at;
    Py_ssize_t sink_out;    /* write_tap: records before this offset are written */
    struct decap_state *decap; /* _decap.c: tunnels opened in C (set_decap), or NULL */
} Engine;

/* ---- small helpers ----------------------------------------------------------------------- */

static inline uint32_t rd32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline unsigned rd16(const uint8_t *p) { return ((unsigned)p[0] << 8) | p[1]; }
static inline void wr32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static inline void wr16(uint8_t *p, unsigned v) { p[0] = (v >> 8) & 0xFF; p[1] = v & 0xFF; }

/* Python's (a % 0xFFFF) for any sign. */
static inline unsigned pymod(int64_t v) {
    int64_t r = v % 0xFFFF;
    return (unsigned)(r < 0 ? r + 0xFFFF : r);
}
static inline unsigned adjust32(unsigned csum, uint32_t old, uint32_t new_) {
    return pymod((int64_t)csum + (int64_t)old - (int64_t)new_);
}
/* A big-endian byte string (even length) as an integer, modulo 0xFFFF. */
static inline int64_t mod_words(const uint8_t *p, Py_ssize_t n) {
    uint64_t s = 0;
    for (Py_ssize_t i = 0; i + 1 < n; i += 2) s += rd16(p + i);
    return (int64_t)(s % 0xFFFF);
}

/* checksum.ones_sum: folded one's complement sum plus start. */
static unsigned ones_sum(const uint8_t *p, Py_ssize_t n, uint64_t start) {
    uint64_t s = 0;
    Py_ssize_t i = 0;
    for (; i + 1 < n; i += 2) s += rd16(p + i);
    if (n & 1) s += (uint64_t)p[n - 1] << 8;
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    s += start;
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    return (unsigned)s;
}

static int set_u32(uint8_t *buf, Py_ssize_t tcp, Py_ssize_t field, uint32_t new_) {
    uint8_t *at = buf + tcp + field;
    uint32_t old = rd32(at);
    if (old == new_) return 0;
    wr32(at, new_);
    wr16(buf + tcp + 16, adjust32(rd16(buf + tcp + 16), old, new_));
    return 1;
}

#include "_headers.c" /* once per flow: headers parsed in C, their counters and events */

/* ---- frame location (frame.py) ----------------------------------------------------------- */

static int l3_offset(const uint8_t *f, Py_ssize_t n, int linktype, tcpframe *out, int *version) {
    Py_ssize_t off;
    out->vlanlen = 0;
    if (linktype == 1) {
        if (n < 14) return 0;
        unsigned etype = rd16(f + 12);
        off = 14;
        int tags = 0;
        while (etype == 0x8100 || etype == 0x88A8 || etype == 0x9100) {
            if (tags == 4 || n < off + 4) return 0;
            out->vlan[out->vlanlen++] = f[off] & 0x0F;
            out->vlan[out->vlanlen++] = f[off + 1];
            etype = rd16(f + off + 2);
            off += 4;
            tags++;
        }
        if (etype == 0x0800) *version = 4;
        else if (etype == 0x86DD) *version = 6;
        else return 0;
        out->ip = off;
        return 1;
    }
    if (linktype == 101 || linktype == 228 || linktype == 229) off = 0;
    else if (linktype == 0 || linktype == 108) off = 4;
    else if (linktype == 113) {
        if (n < 16) return 0;
        unsigned etype = rd16(f + 14);
        if (etype != 0x0800 && etype != 0x86DD) return 0;
        off = 16;
    } else if (linktype == 276) {
        if (n < 20) return 0;
        unsigned etype = rd16(f);
        if (etype != 0x0800 && etype != 0x86DD) return 0;
        off = 20;
    } else return 0;
    if (n <= off) return 0;
    int v = f[off] >> 4;
    if (v != 4 && v != 6) return 0;
    *version = v;
    out->ip = off;
    return 1;
}

/* frame.locate_l4: fills ip, tcp (the transport header, any protocol) and end; returns the
 * protocol number, or -1. */
static int locate_l4(const uint8_t *f, Py_ssize_t n, int linktype, tcpframe *out) {
    int version;
    if (!l3_offset(f, n, linktype, out, &version)) return -1;
    Py_ssize_t ip = out->ip, l4, end;
    int proto;
    if (version == 4) {
        if (n < ip + 20 || f[ip] >> 4 != 4) return -1;
        Py_ssize_t ihl = (f[ip] & 0x0F) * 4;
        Py_ssize_t total = rd16(f + ip + 2);
        if (ihl < 20 || total < ihl) return -1;
        if (rd16(f + ip + 6) & 0x3FFF) return -1;
        l4 = ip + ihl;
        end = ip + total;
        proto = f[ip + 9];
    } else {
        if (n < ip + 40 || f[ip] >> 4 != 6) return -1;
        Py_ssize_t plen = rd16(f + ip + 4);
        int nxt = f[ip + 6];
        l4 = ip + 40;
        while (nxt == 0 || nxt == 43 || nxt == 60 || nxt == 51) {
            if (n < l4 + 8) return -1;
            Py_ssize_t hlen = nxt != 51 ? (f[l4 + 1] + 1) * 8 : (f[l4 + 1] + 2) * 4;
            nxt = f[l4];
            l4 += hlen;
        }
        if (nxt == 44) return -1;
        end = ip + 40 + plen;
        proto = nxt;
    }
    out->tcp = l4;
    out->end = end;
    return proto;
}

static int locate_tcp(const uint8_t *f, Py_ssize_t n, int linktype, tcpframe *out) {
    if (locate_l4(f, n, linktype, out) != 6) return 0;
    Py_ssize_t l4 = out->tcp, end = out->end;
    if (end > n || l4 + 20 > end) return 0;
    Py_ssize_t payload = l4 + (f[l4 + 12] >> 4) * 4;
    if (payload < l4 + 20 || payload > end) return 0;
    out->payload = payload;
    return 1;
}

/* offload._mod: a byte string as 16-bit big-endian words (odd length: zero-padded), mod 0xFFFF. */
static int64_t mod_any(const uint8_t *p, Py_ssize_t n) {
    int64_t r = mod_words(p, n & ~(Py_ssize_t)1);
    if (n & 1) r = (r + ((int64_t)p[n - 1] << 8)) % 0xFFFF;
    return r;
}

static unsigned l4_pseudo(const uint8_t *f, Py_ssize_t ip, int proto, Py_ssize_t length) {
    int64_t addrs = (f[ip] >> 4 == 4) ? mod_words(f + ip + 12, 8) : mod_words(f + ip + 8, 32);
    return pymod(addrs + proto + length);
}

/* offload.verdict(...) is Verdict.PARTIAL: the field holds the pseudo-header sum, the frame's
 * checksum is not already right, and the IPv4 header checksum is. */
static int verdict_partial(const uint8_t *f, Py_ssize_t n, int linktype) {
    tcpframe t;
    int proto = locate_l4(f, n, linktype, &t);
    if ((proto != 6 && proto != 17) || t.end > n) return 0;
    Py_ssize_t at = t.tcp + (proto == 6 ? 16 : 6);
    if (at + 2 > t.end) return 0;
    unsigned field = rd16(f + at);
    int v4 = f[t.ip] >> 4 == 4;
    int ip_ok = !v4 || mod_words(f + t.ip, t.tcp - t.ip) == 0;
    if (proto == 17 && v4 && field == 0) return 0;
    unsigned pseudo = l4_pseudo(f, t.ip, proto, t.end - t.tcp);
    if ((pseudo + mod_any(f + t.tcp, t.end - t.tcp)) % 0xFFFF == 0) return 0;
    return field % 0xFFFF == pseudo && ip_ok;
}

/* offload.complete: a new bytes object with the IPv4 header and TCP/UDP checksums computed in
 * full; NULL without an exception when the frame cannot be summed. */
static PyObject *complete_csum(const uint8_t *f, Py_ssize_t n, int linktype) {
    tcpframe t;
    int proto = locate_l4(f, n, linktype, &t);
    if ((proto != 6 && proto != 17) || t.end > n) return NULL;
    Py_ssize_t at = t.tcp + (proto == 6 ? 16 : 6);
    if (at + 2 > t.end) return NULL;
    PyObject *out = PyBytes_FromStringAndSize((const char *)f, n);
    if (!out) return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    Py_ssize_t ip = t.ip;
    if (o[ip] >> 4 == 4) {
        o[ip + 10] = o[ip + 11] = 0;
        int64_t r = mod_words(o + ip, t.tcp - ip);
        wr16(o + ip + 10, r ? 0xFFFF - (unsigned)r : 0);
    }
    o[at] = o[at + 1] = 0;
    int64_t r = (l4_pseudo(o, ip, proto, t.end - t.tcp) + mod_any(o + t.tcp, t.end - t.tcp)) % 0xFFFF;
    unsigned c = r ? 0xFFFF - (unsigned)r : 0;
    if (proto == 17 && c == 0) c = 0xFFFF;
    wr16(o + at, c);
    return out;
}

/* offload.looks_partial: the transport checksum field holds exactly the pseudo-header sum. */
static int looks_partial(const uint8_t *f, Py_ssize_t n, int linktype) {
    if (linktype == 1 && n >= 54 && f[12] == 8 && f[13] == 0 && f[14] == 0x45 && f[23] == 6) {
        int64_t end = 14 + rd16(f + 16);
        unsigned pseudo = pymod(mod_words(f + 26, 8) + 6 + end - 34);
        return rd16(f + 50) % 0xFFFF == pseudo;
    }
    tcpframe t;
    int proto = locate_l4(f, n, linktype, &t);
    if ((proto != 6 && proto != 17) || t.end > n) return 0;
    Py_ssize_t at = t.tcp + (proto == 6 ? 16 : 6);
    if (at + 2 > t.end) return 0;
    int v4 = f[t.ip] >> 4 == 4;
    int64_t addrs = v4 ? mod_words(f + t.ip + 12, 8) : mod_words(f + t.ip + 8, 32);
    unsigned pseudo = pymod(addrs + proto + (t.end - t.tcp));
    return rd16(f + at) % 0xFFFF == pseudo;
}

/* (source, destination) endpoint = address + port; returns the address length. */
static int endpoints(const uint8_t *f, const tcpframe *t, uint8_t *a, uint8_t *b) {
    Py_ssize_t ip = t->ip;
    int alen = (f[ip] >> 4 == 4) ? 4 : 16;
    const uint8_t *src = f + ip + (alen == 4 ? 12 : 8);
    memcpy(a, src, alen);
    memcpy(a + alen, f + t->tcp, 2);
    memcpy(b, src + alen, alen);
    memcpy(b + alen, f + t->tcp + 2, 2);
    return alen;
}

static inline int ep_less(const uint8_t *a, const uint8_t *b, int len) {
    return memcmp(a, b, len) < 0;
}

/* ---- trust (trust.py) -------------------------------------------------------------------- */

static int trusted(Engine *e, const uint8_t *addr, int alen) {
    const uint8_t *t = alen == 4 ? e->trust4 : e->trust6;
    Py_ssize_t n = alen == 4 ? e->ntrust4 : e->ntrust6;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *net = t + i * 2 * alen, *mask = net + alen;
        int ok = 1;
        for (int j = 0; j < alen; j++)
            if ((addr[j] & mask[j]) != net[j]) { ok = 0; break; }
        if (ok) return 1;
    }
    return 0;
}

/* ---- flow table (flow_table.py) ---------------------------------------------------------- */

static uint64_t key_hash(Engine *e, const uint8_t *k, Py_ssize_t n) {
    uint64_t h = e->seed ^ (0x9E3779B97F4A7C15ULL * (uint64_t)(n + 1));
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= k[i];
        h *= 0x100000001B3ULL;
        h ^= h >> 29;
    }
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ULL;
    h ^= h >> 32;
    return h;
}

static flow *table_get(Engine *e, const uint8_t *k, Py_ssize_t n, uint64_t h) {
    for (flow *f = e->buckets[h & (e->nbuckets - 1)]; f; f = f->hnext)
        if (f->hash == h && f->keylen == n && memcmp(f->key, k, n) == 0) return f;
    return NULL;
}

static int table_grow(Engine *e) {
    size_t nb = e->nbuckets * 2;
    flow **b = PyMem_Calloc(nb, sizeof(flow *));
    if (!b) return -1;
    for (flow *f = e->oldest; f; f = f->next) {
        size_t i = f->hash & (nb - 1);
        f->hnext = b[i];
        b[i] = f;
    }
    PyMem_Free(e->buckets);
    e->buckets = b;
    e->nbuckets = nb;
    return 0;
}

static void hold_free(hold_t *h) {
    if (!h) return;
    for (Py_ssize_t i = 0; i < h->n; i++) Py_XDECREF(h->frames[i].frame);
    PyMem_Free(h->frames);
    PyMem_Free(h->buf);
    PyMem_Free(h);
}

/* Unlink from hash chain and age list, and free (the hold must be released already). */
static void table_remove(Engine *e, flow *f) {
    flow **pp = &e->buckets[f->hash & (e->nbuckets - 1)];
    while (*pp != f) pp = &(*pp)->hnext;
    *pp = f->hnext;
    if (f->prev) f->prev->next = f->next; else e->oldest = f->next;
    if (f->next) f->next->prev = f->prev; else e->youngest = f->prev;
    e->count--;
    hold_free(f->hold);
    PyMem_Free(f);
}

/* A new flow at the young end (the caller made room). */
static flow *table_put(Engine *e, const uint8_t *k, Py_ssize_t n, uint64_t h) {
    if ((size_t)e->count >= e->nbuckets && table_grow(e) < 0) return NULL;
    flow *f = PyMem_Malloc(sizeof(flow) + n);
    if (!f) return NULL;
    memset(f, 0, sizeof(flow));
    memcpy(f->key, k, n);
    f->keylen = n;
    f->hash = h;
    size_t i = h & (e->nbuckets - 1);
    f->hnext = e->buckets[i];
    e->buckets[i] = f;
    f->prev = e->youngest;
    if (e->youngest) e->youngest->next = f; else e->oldest = f;
    e->youngest = f;
    e->count++;
    return f;
}

/* ---- output ------------------------------------------------------------------------------
 * Two sinks. List mode (feed): (ts, frame) tuples in ``out``, as engine.py appends them; an
 * untouched frame is the very object fed in. Pcap mode (feed_pcap, and any call while
 * ``pcap_sink`` is set): pcap records appended to one buffer, so a whole chunk costs no Python
 * object per packet; an untouched frame keeps its original length (truncated captures), a
 * rewritten one is fully captured, exactly what pcap_job writes. */

/* A frame on its way through: its bytes, its object (NULL until one is needed), and its original
 * length on the wire (-1 when unknown: list mode, or a frame rebuilt before the core). */
typedef struct {
    PyObject *obj;
    const uint8_t *p;
    Py_ssize_t n;
    int64_t origlen;
} pkt;

static PyObject *pkt_obj(pkt *k) {
    if (!k->obj) k->obj = PyBytes_FromStringAndSize((const char *)k->p, k->n);
    return k->obj;
}

static int sink_reserve(Engine *e, Py_ssize_t add) {
    if (e->sink_len + add <= e->sink_cap) return 0;
    Py_ssize_t cap = e->sink_cap ? e->sink_cap : 1 << 16;
    while (cap < e->sink_len + add) cap *= 2;
    uint8_t *nb = PyMem_Realloc(e->sink, cap);
    if (!nb) { PyErr_NoMemory(); return -1; }
    e->sink = nb;
    e->sink_cap = cap;
    return 0;
}

static void sink_header(Engine *e, uint8_t *at, int64_t ts, Py_ssize_t n, int64_t origlen) {
    int64_t sec = ts / NS, ns = ts % NS;
    if (ns < 0) { ns += NS; sec -= 1; }
    uint32_t v[4] = {(uint32_t)sec, (uint32_t)(e->sink_nano ? ns : ns / 1000), (uint32_t)n,
                     (uint32_t)(origlen > n ? origlen : n)};
    for (int i = 0; i < 4; i++) {
        at[4 * i] = v[i] & 0xFF; at[4 * i + 1] = (v[i] >> 8) & 0xFF;
        at[4 * i + 2] = (v[i] >> 16) & 0xFF; at[4 * i + 3] = (v[i] >> 24) & 0xFF;
    }
}

/* Forward a frame as it came. */
static int emit_pkt(Engine *e, int64_t ts, pkt *k) {
    if (e->pcap_sink) {
        const uint8_t *p = k->p;
        Py_ssize_t n = k->n;
        Py_buffer v;
        int view = 0;
        if (!p) {
            if (PyObject_GetBuffer(k->obj, &v, PyBUF_SIMPLE) < 0) return -1;
            p = v.buf; n = v.len; view = 1;
        }
        int r = sink_reserve(e, 16 + n);
        if (r == 0) {
            sink_header(e, e->sink + e->sink_len, ts, n, k->origlen);
            memcpy(e->sink + e->sink_len + 16, p, n);
            e->sink_len += 16 + n;
            e->c[C_PACKETS_OUT]++;
        }
        if (view) PyBuffer_Release(&v);
        return r;
    }
    PyObject *obj = pkt_obj(k);
    if (!obj) return -1;
    PyObject *t = PyTuple_New(2);
    if (!t) return -1;
    PyObject *pts = PyLong_FromLongLong(ts);
    if (!pts) { Py_DECREF(t); return -1; }
    PyTuple_SET_ITEM(t, 0, pts);
    Py_INCREF(obj);
    PyTuple_SET_ITEM(t, 1, obj);
    int r = PyList_Append(e->out, t);
    Py_DECREF(t);
    if (r == 0) e->c[C_PACKETS_OUT]++;
    return r;
}

/* Space for a new (rewritten) frame of n bytes; ob_commit forwards it. */
static uint8_t *ob_new(Engine *e, Py_ssize_t n) {
    if (e->pcap_sink) {
        if (sink_reserve(e, 16 + n) < 0) return NULL;
        e->rec_at = e->sink_len;
        return e->sink + e->sink_len + 16;
    }
    Py_XDECREF(e->cur);
    e->cur = PyBytes_FromStringAndSize(NULL, n);
    return e->cur ? (uint8_t *)PyBytes_AS_STRING(e->cur) : NULL;
}

static int ob_commit(Engine *e, int64_t ts, Py_ssize_t n) {
    if (e->pcap_sink) {
        sink_header(e, e->sink + e->rec_at, ts, n, -1);
        e->sink_len = e->rec_at + 16 + n;
        e->c[C_PACKETS_OUT]++;
        return 0;
    }
    pkt k = {e->cur, NULL, 0, -1};
    e->cur = NULL;
    if (PyBytes_GET_SIZE(k.obj) != n && _PyBytes_Resize(&k.obj, n) < 0) return -1;
    int r = emit_pkt(e, ts, &k);
    Py_DECREF(k.obj);
    return r;
}

/* Replace the frame under construction by ``b`` (bytes); returns its buffer. */
static uint8_t *ob_replace(Engine *e, PyObject *b) {
    Py_ssize_t n = PyBytes_GET_SIZE(b);
    if (e->pcap_sink) {
        Py_ssize_t keep = e->sink_len;
        e->sink_len = e->rec_at;
        if (sink_reserve(e, 16 + n) < 0) { e->sink_len = keep; return NULL; }
        e->sink_len = keep;
        memcpy(e->sink + e->rec_at + 16, PyBytes_AS_STRING(b), n);
        return e->sink + e->rec_at + 16;
    }
    Py_INCREF(b);
    Py_XSETREF(e->cur, b);
    return (uint8_t *)PyBytes_AS_STRING(b);
}

/* ---- flow lifecycle ---------------------------------------------------------------------- */

static int do_tick(Engine *e, int64_t now);

static int give_up(Engine *e, flow *f) {
    f->state = PASSING;
    hold_t *h = f->hold;
    f->hold = NULL;
    if (!h) return 0;
    e->held_total -= h->nbytes;
    e->c[C_PASSED_UNPARSED_FLOW] += h->n;
    int r = 0;
    for (Py_ssize_t i = 0; i < h->n && r == 0; i++) {
        pkt k = {h->frames[i].frame, NULL, 0, h->frames[i].origlen};
        r = emit_pkt(e, h->frames[i].ts, &k);
    }
    hold_free(h);
    return r;
}

static int drop_flow(Engine *e, flow *f) {
    int r = 0;
    if (f->state == PENDING) r = give_up(e, f);
    table_remove(e, f);
    return r;
}

static flow *new_flow(Engine *e, const uint8_t *k, Py_ssize_t n, uint64_t h, int client_first,
                      uint32_t isn, int64_t ts) {
    if (e->count >= e->max_flows) {
        if (ts >= e->next_sweep && do_tick(e, ts) < 0) return NULL;
        if (e->count >= e->max_flows) {
            if (drop_flow(e, e->oldest) < 0) return NULL;
            e->c[C_FLOWS_EVICTED]++;
        }
    }
    flow *f = table_put(e, k, n, h);
    if (!f) { PyErr_NoMemory(); return NULL; }
    hold_t *hd = PyMem_Calloc(1, sizeof(hold_t));
    if (!hd) { table_remove(e, f); PyErr_NoMemory(); return NULL; }
    hd->started = ts;
    f->hold = hd;
    f->client_first = client_first;
    f->isn = isn;
    f->state = PENDING;
    f->last_seen = ts;
    e->c[C_FLOWS_CREATED]++;
    return f;
}

static void note_close(flow *f, int flags, int from_client, int64_t ts) {
    if (flags & RST) f->fins |= 4;
    else if (flags & FIN) f->fins |= from_client ? 1 : 2;
    else return;
    if (!f->closed_at && ((f->fins & 4) || (f->fins & 3) == 3)) f->closed_at = ts;
}

static int do_tick(Engine *e, int64_t now) {
    e->next_sweep = now + NS;
    flow *f = e->oldest, *next;
    for (; f; f = next) {
        next = f->next;
        if (f->hold && now - f->hold->started > e->pending) {
            e->c[C_HOLD_TIMEOUT]++;
            if (give_up(e, f) < 0) return -1;
        }
        if ((f->closed_at && now - f->closed_at > e->closed) || now - f->last_seen > e->idle) {
            if (drop_flow(e, f) < 0) return -1;
            e->c[C_FLOWS_EXPIRED]++;
        }
    }
    return 0;
}

/* ---- ACTIVE: shift the stream (Normalizer._rewrite / _restore) ---------------------------- */

static inline uint32_t map_seq(const flow *f, uint32_t seq) {
    uint64_t off = ((uint64_t)seq - f->isn - 1) & MASK;
    if (off >= HALF) return seq;
    int64_t n = f->hdr_len;
    int64_t d = (int64_t)off >= n ? (int64_t)off - n : 0;
    return (uint32_t)(((int64_t)f->isn + 1 + d) & (int64_t)MASK);
}

/* tcp_edit.replace_endpoints on a private buffer. */
static void replace_endpoints(uint8_t *buf, Py_ssize_t ip, Py_ssize_t t, const uint8_t *block,
                              int blen) {
    int n = blen - 4;
    Py_ssize_t a_at = ip + (n == 8 ? 12 : 8);
    int64_t old_a = mod_words(buf + a_at, n);
    int64_t old_p = mod_words(buf + t, 4);
    int64_t new_all = mod_words(block, blen);
    int64_t new_a = mod_words(block, n);
    memcpy(buf + a_at, block, n);
    memcpy(buf + t, block + n, 4);
    unsigned csum = rd16(buf + t + 16);
    wr16(buf + t + 16, pymod((int64_t)csum + old_a + old_p - new_all));
    if (n == 8) {
        csum = rd16(buf + ip + 10);
        wr16(buf + ip + 10, pymod((int64_t)csum + old_a - new_a));
    }
}

/* A frame's bytes copied into a new output frame, unless already done. */
#define MATERIALIZE()                                  \
    do {                                               \
        if (!o) {                                      \
            o = ob_new(e, n);                          \
            if (!o) return -1;                         \
            memcpy(o, p, n);                           \
            olen = n;                                  \
        }                                              \
    } while (0)

/* Normalizer._rewrite (with _restore): the general path of an ACTIVE flow's segment. */
static int rewrite(Engine *e, flow *f, pkt *k, tcpframe t, int from_client, int flags,
                   int64_t ts) {
    const uint8_t *p = k->p;
    Py_ssize_t n = k->n;
    uint8_t *o = NULL; /* the output frame, once it differs from the input */
    Py_ssize_t olen = 0;
    Py_ssize_t tc = t.tcp;
    if (from_client) {
        uint32_t seq = rd32(p + tc + 4);
        int syn = flags & SYN ? 1 : 0;
        uint64_t start = ((uint64_t)seq + syn - f->isn - 1) & MASK;
        int64_t hn = f->hdr_len;
        if (start >= HALF) {
            /* before the stream: nothing of the header in it */
        } else if ((int64_t)start >= hn) {
            /* copied even when nothing changes, as engine.py does (a new frame object, whose
             * original length pcap_job no longer knows) */
            MATERIALIZE();
            set_u32(o, tc, 4, (uint32_t)(((int64_t)seq - hn) & (int64_t)MASK));
        } else {
            Py_ssize_t plen = t.end - t.payload;
            uint32_t new_seq = (uint32_t)(((int64_t)f->isn + 1 - syn) & (int64_t)MASK);
            if (plen == 0) {
                MATERIALIZE();
                set_u32(o, tc, 4, new_seq);
            } else {
                Py_ssize_t cut = hn - (int64_t)start < plen ? (Py_ssize_t)(hn - (int64_t)start)
                                                            : plen;
                if (cut == plen && !(flags & (FIN | RST | SYN))) {
                    e->c[C_HEADER_ONLY_DROPPED]++;
                    return 0;
                }
                /* tcp_edit.trim_payload */
                olen = t.end - cut;
                o = ob_new(e, olen);
                if (!o) return -1;
                memcpy(o, p, t.payload);
                memcpy(o + t.payload, p + t.payload + cut, t.end - t.payload - cut);
                Py_ssize_t ip = t.ip;
                if (o[ip] >> 4 == 4) {
                    unsigned old_total = rd16(o + ip + 2), new_total = old_total - cut;
                    wr16(o + ip + 2, new_total);
                    wr16(o + ip + 10, pymod((int64_t)rd16(o + ip + 10) + old_total - new_total));
                } else {
                    wr16(o + ip + 4, rd16(o + ip + 4) - cut);
                }
                wr32(o + tc + 4, new_seq);
                t.end -= cut;
                /* tcp_checksum: pseudo-header + segment with its checksum field as zero */
                Py_ssize_t seglen = t.end - tc;
                uint8_t ph[40];
                int phl;
                if (o[ip] >> 4 == 4) {
                    memcpy(ph, o + ip + 12, 8);
                    ph[8] = 0; ph[9] = 6; wr16(ph + 10, seglen & 0xFFFF);
                    phl = 12;
                } else {
                    memcpy(ph, o + ip + 8, 32);
                    wr32(ph + 32, (uint32_t)seglen);
                    ph[36] = ph[37] = ph[38] = 0; ph[39] = 6;
                    phl = 40;
                }
                unsigned ps = ones_sum(ph, phl, 0);
                o[tc + 16] = o[tc + 17] = 0;
                wr16(o + tc + 16, (~ones_sum(o + tc, seglen, ps)) & 0xFFFF);
            }
        }
    } else if (flags & ACK) {
        uint32_t ack = rd32(p + tc + 8);
        uint32_t new_ack = map_seq(f, ack);
        Py_ssize_t edges[80];
        int ne = 0;
        if (t.payload - tc > 20) { /* tcp_edit.sack_edges */
            Py_ssize_t i = tc + 20, end = t.payload;
            while (i < end) {
                int kind = p[i];
                if (kind == 0) break;
                if (kind == 1) { i++; continue; }
                if (i + 1 >= end) break;
                int length = p[i + 1];
                if (length < 2 || i + length > end) break;
                if (kind == SACK_KIND) {
                    for (Py_ssize_t j = i + 2; j + 8 <= i + length && ne < 78; j += 8) {
                        edges[ne++] = j - tc;
                        edges[ne++] = j + 4 - tc;
                    }
                }
                i += length;
            }
        }
        if (new_ack != ack || ne) {
            MATERIALIZE();
            set_u32(o, tc, 8, new_ack);
            for (int j = 0; j < ne; j++)
                set_u32(o, tc, edges[j], map_seq(f, rd32(o + tc + edges[j])));
        }
    }
    if (f->reallen) { /* Normalizer._restore */
        const uint8_t *block = f->real + (from_client ? 0 : f->reallen);
        int v4 = p[t.ip] >> 4 == 4;
        if (f->reallen == (v4 ? 12 : 36)) {
            MATERIALIZE();
            replace_endpoints(o, t.ip, tc, block, f->reallen);
        } else {
            PyObject *src = o ? PyBytes_FromStringAndSize((const char *)o, olen) : pkt_obj(k);
            if (!src) return -1;
            if (!o) Py_INCREF(src);
            PyObject *r = PyObject_CallFunction(e->family_cb, "Onnnny#", src, t.ip, tc,
                                                t.payload, t.end, (const char *)block,
                                                (Py_ssize_t)f->reallen);
            Py_DECREF(src);
            if (!r) return -1;
            if (r == Py_None) {
                e->c[C_RESTORE_UNSUPPORTED]++;
            } else if (!PyBytes_Check(r)) {
                Py_DECREF(r);
                PyErr_SetString(PyExc_TypeError, "family_cb must return bytes or None");
                return -1;
            } else {
                if (!o && !ob_new(e, 0)) { Py_DECREF(r); return -1; }
                o = ob_replace(e, r);
                olen = PyBytes_GET_SIZE(r);
                if (!o) { Py_DECREF(r); return -1; }
            }
            Py_DECREF(r);
        }
    }
    e->c[C_REWRITTEN]++;
    return o ? ob_commit(e, ts, olen) : emit_pkt(e, ts, k);
}

/* ---- PENDING: collect the header (Normalizer._hold / _assemble / _extend / _resolve) ------ */

static int extend(Engine *e, flow *f, const uint8_t *p, const tcpframe *t, int flags) {
    hold_t *h = f->hold;
    uint32_t seq = rd32(p + t->tcp + 4);
    uint64_t start = ((uint64_t)seq + (flags & SYN ? 1 : 0) - f->isn - 1) & MASK;
    int64_t have = h->buflen;
    int64_t plen = t->end - t->payload;
    if (start >= HALF || (int64_t)start > have || (int64_t)start + plen <= have) return 0;
    int64_t room = e->max_hold_bytes - have;
    if (room <= 0) return 0;
    Py_ssize_t lo = t->payload + have - start;
    Py_ssize_t hi = t->end < lo + room ? t->end : lo + room;
    Py_ssize_t add = hi - lo;
    if (h->buflen + add > h->bufcap) {
        Py_ssize_t cap = h->bufcap ? h->bufcap : 256;
        while (cap < h->buflen + add) cap *= 2;
        uint8_t *nb = PyMem_Realloc(h->buf, cap);
        if (!nb) { PyErr_NoMemory(); return -1; }
        h->buf = nb;
        h->bufcap = cap;
    }
    memcpy(h->buf + h->buflen, p + lo, add);
    h->buflen += add;
    return 1;
}

/* Buffer of a held or fed frame object. */
static int frame_buf(PyObject *o, Py_buffer *view) {
    return PyObject_GetBuffer(o, view, PyBUF_SIMPLE);
}

static int assemble(Engine *e, flow *f, const uint8_t *p, const tcpframe *t, int flags) {
    hold_t *h = f->hold;
    int grew = extend(e, f, p, t, flags);
    if (grew < 0) return -1;
    int progress = grew;
    while (progress && h->n > 1) {
        progress = 0;
        for (Py_ssize_t i = 0; i < h->n; i++) {
            Py_buffer v;
            if (frame_buf(h->frames[i].frame, &v) < 0) return -1;
            const uint8_t *q = v.buf;
            tcpframe g;
            int r = 0;
            if (locate_tcp(q, v.len, e->linktype, &g) && g.end != g.payload) {
                uint8_t a[18], b[18];
                int alen = endpoints(q, &g, a, b);
                if (ep_less(a, b, alen + 2) == f->client_first) {
                    r = extend(e, f, q, &g, q[g.tcp + 13]);
                    if (r > 0) progress = grew = 1;
                }
            }
            PyBuffer_Release(&v);
            if (r < 0) return -1;
        }
    }
    return grew;
}

/* real: None or (c2s, s2c), endpoint blocks of 12 or 36 bytes each (restore.real_endpoints),
 * copied into out (both blocks); *len is one block's size, 0 for None. -1: malformed (raised). */
static int parse_real(PyObject *real, uint8_t *out, uint8_t *len) {
    *len = 0;
    if (real == Py_None) return 0;
    PyObject *c2s, *s2c;
    if (!PyArg_ParseTuple(real, "SS", &c2s, &s2c)) return -1;
    Py_ssize_t bl = PyBytes_GET_SIZE(c2s);
    if ((bl != 12 && bl != 36) || PyBytes_GET_SIZE(s2c) != bl) {
        PyErr_SetString(PyExc_ValueError, "bad endpoint block");
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(c2s), bl);
    memcpy(out + bl, PyBytes_AS_STRING(s2c), bl);
    *len = (uint8_t)bl;
    return 0;
}

/* PENDING -> ACTIVE with the header's length and, when restoring, the real endpoint blocks
 * (client->server then server->client, ``reallen`` bytes each; 0: none). */
static int resolve(Engine *e, flow *f, int64_t hl, const uint8_t *real, int reallen) {
    f->state = ACTIVE;
    f->hdr_len = hl;
    if (reallen) {
        f->reallen = (uint8_t)reallen;
        memcpy(f->real, real, 2 * reallen);
    }
    hold_t *h = f->hold;
    f->hold = NULL;
    e->held_total -= h->nbytes;
    int r = 0;
    for (Py_ssize_t i = 0; i < h->n && r == 0; i++) {
        Py_buffer v;
        if (frame_buf(h->frames[i].frame, &v) < 0) { r = -1; break; }
        const uint8_t *q = v.buf;
        tcpframe g;
        if (!locate_tcp(q, v.len, e->linktype, &g)) {
            PyBuffer_Release(&v);
            PyErr_SetString(PyExc_AssertionError, "held frame no longer locates");
            r = -1;
            break;
        }
        uint8_t a[18], b[18];
        int alen = endpoints(q, &g, a, b);
        int from_client = ep_less(a, b, alen + 2) == f->client_first;
        pkt k = {h->frames[i].frame, q, v.len, h->frames[i].origlen};
        r = rewrite(e, f, &k, g, from_client, q[g.tcp + 13], h->frames[i].ts);
        PyBuffer_Release(&v);
    }
    hold_free(h);
    return r;
}

/* The hold's bytes grew: parse the header -- in C for the common kinds (_headers.c), else by
 * fastpath._on_header, the Python codecs -- then count it, queue its event and resolve.
 * 1: still incomplete; 0: resolved or given up; -1: error. */
static int header_step(Engine *e, flow *f, hold_t *h, Py_ssize_t el) {
    header_state *hs = e->hs;
    /* the key is vlan ids, then both endpoints; which one is the client is the flow's */
    Py_ssize_t vl = f->keylen - 2 * el;
    const uint8_t *first = f->key + vl, *second = first + el;
    const uint8_t *client = f->client_first ? first : second;
    const uint8_t *server = f->client_first ? second : first;
    int64_t hl;
    uint8_t real[72];
    uint8_t reallen = 0;
    int kind, local = 0;
    PyObject *header;
    if (fast_header(hs, h->buf, h->buflen, &hl, real, &reallen, &kind)) {
        if (!hs->restore) reallen = 0;
        header = PyBytes_FromStringAndSize((const char *)h->buf, hl); /* parsed if drained */
        if (!header) return -1;
    } else {
        PyObject *res = PyObject_CallFunction(e->header_cb, "y#", (const char *)h->buf,
                                              h->buflen);
        if (!res) return -1;
        if (res == Py_False) { /* refused: the callback counted why (malformed/none/excluded) */
            Py_DECREF(res);
            return give_up(e, f);
        }
        if (!PyTuple_Check(res)) { /* None: need more bytes */
            Py_DECREF(res);
            return 1;
        }
        /* (length, real, kind index, LOCAL?, ProxyHeader); real None or (c2s, s2c) */
        long long len;
        PyObject *realobj;
        if (!PyArg_ParseTuple(res, "LOipO", &len, &realobj, &kind, &local, &header) ||
            parse_real(realobj, real, &reallen) < 0) {
            Py_DECREF(res);
            return -1;
        }
        if (kind < 0 || kind >= NKINDS) {
            Py_DECREF(res);
            PyErr_SetString(PyExc_ValueError, "header_cb: bad kind index");
            return -1;
        }
        hl = len;
        Py_INCREF(header);
        Py_DECREF(res);
    }
    if (header_accepted(hs, kind, local, reallen != 0, h->started, f->key, vl, client, server,
                        el, f->isn, header) < 0)
        return -1;
    return resolve(e, f, hl, real, reallen);
}

static int do_hold(Engine *e, flow *f, pkt *k, const tcpframe *t, int from_client, int flags,
                   int64_t ts) {
    const uint8_t *p = k->p;
    Py_ssize_t n = k->n;
    PyObject *frame = pkt_obj(k);
    if (!frame) return -1;
    hold_t *h = f->hold;
    if (h->n == h->cap) {
        Py_ssize_t cap = h->cap ? h->cap * 2 : 8;
        held *nf = PyMem_Realloc(h->frames, cap * sizeof(held));
        if (!nf) { PyErr_NoMemory(); return -1; }
        h->frames = nf;
        h->cap = cap;
    }
    Py_INCREF(frame);
    h->frames[h->n].ts = ts;
    h->frames[h->n].frame = frame;
    h->frames[h->n].origlen = k->origlen;
    h->n++;
    h->nbytes += n;
    e->held_total += n;
    if (from_client && t->end > t->payload) {
        int grew = assemble(e, f, p, t, flags);
        if (grew < 0) return -1;
        if (grew) {
            int r = header_step(e, f, h, (p[t->ip] >> 4 == 4) ? 6 : 18);
            if (r != 1) return r;
        }
    }
    if (flags & (FIN | RST)) {
        if (h->buflen) e->c[C_HEADER_TRUNCATED]++;
        else e->c[C_HEADER_MISSING]++;
        return give_up(e, f);
    }
    if (h->n > e->max_hold_packets || h->nbytes > e->max_hold_bytes ||
        e->held_total > e->max_total_hold_bytes) {
        e->c[C_HOLD_OVERFLOW]++;
        return give_up(e, f);
    }
    return 0;
}

/* ---- everything else --------------------------------------------------------------------- */

static int untracked(Engine *e, pkt *frame, int64_t ts, const uint8_t *src,
                     const uint8_t *dst, int alen) {
    if (e->midstream_drop && (trusted(e, src, alen) || trusted(e, dst, alen))) {
        e->c[C_MIDSTREAM_DROPPED]++;
        return 0;
    }
    e->c[C_PASSED_UNTRACKED]++;
    return emit_pkt(e, ts, frame);
}

/* ---- feed -------------------------------------------------------------------------------- */

static int feed_one(Engine *e, pkt *frame, int64_t ts) {
    const uint8_t *p = frame->p;
    Py_ssize_t n = frame->n;
    e->c[C_PACKETS_IN]++;
    if (ts >= e->next_sweep && do_tick(e, ts) < 0) return -1;
    tcpframe t;
    if (!locate_tcp(p, n, e->linktype, &t)) {
        e->c[C_PASSED_NOT_TCP]++;
        return emit_pkt(e, ts, frame);
    }
    uint8_t key[8 + 36];
    uint8_t a[18], b[18];
    int alen = endpoints(p, &t, a, b);
    int el = alen + 2;
    int fwd = ep_less(a, b, el);
    Py_ssize_t kl = t.vlanlen + 2 * el;
    memcpy(key, t.vlan, t.vlanlen);
    memcpy(key + t.vlanlen, fwd ? a : b, el);
    memcpy(key + t.vlanlen + el, fwd ? b : a, el);
    uint64_t h = key_hash(e, key, kl);
    Py_ssize_t tc = t.tcp;
    int flags = p[tc + 13];
    flow *f = table_get(e, key, kl, h);
    if (!f) {
        if ((flags & (SYN | ACK | RST)) == SYN) {
            if (trusted(e, a, alen)) {
                f = new_flow(e, key, kl, h, fwd, rd32(p + tc + 4), ts);
                if (!f) return -1;
            } else {
                PyObject *addr = PyBytes_FromStringAndSize((const char *)a, alen);
                if (!addr) return -1;
                PyObject *r = PyObject_CallOneArg(e->untrusted_cb, addr);
                Py_DECREF(addr);
                if (!r) return -1;
                Py_DECREF(r);
                return untracked(e, frame, ts, a, b, alen);
            }
        } else {
            return untracked(e, frame, ts, a, b, alen);
        }
    } else if ((flags & (SYN | ACK | RST)) == SYN && fwd == f->client_first) {
        uint32_t seq = rd32(p + tc + 4);
        if (seq != f->isn) {
            if (drop_flow(e, f) < 0) return -1;
            e->c[C_FLOWS_RESTARTED]++;
            f = new_flow(e, key, kl, h, fwd, seq, ts);
            if (!f) return -1;
        }
    }
    int from_client = fwd == f->client_first;
    f->last_seen = ts;
    if (flags & (FIN | RST)) note_close(f, flags, from_client, ts);
    if (f->state == ACTIVE) {
        int v4 = p[t.ip] >> 4 == 4;
        if (f->reallen && f->reallen != (v4 ? 12 : 36)) {
            /* the IP header changes family: the general path rebuilds it */
        } else if (from_client) {
            if (!(flags & SYN)) {
                uint32_t seq = rd32(p + tc + 4);
                int64_t hn = f->hdr_len;
                uint64_t off = ((uint64_t)seq - f->isn - 1) & MASK;
                if (hn <= (int64_t)off && off < HALF) {
                    uint32_t nw = (uint32_t)(((int64_t)seq - hn) & (int64_t)MASK);
                    uint8_t *o = ob_new(e, n);
                    if (!o) return -1;
                    memcpy(o, p, n);
                    wr32(o + tc + 4, nw);
                    wr16(o + tc + 16, adjust32(rd16(o + tc + 16), seq, nw));
                    if (f->reallen) replace_endpoints(o, t.ip, tc, f->real, f->reallen);
                    e->c[C_REWRITTEN]++;
                    return ob_commit(e, ts, n);
                }
            }
        } else if (flags & ACK) {
            int sack = 0;
            if (t.payload - tc > 20)
                sack = memchr(p + tc + 20, SACK_KIND, t.payload - tc - 20) != NULL;
            if (!sack) {
                uint32_t ack = rd32(p + tc + 8);
                uint32_t isn = f->isn;
                uint64_t off = ((uint64_t)ack - isn - 1) & MASK;
                int64_t hn = f->hdr_len;
                e->c[C_REWRITTEN]++;
                uint8_t *o = ob_new(e, n);
                if (!o) return -1;
                memcpy(o, p, n);
                if (off < HALF) {
                    int64_t d = (int64_t)off >= hn ? (int64_t)off - hn : 0;
                    uint32_t nw = (uint32_t)(((int64_t)isn + 1 + d) & (int64_t)MASK);
                    wr32(o + tc + 8, nw);
                    wr16(o + tc + 16, adjust32(rd16(o + tc + 16), ack, nw));
                }
                if (f->reallen) replace_endpoints(o, t.ip, tc, f->real + f->reallen, f->reallen);
                return ob_commit(e, ts, n);
            }
        }
        return rewrite(e, f, frame, t, from_client, flags, ts);
    }
    if (f->state == PENDING) return do_hold(e, f, frame, &t, from_client, flags, ts);
    e->c[C_PASSED_UNPARSED_FLOW]++;
    return emit_pkt(e, ts, frame);
}

#include "_decap.c"

/* ---- Python methods ---------------------------------------------------------------------- */

static PyObject *Engine_feed(Engine *e, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "feed(frame, ts)");
        return NULL;
    }
    PyObject *frame = args[0];
    long long ts = PyLong_AsLongLong(args[1]);
    if (ts == -1 && PyErr_Occurred()) return NULL;
    int r;
    if (PyBytes_Check(frame)) {
        pkt k = {frame, (const uint8_t *)PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame), -1};
        r = feed_one(e, &k, ts);
    } else {
        Py_buffer v;
        if (frame_buf(frame, &v) < 0) return NULL;
        pkt k = {frame, v.buf, v.len, -1};
        r = feed_one(e, &k, ts);
        PyBuffer_Release(&v);
    }
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}

/* feed_pcap(chunk, pos, big_endian, scale, auto[, limit]) -> (pos, records, kept, completed,
 * bad_ts)
 *
 * Walks the pcap records of ``chunk`` from ``pos`` and feeds each complete one, as
 * pcap_io.CaptureReader + Pipeline.push do; stops at the first record not wholly in the chunk
 * (the caller reads on and decides, as the reader does, whether that is an error), or at one
 * whose timestamp a pcap record cannot carry (``bad_ts``: the caller raises the reader's error),
 * or after ``limit`` records.
 * With ``auto`` (checksums "auto"; false for "keep") frames with a partial checksum are
 * completed first, as offload.ChecksumPolicy does; ``kept`` and ``completed`` count its stats. */
static PyObject *Engine_feed_pcap(Engine *e, PyObject *args) {
    Py_buffer b;
    Py_ssize_t pos;
    int big, autocs;
    long long scale;
    Py_ssize_t limit = PY_SSIZE_T_MAX;
    if (!PyArg_ParseTuple(args, "y*npLp|n", &b, &pos, &big, &scale, &autocs, &limit)) return NULL;
    const uint8_t *buf = b.buf;
    Py_ssize_t blen = b.len, count = 0, kept = 0, completed = 0;
    int bad_ts = 0;
    int err = 0;
    if (pos < 0) pos = 0;
    if (e->decap) e->decap->inplace = !b.readonly; /* _decap.c may reuse consumed records */
    while (pos + 16 <= blen && count < limit) {
        const uint8_t *h = buf + pos;
        uint32_t v[4];
        for (int i = 0; i < 4; i++) {
            const uint8_t *q = h + 4 * i;
            v[i] = big ? rd32(q)
                       : ((uint32_t)q[3] << 24) | ((uint32_t)q[2] << 16) | ((uint32_t)q[1] << 8) |
                             q[0];
        }
        Py_ssize_t start = pos + 16, caplen = v[2];
        if (caplen > blen - start) break;
        int64_t ts = (int64_t)v[0] * NS + (int64_t)v[1] * scale;
        if (ts >= TS_LIMIT) { /* pcap_io: the output cannot carry it, the record is corrupt */
            bad_ts = 1;
            break;
        }
        pkt k = {NULL, buf + start, caplen, (int64_t)v[3]};
        if (e->decap) { /* _decap.c: checksums then apply to the frames it hands on */
            int r = decap_feed(e, &k, ts, autocs, &kept, &completed);
            Py_XDECREF(k.obj);
            pos = start + caplen;
            count++;
            if (r < 0) { err = 1; break; }
            continue;
        }
        if (autocs && looks_partial(k.p, k.n, e->linktype) &&
            verdict_partial(k.p, k.n, e->linktype)) {
            /* ChecksumPolicy "auto": a partial checksum, completed in full (frame.replaced: a
             * cut frame keeps its original length) */
            k.obj = complete_csum(k.p, k.n, e->linktype);
            if (!k.obj) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_AssertionError, "partial frame cannot be summed");
                err = 1;
                break;
            }
            k.p = (const uint8_t *)PyBytes_AS_STRING(k.obj);
            k.n = PyBytes_GET_SIZE(k.obj);
            completed++;
        } else if (autocs) {
            kept++;
        }
        int r = feed_one(e, &k, ts);
        Py_XDECREF(k.obj);
        pos = start + caplen;
        count++;
        if (r < 0) { err = 1; break; }
    }
    if (e->decap) e->decap->inplace = 0;
    PyBuffer_Release(&b);
    if (err) return NULL;
    return Py_BuildValue("nnnni", pos, count, kept, completed, bad_ts);
}

static inline uint32_t rdn32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline unsigned rdn16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* feed_block(ring, base, complete_partial, start) -> (frames, truncated, csum_not_ready,
 * completed, oversize, max_frame, failed)
 *
 * afpacket.parse_block followed by Pipeline.push for every frame of the TPACKET_V3 block at
 * ``base``: VLAN tags stripped by the kernel are put back, frames flagged CSUMNOTREADY get
 * complete checksums (offload.complete) when ``complete_partial``, each frame is fed, from slot
 * ``start`` on. ``failed`` is None, or (slot, ts, frame, exception) for a frame whose processing
 * raised: the walk stops after it, and the caller (live's guard) resumes at slot + 1. */
static PyObject *Engine_feed_block(Engine *e, PyObject *args) {
    Py_buffer b;
    Py_ssize_t base;
    int complete_partial;
    Py_ssize_t skip = 0;
    if (!PyArg_ParseTuple(args, "y*np|n", &b, &base, &complete_partial, &skip)) return NULL;
    PyObject *failed = NULL;
    const uint8_t *ring = b.buf;
    Py_ssize_t rlen = b.len, frames = 0, cut = 0, partial = 0, completed = 0, big = 0;
    int64_t biggest = 0;
    int err = 0;
    if (base < 0 || base + 20 > rlen) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "block outside the ring");
        return NULL;
    }
    uint32_t num = rdn32(ring + base + 12), first = rdn32(ring + base + 16);
    Py_ssize_t off = base + first;
    for (uint32_t i = 0; i < num; i++) {
        if (off < 0 || off + 38 > rlen) {
            PyErr_SetString(PyExc_ValueError, "ring slot outside the ring");
            err = 1;
            break;
        }
        const uint8_t *h = ring + off;
        uint32_t nxt = rdn32(h), sec = rdn32(h + 4), nsec = rdn32(h + 8);
        if ((Py_ssize_t)i < skip) { /* done by an earlier call */
            off += nxt;
            continue;
        }
        uint32_t snaplen = rdn32(h + 12), length = rdn32(h + 16), status = rdn32(h + 20);
        unsigned mac = rdn16(h + 24), tpid = rdn16(h + 36);
        uint32_t tci = rdn32(h + 32);
        Py_ssize_t start = off + mac, n = snaplen;
        if (start > rlen) start = rlen; /* as a slice past the end: empty */
        if (n > rlen - start) n = rlen - start;
        if (length != snaplen) cut++;
        if (length > 1514) {
            big++;
            if (length > biggest) biggest = length;
        }
        pkt k = {NULL, ring + start, n, -1};
        if (status & 0x10) { /* TP_STATUS_VLAN_VALID: the tag goes back after the MACs */
            unsigned proto = (status & 0x40 && tpid) ? tpid : 0x8100;
            Py_ssize_t head = n < 12 ? n : 12;
            k.obj = PyBytes_FromStringAndSize(NULL, n + 4);
            if (!k.obj) { err = 1; break; }
            uint8_t *t = (uint8_t *)PyBytes_AS_STRING(k.obj);
            memcpy(t, k.p, head);
            wr16(t + head, proto);
            wr16(t + head + 2, tci & 0xFFFF);
            memcpy(t + head + 4, k.p + head, n - head);
            k.p = t;
            k.n = n + 4;
        }
        if (status & 0x8) { /* TP_STATUS_CSUMNOTREADY */
            partial++;
            if (complete_partial) {
                PyObject *fixed = complete_csum(k.p, k.n, 1);
                if (fixed) {
                    Py_XSETREF(k.obj, fixed);
                    k.p = (const uint8_t *)PyBytes_AS_STRING(fixed);
                    k.n = PyBytes_GET_SIZE(fixed);
                    completed++;
                } else if (PyErr_Occurred()) {
                    Py_CLEAR(k.obj);
                    err = 1;
                    break;
                }
            }
        }
        int64_t ts = (int64_t)sec * NS + nsec;
        int r = e->decap ? decap_feed(e, &k, ts, 0, NULL, NULL) : feed_one(e, &k, ts);
        frames++;
        if (r < 0) {
            /* hand the exception and the frame to the caller, which forwards it untouched */
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            if (tb) PyException_SetTraceback(value, tb);
            PyObject *fr = pkt_obj(&k);
            failed = fr ? Py_BuildValue("(ILOO)", i, (long long)ts, fr, value) : NULL;
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            Py_XDECREF(k.obj);
            if (!failed) err = 1;
            break;
        }
        Py_XDECREF(k.obj);
        off += nxt;
    }
    PyBuffer_Release(&b);
    if (err) return NULL;
    return Py_BuildValue("nnnnnLN", frames, cut, partial, completed, big, (long long)biggest,
                         failed ? failed : Py_NewRef(Py_None));
}

#include "_tapsink.c" /* write_tap: the sink's frames into the live tap */

static PyObject *Engine_set_sink(Engine *e, PyObject *args) {
    int pcap, nano;
    if (!PyArg_ParseTuple(args, "pp", &pcap, &nano)) return NULL;
    e->pcap_sink = pcap;
    e->sink_nano = nano;
    Py_RETURN_NONE;
}

/* write_records(write): ``write(memoryview)`` of the records so far, then they are gone; saves
 * a bytes copy of a rewrite's every output byte. The view is released after the call, so
 * a caller that kept it sees an error, never a later record. */
static PyObject *Engine_write_records(Engine *e, PyObject *write) {
    if (!e->sink_len) Py_RETURN_NONE;
    PyObject *mv = PyMemoryView_FromMemory((char *)e->sink, e->sink_len, PyBUF_READ);
    if (!mv) return NULL;
    PyObject *r = PyObject_CallOneArg(write, mv);
    PyObject *rel = PyObject_CallMethod(mv, "release", NULL);
    Py_DECREF(mv);
    if (!r) {
        Py_XDECREF(rel);
        return NULL;
    }
    Py_DECREF(r);
    if (!rel) return NULL;
    Py_DECREF(rel);
    e->sink_len = e->sink_out = 0;
    Py_RETURN_NONE;
}

static PyObject *Engine_tick(Engine *e, PyObject *arg) {
    long long now = PyLong_AsLongLong(arg);
    if (now == -1 && PyErr_Occurred()) return NULL;
    if (do_tick(e, now) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Engine_flush(Engine *e, PyObject *Py_UNUSED(ignored)) {
    flow *f = e->oldest, *next;
    for (; f; f = next) {
        next = f->next;
        if (f->state == PENDING) {
            e->c[C_HEADER_TRUNCATED]++;
            if (give_up(e, f) < 0) return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *Engine_drain(Engine *e, PyObject *Py_UNUSED(ignored)) {
    PyObject *fresh = PyList_New(0);
    if (!fresh) return NULL;
    PyObject *out = e->out;
    e->out = fresh;
    return out;
}

static PyObject *Engine_pending_out(Engine *e, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSsize_t(PyList_GET_SIZE(e->out));
}

/* resume(key, client_first, isn, hdr_len, real, now) -> bool */
static PyObject *Engine_resume(Engine *e, PyObject *args) {
    Py_buffer key;
    int client_first;
    unsigned long isn;
    long long hdr_len, now;
    PyObject *real;
    if (!PyArg_ParseTuple(args, "y*pkLOL", &key, &client_first, &isn, &hdr_len, &real, &now))
        return NULL;
    uint64_t h = key_hash(e, key.buf, key.len);
    if (table_get(e, key.buf, key.len, h) || e->count >= e->max_flows) {
        PyBuffer_Release(&key);
        Py_RETURN_FALSE;
    }
    flow *f = table_put(e, key.buf, key.len, h);
    PyBuffer_Release(&key);
    if (!f) return PyErr_NoMemory();
    f->client_first = client_first;
    f->isn = (uint32_t)isn;
    f->last_seen = now;
    f->state = ACTIVE;
    f->hdr_len = hdr_len;
    if (parse_real(real, f->real, &f->reallen) < 0) {
        table_remove(e, f);
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *Engine_counters(Engine *e, PyObject *Py_UNUSED(ignored)) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int i = 0; i < C_NCOUNTERS; i++) {
        PyObject *v = PyLong_FromLongLong(e->c[i]);
        if (!v || PyDict_SetItemString(d, counter_names[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    if (header_counters(e->hs, d) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

/* The queued header events (see _headers.c), handed over; discard=True drops them instead. */
static PyObject *Engine_drain_events(Engine *e, PyObject *Py_UNUSED(ignored)) {
    PyObject *fresh = PyList_New(0);
    if (!fresh) return NULL;
    PyObject *events = e->hs->events;
    e->hs->events = fresh;
    return events;
}

static PyObject *Engine_discard_events(Engine *e, PyObject *Py_UNUSED(ignored)) {
    if (PyList_SetSlice(e->hs->events, 0, PyList_GET_SIZE(e->hs->events), NULL) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Engine_pending_events(Engine *e, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSsize_t(PyList_GET_SIZE(e->hs->events));
}

static PyObject *Engine_held_packets(Engine *e, PyObject *Py_UNUSED(ignored)) {
    Py_ssize_t n = 0;
    for (flow *f = e->oldest; f; f = f->next)
        if (f->hold) n += f->hold->n;
    return PyLong_FromSsize_t(n);
}

/* When the engine next needs a tick: its next sweep while it tracks flows (a sweep runs at most
 * once a second of capture time, so a timeout is acted on at most a second late), else None. */
static PyObject *Engine_next_deadline(Engine *e, PyObject *Py_UNUSED(ignored)) {
    if (!e->count) Py_RETURN_NONE;
    return PyLong_FromLongLong((long long)e->next_sweep);
}

static Py_ssize_t Engine_len(Engine *e) { return e->count; }

static void free_table(Engine *e) {
    flow *f = e->oldest, *next;
    for (; f; f = next) {
        next = f->next;
        hold_free(f->hold);
        PyMem_Free(f);
    }
    e->oldest = e->youngest = NULL;
    e->count = 0;
    if (e->buckets) memset(e->buckets, 0, e->nbuckets * sizeof(flow *));
}

static int Engine_traverse(Engine *e, visitproc visit, void *arg) {
    Py_VISIT(e->out);
    Py_VISIT(e->header_cb);
    Py_VISIT(e->family_cb);
    Py_VISIT(e->untrusted_cb);
    if (e->hs) Py_VISIT(e->hs->events);
    return decap_traverse(e->decap, visit, arg);
}

static int Engine_clear(Engine *e) {
    Py_CLEAR(e->out);
    Py_CLEAR(e->header_cb);
    Py_CLEAR(e->family_cb);
    Py_CLEAR(e->untrusted_cb);
    Py_CLEAR(e->cur);
    if (e->hs) Py_CLEAR(e->hs->events);
    decap_clear(e->decap);
    return 0;
}

static void Engine_dealloc(Engine *e) {
    PyObject_GC_UnTrack(e);
    Engine_clear(e);
    free_table(e);
    PyMem_Free(e->buckets);
    PyMem_Free(e->trust4);
    PyMem_Free(e->trust6);
    PyMem_Free(e->sink);
    if (e->hs) PyMem_Free(e->hs->slots);
    PyMem_Free(e->hs);
    decap_free(e->decap);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static uint8_t *dup_bytes(Py_buffer *b) {
    uint8_t *p = PyMem_Malloc(b->len ? b->len : 1);
    if (p) memcpy(p, b->buf, b->len);
    return p;
}

static int Engine_init(Engine *e, PyObject *args, PyObject *kw) {
    static char *names[] = {"linktype", "trust4", "trust6", "midstream_drop", "max_flows",
                            "idle_ns", "closed_ns", "pending_ns", "max_hold_packets",
                            "max_hold_bytes", "max_total_hold_bytes", "seed", "header_cb",
                            "family_cb", "untrusted_cb", "fast_v1", "fast_v2", "restore",
                            "max_events", NULL};
    int linktype, midstream_drop;
    Py_buffer t4, t6;
    Py_ssize_t max_flows;
    long long idle, closed, pending, mhp, mhb, mthb;
    unsigned long long seed;
    PyObject *hcb, *fcb, *ucb;
    int fast_v1 = 0, fast_v2 = 0, restore = 0;
    Py_ssize_t max_events = 100000;
    if (e->buckets) {
        PyErr_SetString(PyExc_RuntimeError, "Engine already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iy*y*pnLLLLLLKOOO|pppn", names, &linktype, &t4,
                                     &t6, &midstream_drop, &max_flows, &idle, &closed, &pending,
                                     &mhp, &mhb, &mthb, &seed, &hcb, &fcb, &ucb, &fast_v1,
                                     &fast_v2, &restore, &max_events))
        return -1;
    if (max_flows < 1 || t4.len % 8 || t6.len % 32) {
        PyBuffer_Release(&t4);
        PyBuffer_Release(&t6);
        PyErr_SetString(PyExc_ValueError, "max_flows must be at least 1; trust blocks malformed");
        return -1;
    }
    e->trust4 = dup_bytes(&t4);
    e->ntrust4 = t4.len / 8;
    e->trust6 = dup_bytes(&t6);
    e->ntrust6 = t6.len / 32;
    PyBuffer_Release(&t4);
    PyBuffer_Release(&t6);
    e->nbuckets = 1024;
    e->buckets = PyMem_Calloc(e->nbuckets, sizeof(flow *));
    e->out = PyList_New(0);
    e->hs = PyMem_Calloc(1, sizeof(header_state));
    if (e->hs) {
        e->hs->fast_v1 = fast_v1;
        e->hs->fast_v2 = fast_v2;
        e->hs->restore = restore;
        e->hs->max_events = max_events;
        e->hs->events = PyList_New(0);
    }
    if (!e->trust4 || !e->trust6 || !e->buckets || !e->out || !e->hs || !e->hs->events) {
        PyErr_NoMemory();
        return -1;
    }
    e->linktype = linktype;
    e->midstream_drop = midstream_drop;
    e->max_flows = max_flows;
    e->idle = idle;
    e->closed = closed;
    e->pending = pending;
    e->max_hold_packets = mhp;
    e->max_hold_bytes = mhb;
    e->max_total_hold_bytes = mthb;
    e->seed = seed;
    Py_INCREF(hcb); e->header_cb = hcb;
    Py_INCREF(fcb); e->family_cb = fcb;
    Py_INCREF(ucb); e->untrusted_cb = ucb;
    return 0;
}

static PyMethodDef Engine_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))Engine_feed, METH_FASTCALL, "feed(frame, ts)"},
    {"tick", (PyCFunction)Engine_tick, METH_O, "tick(now)"},
    {"feed_pcap", (PyCFunction)Engine_feed_pcap, METH_VARARGS, "feed a chunk of pcap records"},
    {"set_sink", (PyCFunction)Engine_set_sink, METH_VARARGS, "set_sink(pcap, nanosecond)"},
    {"feed_block", (PyCFunction)Engine_feed_block, METH_VARARGS, "feed a TPACKET_V3 block"},
    {"write_tap", (PyCFunction)Engine_write_tap, METH_O, "write the sink's frames to a tap fd"},
    {"write_records", (PyCFunction)Engine_write_records, METH_O, "write(view of the records)"},
    {"flush", (PyCFunction)Engine_flush, METH_NOARGS, "release every held frame untouched"},
    {"drain", (PyCFunction)Engine_drain, METH_NOARGS, "the (ts, frame) list so far"},
    {"pending_out", (PyCFunction)Engine_pending_out, METH_NOARGS, "frames not yet drained"},
    {"resume", (PyCFunction)Engine_resume, METH_VARARGS, "adopt a resolved flow"},
    {"drain_events", (PyCFunction)Engine_drain_events, METH_NOARGS, "queued header events"},
    {"discard_events", (PyCFunction)Engine_discard_events, METH_NOARGS, "drop queued events"},
    {"pending_events", (PyCFunction)Engine_pending_events, METH_NOARGS, "events queued"},
    {"counters", (PyCFunction)Engine_counters, METH_NOARGS, "the counters this engine owns"},
    {"held_packets", (PyCFunction)Engine_held_packets, METH_NOARGS, "frames held"},
    {"next_deadline", (PyCFunction)Engine_next_deadline, METH_NOARGS, "next tick due (ns)"},
    DECAP_METHODS
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Engine_as_sequence = {.sq_length = (lenfunc)Engine_len};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "normalizer.core._fastpath.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The compiled rewriting core (see normalizer/core/fastpath.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_traverse = (traverseproc)Engine_traverse,
    .tp_clear = (inquiry)Engine_clear,
    .tp_methods = Engine_methods,
    .tp_as_sequence = &Engine_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "The compiled packet path of the normalizer.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    PyObject *names = PyTuple_New(C_NCOUNTERS);
    if (!names) return NULL;
    for (int i = 0; i < C_NCOUNTERS; i++)
        PyTuple_SET_ITEM(names, i, PyUnicode_FromString(counter_names[i]));
    PyModule_AddObject(m, "COUNTERS", names);
    PyModule_AddIntConstant(m, "MAX_BACKENDS", MAX_BACKENDS);
    return m;
}
