/*
 * Typed functions compiled (_compiled.py): a callable per api.toml function
 * that packs its Python arguments into the args record by offset (views'
 * bytes after it), calls the data plane without the GIL and returns the
 * answer as a Python value; many() does the same over a list of tuples in
 * batches. Whatever it cannot take goes to the Python general path.
 */
#include "_fastcall.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_RECORD 256 /* bytes of a typed call's args record built on the stack */
#define MAX_PARAMS 32

/* ---- typed functions --------------------------------------------------------- */

/* One entry of a function's parameters: a scalar (its struct-module code) at
 * `offset`; 'S' a StringView or 'U' a Buffer at `offset` (the bytes follow
 * the record, the worker makes the offset a pointer); or 'T' a struct whose
 * scalar fields (as many as its spec says) follow as entries with their
 * attribute `name`. */
typedef struct {
    char code;
    uint32_t offset;
    PyObject *name;
} Field;

/* A Binding whose slow is slow(*args, **kwargs), the general path, and
 * failed(status, proxy, args_tuple). */
typedef struct {
    Binding b;
    uint32_t function;
    Py_ssize_t nparams; /* Python arguments */
    Py_ssize_t nfields; /* entries of params */
    Field params[MAX_PARAMS];
    uint32_t nfixups;
    pp_fixup fixups[MAX_PARAMS]; /* an ARG_POINTER per view */
    uint32_t args_size;
    Field result; /* code 0: returns None; 'T': a struct, built by result_type from result_fields */
    PyObject *result_type;
    Py_ssize_t nresult_fields;
    Field result_fields[MAX_PARAMS];
    uint32_t out_size;
    Py_ssize_t per_batch;
} Function;

static int field_size(char code)
{
    switch (code) {
    case 'B': case 'b': case '?': return 1;
    case 'H': case 'h': return 2;
    case 'I': case 'i': case 'f': return 4;
    case 'Q': case 'q': case 'd': return 8;
    default: return 0;
    }
}

/* Writes value v as `code` at p; 0, or -1 (no exception set) when v is not
 * exactly an int/float/bool in range: the general path then says why. */
static int put(char code, uint8_t *p, PyObject *v)
{
    if (code == '?') {
        if (v == Py_True || v == Py_False) {
            *p = v == Py_True;
            return 0;
        }
        return -1;
    }
    if (code == 'f' || code == 'd') {
        if (!PyFloat_CheckExact(v))
            return -1;
        double x = PyFloat_AS_DOUBLE(v);
        if (code == 'd') {
            memcpy(p, &x, 8);
            return 0;
        }
        if (isfinite(x) && fabs(x) > FLT_MAX)
            return -1;
        float f = (float)x;
        memcpy(p, &f, 4);
        return 0;
    }
    if (!PyLong_CheckExact(v))
        return -1;
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        if (code != 'Q' || overflow < 0)
            return -1;
        unsigned long long u = PyLong_AsUnsignedLongLong(v);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        memcpy(p, &u, 8);
        return 0;
    }
    switch (code) {
    case 'B': if (x < 0 || x > UINT8_MAX) return -1; *p = (uint8_t)x; return 0;
    case 'b': if (x < INT8_MIN || x > INT8_MAX) return -1; *(int8_t *)p = (int8_t)x; return 0;
    case 'H': { if (x < 0 || x > UINT16_MAX) return -1; uint16_t y = (uint16_t)x; memcpy(p, &y, 2); return 0; }
    case 'h': { if (x < INT16_MIN || x > INT16_MAX) return -1; int16_t y = (int16_t)x; memcpy(p, &y, 2); return 0; }
    case 'I': { if (x < 0 || x > UINT32_MAX) return -1; uint32_t y = (uint32_t)x; memcpy(p, &y, 4); return 0; }
    case 'i': { if (x < INT32_MIN || x > INT32_MAX) return -1; int32_t y = (int32_t)x; memcpy(p, &y, 4); return 0; }
    case 'Q': if (x < 0) return -1; /* fall through */
    case 'q': memcpy(p, &x, 8); return 0;
    default: return -1;
    }
}

/* The Python value of the scalar `code` at p. */
static PyObject *get(char code, const uint8_t *p)
{
    switch (code) {
    case 'B': return PyLong_FromLong(*p);
    case 'b': return PyLong_FromLong(*(const int8_t *)p);
    case '?': return PyBool_FromLong(*p != 0);
    case 'H': { uint16_t y; memcpy(&y, p, 2); return PyLong_FromLong(y); }
    case 'h': { int16_t y; memcpy(&y, p, 2); return PyLong_FromLong(y); }
    case 'I': { uint32_t y; memcpy(&y, p, 4); return PyLong_FromUnsignedLong(y); }
    case 'i': { int32_t y; memcpy(&y, p, 4); return PyLong_FromLong(y); }
    case 'Q': { uint64_t y; memcpy(&y, p, 8); return PyLong_FromUnsignedLongLong(y); }
    case 'q': { int64_t y; memcpy(&y, p, 8); return PyLong_FromLongLong(y); }
    case 'f': { float y; memcpy(&y, p, 4); return PyFloat_FromDouble(y); }
    case 'd': { double y; memcpy(&y, p, 8); return PyFloat_FromDouble(y); }
    default: Py_RETURN_NONE;
    }
}

/* The answer at p as a Python value: a scalar, None, or a struct built by
 * calling its class with its fields in order. */
static PyObject *answer_value(Function *self, const uint8_t *p)
{
    if (self->result.code != 'T')
        return get(self->result.code, p);
    PyObject *values[MAX_PARAMS];
    Py_ssize_t n = 0;
    for (; n < self->nresult_fields; n++) {
        const Field *f = &self->result_fields[n];
        if ((values[n] = get(f->code, p + f->offset)) == NULL)
            break;
    }
    PyObject *value = n == self->nresult_fields ? PyObject_Vectorcall(self->result_type, values, n, NULL) : NULL;
    while (n-- > 0)
        Py_DECREF(values[n]);
    return value;
}

/* Reads result_struct, (class, ((code, offset), ...)), into self; -1 when it does not fit out_size. */
static int set_result_struct(Function *self, PyObject *spec, uint32_t out_size)
{
    PyObject *cls, *fields;
    if (!PyArg_ParseTuple(spec, "OO!", &cls, &PyTuple_Type, &fields))
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    if (n < 1 || n > MAX_PARAMS || !PyCallable_Check(cls))
        return -1;
    for (Py_ssize_t k = 0; k < n; k++) {
        const char *code;
        unsigned int offset;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, k), "sI", &code, &offset))
            return -1;
        int size = field_size(*code);
        if (strlen(code) != 1 || size == 0 || offset + (unsigned)size > out_size)
            return -1;
        self->result_fields[k] = (Field){*code, offset, NULL};
    }
    self->nresult_fields = n;
    Py_INCREF(cls);
    Py_XSETREF(self->result_type, cls);
    return 0;
}

/* Writes a view's (offset, len[, cap]) at p. */
static void put_view(char code, uint8_t *p, uint64_t offset, uint64_t len)
{
    memcpy(p, &offset, 8);
    memcpy(p + 8, &len, 8);
    if (code == 'U')
        memcpy(p + 16, &len, 8);
}

/* Packs one call's arguments: the record at blob, the views' bytes after it.
 * Returns the blob's length, or -1 (no exception set) when a value is not for
 * this path. `blob` must hold packed_size() bytes. */
static Py_ssize_t pack(Function *self, uint8_t *blob, PyObject *const *values)
{
    memset(blob, 0, self->args_size); /* padding goes out as zeros */
    size_t tail = self->args_size;
    PyObject *owner = NULL;
    Py_ssize_t k = 0;
    for (Py_ssize_t e = 0; e < self->nfields; e++) {
        Field *f = &self->params[e];
        if (f->name != NULL) { /* a field of the struct `owner` */
            PyObject *v = PyObject_GetAttr(owner, f->name);
            int bad = v == NULL || put(f->code, blob + f->offset, v) < 0;
            Py_XDECREF(v);
            if (bad) {
                PyErr_Clear();
                return -1;
            }
            continue;
        }
        PyObject *v = values[k++];
        if (f->code == 'T') {
            owner = v;
        } else if (f->code == 'S' || f->code == 'U') {
            const char *data;
            Py_ssize_t len;
            if (v == Py_None) {
                put_view(f->code, blob + f->offset, PP_NULL_OFFSET, 0);
                continue;
            }
            if (PyBytes_CheckExact(v)) {
                data = PyBytes_AS_STRING(v);
                len = PyBytes_GET_SIZE(v);
            } else if (f->code == 'S' && PyUnicode_CheckExact(v)) {
                data = PyUnicode_AsUTF8AndSize(v, &len);
                if (data == NULL) {
                    PyErr_Clear();
                    return -1;
                }
            } else {
                return -1;
            }
            put_view(f->code, blob + f->offset, tail, (uint64_t)len);
            memcpy(blob + tail, data, (size_t)len);
            tail += (size_t)len;
        } else if (put(f->code, blob + f->offset, v) < 0) {
            return -1;
        }
    }
    return (Py_ssize_t)tail;
}

/* The bytes pack() needs for these values (the record plus every view's
 * bytes), or -1 when a view is not for this path. */
static Py_ssize_t packed_size(Function *self, PyObject *const *values)
{
    Py_ssize_t size = self->args_size, k = 0;
    for (Py_ssize_t e = 0; e < self->nfields; e++) {
        Field *f = &self->params[e];
        if (f->name != NULL)
            continue;
        PyObject *v = values[k++];
        if ((f->code != 'S' && f->code != 'U') || v == Py_None)
            continue;
        if (PyBytes_CheckExact(v)) {
            size += PyBytes_GET_SIZE(v);
        } else if (f->code == 'S' && PyUnicode_CheckExact(v)) {
            Py_ssize_t len;
            if (PyUnicode_AsUTF8AndSize(v, &len) == NULL) {
                PyErr_Clear();
                return -1;
            }
            size += len;
        } else {
            return -1;
        }
    }
    return size;
}

static PyObject *call_failed(Function *self, int rc, PyObject *proxy, PyObject *const *argv, Py_ssize_t nargs)
{
    PyObject *args = PyTuple_New(nargs);
    if (args == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < nargs; k++) {
        Py_INCREF(argv[k]);
        PyTuple_SET_ITEM(args, k, argv[k]);
    }
    PyObject *result = PyObject_CallFunction(self->b.failed, "iOO", rc, proxy, args);
    Py_DECREF(args);
    return result;
}

static PyObject *Function_vectorcall(Function *self, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    uint8_t stack[MAX_RECORD + 512];
    if (kwnames != NULL || nargs != self->nparams)
        return PyObject_Vectorcall(self->b.slow, argv, nargsf, kwnames);
    Py_ssize_t size = self->nfixups ? packed_size(self, argv) : (Py_ssize_t)self->args_size;
    uint8_t *blob = size >= 0 && (size_t)size > sizeof stack ? PyMem_Malloc((size_t)size) : stack;
    if (blob == NULL)
        return PyErr_NoMemory();
    if (size < 0 || pack(self, blob, argv) < 0) {
        if (blob != stack)
            PyMem_Free(blob);
        return PyObject_Vectorcall(self->b.slow, argv, nargsf, NULL);
    }
    /* One binding (another thread may re-bind the object while this call runs). */
    Conn *conn = self->b.conn;
    PyObject *proxy = self->b.proxy;
    uint32_t contract = self->b.contract;
    Py_INCREF(conn);
    Py_INCREF(proxy);
    const uint8_t *out;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = ppf_api->call_ex(conn->conn, contract, self->function, blob, (size_t)size,
                                             self->nfixups ? self->fixups : NULL, self->nfixups, self->out_size,
                                             self->b.timeout, &out);
    Py_END_ALLOW_THREADS
    if (blob != stack)
        PyMem_Free(blob);
    rc = ppf_settle(conn->conn, rc);
    PyObject *result;
    if (rc < 0)
        result = NULL;
    else if (rc != PP_CALL_OK)
        result = call_failed(self, rc, proxy, argv, nargs);
    else
        result = answer_value(self, out);
    Py_DECREF(conn);
    Py_DECREF(proxy);
    return result;
}

/* Function(conn, proxy, contract, function, timeout, params, args_size, result, out_size, per_batch,
 *          slow, failed[, result_struct]): params a sequence of (code, offset); result a code ('' for
 *          none, 'T' for a struct: result_struct is then (class, ((code, offset), ...))). */
static int Function_init(Function *self, PyObject *args, PyObject *kwds)
{
    PyObject *conn, *proxy, *params, *slow, *failed, *result_struct = NULL;
    unsigned int contract, function, args_size, out_size;
    double timeout;
    const char *result;
    Py_ssize_t per_batch;
    if (!PyArg_ParseTuple(args, "O!OIIdOIsInOO|O", &ppf_ConnType, &conn, &proxy, &contract, &function, &timeout,
                          &params, &args_size, &result, &out_size, &per_batch, &slow, &failed, &result_struct))
        return -1;
    if ((*result == 'T') != (result_struct != NULL) ||
        (result_struct && (out_size > PP_FAST_OUT || set_result_struct(self, result_struct, out_size) < 0))) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "Function: a result this fast path cannot take");
        return -1;
    }
    PyObject *seq = PySequence_Fast(params, "params must be a sequence of (code, offset)");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int bad = n > MAX_PARAMS || args_size > MAX_RECORD || out_size > PP_FAST_OUT || per_batch < 1 ||
              strlen(result) > 1 || (*result && *result != 'T' && field_size(*result) != (int)out_size);
    Py_ssize_t nparams = 0;
    uint32_t nfixups = 0, fields_left = 0;
    for (Py_ssize_t k = 0; k < n && !bad; k++) {
        const char *code;
        unsigned int offset;
        PyObject *extra = NULL; /* 'T': its field count; a struct's field: its name */
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, k), "sI|O", &code, &offset, &extra)) {
            Py_DECREF(seq);
            return -1;
        }
        Field f = {*code, offset, NULL};
        int size = *code == 'S' ? 16 : *code == 'U' ? 24 : *code == 'T' ? 0 : field_size(*code);
        bad = strlen(code) != 1 || (size == 0 && *code != 'T') || offset + (unsigned)size > args_size;
        if (fields_left) { /* a field of the struct before */
            bad = bad || size == 0 || *code == 'S' || *code == 'U' || extra == NULL || !PyUnicode_Check(extra);
            fields_left--;
            f.name = extra;
        } else {
            nparams++;
            if (*code == 'T') {
                bad = bad || extra == NULL || !PyLong_Check(extra);
                fields_left = bad ? 0 : (uint32_t)PyLong_AsUnsignedLong(extra);
                bad = bad || PyErr_Occurred() != NULL;
            } else if (size == 16 || size == 24) {
                self->fixups[nfixups++] = (pp_fixup){offset, PP_FIX_ARG_POINTER};
            }
        }
        PyObject *old = self->params[k].name;
        Py_XINCREF(f.name);
        self->params[k] = f;
        Py_XDECREF(old);
    }
    bad = bad || fields_left;
    Py_DECREF(seq);
    if (bad) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "Function: a layout this fast path cannot take");
        return -1;
    }
    self->nfields = n;
    self->nfixups = nfixups;
    self->nparams = nparams;
    self->function = function;
    self->args_size = args_size;
    self->result = (Field){*result, 0};
    self->out_size = out_size;
    self->per_batch = per_batch;
    ppf_binding_set(&self->b, conn, proxy, contract, timeout, slow, failed, (vectorcallfunc)Function_vectorcall);
    return 0;
}

/* The answers of calls [0, count) as a list. */
static PyObject *answers(Function *self, const uint8_t *outs, Py_ssize_t count)
{
    PyObject *list = PyList_New(count);
    for (Py_ssize_t i = 0; list != NULL && i < count; i++) {
        PyObject *value = answer_value(self, outs + (size_t)i * self->out_size);
        if (value == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, value);
    }
    return list;
}

static PyObject *status_tuple(Function *self, int rc, Py_ssize_t at, Py_ssize_t done, const uint8_t *outs,
                              PyObject *proxy)
{
    PyObject *before = answers(self, outs, at);
    return before == NULL ? NULL : Py_BuildValue("(innNO)", rc, at, done, before, proxy);
}

/* _many(items): a list with one answer per argument tuple, in order; or, when
 * not every call answered Ok, (status, first call of the failed batch, calls
 * of it that completed, the answers before it, the worker proxy called);
 * status 0: an item cannot be packed here, and nothing was sent. Every
 * record is packed before the first batch goes out. */
static PyObject *Function_many(Function *self, PyObject *items)
{
    PyObject *seq = PySequence_Fast(items, "many() takes a sequence of argument tuples");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    size_t rec = self->args_size ? self->args_size : 1, outsz = self->out_size;
    uint8_t *records, *outs;
    if (ppf_batch_room(count, rec, outsz, &records, &outs) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    PyObject *result = NULL;
    PyObject *proxy = self->b.proxy; /* the one a failure names, whatever re-binds meanwhile */
    Py_INCREF(proxy);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (self->nfixups || !PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != self->nparams ||
            pack(self, records + (size_t)i * rec, &PyTuple_GET_ITEM(item, 0)) < 0) {
            result = status_tuple(self, 0, 0, 0, outs, proxy); /* nothing sent: all of it goes the general way */
            goto done;
        }
    }
    Py_ssize_t at = 0;
    int rc = ppf_run_batches(&self->b, self->function, records, rec, count, self->per_batch, outs, outsz, &at);
    if (rc < 0)
        goto done;
    if (rc != PP_CALL_OK) {
        result = status_tuple(self, rc, at, (Py_ssize_t)ppf_api->last_result()->done_count, outs, proxy);
        goto done;
    }
    result = answers(self, outs, count);
done:
    Py_DECREF(proxy);
    PyMem_Free(records);
    PyMem_Free(outs);
    Py_DECREF(seq);
    return result;
}

static int Function_traverse(Function *self, visitproc visit, void *arg)
{
    Py_VISIT(self->result_type);
    return ppf_binding_traverse(&self->b, visit, arg);
}

static int Function_clear(Function *self)
{
    Py_CLEAR(self->result_type);
    for (Py_ssize_t e = 0; e < MAX_PARAMS; e++)
        Py_CLEAR(self->params[e].name);
    return ppf_binding_clear(&self->b);
}

static PyMethodDef Function_methods[] = {
    {"rebind", (PyCFunction)ppf_binding_rebind, METH_VARARGS, "rebind(conn, proxy, contract)"},
    {"_many", (PyCFunction)Function_many, METH_O, "_many(items): answers, or (status, first, done, before, proxy)"},
    {NULL},
};

PyTypeObject ppf_FunctionType = PPF_BINDING_TYPE("polyplug_isolated._fastcall.Function", Function, Function_init,
                                                  Function_traverse, Function_clear, Function_methods,
                                                  "A typed function, called in one C call (see _compiled).");
