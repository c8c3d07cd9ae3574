/* heuristics._labels: the shape of one label in one pass over its octets.
 *
 * heuristics/features.py judges whether a never-seen name's labels look
 * encoded from four facts per label: the smallest alphabet class holding its
 * octets, the Shannon entropy of its octet distribution, its digit/letter
 * alternations, and whether it holds octets outside LDH. Written in Python,
 * those are a handful of passes (bytes.translate per class, a sort, two
 * loops) and a few hundred nanoseconds of interpreter each; here they are one
 * count of the octets.
 *
 * The results are those of features.alphabet_of, shannon_entropy,
 * _transitions and the non-LDH test, exactly: the entropy adds c*log2(c) over
 * the octet counts in ascending octet order, as the Python does, with the libm
 * log2 Python's math.log2 calls, so the same double comes out.
 * tests/unit/test_heuristics_features.py checks them against the Python over
 * arbitrary octets. Texts of 256 octets or more (never a name's labels: a
 * wire name is at most 255 octets) are left to the Python.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

/* The alphabet classes, in features.Alphabet's order of preference. */
enum { HEX, BASE32, ALNUM, LDH, BASE64, BINARY };

#define MAX_OCTETS 256

static double clog_table[MAX_OCTETS]; /* c * log2(c); 0 for c = 0 */

/* Octet classes: a bit each; a label is drawn from a class when every octet has its bit. */
#define IS_HEX 0x001    /* 0-9 a-f */
#define IS_DIGIT 0x002  /* 0-9 */
#define IS_LETTER 0x004 /* a-z */
#define IS_ALNUM 0x008  /* 0-9 a-z */
#define IS_LDH 0x010    /* 0-9 a-z '-' '_' */
#define IS_B64 0x020    /* LDH and '+' '/' '=' */
#define IS_B32A 0x040   /* a-z 2-7 (RFC 4648) */
#define IS_B32B 0x080   /* a-z 0-5 (iodine) */
#define IS_B32C 0x100   /* 0-9 a-v (base32hex) */
#define ALL_CLASSES 0x1FF

static unsigned short octet_class[256];

static void
init_tables(void)
{
    clog_table[0] = 0.0;
    for (int c = 1; c < MAX_OCTETS; c++) {
        clog_table[c] = (double)c * log2((double)c);
    }
    for (int o = 0; o < 256; o++) {
        unsigned short k = 0;
        int digit = o >= '0' && o <= '9';
        int letter = o >= 'a' && o <= 'z';
        if (digit || (o >= 'a' && o <= 'f')) {
            k |= IS_HEX;
        }
        if (digit) {
            k |= IS_DIGIT;
        }
        if (letter) {
            k |= IS_LETTER;
        }
        if (digit || letter) {
            k |= IS_ALNUM;
        }
        if (digit || letter || o == '-' || o == '_') {
            k |= IS_LDH | IS_B64;
        }
        if (o == '+' || o == '/' || o == '=') {
            k |= IS_B64;
        }
        if (letter || (o >= '2' && o <= '7')) {
            k |= IS_B32A;
        }
        if (letter || (o >= '0' && o <= '5')) {
            k |= IS_B32B;
        }
        if (digit || (o >= 'a' && o <= 'v')) {
            k |= IS_B32C;
        }
        octet_class[o] = k;
    }
}

PyDoc_STRVAR(label_shape_doc,
"label_shape(data, /)\n"
"--\n"
"\n"
"(alphabet, entropy, transitions, non_ldh) of ``data`` (bytes, under 256\n"
"octets): alphabet is the index of the smallest class holding every octet\n"
"(0 hex, 1 base32, 2 alnum, 3 ldh, 4 base64, 5 binary; features.alphabet_of),\n"
"entropy the Shannon entropy of the octets in bits per octet\n"
"(features.shannon_entropy), transitions the digit/letter alternations\n"
"(features._transitions), non_ldh whether an octet is outside letters,\n"
"digits, '-' and '_'. Raises ValueError for 256 octets or more.");

static PyObject *
label_shape(PyObject *module, PyObject *data)
{
    (void)module;
    if (!PyBytes_Check(data)) {
        PyErr_Format(PyExc_TypeError, "label_shape() argument must be bytes, not %.100s", Py_TYPE(data)->tp_name);
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (n >= MAX_OCTETS) {
        PyErr_SetString(PyExc_ValueError, "label_shape() takes fewer than 256 octets");
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    unsigned char counts[MAX_OCTETS];
    memset(counts, 0, sizeof(counts));
    unsigned short all = ALL_CLASSES; /* the classes every octet belongs to */
    long transitions = 0;
    /* features._transitions starts from -1: the first digit or letter counts as one. */
    int prev = -1; /* kind of the last digit or letter: 1 digit, 2 letter */
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char o = p[i];
        counts[o]++;
        unsigned short k = octet_class[o];
        all &= k;
        int kind = (k & IS_DIGIT) ? 1 : (k & IS_LETTER) ? 2 : 0;
        if (kind) {
            if (kind != prev) {
                transitions++;
            }
            prev = kind;
        }
    }
    int alphabet;
    if (all & IS_HEX) {
        alphabet = HEX;
    }
    else if (all & IS_ALNUM) {
        alphabet = (all & (IS_B32A | IS_B32B | IS_B32C)) ? BASE32 : ALNUM;
    }
    else if (all & IS_LDH) {
        alphabet = LDH;
    }
    else if (all & IS_B64) {
        alphabet = BASE64;
    }
    else {
        alphabet = BINARY;
    }
    double entropy = 0.0;
    if (n > 0) {
        double total = 0.0;
        for (int o = 0; o < MAX_OCTETS; o++) {
            if (counts[o]) {
                total += clog_table[counts[o]];
            }
        }
        entropy = log2((double)n) - total / (double)n;
        if (entropy < 0.0) {
            entropy = 0.0;
        }
    }
    int non_ldh = !(all & IS_LDH);
    return Py_BuildValue("(idlO)", alphabet, entropy, transitions, non_ldh ? Py_True : Py_False);
}

static PyMethodDef labels_methods[] = {
    {"label_shape", (PyCFunction)label_shape, METH_O, label_shape_doc},
    {NULL, NULL, 0, NULL},
};

static int
labels_exec(PyObject *module)
{
    (void)module;
    init_tables();
    return 0;
}

static PyModuleDef_Slot labels_slots[] = {
    {Py_mod_exec, labels_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

PyDoc_STRVAR(labels_doc,
"The shape of one label (alphabet class, entropy, digit/letter alternations,\n"
"octets outside LDH) in one pass (heuristics.features).");

static struct PyModuleDef labels_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "heuristics._labels",
    .m_doc = labels_doc,
    .m_size = 0,
    .m_methods = labels_methods,
    .m_slots = labels_slots,
};

PyMODINIT_FUNC
PyInit__labels(void)
{
    return PyModuleDef_Init(&labels_module);
}
