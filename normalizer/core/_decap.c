/* Decapsulation on the compiled path: the common VXLAN / GENEVE packet, opened in C.
 *
 * Included by _fastpath.c (it uses the engine's pkt, feed_one and checksum helpers). Why: with
 * the Python Decapsulator (normalizer/tunnels/decap.py) in front of the compiled core, decap
 * costs several times the rewriting itself; the common case -- outer Ethernet [+ 802.1Q],
 * IPv4 / IPv6 without extension headers, UDP to a VXLAN or GENEVE port from a tunnel peer, not
 * fragmented, a valid header, an inner IP header consistent with what was captured -- is simple
 * enough to decide here exactly as decap.py decides it. Plain (not tunnelled) frames and
 * strangers' tunnel packets are passed here too, counted as decap.py counts them.
 *
 * Everything else goes to the Python Decapsulator through ``fallback_cb`` -- fragments (the
 * reassembler's state lives there), IPv6 extension headers, bad tunnel headers, inner headers
 * to trim or that contradict themselves, inner VLAN tags, and any frame on or after the
 * decapsulator's next fragment sweep (its tick may release held fragments first) -- and the
 * frames it returns are fed in order, so output order is what Pipeline.push gives. The
 * decision here has no side effect until it is final, so a frame handed back is decided by
 * Python from scratch. The VNI -> VLAN tag comes from Python (``vlan_cb``, once per VNI: the
 * VlanMap and its collision count live there) and is cached here only when Python cached it.
 * The counters this file owns (tunnel_decapsulated, tunnel_passed, tunnel_untrusted) are added
 * to the Decapsulator's by normalizer/tunnels/compiled.py.
 */

#define DECAP_TAGS_MAX 65536 /* decap.py's bound on its VNI -> tag cache */

static uint8_t *dup_bytes(Py_buffer *b); /* _fastpath.c */

typedef struct decap_state {
    uint8_t vxlan[8192], geneve[8192]; /* port bitmaps */
    uint8_t *peers4; Py_ssize_t npeers4; /* (net, mask) pairs as trust4 / trust6 */
    uint8_t *peers6; Py_ssize_t npeers6;
    PyObject *fallback_cb; /* (frame, origlen, ts) -> (next_sweep, [(ts, frame, origlen)]) */
    PyObject *vlan_cb;     /* (vni) -> (vlan id, cached by Python) */
    PyObject *note_cb;     /* (inner, ts, kind, vni, vlan, src, dst, sport, dport, outer vlan,
                            * options) -> (flow | None, epoch, next sweep): an inner frame for
                            * the tunnel rows (TunnelFlows.note), or None: no rows */
    int fast;              /* 0: every frame to fallback_cb */
    int64_t next_sweep;    /* the decapsulator's: frames at or past it go to Python */
    uint32_t *vkeys;       /* vni + 1, 0 = empty; open addressing */
    uint16_t *vvals;
    size_t vcap, vcount;
    uint8_t *scratch;
    Py_ssize_t scap;
    int64_t decapsulated, passed, untrusted;
    /* during one feed call: checksums "auto", and where its stats go */
    int autocs;
    Py_ssize_t *kept, *completed;
    /* Pipeline's checksum policy for feed_block and feed_outer: "auto" or "keep", its stats */
    int pipe_auto;
    Py_ssize_t pipe_kept, pipe_completed;
    /* feed_pcap on a writable chunk: an inner Ethernet frame is built in place, over the 4
     * bytes in front of it (the end of the VXLAN / GENEVE header), instead of copied */
    int inplace;
    /* The tunnel rows' flows that C refreshes itself: TunnelFlows.note on a known flow only
     * sets its last_seen. Valid while the table's epoch (sweeps, evictions, flush) is the one
     * Python last reported and before its next sweep. */
    struct note_slot *notes;
    size_t ncap, ncount;
    int64_t notes_epoch, notes_sweep;
    PyObject *last_seen_name;
} decap_state;

typedef struct note_slot {
    uint64_t hash;
    PyObject *flow; /* NULL: empty */
    uint8_t klen;
    uint8_t key[47];
} note_slot;

#define NOTES_MAX (1 << 20)

enum { D_FALLBACK, D_PASS, D_UNTRUSTED, D_INNER };

static inline int port_in(const uint8_t *bits, unsigned port) {
    return (bits[port >> 3] >> (port & 7)) & 1;
}

static int peer(const decap_state *d, const uint8_t *addr, int alen) {
    const uint8_t *t = alen == 4 ? d->peers4 : d->peers6;
    Py_ssize_t n = alen == 4 ? d->npeers4 : d->npeers6;
    for (Py_ssize_t i = 0; i < n; i++, t += 2 * alen) {
        int ok = 1;
        for (int j = 0; j < alen; j++)
            if ((addr[j] & t[alen + j]) != t[j]) { ok = 0; break; }
        if (ok) return 1;
    }
    return 0;
}

/* decap.py's _fit on the inner frame [tag][etype][body]: 1 if it goes on unchanged. */
static int inner_fits(unsigned etype, const uint8_t *body, Py_ssize_t avail) {
    int version;
    if (etype == 0x0800) version = 4;
    else if (etype == 0x86DD) version = 6;
    else if (etype == 0x8100 || etype == 0x88A8 || etype == 0x9100) return 0; /* inner tags */
    else return 1;                      /* not IP: l3_offset None, handed on as it is */
    if (avail < 1 || body[0] >> 4 != version) return 0; /* cut or malformed: counted there */
    Py_ssize_t declared;
    if (version == 4) {
        Py_ssize_t ihl = (body[0] & 0x0F) * 4;
        if (ihl < 20 || avail < ihl) return 0;
        declared = rd16(body + 2);
        if (declared < ihl) return 0;
    } else {
        if (avail < 40) return 0;
        declared = 40 + rd16(body + 4);
    }
    return declared <= avail; /* else trimmed, in Python */
}

typedef struct {
    int kind; /* 0 vxlan, 1 geneve */
    uint32_t vni;
    unsigned proto; /* 0: Ethernet inside */
    Py_ssize_t start, end, udp, ip;
    int alen;
    const uint8_t *src, *dst;
    uint8_t vlan[8];
    int vlanlen;
} tunnel_at;

/* decap.py's feed + _udp for one frame, without side effects. */
static int classify(const decap_state *d, const uint8_t *f, Py_ssize_t n, tunnel_at *t) {
    if (n < 14) return D_PASS;
    unsigned etype = rd16(f + 12);
    Py_ssize_t ip = 14;
    int tags = 0;
    t->vlanlen = 0;
    while (etype == 0x8100 || etype == 0x88A8 || etype == 0x9100) {
        if (tags == 4 || n < ip + 4) return D_PASS;
        t->vlan[t->vlanlen++] = f[ip] & 0x0F;
        t->vlan[t->vlanlen++] = f[ip + 1];
        etype = rd16(f + ip + 2);
        ip += 4;
        tags++;
    }
    Py_ssize_t udp, end;
    if (etype == 0x0800) {
        if (n < ip + 20 || f[ip + 9] != 17 || f[ip] >> 4 != 4) return D_PASS;
        Py_ssize_t ihl = (f[ip] & 0x0F) * 4, total = rd16(f + ip + 2);
        if (ihl < 20 || total < ihl || n < ip + ihl) return D_PASS;
        if (rd16(f + ip + 6) & 0x3FFF) return D_FALLBACK; /* a fragment */
        t->src = f + ip + 12;
        t->dst = f + ip + 16;
        t->alen = 4;
        udp = ip + ihl;
        end = ip + total;
    } else if (etype == 0x86DD) {
        if (n < ip + 40 || f[ip] >> 4 != 6) return D_PASS;
        unsigned nxt = f[ip + 6];
        if (nxt == 0 || nxt == 43 || nxt == 60 || nxt == 44) return D_FALLBACK;
        if (nxt != 17) return D_PASS;
        t->src = f + ip + 8;
        t->dst = f + ip + 24;
        t->alen = 16;
        udp = ip + 40;
        end = ip + 40 + rd16(f + ip + 4);
    } else {
        return D_PASS;
    }
    if (end > n) end = n;
    if (end - udp < 8) return D_PASS;
    unsigned dport = rd16(f + udp + 2), ulen = rd16(f + udp + 4);
    if (ulen >= 8 && udp + (Py_ssize_t)ulen < end) end = udp + ulen;
    int is_vxlan = port_in(d->vxlan, dport);
    if (!is_vxlan && !port_in(d->geneve, dport)) return D_PASS;
    if (!peer(d, t->src, t->alen)) return D_UNTRUSTED;
    Py_ssize_t off = udp + 8;
    if (end - off < 8) return D_FALLBACK;
    const uint8_t *h = f + off;
    if (is_vxlan) {
        if (!(h[0] & 0x08) || (h[0] & 0x04 && h[3] != 3)) return D_FALLBACK;
        t->kind = 0;
        t->start = off + 8;
        t->proto = 0;
    } else {
        if (h[0] >> 6) return D_FALLBACK;
        Py_ssize_t length = 8 + (h[0] & 0x3F) * 4;
        if (end - off < length) return D_FALLBACK;
        unsigned proto = rd16(h + 2);
        if (proto != 0x6558 && proto != 0x0800 && proto != 0x86DD) return D_FALLBACK;
        for (Py_ssize_t i = off + 8, stop = off + length; i < stop;) {
            if (stop - i < 4) return D_FALLBACK;
            Py_ssize_t size = (f[i + 3] & 0x1F) * 4;
            if (i + 4 + size > stop) return D_FALLBACK;
            i += 4 + size;
        }
        t->kind = 1;
        t->start = off + length;
        t->proto = proto == 0x6558 ? 0 : proto;
    }
    t->vni = ((uint32_t)h[4] << 16) | ((uint32_t)h[5] << 8) | h[6];
    t->end = end;
    t->udp = udp;
    t->ip = ip;
    if (end - t->start < (t->proto ? 1 : 14)) return D_FALLBACK;
    int fits = t->proto ? inner_fits(t->proto, f + t->start, end - t->start)
                        : inner_fits(rd16(f + t->start + 12), f + t->start + 14,
                                     end - t->start - 14);
    return fits ? D_INNER : D_FALLBACK;
}

/* The VLAN id of ``vni`` (decap.py's _tags, then _tag); -1 with an exception set. */
static int vni_vlan(decap_state *d, uint32_t vni) {
    uint32_t key = vni + 1;
    if (d->vcap) {
        size_t i = (key * 2654435761u) & (d->vcap - 1);
        while (d->vkeys[i]) {
            if (d->vkeys[i] == key) return d->vvals[i];
            i = (i + 1) & (d->vcap - 1);
        }
    }
    PyObject *r = PyObject_CallFunction(d->vlan_cb, "k", (unsigned long)vni);
    if (!r) return -1;
    long vlan = -1;
    int cached = 0;
    if (PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2) {
        vlan = PyLong_AsLong(PyTuple_GET_ITEM(r, 0));
        cached = PyObject_IsTrue(PyTuple_GET_ITEM(r, 1));
    }
    Py_DECREF(r);
    if (PyErr_Occurred()) return -1;
    if (vlan < 0 || vlan > 4095 || cached < 0) {
        PyErr_SetString(PyExc_ValueError, "vlan_cb must return (vlan id, cached)");
        return -1;
    }
    if (cached && d->vcount < DECAP_TAGS_MAX) {
        if (2 * (d->vcount + 1) > d->vcap) { /* grow: at most half full */
            size_t cap = d->vcap ? 2 * d->vcap : 256;
            uint32_t *keys = PyMem_Calloc(cap, sizeof(uint32_t));
            uint16_t *vals = PyMem_Calloc(cap, sizeof(uint16_t));
            if (!keys || !vals) {
                PyMem_Free(keys);
                PyMem_Free(vals);
                PyErr_NoMemory();
                return -1;
            }
            for (size_t j = 0; j < d->vcap; j++) {
                if (!d->vkeys[j]) continue;
                size_t i = (d->vkeys[j] * 2654435761u) & (cap - 1);
                while (keys[i]) i = (i + 1) & (cap - 1);
                keys[i] = d->vkeys[j];
                vals[i] = d->vvals[j];
            }
            PyMem_Free(d->vkeys);
            PyMem_Free(d->vvals);
            d->vkeys = keys;
            d->vvals = vals;
            d->vcap = cap;
        }
        size_t i = (key * 2654435761u) & (d->vcap - 1);
        while (d->vkeys[i]) i = (i + 1) & (d->vcap - 1);
        d->vkeys[i] = key;
        d->vvals[i] = (uint16_t)vlan;
        d->vcount++;
    }
    return (int)vlan;
}

/* Pipeline's checksum policy ("auto" during feed_pcap), then the core. */
static int decap_checked(Engine *e, pkt *k, int64_t ts) {
    decap_state *d = e->decap;
    if (d->autocs) {
        if (looks_partial(k->p, k->n, e->linktype) && verdict_partial(k->p, k->n, e->linktype)) {
            PyObject *fixed = complete_csum(k->p, k->n, e->linktype);
            if (!fixed) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_AssertionError, "partial frame cannot be summed");
                return -1;
            }
            pkt c = {fixed, (const uint8_t *)PyBytes_AS_STRING(fixed), PyBytes_GET_SIZE(fixed),
                     k->origlen};
            (*d->completed)++;
            int r = feed_one(e, &c, ts);
            Py_DECREF(c.obj);
            return r;
        }
        (*d->kept)++;
    }
    return feed_one(e, k, ts);
}

/* Frames the Python decapsulator handed on: a list of (ts, frame, origlen), fed in order. */
static int decap_feed_list(Engine *e, PyObject *list) {
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "expected a list of (ts, frame, origlen)");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        long long ts, origlen;
        PyObject *frame;
        if (!PyArg_ParseTuple(item, "LSL", &ts, &frame, &origlen)) return -1;
        Py_INCREF(frame); /* the list may be changed by what feed_one calls */
        pkt k = {frame, (const uint8_t *)PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame),
                 origlen};
        int r = decap_checked(e, &k, ts);
        Py_DECREF(frame);
        if (r < 0) return -1;
    }
    return 0;
}

static int decap_fallback(Engine *e, pkt *k, int64_t ts) {
    decap_state *d = e->decap;
    PyObject *fr = pkt_obj(k);
    if (!fr) return -1;
    PyObject *res = PyObject_CallFunction(d->fallback_cb, "OLL", fr, (long long)k->origlen,
                                          (long long)ts);
    if (!res) return -1;
    long long sweep;
    PyObject *list;
    int r = -1;
    if (PyArg_ParseTuple(res, "LO", &sweep, &list)) {
        d->next_sweep = sweep;
        r = decap_feed_list(e, list);
    }
    Py_DECREF(res);
    return r;
}

/* flows.py's key of an inner Ethernet frame (inner_tuple, then vlan + proto + the two
 * endpoints in order): its length, or 0 where inner_tuple gives None. */
static int inner_key(const uint8_t *f, Py_ssize_t n, uint8_t *key) {
    if (n < 14) return 0;
    unsigned etype = rd16(f + 12);
    Py_ssize_t ip = 14;
    int tags = 0, vl = 0;
    uint8_t vlan[8];
    while (etype == 0x8100 || etype == 0x88A8 || etype == 0x9100) {
        if (tags == 4 || n < ip + 4) return 0;
        vlan[vl++] = f[ip] & 0x0F;
        vlan[vl++] = f[ip + 1];
        etype = rd16(f + ip + 2);
        ip += 4;
        tags++;
    }
    int version;
    if (etype == 0x0800) version = 4;
    else if (etype == 0x86DD) version = 6;
    else return 0;
    if (n <= ip || f[ip] >> 4 != version) return 0;
    int proto, alen, first;
    Py_ssize_t l4;
    const uint8_t *src, *dst;
    if (version == 4) {
        if (n < ip + 20) return 0;
        proto = f[ip + 9];
        l4 = ip + (f[ip] & 0x0F) * 4;
        src = f + ip + 12;
        dst = f + ip + 16;
        alen = 4;
        first = !(rd16(f + ip + 6) & 0x1FFF);
    } else {
        if (n < ip + 40) return 0;
        proto = f[ip + 6];
        l4 = ip + 40;
        src = f + ip + 8;
        dst = f + ip + 24;
        alen = 16;
        first = 1;
    }
    unsigned sport = 0, dport = 0;
    if (first && (proto == 6 || proto == 17 || proto == 132) && n >= l4 + 4) {
        sport = rd16(f + l4);
        dport = rd16(f + l4 + 2);
    }
    uint8_t a[18], b[18];
    int el = alen + 2;
    memcpy(a, src, alen);
    wr16(a + alen, sport);
    memcpy(b, dst, alen);
    wr16(b + alen, dport);
    int less = memcmp(a, b, el) < 0;
    memcpy(key, vlan, vl);
    key[vl] = (uint8_t)proto;
    memcpy(key + vl + 1, less ? a : b, el);
    memcpy(key + vl + 1 + el, less ? b : a, el);
    return vl + 1 + 2 * el;
}

static uint64_t notes_hash(const uint8_t *k, int n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (int i = 0; i < n; i++) h = (h ^ k[i]) * 1099511628211ULL;
    return h;
}

static void notes_clear(decap_state *d) {
    for (size_t i = 0; i < d->ncap; i++) Py_CLEAR(d->notes[i].flow);
    d->ncount = 0;
}

static note_slot *notes_find(decap_state *d, const uint8_t *k, int n, uint64_t h) {
    if (!d->ncap) return NULL;
    size_t i = h & (d->ncap - 1);
    while (d->notes[i].flow) {
        note_slot *s = &d->notes[i];
        if (s->hash == h && s->klen == n && !memcmp(s->key, k, n)) return s;
        i = (i + 1) & (d->ncap - 1);
    }
    return NULL;
}

static int notes_put(decap_state *d, const uint8_t *k, int n, uint64_t h, PyObject *flow) {
    note_slot *s = notes_find(d, k, n, h);
    if (s) {
        Py_INCREF(flow);
        Py_SETREF(s->flow, flow);
        return 0;
    }
    if (d->ncount >= NOTES_MAX) notes_clear(d);
    if (2 * (d->ncount + 1) > d->ncap) {
        size_t cap = d->ncap ? 2 * d->ncap : 1024;
        note_slot *ns = PyMem_Calloc(cap, sizeof(note_slot));
        if (!ns) { PyErr_NoMemory(); return -1; }
        for (size_t j = 0; j < d->ncap; j++) {
            if (!d->notes[j].flow) continue;
            size_t i = d->notes[j].hash & (cap - 1);
            while (ns[i].flow) i = (i + 1) & (cap - 1);
            ns[i] = d->notes[j];
        }
        PyMem_Free(d->notes);
        d->notes = ns;
        d->ncap = cap;
    }
    size_t i = h & (d->ncap - 1);
    while (d->notes[i].flow) i = (i + 1) & (d->ncap - 1);
    note_slot *e = &d->notes[i];
    e->hash = h;
    e->klen = (uint8_t)n;
    memcpy(e->key, k, n);
    Py_INCREF(flow);
    e->flow = flow;
    d->ncount++;
    return 0;
}

/* What Python's notes changed: a new epoch forgets every flow C knows. */
static void notes_sync(decap_state *d, int64_t epoch, int64_t sweep) {
    if (epoch != d->notes_epoch) {
        notes_clear(d);
        d->notes_epoch = epoch;
    }
    d->notes_sweep = sweep;
}

/* The tunnel rows (normalizer/tunnels/flows.py): a known flow's last_seen set here, anything
 * else (a new flow, a sweep due) noted by Python, which hands back the flow to remember. */
static int decap_note(decap_state *d, pkt *in, int64_t ts, const uint8_t *f, const tunnel_at *t) {
    uint8_t key[48];
    int kl = inner_key(in->p, in->n, key);
    uint64_t h = kl ? notes_hash(key, kl) : 0;
    if (ts < d->notes_sweep) {
        if (!kl) return 0; /* Python's note: no sweep due, no tuple, nothing */
        note_slot *s = notes_find(d, key, kl, h);
        if (s) {
            PyObject *v = PyLong_FromLongLong(ts);
            if (!v) return -1;
            int r = PyObject_SetAttr(s->flow, d->last_seen_name, v);
            Py_DECREF(v);
            return r;
        }
    }
    PyObject *frame = pkt_obj(in);
    if (!frame) return -1;
    Py_ssize_t opts = t->kind ? t->start - (t->udp + 16) : 0;
    PyObject *r = PyObject_CallFunction(
        d->note_cb, "OLikiy#y#IIy#y#", frame, (long long)ts, t->kind, (unsigned long)t->vni,
        (int)rd16(in->p + 14) & 0x0FFF, (const char *)t->src, (Py_ssize_t)t->alen,
        (const char *)t->dst, (Py_ssize_t)t->alen, (unsigned)rd16(f + t->udp),
        (unsigned)rd16(f + t->udp + 2), (const char *)t->vlan, (Py_ssize_t)t->vlanlen,
        (const char *)f + t->udp + 16, opts);
    if (!r) return -1;
    PyObject *flow;
    long long epoch, sweep;
    int ok = PyArg_ParseTuple(r, "OLL", &flow, &epoch, &sweep);
    int res = -1;
    if (ok) {
        notes_sync(d, epoch, sweep);
        res = (flow != Py_None && kl) ? notes_put(d, key, kl, h, flow) : 0;
    }
    Py_DECREF(r);
    return res;
}

/* One captured (outer) frame: decapsulated, passed or handed to Python. ``kept`` NULL: the
 * checksum policy and its stats are Pipeline's (set_decap), else ``autocs`` (feed_pcap). */
static int decap_feed(Engine *e, pkt *k, int64_t ts, int autocs, Py_ssize_t *kept,
                      Py_ssize_t *completed) {
    decap_state *d = e->decap;
    if (!kept) {
        autocs = d->pipe_auto;
        kept = &d->pipe_kept;
        completed = &d->pipe_completed;
    }
    d->autocs = autocs;
    d->kept = kept;
    d->completed = completed;
    tunnel_at t;
    int v = d->fast && ts < d->next_sweep ? classify(d, k->p, k->n, &t) : D_FALLBACK;
    int r;
    switch (v) {
    case D_PASS:
        d->passed++;
        r = decap_checked(e, k, ts);
        break;
    case D_UNTRUSTED:
        d->untrusted++;
        r = decap_checked(e, k, ts);
        break;
    case D_INNER: {
        int vlan = vni_vlan(d, t.vni);
        if (vlan < 0) { r = -1; break; }
        const uint8_t *f = k->p;
        Py_ssize_t body = t.end - t.start, n = t.proto ? 18 + body : 4 + body;
        uint8_t *o;
        if (d->inplace && !t.proto && (t.kind == 0 || d->note_cb == Py_None)) {
            /* the MACs move 4 bytes left, over the end of the tunnel header: the record is
             * consumed, and nothing reads those bytes again (decap_note reads GENEVE options:
             * not with it) */
            o = (uint8_t *)f + t.start - 4;
            memmove(o, f + t.start, 12);
        } else {
            if (n > d->scap) {
                uint8_t *s = PyMem_Realloc(d->scratch, n);
                if (!s) { PyErr_NoMemory(); r = -1; break; }
                d->scratch = s;
                d->scap = n;
            }
            o = d->scratch;
            if (t.proto) {
                static const uint8_t macs[12] = {2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1}; /* SYNTH_MACS */
                memcpy(o, macs, 12);
                wr16(o + 16, t.proto);
                memcpy(o + 18, f + t.start, body);
            } else {
                memcpy(o, f + t.start, 12);
                memcpy(o + 16, f + t.start + 12, body - 12);
            }
        }
        wr16(o + 12, 0x8100);
        wr16(o + 14, (unsigned)vlan);
        d->decapsulated++;
        pkt in = {NULL, o, n, -1};
        r = d->note_cb != Py_None ? decap_note(d, &in, ts, f, &t) : 0;
        if (r == 0) r = decap_checked(e, &in, ts);
        Py_XDECREF(in.obj);
        break;
    }
    default:
        r = decap_fallback(e, k, ts);
    }
    d->kept = d->completed = NULL;
    return r;
}

static void decap_free(decap_state *d) {
    if (!d) return;
    notes_clear(d);
    PyMem_Free(d->notes);
    Py_CLEAR(d->last_seen_name);
    Py_CLEAR(d->fallback_cb);
    Py_CLEAR(d->vlan_cb);
    Py_CLEAR(d->note_cb);
    PyMem_Free(d->peers4);
    PyMem_Free(d->peers6);
    PyMem_Free(d->vkeys);
    PyMem_Free(d->vvals);
    PyMem_Free(d->scratch);
    PyMem_Free(d);
}

static int decap_traverse(decap_state *d, visitproc visit, void *arg) {
    if (!d) return 0;
    Py_VISIT(d->fallback_cb);
    Py_VISIT(d->vlan_cb);
    Py_VISIT(d->note_cb);
    return 0;
}

static void decap_clear(decap_state *d) {
    if (!d) return;
    notes_clear(d);
    Py_CLEAR(d->fallback_cb);
    Py_CLEAR(d->vlan_cb);
    Py_CLEAR(d->note_cb);
}

/* ---- Python methods ---------------------------------------------------------------------- */

/* set_decap(vxlan_ports, geneve_ports, peers4, peers6, fallback_cb, vlan_cb, note_cb, fast,
 * auto): from now on feed_pcap, feed_block and feed_outer decapsulate (tunnels/compiled.py).
 * Ports are bytes of big-endian 16-bit values; peers as the engine's trust blocks; ``auto``:
 * feed_block and feed_outer apply checksums "auto" to the frames they hand on. */
static PyObject *Engine_set_decap(Engine *e, PyObject *args) {
    Py_buffer vx, gn, p4, p6;
    PyObject *fcb, *vcb, *ncb;
    int fast, pipe_auto;
    if (!PyArg_ParseTuple(args, "y*y*y*y*OOOpp", &vx, &gn, &p4, &p6, &fcb, &vcb, &ncb, &fast,
                          &pipe_auto))
        return NULL;
    decap_state *d = NULL;
    if (vx.len % 2 || gn.len % 2 || p4.len % 8 || p6.len % 32) {
        PyErr_SetString(PyExc_ValueError, "set_decap: malformed port or peer blocks");
        goto done;
    }
    d = PyMem_Calloc(1, sizeof(decap_state));
    if (!d) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < vx.len; i += 2) {
        unsigned port = rd16((const uint8_t *)vx.buf + i);
        d->vxlan[port >> 3] |= 1 << (port & 7);
    }
    for (Py_ssize_t i = 0; i < gn.len; i += 2) {
        unsigned port = rd16((const uint8_t *)gn.buf + i);
        d->geneve[port >> 3] |= 1 << (port & 7);
    }
    d->peers4 = dup_bytes(&p4);
    d->npeers4 = p4.len / 8;
    d->peers6 = dup_bytes(&p6);
    d->npeers6 = p6.len / 32;
    if (!d->peers4 || !d->peers6) {
        PyErr_NoMemory();
        decap_free(d);
        d = NULL;
        goto done;
    }
    Py_INCREF(fcb); d->fallback_cb = fcb;
    Py_INCREF(vcb); d->vlan_cb = vcb;
    Py_INCREF(ncb); d->note_cb = ncb;
    d->last_seen_name = PyUnicode_InternFromString("last_seen");
    if (!d->last_seen_name) {
        decap_free(d);
        d = NULL;
        goto done;
    }
    d->fast = fast;
    d->pipe_auto = pipe_auto;
    decap_free(e->decap);
    e->decap = d;
done:
    PyBuffer_Release(&vx);
    PyBuffer_Release(&gn);
    PyBuffer_Release(&p4);
    PyBuffer_Release(&p6);
    if (!d) return NULL;
    Py_RETURN_NONE;
}

/* feed_outer(frame, ts): Pipeline.push of one captured frame. */
static PyObject *Engine_feed_outer(Engine *e, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "feed_outer(frame: bytes, ts)");
        return NULL;
    }
    if (!e->decap) {
        PyErr_SetString(PyExc_RuntimeError, "feed_outer without set_decap");
        return NULL;
    }
    long long ts = PyLong_AsLongLong(args[1]);
    if (ts == -1 && PyErr_Occurred()) return NULL;
    PyObject *frame = args[0];
    pkt k = {frame, (const uint8_t *)PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame), -1};
    Py_INCREF(frame);
    int r = decap_feed(e, &k, ts, 0, NULL, NULL);
    Py_DECREF(k.obj);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}

/* feed_released(frames, auto) -> (kept, completed): what the decapsulator's tick or flush
 * handed on, a list of (ts, frame, origlen), to the core in order. */
static PyObject *Engine_feed_released(Engine *e, PyObject *args) {
    PyObject *list;
    int autocs;
    if (!PyArg_ParseTuple(args, "O!p", &PyList_Type, &list, &autocs)) return NULL;
    if (!e->decap) {
        PyErr_SetString(PyExc_RuntimeError, "feed_released without set_decap");
        return NULL;
    }
    decap_state *d = e->decap;
    Py_ssize_t kept = 0, completed = 0;
    d->autocs = autocs;
    d->kept = &kept;
    d->completed = &completed;
    int r = decap_feed_list(e, list);
    d->kept = d->completed = NULL;
    if (r < 0) return NULL;
    return Py_BuildValue("nn", kept, completed);
}

/* decap_sweep(next): the decapsulator's next fragment sweep moved (its tick ran). */
static PyObject *Engine_decap_sweep(Engine *e, PyObject *arg) {
    long long next = PyLong_AsLongLong(arg);
    if (next == -1 && PyErr_Occurred()) return NULL;
    if (e->decap) e->decap->next_sweep = next;
    Py_RETURN_NONE;
}

/* decap_notes_sync(epoch, next_sweep): the tunnel rows changed in Python (TunnelFlows.epoch,
 * its next sweep): the flows C refreshes are forgotten when the epoch moved. */
static PyObject *Engine_decap_notes_sync(Engine *e, PyObject *args) {
    long long epoch, sweep;
    if (!PyArg_ParseTuple(args, "LL", &epoch, &sweep)) return NULL;
    if (e->decap) notes_sync(e->decap, epoch, sweep);
    Py_RETURN_NONE;
}

static PyObject *Engine_decap_counters(Engine *e, PyObject *Py_UNUSED(ignored)) {
    decap_state *d = e->decap;
    if (!d) return PyDict_New();
    return Py_BuildValue("{sLsLsLsnsn}", "tunnel_decapsulated", (long long)d->decapsulated,
                         "tunnel_passed", (long long)d->passed, "tunnel_untrusted",
                         (long long)d->untrusted, "checksum_kept", d->pipe_kept,
                         "checksum_completed", d->pipe_completed);
}

#define DECAP_METHODS                                                                          \
    {"set_decap", (PyCFunction)Engine_set_decap, METH_VARARGS, "decapsulate from now on"},     \
    {"feed_outer", (PyCFunction)(void (*)(void))Engine_feed_outer, METH_FASTCALL,              \
     "feed_outer(frame, ts): decapsulate, then feed"},                                         \
    {"feed_released", (PyCFunction)Engine_feed_released, METH_VARARGS,                         \
     "feed the decapsulator's released frames"},                                               \
    {"decap_sweep", (PyCFunction)Engine_decap_sweep, METH_O, "the decapsulator's next sweep"}, \
    {"decap_notes_sync", (PyCFunction)Engine_decap_notes_sync, METH_VARARGS,                   \
     "the tunnel rows' epoch and next sweep"},                                                 \
    {"decap_counters", (PyCFunction)Engine_decap_counters, METH_NOARGS,                        \
     "tunnel counters of frames decided in C, Pipeline's checksum stats"},
