/* Retained non-leaf page tables from SPTE changes in one ordered pass per table state, with a hash table keyed
 * by (as_id, level, base gfn) instead of sorting every operation by table (tdptrace/capture/pagetables.py is the
 * pure reference, docs/metrics.md "Page tables and retained non-leaf tables" the definition; both must agree to
 * the change). Rows must come in seq order (the caller checks). GIL released while computing.
 *
 * Per row: a count operation on the table holding the entry when presence changes, and a link operation on the
 * child table one level down when non-leaf presence changes (level >= 2). Per table, in event order:
 *   count   = running sum of presence deltas + initial, initial = max(0, -lowest running sum) (entries that were
 *             there before the capture began);
 *   linked  = value of the last link operation; before the first, linked unless that first one links;
 *   ever    = had present entries since it was last linked anew (before any relink: count > 0 or initial > 0);
 *   retained = linked && ever && count == 0 && level < root level.
 * Output: every operation where a table's retained state changes (seq, ts, level, +1/-1), in event order; for
 * one row, the child table's change (lower key) before the holding table's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GFN_BITS 52

typedef struct {
    uint64_t key;
    int64_t rel, minrel, initial;
    int8_t used, first_link, linked, ever, first_segment, prev;
} Table;

typedef struct {
    Table *t;
    size_t cap, n;
} Map;

static inline uint64_t mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

static int map_init(Map *m, size_t cap) {
    m->t = calloc(cap, sizeof(Table));
    m->cap = cap;
    m->n = 0;
    return m->t != NULL;
}

static Table *map_get(Map *m, uint64_t key);

static int map_grow(Map *m) {
    Map g;
    if (!map_init(&g, m->cap * 2)) return 0;
    for (size_t i = 0; i < m->cap; i++)
        if (m->t[i].used) {
            Table *d = map_get(&g, m->t[i].key);
            *d = m->t[i];
        }
    free(m->t);
    *m = g;
    return 1;
}

/* The slot of `key` (a fresh zeroed one marked used when absent); NULL only on allocation failure. */
static Table *map_get(Map *m, uint64_t key) {
    size_t mask = m->cap - 1, i = mix(key) & mask;
    while (m->t[i].used) {
        if (m->t[i].key == key) return &m->t[i];
        i = (i + 1) & mask;
    }
    if ((m->n + 1) * 2 > m->cap) {
        if (!map_grow(m)) return NULL;
        return map_get(m, key);
    }
    Table *s = &m->t[i];
    s->used = 1;
    s->key = key;
    s->first_link = -1;
    m->n++;
    return s;
}

static inline uint64_t table_key(uint64_t as_id, uint64_t level, uint64_t gfn) {
    uint64_t span = 1;
    for (uint64_t k = 0; k < level; k++) span *= 512;
    uint64_t base = gfn - (gfn % span);
    return (as_id << (GFN_BITS + 3)) | (level << GFN_BITS) | base;
}

typedef struct {
    int64_t *rec; /* (seq, ts, level, delta) per change */
    size_t n, cap;
    int oom;
} Changes;

static inline void op_pass1(Table *t, int64_t dcount, int link) {
    t->rel += dcount;
    if (t->rel < t->minrel) t->minrel = t->rel;
    if (link >= 0 && t->first_link < 0) t->first_link = (int8_t)link;
}

static inline void op_pass2(Table *t, int64_t dcount, int link, int64_t tlevel, int64_t root_level, int64_t seq,
                            int64_t ts, Changes *c) {
    t->rel += dcount;
    if (link >= 0) {
        t->linked = (int8_t)link;
        if (link == 1) { /* linked anew: a new segment */
            t->first_segment = 0;
            t->ever = 0;
        }
    }
    int64_t count = t->rel + t->initial;
    int had = count > 0 || (t->initial > 0 && t->first_segment);
    if (had) t->ever = 1;
    int8_t r = t->linked && t->ever && count == 0 && tlevel < root_level;
    if (r != t->prev) {
        if (c->n == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 1024;
            int64_t *p = realloc(c->rec, cap * 4 * sizeof(int64_t));
            if (!p) { c->oom = 1; return; }
            c->rec = p;
            c->cap = cap;
        }
        int64_t *q = c->rec + 4 * c->n++;
        q[0] = seq;
        q[1] = ts;
        q[2] = tlevel;
        q[3] = r - t->prev;
        t->prev = r;
    }
}

/* returns 0 on success, -1 on allocation failure */
static int compute(Py_ssize_t n, const int64_t *seq, const int64_t *ts, const uint8_t *as_id, const uint8_t *level,
                   const uint64_t *gfn, const uint8_t *po, const uint8_t *pn, const uint8_t *ol, const uint8_t *nl,
                   int64_t root_level, Changes *c) {
    Map m;
    if (!map_init(&m, 1 << 12)) return -1;
    for (int pass = 1; pass <= 2; pass++) {
        if (pass == 2)
            for (size_t i = 0; i < m.cap; i++)
                if (m.t[i].used) {
                    Table *t = &m.t[i];
                    t->initial = t->minrel < 0 ? -t->minrel : 0;
                    t->rel = 0;
                    t->linked = t->first_link == 1 ? 0 : 1;
                    t->ever = 0;
                    t->first_segment = 1;
                    t->prev = 0;
                }
        for (Py_ssize_t i = 0; i < n; i++) {
            int64_t dcount = (int64_t)(pn[i] != 0) - (int64_t)(po[i] != 0);
            int nl_old = po[i] && !ol[i], nl_new = pn[i] && !nl[i];
            uint64_t lv = level[i];
            if (nl_old != nl_new && lv >= 2) { /* link op on the child table (the lower key: first) */
                Table *t = map_get(&m, table_key(as_id[i], lv - 1, gfn[i]));
                if (!t) { free(m.t); return -1; }
                if (pass == 1) op_pass1(t, 0, nl_new);
                else op_pass2(t, 0, nl_new, (int64_t)lv - 1, root_level, seq[i], ts[i], c);
            }
            if (dcount != 0) {
                Table *t = map_get(&m, table_key(as_id[i], lv, gfn[i]));
                if (!t) { free(m.t); return -1; }
                if (pass == 1) op_pass1(t, dcount, -1);
                else op_pass2(t, dcount, -1, (int64_t)lv, root_level, seq[i], ts[i], c);
            }
        }
    }
    free(m.t);
    return c->oom ? -1 : 0;
}

static int get(PyObject *o, Py_buffer *b, Py_ssize_t itemsize, Py_ssize_t n, int writable) {
    if (PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    if (b->len != itemsize * n) {
        PyBuffer_Release(b);
        PyErr_SetString(PyExc_ValueError, "array of the wrong size or type");
        return -1;
    }
    return 0;
}

/* retained(seq, ts, as_id, level, gfn, was_present, is_present, old_leaf, new_leaf, root_level)
 *   -> bytes of int64 (seq, ts, level, delta) per change */
static PyObject *py_retained(PyObject *self, PyObject *args) {
    PyObject *o[9];
    long long root_level;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOL", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &root_level))
        return NULL;
    Py_buffer b[9];
    static const Py_ssize_t size[9] = {8, 8, 1, 1, 8, 1, 1, 1, 1};
    Py_ssize_t n = PyObject_Length(o[0]);
    if (n < 0) return NULL;
    int got = 0;
    for (; got < 9; got++)
        if (get(o[got], &b[got], size[got], n, 0) < 0) break;
    PyObject *res = NULL;
    if (got == 9) {
        Changes c = {NULL, 0, 0, 0};
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = compute(n, b[0].buf, b[1].buf, b[2].buf, b[3].buf, b[4].buf, b[5].buf, b[6].buf, b[7].buf, b[8].buf,
                     (int64_t)root_level, &c);
        Py_END_ALLOW_THREADS
        res = rc == 0 ? PyBytes_FromStringAndSize((const char *)c.rec, (Py_ssize_t)(c.n * 4 * sizeof(int64_t)))
                      : PyErr_NoMemory();
        free(c.rec);
    }
    for (int k = 0; k < got; k++) PyBuffer_Release(&b[k]);
    return res;
}

/* classify(old, new, level, legacy, present_mask, leaf_mask, special_mask, mmio_value, removed,
 *          was_present, is_present, old_leaf, new_leaf, zap, install): pagetables.classify's six columns written
 * into the given bool arrays in one pass (no temporary array per step). */
static inline int present(uint64_t v, int legacy, uint64_t pmask, uint64_t special, uint64_t mmio, uint64_t removed) {
    if (!legacy) return (v & pmask) != 0;
    return v != 0 && (v & special) != mmio && v != removed;
}

static PyObject *py_classify(PyObject *self, PyObject *args) {
    PyObject *o[9];
    int legacy;
    unsigned long long pmask, lmask, special, mmio, removed;
    if (!PyArg_ParseTuple(args, "OOOpKKKKKOOOOOO", &o[0], &o[1], &o[2], &legacy, &pmask, &lmask, &special, &mmio,
                          &removed, &o[3], &o[4], &o[5], &o[6], &o[7], &o[8]))
        return NULL;
    Py_ssize_t n = PyObject_Length(o[0]);
    if (n < 0) return NULL;
    Py_buffer b[9];
    static const Py_ssize_t size[9] = {8, 8, 1, 1, 1, 1, 1, 1, 1};
    int got = 0;
    for (; got < 9; got++)
        if (get(o[got], &b[got], size[got], n, got >= 3) < 0) break;
    if (got == 9) {
        const uint64_t *old = b[0].buf, *new_ = b[1].buf;
        const uint8_t *level = b[2].buf;
        uint8_t *po = b[3].buf, *pn = b[4].buf, *ol = b[5].buf, *nl = b[6].buf, *zap = b[7].buf, *ins = b[8].buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            int a = present(old[i], legacy, pmask, special, mmio, removed);
            int c = present(new_[i], legacy, pmask, special, mmio, removed);
            po[i] = (uint8_t)a;
            pn[i] = (uint8_t)c;
            ol[i] = (uint8_t)(a && (level[i] == 1 || (old[i] & lmask) != 0));
            nl[i] = (uint8_t)(c && (level[i] == 1 || (new_[i] & lmask) != 0));
            zap[i] = (uint8_t)(a && !c);
            ins[i] = (uint8_t)(!a && c);
        }
        Py_END_ALLOW_THREADS
    }
    for (int k = 0; k < got; k++) PyBuffer_Release(&b[k]);
    if (got < 9) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"retained", py_retained, METH_VARARGS, "retained-table changes of SPTE changes in seq order (see the source)"},
    {"classify", py_classify, METH_VARARGS, "presence, leaf, zap and install of each SPTE change (see the source)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pagetables_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__pagetables_scan(void) { return PyModule_Create(&module); }
