/* Native sealing of encrypted values: the hot half of crypto.py's KeyRing.seal, in one call.
 *
 * Every encrypted resume seals two values (its payload, the run's result). Through the
 * `cryptography` binding each AES-GCM call copies and wipes an OpenSSL context, and the Python
 * around it (associated data, base64url, joining the envelope) cost as much again: about 17,000
 * instructions a value, against a budget of about 15,000 for both values of a resume. Here one
 * call per value keys one shared context with the run's key and the value's nonce, feeds the
 * associated data to GCM in one update, and writes the envelope's JSON bytes straight into the
 * result. One shared context, not one per run: a run's context (about a kilobyte with its key
 * schedule and GHASH tables) is cold by the time the run is resumed, and re-keying a warm one
 * measured cheaper than reading a cold one (0.89-0.93 against 1.05-1.13 us a value over 20,000
 * runs in turn), with no kilobyte per cached run. The shared context holds the key schedule of
 * the last run sealed until the next value; the cached AESGCM objects hold theirs for as long.
 *
 * The bytes are those crypto.py defines (format 1): {"$enc":"1.<kid>.<base64url(nonce || ciphertext
 * || tag)>"}, with the associated data prefix || type part || ("-" or "<len>:<correlation id>").
 * Decryption stays with `cryptography`; the tests check this module against the Python path byte
 * for byte and against `cryptography`'s decryption. Nonces come from the caller (crypto.py's pool).
 *
 * Thread safety: the shared context is mutable; every call holds the GIL from start to end
 * (nothing here releases it, and no Python code runs once the context is touched), so two
 * threads never use it at once. On a free-threaded CPython the interpreter re-enables the GIL
 * for a module that, as this one, does not declare it can run without.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <string.h>

#include <openssl/evp.h>

#define NONCE_SIZE 12
#define TAG_SIZE 16
#define KEY_SIZE 32

/* The one context every RunSealer keys per value (see above); made at import. */
static EVP_CIPHER_CTX *shared_ctx = NULL;

typedef struct {
    PyObject_HEAD
    unsigned char key[KEY_SIZE];
    int keyed;
    PyObject *json_prefix; /* bytes: {"$enc":"1.<kid>. */
    PyObject *aad_prefix;  /* bytes: actorflow/1|16:<kid>|<len>:<run id>| */
} RunSealer;

static const char B64URL[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Unpadded base64url of n bytes: its length. */
static Py_ssize_t b64_len(Py_ssize_t n) { return (n / 3) * 4 + (n % 3 == 0 ? 0 : n % 3 + 1); }

static char *b64url(char *out, const unsigned char *in, Py_ssize_t n) {
    Py_ssize_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned int v = (in[i] << 16) | (in[i + 1] << 8) | in[i + 2];
        *out++ = B64URL[(v >> 18) & 63];
        *out++ = B64URL[(v >> 12) & 63];
        *out++ = B64URL[(v >> 6) & 63];
        *out++ = B64URL[v & 63];
    }
    if (n - i == 1) {
        unsigned int v = in[i] << 16;
        *out++ = B64URL[(v >> 18) & 63];
        *out++ = B64URL[(v >> 12) & 63];
    } else if (n - i == 2) {
        unsigned int v = (in[i] << 16) | (in[i + 1] << 8);
        *out++ = B64URL[(v >> 18) & 63];
        *out++ = B64URL[(v >> 12) & 63];
        *out++ = B64URL[(v >> 6) & 63];
    }
    return out;
}

static PyObject *openssl_error(const char *what) {
    PyErr_Format(PyExc_RuntimeError, "OpenSSL failed to %s", what);
    return NULL;
}

static int RunSealer_init(RunSealer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key", "json_prefix", "aad_prefix", NULL};
    Py_buffer key;
    PyObject *json_prefix, *aad_prefix;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*SS", kwlist, &key, &json_prefix,
                                     &aad_prefix))
        return -1;
    if (key.len != KEY_SIZE) {
        PyBuffer_Release(&key);
        PyErr_Format(PyExc_ValueError, "the key must be %d bytes, not %zd", KEY_SIZE, key.len);
        return -1;
    }
    memcpy(self->key, key.buf, KEY_SIZE);
    self->keyed = 1;
    PyBuffer_Release(&key);
    Py_INCREF(json_prefix);
    Py_XSETREF(self->json_prefix, json_prefix);
    Py_INCREF(aad_prefix);
    Py_XSETREF(self->aad_prefix, aad_prefix);
    return 0;
}

static void RunSealer_dealloc(RunSealer *self) {
    OPENSSL_cleanse(self->key, KEY_SIZE);
    Py_XDECREF(self->json_prefix);
    Py_XDECREF(self->aad_prefix);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The decimal digits of n >= 0 (a length), without snprintf's format parsing: their count. */
static int decimal(char *out, Py_ssize_t n) {
    char digits[24];
    int count = 0;
    do {
        digits[count++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    for (int i = 0; i < count; i++) out[i] = digits[count - 1 - i];
    return count;
}

/* seal(nonce, plaintext, type_part, correlation_id) -> the envelope's JSON bytes. */
static PyObject *RunSealer_seal(RunSealer *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "seal(nonce, plaintext, type_part, correlation_id)");
        return NULL;
    }
    if (!self->keyed || self->json_prefix == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "RunSealer was not initialised");
        return NULL;
    }
    PyObject *nonce = args[0], *type_part = args[2], *corr = args[3];
    if (!PyBytes_Check(nonce) || PyBytes_GET_SIZE(nonce) != NONCE_SIZE) {
        PyErr_SetString(PyExc_ValueError, "the nonce must be 12 bytes");
        return NULL;
    }
    if (!PyBytes_Check(type_part)) {
        PyErr_SetString(PyExc_TypeError, "type_part must be bytes");
        return NULL;
    }
    if (corr != Py_None && !PyUnicode_Check(corr)) {
        PyErr_SetString(PyExc_TypeError, "correlation_id must be str or None");
        return NULL;
    }
    Py_buffer plain;
    if (PyObject_GetBuffer(args[1], &plain, PyBUF_SIMPLE) != 0) return NULL;
    PyObject *result = NULL, *corr_bytes = NULL;
    unsigned char *sealed = NULL;
    unsigned char small[512];
    char aad_small[256];
    char *aad = NULL;
    EVP_CIPHER_CTX *ctx = shared_ctx;
    Py_ssize_t sealed_len, prefix_len;
    int outl = 0, final_len = 0;
    char *out;
    /* Beyond INT_MAX OpenSSL's lengths overflow; AES-GCM itself stops near 64 GiB. */
    if (plain.len > INT_MAX - NONCE_SIZE - TAG_SIZE) {
        PyErr_SetString(PyExc_OverflowError, "the plaintext is too large for AES-GCM");
        goto done;
    }
    sealed_len = NONCE_SIZE + plain.len + TAG_SIZE;
    sealed = sealed_len <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc(sealed_len);
    if (sealed == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(sealed, PyBytes_AS_STRING(nonce), NONCE_SIZE);
    /* The associated data, joined in one buffer and fed in one update (each update is a
     * dispatch through OpenSSL's provider layer): prefix || type part || ("-" or
     * "<length in characters>:<UTF-8, lone surrogates passed through>"). */
    {
        const char *text = "-";
        Py_ssize_t text_len = 1;
        char head[24];
        int head_len = 0;
        if (corr != Py_None) {
#if PY_VERSION_HEX < 0x030C0000
            if (PyUnicode_READY(corr) < 0) goto done;
#endif
            head_len = decimal(head, PyUnicode_GET_LENGTH(corr));
            head[head_len++] = ':';
            if (PyUnicode_IS_ASCII(corr)) {
                text = (const char *)PyUnicode_DATA(corr);
                text_len = PyUnicode_GET_LENGTH(corr);
            } else {
                corr_bytes = PyUnicode_AsEncodedString(corr, "utf-8", "surrogatepass");
                if (corr_bytes == NULL) goto done;
                text = PyBytes_AS_STRING(corr_bytes);
                text_len = PyBytes_GET_SIZE(corr_bytes);
            }
        }
        Py_ssize_t prefix_n = PyBytes_GET_SIZE(self->aad_prefix);
        Py_ssize_t type_n = PyBytes_GET_SIZE(type_part);
        Py_ssize_t aad_len = prefix_n + type_n + head_len + text_len;
        if (aad_len > INT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "the associated data is too large");
            goto done;
        }
        aad = aad_len <= (Py_ssize_t)sizeof(aad_small) ? aad_small : PyMem_Malloc(aad_len);
        if (aad == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        char *at = aad;
        memcpy(at, PyBytes_AS_STRING(self->aad_prefix), prefix_n);
        at += prefix_n;
        memcpy(at, PyBytes_AS_STRING(type_part), type_n);
        at += type_n;
        memcpy(at, head, head_len);
        at += head_len;
        memcpy(at, text, text_len);
        /* Everything Python is done: from here on only OpenSSL touches the context. */
        if (EVP_EncryptInit_ex(ctx, NULL, NULL, self->key, sealed) != 1) {
            openssl_error("set the key and nonce");
            goto done;
        }
        if (EVP_EncryptUpdate(ctx, NULL, &outl, (const unsigned char *)aad, (int)aad_len) != 1) {
            openssl_error("take the associated data");
            goto done;
        }
        outl = 0; /* the update above counted the associated data */
    }
    if (plain.len > 0 && EVP_EncryptUpdate(ctx, sealed + NONCE_SIZE, &outl,
                                           (const unsigned char *)plain.buf, (int)plain.len) != 1) {
        openssl_error("encrypt");
        goto done;
    }
    if (EVP_EncryptFinal_ex(ctx, sealed + NONCE_SIZE + outl, &final_len) != 1 ||
        outl + final_len != plain.len) {
        openssl_error("finish the encryption");
        goto done;
    }
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE,
                            sealed + NONCE_SIZE + plain.len) != 1) {
        openssl_error("read the tag");
        goto done;
    }
    prefix_len = PyBytes_GET_SIZE(self->json_prefix);
    result = PyBytes_FromStringAndSize(NULL, prefix_len + b64_len(sealed_len) + 2);
    if (result == NULL) goto done;
    out = PyBytes_AS_STRING(result);
    memcpy(out, PyBytes_AS_STRING(self->json_prefix), prefix_len);
    out = b64url(out + prefix_len, sealed, sealed_len);
    out[0] = '"';
    out[1] = '}';
done:
    if (sealed != NULL && sealed != small) PyMem_Free(sealed);
    if (aad != NULL && aad != aad_small) PyMem_Free(aad);
    Py_XDECREF(corr_bytes);
    PyBuffer_Release(&plain);
    return result;
}

static PyMethodDef RunSealer_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))RunSealer_seal, METH_FASTCALL,
     "seal(nonce, plaintext, type_part, correlation_id) -> bytes: the envelope's JSON."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RunSealerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "actorflow.runtime._sealer.RunSealer",
    .tp_doc = "AES-256-GCM under one run's key, sealing values into format-1 envelopes.",
    .tp_basicsize = sizeof(RunSealer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RunSealer_init,
    .tp_dealloc = (destructor)RunSealer_dealloc,
    .tp_methods = RunSealer_methods,
};

static struct PyModuleDef sealer_module = {
    PyModuleDef_HEAD_INIT, "actorflow.runtime._sealer",
    "Native sealing of encrypted values (see crypto.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__sealer(void) {
    if (shared_ctx == NULL) {
        shared_ctx = EVP_CIPHER_CTX_new();
        if (shared_ctx == NULL ||
            EVP_EncryptInit_ex(shared_ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1) {
            return openssl_error("set up AES-256-GCM");
        }
    }
    if (PyType_Ready(&RunSealerType) < 0) return NULL;
    PyObject *module = PyModule_Create(&sealer_module);
    if (module == NULL) return NULL;
    Py_INCREF(&RunSealerType);
    if (PyModule_AddObject(module, "RunSealer", (PyObject *)&RunSealerType) < 0) {
        Py_DECREF(&RunSealerType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
