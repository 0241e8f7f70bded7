/* Once per flow, in C: the common PROXY headers parsed, and what fastpath._on_header counts.
 *
 * Why: on short flows (about 30 packets) the Python callback that parsed each header and built
 * its HeaderEvent cost about 20 us per flow, more than the C core spent on all the flow's
 * packets. The headers gateways send by the million are few and rigid -- PROXY v2 PROXY
 * TCP4/TCP6 without TLVs, PROXY v1 TCP4 in canonical text -- so C parses exactly those and
 * hands everything else (TLVs, LOCAL, v1 TCP6/UNKNOWN, custom headers, anything incomplete or
 * unusual) to the Python codecs, which stay the only specification: a header C accepts is one
 * the Python codec accepts with the same length and endpoints (tests/normalizer/core/
 * test_fastpath_headers.py holds them to that on random and mutated headers).
 *
 * The HeaderEvent is built lazily: C queues (started, vlan, client, server, isn, header) where
 * header is the raw header bytes (parsed by Python only when an adapter drains the events,
 * that is when a cache records them) or the ProxyHeader the Python path already built. The
 * counters _on_header kept (headers_stripped, addresses_restored, headers_local,
 * headers_by_backend, events_dropped) are kept here for both paths, in the same order of
 * updates as engine.py, so they stay identical to the Python engine's.
 *
 * Included by _fastpath.c (one extension module, one translation unit).
 */

#define KIND_V1 0
#define KIND_V2 1
#define KIND_CUSTOM 2
#define NKINDS 3
#define MAX_BACKENDS 1024 /* counters.MAX_BACKENDS */
#define BACKEND_SLOTS 2048 /* open addressing, at most half full */

static const char *kind_names[NKINDS] = {"proxy-v1", "proxy-v2", "custom"};
static const uint8_t V2_SIG[12] = {'\r', '\n', '\r', '\n', 0, '\r', '\n', 'Q', 'U', 'I', 'T', '\n'};

typedef struct {
    uint8_t addr[16];
    uint8_t len; /* 0: empty slot */
    int32_t order;
} backend_slot;

typedef struct header_state_s {
    int fast_v1, fast_v2; /* kinds enabled (options.header_kinds) that C may parse */
    int restore;          /* options.restore_addresses */
    Py_ssize_t max_events;
    int64_t stripped[NKINDS];
    int kind_order[NKINDS], nkinds; /* headers_stripped's keys in first-seen order */
    int64_t restored, local, events_dropped;
    backend_slot *slots;
    int64_t backend_count[MAX_BACKENDS + 1]; /* by order; [nbackends] = "other" */
    int32_t backend_slot_of[MAX_BACKENDS];
    int nbackends, has_other;
    PyObject *events; /* list of (started, vlan, client, server, isn, raw bytes | ProxyHeader) */
} header_state;

/* ---- the parsers: 1 = a complete header C vouches for, 0 = Python decides ---------------- */

static void real_blocks(const uint8_t *src, const uint8_t *dst, const uint8_t *sport,
                        const uint8_t *dport, int alen, uint8_t *real, uint8_t *reallen) {
    uint8_t *c2s = real, *s2c = real + 2 * alen + 4;
    memcpy(c2s, src, alen);
    memcpy(c2s + alen, dst, alen);
    memcpy(c2s + 2 * alen, sport, 2);
    memcpy(c2s + 2 * alen + 2, dport, 2);
    memcpy(s2c, dst, alen);
    memcpy(s2c + alen, src, alen);
    memcpy(s2c + 2 * alen, dport, 2);
    memcpy(s2c + 2 * alen + 2, sport, 2);
    *reallen = (uint8_t)(2 * alen + 4);
}

/* proxy_v2.parse for PROXY (version 2, command 1) TCP4 / TCP6 whose length is exactly the
 * address block: no TLVs, so nothing else to check. */
static int fast_v2(const uint8_t *b, Py_ssize_t n, int64_t *len, uint8_t *real,
                   uint8_t *reallen) {
    if (n < 16 || memcmp(b, V2_SIG, 12) != 0 || b[12] != 0x21) return 0;
    unsigned l = rd16(b + 14);
    int alen;
    if (b[13] == 0x11 && l == 12) alen = 4;
    else if (b[13] == 0x21 && l == 36) alen = 16;
    else return 0;
    if (n < 16 + (Py_ssize_t)l) return 0;
    const uint8_t *a = b + 16;
    real_blocks(a, a + alen, a + 2 * alen, a + 2 * alen + 2, alen, real, reallen);
    *len = 16 + l;
    return 1;
}

/* A decimal field of 1..maxdigits digits, no leading zero, value <= max; ends at a byte that
 * is not a digit. Returns the bytes used, 0 if the field is not such a number. */
static int dec_field(const uint8_t *p, const uint8_t *end, int maxdigits, unsigned max,
                     unsigned *value) {
    unsigned v = 0;
    int i = 0;
    while (p + i < end && p[i] >= '0' && p[i] <= '9') {
        if (i == maxdigits) return 0;
        v = v * 10 + (p[i] - '0');
        i++;
    }
    if (i == 0 || (i > 1 && p[0] == '0') || v > max) return 0;
    *value = v;
    return i;
}

static int v4_text(const uint8_t **pp, const uint8_t *end, uint8_t *out) {
    const uint8_t *p = *pp;
    for (int i = 0; i < 4; i++) {
        unsigned v;
        int used = dec_field(p, end, 3, 255, &v);
        if (!used) return 0;
        out[i] = (uint8_t)v;
        p += used;
        if (i < 3) {
            if (p >= end || *p != '.') return 0;
            p++;
        }
    }
    *pp = p;
    return 1;
}

static int expect_space(const uint8_t **pp, const uint8_t *end) {
    if (*pp >= end || **pp != ' ') return 0;
    (*pp)++;
    return 1;
}

/* proxy_v1.parse for "PROXY TCP4 a.b.c.d e.f.g.h sport dport\r\n" in the canonical text
 * Python's ipaddress prints back unchanged (no leading zeros), ports without leading zeros. */
static int fast_v1(const uint8_t *b, Py_ssize_t n, int64_t *len, uint8_t *real,
                   uint8_t *reallen) {
    static const char prefix[] = "PROXY TCP4 ";
    if (n < 11 || memcmp(b, prefix, 11) != 0) return 0;
    const uint8_t *end = b + (n < 107 ? n : 107), *p = b + 11;
    uint8_t src[4], dst[4], sport[2], dport[2];
    unsigned sp, dp;
    int used;
    if (!v4_text(&p, end, src) || !expect_space(&p, end) || !v4_text(&p, end, dst) ||
        !expect_space(&p, end))
        return 0;
    if (!(used = dec_field(p, end, 5, 65535, &sp))) return 0;
    p += used;
    if (!expect_space(&p, end) || !(used = dec_field(p, end, 5, 65535, &dp))) return 0;
    p += used;
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n') return 0;
    wr16(sport, sp);
    wr16(dport, dp);
    real_blocks(src, dst, sport, dport, 4, real, reallen);
    *len = p + 2 - b;
    return 1;
}

/* 1 and the kind for a header C parsed, 0 to ask Python. The order of the signature checks is
 * detect.parse_header's: v2, then v1 (the custom magic is configurable and may be anything). */
static int fast_header(const header_state *hs, const uint8_t *b, Py_ssize_t n, int64_t *len,
                       uint8_t *real, uint8_t *reallen, int *kind) {
    if (hs->fast_v2 && n >= 12 && memcmp(b, V2_SIG, 12) == 0) {
        *kind = KIND_V2;
        return fast_v2(b, n, len, real, reallen);
    }
    if (hs->fast_v1 && n >= 6 && memcmp(b, "PROXY ", 6) == 0) {
        *kind = KIND_V1;
        return fast_v1(b, n, len, real, reallen);
    }
    return 0;
}

/* ---- what _on_header counted, for both paths ---------------------------------------------- */

static uint64_t backend_hash(const uint8_t *a, int n) {
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < n; i++) h = (h ^ a[i]) * 1099511628211ULL;
    return h;
}

/* headers_by_backend: a backend's own count while fewer than MAX_BACKENDS are known, else
 * "other" (engine.py's rule; address bytes map one to one to the address texts it keys by). */
static int count_backend(header_state *hs, const uint8_t *addr, int alen) {
    if (!hs->slots) {
        hs->slots = PyMem_Calloc(BACKEND_SLOTS, sizeof(backend_slot));
        if (!hs->slots) { PyErr_NoMemory(); return -1; }
    }
    size_t i = backend_hash(addr, alen) & (BACKEND_SLOTS - 1);
    for (;; i = (i + 1) & (BACKEND_SLOTS - 1)) {
        backend_slot *s = &hs->slots[i];
        if (!s->len) break;
        if (s->len == alen && memcmp(s->addr, addr, alen) == 0) {
            hs->backend_count[s->order]++;
            return 0;
        }
    }
    if (hs->nbackends + hs->has_other >= MAX_BACKENDS) {
        hs->has_other = 1;
        hs->backend_count[hs->nbackends]++;
        return 0;
    }
    backend_slot *s = &hs->slots[i];
    memcpy(s->addr, addr, alen);
    s->len = (uint8_t)alen;
    s->order = hs->nbackends;
    hs->backend_slot_of[hs->nbackends] = (int32_t)i;
    hs->backend_count[hs->nbackends++] = 1;
    return 0;
}

/* A header accepted (either path): count it and queue its event. ``header`` is a new reference
 * to the raw bytes or the ProxyHeader (stolen). */
static int header_accepted(header_state *hs, int kind, int local, int restored, int64_t started,
                           const uint8_t *vlan, Py_ssize_t vl, const uint8_t *client,
                           const uint8_t *server, Py_ssize_t el, uint32_t isn,
                           PyObject *header) {
    if (!hs->stripped[kind]) hs->kind_order[hs->nkinds++] = kind;
    hs->stripped[kind]++;
    if (restored) hs->restored++;
    if (local) hs->local++;
    if (count_backend(hs, server, (int)el - 2) < 0) {
        Py_DECREF(header);
        return -1;
    }
    if (PyList_GET_SIZE(hs->events) >= hs->max_events) {
        hs->events_dropped++;
        Py_DECREF(header);
        return 0;
    }
    PyObject *ev = Py_BuildValue("Ly#y#y#kN", (long long)started, (const char *)vlan, vl,
                                 (const char *)client, el, (const char *)server, el,
                                 (unsigned long)isn, header);
    if (!ev) return -1;
    int r = PyList_Append(hs->events, ev);
    Py_DECREF(ev);
    return r;
}

/* The counters above, as a dict merged into Engine.counters(). */
static int header_counters(const header_state *hs, PyObject *d) {
    PyObject *stripped = PyDict_New(), *backends = PyDict_New();
    int r = -1;
    if (!stripped || !backends) goto done;
    for (int i = 0; i < hs->nkinds; i++) {
        int k = hs->kind_order[i];
        PyObject *v = PyLong_FromLongLong(hs->stripped[k]);
        if (!v || PyDict_SetItemString(stripped, kind_names[k], v) < 0) { Py_XDECREF(v); goto done; }
        Py_DECREF(v);
    }
    for (int i = 0; i <= hs->nbackends; i++) {
        if (i == hs->nbackends && !hs->has_other) break;
        PyObject *key = i == hs->nbackends
                            ? PyUnicode_FromString("other")
                            : PyBytes_FromStringAndSize(
                                  (const char *)hs->slots[hs->backend_slot_of[i]].addr,
                                  hs->slots[hs->backend_slot_of[i]].len);
        PyObject *v = PyLong_FromLongLong(hs->backend_count[i]);
        int bad = !key || !v || PyDict_SetItem(backends, key, v) < 0;
        Py_XDECREF(key);
        Py_XDECREF(v);
        if (bad) goto done;
    }
    if (PyDict_SetItemString(d, "headers_stripped", stripped) < 0 ||
        PyDict_SetItemString(d, "headers_by_backend", backends) < 0)
        goto done;
    const char *names[] = {"addresses_restored", "headers_local", "events_dropped"};
    int64_t values[] = {hs->restored, hs->local, hs->events_dropped};
    for (int i = 0; i < 3; i++) {
        PyObject *v = PyLong_FromLongLong(values[i]);
        if (!v || PyDict_SetItemString(d, names[i], v) < 0) { Py_XDECREF(v); goto done; }
        Py_DECREF(v);
    }
    r = 0;
done:
    Py_XDECREF(stripped);
    Py_XDECREF(backends);
    return r;
}
