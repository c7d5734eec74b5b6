/* One pass over a block of tracefs text lines -> typed columns, with no Python object per line.
 *
 * The importer's native hot path (tdptrace/importers/fastscan.py wraps it; tracefs.py is the pure reference
 * it must agree with line for line). A line is taken here only when it has the plain tracefs layout that
 * tracefs._fields_fast reads, in printable ASCII:
 *     <comm>-<tid> [<cpu>] <flags> <sec>.<frac>: <event>: <body>
 * and a kvm_tdp_mmu_spte_changed body is decoded here only when it is exactly
 *     as id <dec> gfn <hex> level <dec> old_spte <hex> new_spte <hex>
 * with values in range. Everything else (comments, lost-event lines, a tgid column, tabs, UTF-8, values the
 * capture cannot hold, damaged lines) is handed back untouched, with its line number, for the pure path to
 * read or reject exactly as it would have. The GIL is released while scanning.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    PyObject *obj;
    char *p;
    Py_ssize_t len, cap;
} Out;

static int out_new(Out *o, Py_ssize_t cap) {
    o->obj = PyBytes_FromStringAndSize(NULL, cap > 0 ? cap : 1);
    if (!o->obj) return -1;
    o->p = PyBytes_AS_STRING(o->obj);
    o->len = 0;
    o->cap = cap;
    return 0;
}

#define PUT(o, type, v) do { *(type *)((o)->p + (o)->len) = (type)(v); (o)->len += sizeof(type); } while (0)

static inline void put_bytes(Out *o, const char *s, Py_ssize_t n) {
    memcpy(o->p + o->len, s, (size_t)n);
    o->len += n;
}

enum {
    /* spte rows */ S_IDX, S_TS, S_CPU, S_TID, S_ASID, S_GFN, S_LEVEL, S_OLD, S_NEW, S_COMM_OFF, S_COMM,
    /* other events */ E_IDX, E_TS, E_CPU, E_TID, E_COMM_OFF, E_COMM, E_EVENT_OFF, E_EVENT, E_BODY_OFF, E_BODY,
    /* lines left to the pure path */ O_IDX, O_OFF, O_LINE,
    N_OUT
};

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

static inline int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decimal digits [s, e) -> value; 0 on an empty run, a non-digit or more than maxd digits. */
static inline int dec(const char *s, const char *e, int maxd, uint64_t *v) {
    if (s >= e || e - s > maxd) return 0;
    uint64_t x = 0;
    for (; s < e; s++) {
        if (!is_digit(*s)) return 0;
        x = x * 10 + (uint64_t)(*s - '0');
    }
    *v = x;
    return 1;
}

/* 1..16 hex digits [s, e) -> value. */
static inline int hex(const char *s, const char *e, uint64_t *v) {
    if (s >= e || e - s > 16) return 0;
    uint64_t x = 0;
    for (; s < e; s++) {
        int h = hexval(*s);
        if (h < 0) return 0;
        x = (x << 4) | (uint64_t)h;
    }
    *v = x;
    return 1;
}

/* Expect the literal word `w` at *s followed by one space; advance past both. */
static inline int word(const char **s, const char *e, const char *w, size_t n) {
    if ((size_t)(e - *s) < n + 1 || memcmp(*s, w, n) != 0 || (*s)[n] != ' ') return 0;
    *s += n + 1;
    return 1;
}

/* The run of non-space characters starting at s (up to e). */
static inline const char *tok_end(const char *s, const char *e) {
    while (s < e && *s != ' ') s++;
    return s;
}

static const char SPTE_EVENT[] = "kvm_tdp_mmu_spte_changed";
static const char SPTE_EVENT_SYS[] = "kvmmmu:kvm_tdp_mmu_spte_changed";

typedef struct {
    int64_t ts;
    int16_t cpu;
    int32_t tid;
    const char *comm, *comm_e, *event, *event_e, *body, *body_e;
} Line;

/* The tracefs._fields_fast reading of one printable-ASCII line, or 0 to leave it to the pure path. */
static int parse_line(const char *p, const char *q, Line *L) {
    const char *i = NULL, *j = NULL, *s;
    for (s = p; s < q && *s == ' '; s++)
        ;
    if (s < q && *s == '#') return 0; /* a comment: the pure parser counts it (and reads the header's figures) */
    for (s = p; s + 1 < q; s++)
        if (s[0] == ':' && s[1] == ' ') { i = s; break; }
    if (!i) return 0;
    for (s = i + 2; s + 1 < q; s++)
        if (s[0] == ':' && s[1] == ' ') { j = s; break; }
    if (!j) return 0;
    /* prefix [p, i): from the right, ts, flags, [cpu], then '<comm>-<tid>' (the rest, leading spaces kept). */
    const char *e = i;
    if (e == p || e[-1] == ' ') return 0;
    const char *t3 = e;
    while (t3 > p && t3[-1] != ' ') t3--;
    const char *b2 = t3;
    while (b2 > p && b2[-1] == ' ') b2--;
    if (b2 == t3 || b2 == p) return 0;
    const char *t2 = b2;
    while (t2 > p && t2[-1] != ' ') t2--;
    const char *b1 = t2;
    while (b1 > p && b1[-1] == ' ') b1--;
    if (b1 == t2 || b1 == p) return 0;
    const char *t1 = b1;
    while (t1 > p && t1[-1] != ' ') t1--;
    const char *b0 = t1;
    while (b0 > p && b0[-1] == ' ') b0--;
    if (b0 == t1) return 0; /* fewer than four tokens */
    /* [cpu] */
    uint64_t v;
    if (b1 - t1 < 3 || *t1 != '[' || b1[-1] != ']' || !dec(t1 + 1, b1 - 1, 5, &v) || v > 32767) return 0;
    L->cpu = (int16_t)v;
    /* sec.frac: 1..9 fractional digits, seconds small enough that the ns value cannot overflow */
    const char *dot = memchr(t3, '.', (size_t)(e - t3));
    uint64_t sec, frac;
    if (!dot || !dec(t3, dot, 10, &sec) || sec > 9223372035ULL || !dec(dot + 1, e, 9, &frac)) return 0;
    int digits = (int)(e - dot - 1);
    int64_t scale = 1;
    for (int k = digits; k < 9; k++) scale *= 10;
    L->ts = (int64_t)sec * 1000000000LL + (int64_t)frac * scale;
    /* <comm>-<tid> */
    const char *dash = NULL;
    for (s = b0; s > p; s--)
        if (s[-1] == '-') { dash = s - 1; break; }
    if (!dash || !dec(dash + 1, b0, 10, &v) || v > 2147483647ULL) return 0;
    L->tid = (int32_t)v;
    const char *c = p;
    while (c < dash && *c == ' ') c++;
    L->comm = c;
    L->comm_e = dash;
    /* event (no space in it) and body */
    for (s = i + 2; s < j; s++)
        if (*s == ' ') return 0;
    L->event = i + 2;
    L->event_e = j;
    L->body = j + 2;
    L->body_e = q;
    return 1;
}

/* "as id D gfn H level D old_spte H new_spte H" exactly, in range; 0 leaves the line to the pure decoder. */
static int parse_spte(const char *s, const char *e, uint8_t *as_id, uint64_t *gfn, uint8_t *level, uint64_t *old,
                      uint64_t *new_) {
    const char *t;
    uint64_t v;
    if (!word(&s, e, "as", 2) || !word(&s, e, "id", 2)) return 0;
    t = tok_end(s, e);
    if (!dec(s, t, 3, &v) || v > 255 || t == e) return 0;
    *as_id = (uint8_t)v;
    s = t + 1;
    if (!word(&s, e, "gfn", 3)) return 0;
    t = tok_end(s, e);
    if (!hex(s, t, gfn) || t == e) return 0;
    s = t + 1;
    if (!word(&s, e, "level", 5)) return 0;
    t = tok_end(s, e);
    if (!dec(s, t, 1, &v) || v < 1 || v > 5 || t == e) return 0;
    *level = (uint8_t)v;
    s = t + 1;
    if (!word(&s, e, "old_spte", 8)) return 0;
    t = tok_end(s, e);
    if (!hex(s, t, old) || t == e) return 0;
    s = t + 1;
    if (!word(&s, e, "new_spte", 8)) return 0;
    t = tok_end(s, e);
    if (!hex(s, t, new_) || t != e) return 0;
    return 1;
}

static int printable(const char *p, const char *q) {
    for (; p < q; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e) return 0;
    return 1;
}

static void scan(const char *data, Py_ssize_t n, Out *o) {
    const char *p = data, *end = data + n;
    int64_t idx = 0;
    int32_t zero = 0;
    PUT(&o[S_COMM_OFF], int32_t, zero);
    PUT(&o[E_COMM_OFF], int32_t, zero);
    PUT(&o[E_EVENT_OFF], int32_t, zero);
    PUT(&o[E_BODY_OFF], int32_t, zero);
    PUT(&o[O_OFF], int32_t, zero);
    while (p < end) {
        const char *q = memchr(p, '\n', (size_t)(end - p));
        if (!q) q = end;
        Line L;
        if (printable(p, q) && parse_line(p, q, &L)) {
            Py_ssize_t en = L.event_e - L.event;
            uint8_t as_id, level;
            uint64_t gfn, old, new_;
            int is_spte = (en == (Py_ssize_t)sizeof(SPTE_EVENT) - 1 && memcmp(L.event, SPTE_EVENT, (size_t)en) == 0)
                || (en == (Py_ssize_t)sizeof(SPTE_EVENT_SYS) - 1 && memcmp(L.event, SPTE_EVENT_SYS, (size_t)en) == 0);
            if (is_spte && parse_spte(L.body, L.body_e, &as_id, &gfn, &level, &old, &new_)) {
                PUT(&o[S_IDX], int64_t, idx);
                PUT(&o[S_TS], int64_t, L.ts);
                PUT(&o[S_CPU], int16_t, L.cpu);
                PUT(&o[S_TID], int32_t, L.tid);
                PUT(&o[S_ASID], uint8_t, as_id);
                PUT(&o[S_GFN], uint64_t, gfn);
                PUT(&o[S_LEVEL], uint8_t, level);
                PUT(&o[S_OLD], uint64_t, old);
                PUT(&o[S_NEW], uint64_t, new_);
                put_bytes(&o[S_COMM], L.comm, L.comm_e - L.comm);
                PUT(&o[S_COMM_OFF], int32_t, o[S_COMM].len);
            } else {
                PUT(&o[E_IDX], int64_t, idx);
                PUT(&o[E_TS], int64_t, L.ts);
                PUT(&o[E_CPU], int16_t, L.cpu);
                PUT(&o[E_TID], int32_t, L.tid);
                put_bytes(&o[E_COMM], L.comm, L.comm_e - L.comm);
                PUT(&o[E_COMM_OFF], int32_t, o[E_COMM].len);
                put_bytes(&o[E_EVENT], L.event, en);
                PUT(&o[E_EVENT_OFF], int32_t, o[E_EVENT].len);
                put_bytes(&o[E_BODY], L.body, L.body_e - L.body);
                PUT(&o[E_BODY_OFF], int32_t, o[E_BODY].len);
            }
        } else {
            PUT(&o[O_IDX], int64_t, idx);
            put_bytes(&o[O_LINE], p, q - p);
            PUT(&o[O_OFF], int32_t, o[O_LINE].len);
        }
        idx++;
        p = q + 1;
    }
}

static PyObject *py_scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    const char *data = buf.buf;
    Py_ssize_t n = buf.len;
    if (n >= INT32_MAX) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "block too large for 32-bit string offsets");
        return NULL;
    }
    Py_ssize_t lines = 1;
    for (const char *p = data, *e = data + n; (p = memchr(p, '\n', (size_t)(e - p))) != NULL; p++) lines++;
    static const int width[N_OUT] = {8, 8, 2, 4, 1, 8, 1, 8, 8, -1, 0, 8, 8, 2, 4, -1, 0, -1, 0, -1, 0, 8, -1, 0};
    Out o[N_OUT];
    memset(o, 0, sizeof(o));
    for (int k = 0; k < N_OUT; k++) {
        Py_ssize_t cap = width[k] > 0 ? width[k] * lines : width[k] < 0 ? 4 * (lines + 1) : n;
        if (out_new(&o[k], cap) < 0) goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    scan(data, n, o);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    PyObject *res = PyTuple_New(N_OUT);
    if (!res) goto fail_released;
    for (int k = 0; k < N_OUT; k++) {
        if (_PyBytes_Resize(&o[k].obj, o[k].len) < 0) {
            o[k].obj = NULL;
            Py_DECREF(res);
            goto fail_released;
        }
        PyTuple_SET_ITEM(res, k, o[k].obj);
        o[k].obj = NULL;
    }
    return res;
fail:
    PyBuffer_Release(&buf);
fail_released:
    for (int k = 0; k < N_OUT; k++) Py_XDECREF(o[k].obj);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", py_scan, METH_VARARGS,
     "scan(block) -> 24 bytes objects: SPTE rows, other event rows and the lines left to the pure path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tracefs_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__tracefs_scan(void) { return PyModule_Create(&module); }
