/* heuristics._deflate: how many bytes a text deflates to against a preset dictionary.
 *
 * The detector's information estimate (heuristics/windows.py,
 * InformationEstimator.charge) deflates every never-seen subdomain with its
 * domain's recent new text as preset dictionary and charges the compressed
 * size. zlib.compressobj allocates and initialises a whole compressor for each
 * of those names (deflateInit2: window, hash chains and buffers); this module
 * keeps one compressor per window size, made on its first use and reset for
 * every later one (deflateReset: deflateEnd then deflateInit without
 * reallocating). Same zlib, same parameters (level 6, memLevel 8, the default
 * strategy), same stream, so the same size as zlib.compressobj gives:
 * tests/unit/test_heuristics_windows.py checks it over arbitrary octets.
 *
 * A call takes microseconds and keeps the GIL; the compressors belong to the
 * module object (one per interpreter) and live as long as it does.
 */

#define PY_SSIZE_T_CLEAN
#define ZLIB_CONST
#include <Python.h>
#include <limits.h>
#include <string.h>
#include <zlib.h>

#define LEVEL 6
#define MEM_LEVEL 8
#define MIN_WINDOW_BITS 9
#define MAX_WINDOW_BITS 15
#define WINDOWS (MAX_WINDOW_BITS - MIN_WINDOW_BITS + 1)

typedef struct {
    /* [0]: raw deflate (negative wbits), [1]: with the zlib header and trailer. */
    z_stream streams[2][WINDOWS];
    char ready[2][WINDOWS]; /* deflateInit2 done and not ended since */
} module_state;

/* Raise for a zlib error code; the stream's own message when it has one. */
static PyObject *
zlib_failed(const char *what, int err, const z_stream *zs)
{
    if (err == Z_MEM_ERROR) {
        return PyErr_NoMemory();
    }
    const char *msg = zs->msg != NULL ? zs->msg : zError(err);
    PyErr_Format(PyExc_RuntimeError, "%s failed (zlib error %d: %s)", what, err, msg != NULL ? msg : "?");
    return NULL;
}

PyDoc_STRVAR(deflated_size_doc,
"deflated_size(dictionary, text, wbits, /)\n"
"--\n"
"\n"
"The size in bytes of ``text`` deflated at level 6 (memLevel 8, default\n"
"strategy) with ``dictionary`` as preset dictionary, the stream finished:\n"
"what zlib.compressobj(6, zlib.DEFLATED, wbits, 8, zlib.Z_DEFAULT_STRATEGY,\n"
"dictionary) gives for compress(text) plus flush(). ``wbits`` is -15..-9\n"
"(raw deflate) or 9..15 (zlib header and trailer); an empty dictionary sets\n"
"none. Both octet arguments must be bytes.");

static PyObject *
deflated_size(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "deflated_size() takes exactly 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *dictionary = args[0];
    PyObject *text = args[1];
    if (!PyBytes_Check(dictionary)) {
        PyErr_Format(PyExc_TypeError, "deflated_size() argument 1 (dictionary) must be bytes, not %.100s",
                     Py_TYPE(dictionary)->tp_name);
        return NULL;
    }
    if (!PyBytes_Check(text)) {
        PyErr_Format(PyExc_TypeError, "deflated_size() argument 2 (text) must be bytes, not %.100s",
                     Py_TYPE(text)->tp_name);
        return NULL;
    }
    if (!PyLong_Check(args[2])) {
        PyErr_Format(PyExc_TypeError, "deflated_size() argument 3 (wbits) must be int, not %.100s",
                     Py_TYPE(args[2])->tp_name);
        return NULL;
    }
    int overflow = 0;
    long wbits = PyLong_AsLongAndOverflow(args[2], &overflow);
    if (wbits == -1 && PyErr_Occurred()) {
        return NULL;
    }
    long bits = wbits < 0 ? -wbits : wbits;
    if (overflow != 0 || bits < MIN_WINDOW_BITS || bits > MAX_WINDOW_BITS) {
        PyErr_Format(PyExc_ValueError, "deflated_size() wbits must be -15..-9 (raw deflate) or 9..15, not %S",
                     args[2]);
        return NULL;
    }
    Py_ssize_t dictionary_size = PyBytes_GET_SIZE(dictionary);
    Py_ssize_t text_size = PyBytes_GET_SIZE(text);
    if ((size_t)dictionary_size > UINT_MAX || (size_t)text_size > UINT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "deflated_size() takes at most 4 GiB of dictionary or text");
        return NULL;
    }

    module_state *state = PyModule_GetState(module);
    if (state == NULL) {
        return NULL;
    }
    int wrapped = wbits > 0;
    int slot = (int)bits - MIN_WINDOW_BITS;
    z_stream *zs = &state->streams[wrapped][slot];
    int err;
    if (!state->ready[wrapped][slot]) {
        memset(zs, 0, sizeof(*zs)); /* zalloc, zfree, opaque: zlib's own */
        err = deflateInit2(zs, LEVEL, Z_DEFLATED, (int)wbits, MEM_LEVEL, Z_DEFAULT_STRATEGY);
        if (err != Z_OK) {
            return zlib_failed("deflateInit2", err, zs); /* it freed what it had allocated */
        }
        state->ready[wrapped][slot] = 1;
    }
    else {
        /* Reset before use rather than after: a call stopped by an error leaves
         * its stream mid-way, and this puts it back too. */
        err = deflateReset(zs);
        if (err != Z_OK) {
            deflateEnd(zs);
            state->ready[wrapped][slot] = 0;
            return zlib_failed("deflateReset", err, zs);
        }
    }
    if (dictionary_size > 0) {
        err = deflateSetDictionary(zs, (const Bytef *)PyBytes_AS_STRING(dictionary), (uInt)dictionary_size);
        if (err != Z_OK) {
            return zlib_failed("deflateSetDictionary", err, zs);
        }
    }

    unsigned char out[1024]; /* the output is counted, never kept */
    unsigned long long size = 0;
    zs->next_in = (const Bytef *)PyBytes_AS_STRING(text);
    zs->avail_in = (uInt)text_size;
    do {
        zs->next_out = out;
        zs->avail_out = (uInt)sizeof(out);
        err = deflate(zs, Z_FINISH); /* Z_OK: the output space ran out, more to come */
        size += sizeof(out) - zs->avail_out;
    } while (err == Z_OK);
    /* Hold no pointer into the objects past the call. */
    zs->next_in = NULL;
    zs->avail_in = 0;
    zs->next_out = NULL;
    zs->avail_out = 0;
    if (err != Z_STREAM_END) {
        return zlib_failed("deflate", err, zs);
    }
    return PyLong_FromUnsignedLongLong(size);
}

static PyMethodDef deflate_methods[] = {
    {"deflated_size", (PyCFunction)(void (*)(void))deflated_size, METH_FASTCALL, deflated_size_doc},
    {NULL, NULL, 0, NULL},
};

static void
deflate_free(void *module)
{
    module_state *state = PyModule_GetState((PyObject *)module);
    if (state == NULL) {
        return;
    }
    for (int wrapped = 0; wrapped < 2; wrapped++) {
        for (int slot = 0; slot < WINDOWS; slot++) {
            if (state->ready[wrapped][slot]) {
                deflateEnd(&state->streams[wrapped][slot]);
                state->ready[wrapped][slot] = 0;
            }
        }
    }
}

static int
deflate_exec(PyObject *module)
{
    /* The zlib this module runs, to compare with zlib.ZLIB_RUNTIME_VERSION. */
    return PyModule_AddStringConstant(module, "ZLIB_RUNTIME_VERSION", zlibVersion());
}

static PyModuleDef_Slot deflate_slots[] = {
    {Py_mod_exec, deflate_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_USED}, /* the compressors are shared by the interpreter's threads */
#endif
    {0, NULL},
};

PyDoc_STRVAR(deflate_doc,
"The compressed size of a text deflated against a preset dictionary, with one\n"
"zlib compressor per window size kept and reset rather than made for every\n"
"call (heuristics.windows.InformationEstimator).");

static struct PyModuleDef deflate_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "heuristics._deflate",
    .m_doc = deflate_doc,
    .m_size = sizeof(module_state),
    .m_methods = deflate_methods,
    .m_slots = deflate_slots,
    .m_free = deflate_free,
};

PyMODINIT_FUNC
PyInit__deflate(void)
{
    return PyModuleDef_Init(&deflate_module);
}
