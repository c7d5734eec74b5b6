/* Which strings of an Arrow string array may hold a kernel address, the scrubber's prefilter
 * (tdptrace/capture/hashing.py: _PREFILTER, "(?i)ffff[89a-f][0-9a-f]{11}|[0-9]{19}") as one C pass over the
 * array's buffers, GIL released. A row it flags is then scrubbed by the exact pattern; a row it does not flag
 * cannot match that pattern, so the result is the regex prefilter's. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static inline int is_hex(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int may_hold(const unsigned char *s, Py_ssize_t n) {
    int digits = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= '0' && c <= '9') {
            if (++digits >= 19) return 1;
            continue;
        }
        digits = 0;
        if ((c | 0x20) == 'f' && i + 16 <= n && (s[i + 1] | 0x20) == 'f' && (s[i + 2] | 0x20) == 'f'
            && (s[i + 3] | 0x20) == 'f') {
            unsigned char d = s[i + 4] | 0x20;
            if ((d == '8' || d == '9' || (d >= 'a' && d <= 'f'))) {
                int ok = 1;
                for (int k = 5; k < 16 && ok; k++) ok = is_hex(s[i + k]);
                if (ok) return 1;
            }
        }
    }
    return 0;
}

static PyObject *py_rows(PyObject *self, PyObject *args) {
    Py_buffer off, data;
    Py_ssize_t start, n;
    if (!PyArg_ParseTuple(args, "y*y*nn", &off, &data, &start, &n)) return NULL;
    if (start < 0 || n < 0 || (start + n + 1) * 4 > off.len) {
        PyBuffer_Release(&off);
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "offsets buffer too short");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, n > 0 ? n : 0);
    if (!out) {
        PyBuffer_Release(&off);
        PyBuffer_Release(&data);
        return NULL;
    }
    char *m = PyBytes_AS_STRING(out);
    const int32_t *o = (const int32_t *)off.buf + start;
    const unsigned char *d = data.buf;
    Py_ssize_t dlen = data.len;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t a = o[i], b = o[i + 1];
        if (a < 0 || b < a || b > dlen) { bad = 1; break; }
        m[i] = (char)may_hold(d + a, b - a);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&off);
    PyBuffer_Release(&data);
    if (bad) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, "offsets outside the data buffer");
        return NULL;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"rows", py_rows, METH_VARARGS, "rows(offsets, data, start, n) -> one byte per string: 1 where it may hold "
     "a kernel address"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_address_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__address_scan(void) { return PyModule_Create(&module); }
