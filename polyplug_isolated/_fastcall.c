/*
 * The call paths where a Python frame or a cffi conversion would show: a raw
 * call with an out of up to PP_FAST_OUT bytes and a raw batch over a list of
 * bytes (here), a typed call and a typed batch over a list of argument tuples
 * (_fastcall_typed.c); and the arena's bytes lent to a zero-copy call
 * (Region). Each is one vectorcall (or method) that
 * converts its arguments straight into a C record, calls the data plane
 * (_channel.c, through the table pp_fast_api_table() hands out, so that its
 * per-thread state is the one the rest of the package uses) without the GIL,
 * and builds the answer as Python values.
 *
 * Anything unusual goes back to Python: a value that is not an exact int,
 * float or bool, keywords, a failed call. The Python side (_compiled.py,
 * _contract.py) then takes the general path, which says precisely what went
 * wrong, and re-binds these objects to the contract's current worker.
 */
#include "_fastcall.h"

#include <stdint.h>
#include <string.h>

const pp_fast_api *ppf_api;

/* ---- Conn: a data-plane connection, kept alive while a call uses it -------- */

static void Conn_dealloc(Conn *self)
{
    Py_XDECREF(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Conn_init(Conn *self, PyObject *args, PyObject *kwds)
{
    PyObject *owner;
    unsigned long long address;
    if (!PyArg_ParseTuple(args, "OK", &owner, &address))
        return -1;
    if (ppf_api == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_fastcall.bind() was not called");
        return -1;
    }
    Py_INCREF(owner);
    Py_XSETREF(self->owner, owner);
    self->conn = (pp_conn *)(uintptr_t)address;
    return 0;
}

PyTypeObject ppf_ConnType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "polyplug_isolated._fastcall.Conn",
    .tp_basicsize = sizeof(Conn),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Conn_init,
    .tp_dealloc = (destructor)Conn_dealloc,
    .tp_doc = "Conn(cdata, address): a pp_conn for the fast paths; holds the cdata that owns it.",
};

int ppf_settle(pp_conn *conn, int rc)
{
    while (rc == PP_CALL_PENDING) {
        if (PyErr_CheckSignals() < 0) {
            ppf_api->abandon(conn);
            return -1;
        }
        Py_BEGIN_ALLOW_THREADS rc = ppf_api->resume(conn);
        Py_END_ALLOW_THREADS
    }
    return rc;
}

/* ---- the raw call ------------------------------------------------------------ */

/* The raw call: the out bytes; None with *rc the PP_CALL_* status when the call failed
 * (pp_last_result says why), or PP_CALL_OK when the arguments are not for
 * this path (nothing was sent); NULL on an exception. */
static PyObject *raw_call(Conn *conn, uint32_t contract, PyObject *fn_index, PyObject *args, PyObject *size,
                          double timeout, int *rc)
{
    *rc = PP_CALL_OK;
    unsigned long function = PyLong_AsUnsignedLong(fn_index);
    Py_ssize_t out_size = PyLong_AsSsize_t(size);
    if (PyErr_Occurred() || function > UINT32_MAX || out_size < 0 || out_size > PP_FAST_OUT) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Py_buffer view = {0};
    const char *data;
    Py_ssize_t len;
    if (PyBytes_CheckExact(args)) {
        data = PyBytes_AS_STRING(args);
        len = PyBytes_GET_SIZE(args);
    } else if (PyObject_GetBuffer(args, &view, PyBUF_SIMPLE) == 0) {
        data = view.buf;
        len = view.len;
    } else {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Py_INCREF(conn);
    const uint8_t *out;
    int status;
    Py_BEGIN_ALLOW_THREADS status = ppf_api->call(conn->conn, (uint32_t)contract, (uint32_t)function,
                                              (const uint8_t *)data, (size_t)len, (size_t)out_size, timeout, &out);
    Py_END_ALLOW_THREADS
    status = ppf_settle(conn->conn, status);
    PyObject *result;
    if (status < 0) {
        result = NULL;
    } else if (status == PP_CALL_OK) {
        result = PyBytes_FromStringAndSize((const char *)out, out_size);
    } else {
        *rc = status;
        result = Py_None;
        Py_INCREF(result);
    }
    if (view.obj)
        PyBuffer_Release(&view);
    Py_DECREF(conn);
    return result;
}

/* ---- Region: bytes of the arena lent out as a buffer ----------------------------- */

/* Exports `length` bytes at `address` (inside the mapping `owner` keeps alive)
 * as a writable buffer, and counts the views on it: the zero-copy block checks
 * that none is left when it gives the arena back. */
typedef struct {
    PyObject_HEAD
    PyObject *owner;
    uint8_t *data;
    Py_ssize_t length;
    Py_ssize_t exports;
} Region;

static int Region_getbuffer(Region *self, Py_buffer *view, int flags)
{
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->length, 0, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void Region_releasebuffer(Region *self, Py_buffer *view) { self->exports--; }

static PyBufferProcs Region_as_buffer = {(getbufferproc)Region_getbuffer, (releasebufferproc)Region_releasebuffer};

/* Region(owner, address, length) */
static int Region_init(Region *self, PyObject *args, PyObject *kwds)
{
    PyObject *owner;
    unsigned long long address;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "OKn", &owner, &address, &length))
        return -1;
    if (self->exports) {
        PyErr_SetString(PyExc_BufferError, "Region: views of it are alive");
        return -1;
    }
    Py_INCREF(owner);
    Py_XSETREF(self->owner, owner);
    self->data = (uint8_t *)(uintptr_t)address;
    self->length = length;
    return 0;
}

static PyObject *Region_exports(Region *self, void *closure) { return PyLong_FromSsize_t(self->exports); }

static void Region_dealloc(Region *self)
{
    Py_XDECREF(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyGetSetDef Region_getset[] = {
    {"exports", (getter)Region_exports, NULL, "views of the region alive now", NULL},
    {NULL},
};

static PyTypeObject RegionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "polyplug_isolated._fastcall.Region",
    .tp_basicsize = sizeof(Region),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Region_init,
    .tp_dealloc = (destructor)Region_dealloc,
    .tp_as_buffer = &Region_as_buffer,
    .tp_getset = Region_getset,
    .tp_doc = "Region(owner, address, length): arena bytes lent out as a buffer, its views counted.",
};

/* ---- Binding: what Raw and Function share ------------------------------------ */

void ppf_binding_set(Binding *self, PyObject *conn, PyObject *proxy, uint32_t contract, double timeout,
                     PyObject *slow, PyObject *failed, vectorcallfunc vectorcall)
{
    Py_INCREF(conn);
    Py_XSETREF(self->conn, (Conn *)conn);
    Py_INCREF(proxy);
    Py_XSETREF(self->proxy, proxy);
    Py_INCREF(slow);
    Py_XSETREF(self->slow, slow);
    Py_INCREF(failed);
    Py_XSETREF(self->failed, failed);
    self->contract = contract;
    self->timeout = timeout;
    self->vectorcall = vectorcall;
}

/* All fields change before any old reference is dropped (a drop may run
 * Python code, and another thread). */
PyObject *ppf_binding_rebind(Binding *self, PyObject *args)
{
    PyObject *conn, *proxy;
    unsigned int contract;
    if (!PyArg_ParseTuple(args, "O!OI", &ppf_ConnType, &conn, &proxy, &contract))
        return NULL;
    Conn *old_conn = self->conn;
    PyObject *old_proxy = self->proxy;
    Py_INCREF(conn);
    Py_INCREF(proxy);
    self->conn = (Conn *)conn;
    self->proxy = proxy;
    self->contract = contract;
    Py_XDECREF(old_conn);
    Py_XDECREF(old_proxy);
    Py_RETURN_NONE;
}

int ppf_binding_traverse(Binding *self, visitproc visit, void *arg)
{
    Py_VISIT(self->dict);
    Py_VISIT(self->conn);
    Py_VISIT(self->proxy);
    Py_VISIT(self->slow);
    Py_VISIT(self->failed);
    return 0;
}

int ppf_binding_clear(Binding *self)
{
    Py_CLEAR(self->dict);
    Py_CLEAR(self->conn);
    Py_CLEAR(self->proxy);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->failed);
    return 0;
}

void ppf_binding_dealloc(Binding *self)
{
    PyObject_GC_UnTrack(self);
    Py_TYPE(self)->tp_clear((PyObject *)self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyMemberDef ppf_binding_members[] = {
    {"proxy", T_OBJECT, offsetof(Binding, proxy), READONLY, "the worker proxy of the binding"},
    {NULL},
};

int ppf_batch_room(Py_ssize_t count, size_t rec, size_t out_size, uint8_t **records, uint8_t **outs)
{
    *records = PyMem_Calloc((size_t)count + 1, rec ? rec : 1);
    *outs = PyMem_Malloc(((size_t)count + 1) * (out_size ? out_size : 1));
    if (*records != NULL && *outs != NULL)
        return 0;
    PyMem_Free(*records);
    PyMem_Free(*outs);
    *records = *outs = NULL;
    PyErr_NoMemory();
    return -1;
}

int ppf_run_batches(Binding *b, uint32_t function, const uint8_t *records, size_t args_size, Py_ssize_t count,
                    Py_ssize_t per_batch, uint8_t *outs, size_t out_size, Py_ssize_t *failed_at)
{
    /* One binding for the whole run (another thread may re-bind the object). */
    Conn *conn = b->conn;
    uint32_t contract = b->contract;
    int rc = PP_CALL_OK;
    Py_INCREF(conn);
    for (Py_ssize_t start = 0; start < count && rc == PP_CALL_OK; start += per_batch) {
        Py_ssize_t n = count - start < per_batch ? count - start : per_batch;
        Py_BEGIN_ALLOW_THREADS rc = ppf_api->call_batch(conn->conn, contract, function, records + (size_t)start * args_size,
                                                    args_size, (size_t)n, outs + (size_t)start * out_size, out_size,
                                                    b->timeout);
        Py_END_ALLOW_THREADS
        rc = ppf_settle(conn->conn, rc);
        *failed_at = start;
    }
    Py_DECREF(conn);
    return rc;
}

/* ---- Raw: GuestContract.call as a C callable ------------------------------------ */

/* A Binding whose slow is general(fn_index, args, out_size, **kwargs), the
 * Python method, and failed(status, proxy, fn_index, args, out_size). */
static PyObject *Raw_vectorcall(Binding *self, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || nargs != 3)
        return PyObject_Vectorcall(self->slow, argv, nargsf, kwnames);
    int rc;
    /* The worker proxy of the conn this call goes to: another thread may
     * re-bind the object meanwhile, and a failure must name the right one. */
    PyObject *proxy = self->proxy;
    Py_INCREF(proxy);
    PyObject *result = raw_call(self->conn, self->contract, argv[0], argv[1], argv[2], self->timeout, &rc);
    if (result == Py_None) {
        Py_DECREF(result);
        if (rc == PP_CALL_OK || rc == PP_CALL_TOO_LARGE) /* not for this path: nothing was sent */
            result = PyObject_Vectorcall(self->slow, argv, nargsf, NULL);
        else
            result = PyObject_CallFunction(self->failed, "iOOOO", rc, proxy, argv[0], argv[1], argv[2]);
    }
    Py_DECREF(proxy);
    return result; /* the out bytes, the general path's answer, or NULL: an exception */
}

/* Raw(conn, proxy, contract, timeout, general, failed) */
static int Raw_init(Binding *self, PyObject *args, PyObject *kwds)
{
    PyObject *conn, *proxy, *general, *failed;
    unsigned int contract;
    double timeout;
    if (!PyArg_ParseTuple(args, "O!OIdOO", &ppf_ConnType, &conn, &proxy, &contract, &timeout, &general, &failed))
        return -1;
    ppf_binding_set(self, conn, proxy, contract, timeout, general, failed, (vectorcallfunc)Raw_vectorcall);
    return 0;
}

/* _many(fn_index, items, out_size, per_batch): the out bytes of each call
 * over a list of bytes objects of one length, in order; or, when not every
 * call answered Ok, (status, first call of the failed batch, calls of it that
 * completed, the outs before it, the worker proxy called); status 0: the
 * items are not for this path, and nothing was sent. */
static PyObject *Raw_many(Binding *self, PyObject *args)
{
    PyObject *items, *proxy = self->proxy;
    unsigned int function;
    Py_ssize_t out_size, per_batch;
    if (!PyArg_ParseTuple(args, "IO!nn", &function, &PyList_Type, &items, &out_size, &per_batch))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(items);
    PyObject *first = count ? PyList_GET_ITEM(items, 0) : NULL;
    Py_ssize_t rec = first && PyBytes_CheckExact(first) ? PyBytes_GET_SIZE(first) : 0;
    if (rec == 0 || out_size < 0 || per_batch < 1)
        return Py_BuildValue("(innNO)", 0, 0, 0, PyList_New(0), proxy);
    uint8_t *records, *outs;
    if (ppf_batch_room(count, (size_t)rec, (size_t)out_size, &records, &outs) < 0)
        return NULL;
    PyObject *result = NULL;
    Py_INCREF(proxy);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyBytes_CheckExact(item) || PyBytes_GET_SIZE(item) != rec) {
            result = Py_BuildValue("(innNO)", 0, 0, 0, PyList_New(0), proxy);
            goto done;
        }
        memcpy(records + (size_t)i * (size_t)rec, PyBytes_AS_STRING(item), (size_t)rec);
    }
    Py_ssize_t at = 0;
    int rc = ppf_run_batches(self, function, records, (size_t)rec, count, per_batch, outs, (size_t)out_size, &at);
    if (rc < 0)
        goto done;
    Py_ssize_t made = rc == PP_CALL_OK ? count : at;
    PyObject *list = PyList_New(made);
    for (Py_ssize_t i = 0; list != NULL && i < made; i++) {
        PyObject *out = PyBytes_FromStringAndSize((const char *)outs + (size_t)i * (size_t)out_size, out_size);
        if (out == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, out);
    }
    if (list == NULL || rc == PP_CALL_OK)
        result = list;
    else
        result = Py_BuildValue("(innNO)", rc, at, (Py_ssize_t)ppf_api->last_result()->done_count, list, proxy);
done:
    Py_DECREF(proxy);
    PyMem_Free(records);
    PyMem_Free(outs);
    return result;
}

static PyMethodDef Raw_methods[] = {
    {"rebind", (PyCFunction)ppf_binding_rebind, METH_VARARGS, "rebind(conn, proxy, contract)"},
    {"_many", (PyCFunction)Raw_many, METH_VARARGS,
     "_many(fn_index, items, out_size, per_batch): outs, or (status, first, done, before, proxy)"},
    {NULL},
};

static PyTypeObject RawType = PPF_BINDING_TYPE("polyplug_isolated._fastcall.Raw", Binding, Raw_init,
                                               ppf_binding_traverse, ppf_binding_clear, Raw_methods,
                                               "GuestContract.call(fn_index, args, out_size) in one C call (see _contract).");

/* ---- the module ----------------------------------------------------------------- */

static PyObject *fast_bind(PyObject *module, PyObject *arg)
{
    unsigned long long address = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    const pp_fast_api *table = (const pp_fast_api *)(uintptr_t)address;
    if (table == NULL || table->size != sizeof(pp_fast_api)) {
        PyErr_SetString(PyExc_ImportError, "_fastcall and _channel_ffi were built from different sources");
        return NULL;
    }
    ppf_api = table;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"bind", fast_bind, METH_O, "bind(address of pp_fast_api_table())"},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "polyplug_isolated._fastcall", "Fast call paths (see _fastcall.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__fastcall(void)
{
    if (PyType_Ready(&ppf_ConnType) < 0 || PyType_Ready(&ppf_FunctionType) < 0 || PyType_Ready(&RawType) < 0 ||
        PyType_Ready(&RegionType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ppf_ConnType);
    Py_INCREF(&ppf_FunctionType);
    Py_INCREF(&RawType);
    Py_INCREF(&RegionType);
    if (PyModule_AddObject(m, "Conn", (PyObject *)&ppf_ConnType) < 0 ||
        PyModule_AddObject(m, "Function", (PyObject *)&ppf_FunctionType) < 0 ||
        PyModule_AddObject(m, "Raw", (PyObject *)&RawType) < 0 ||
        PyModule_AddObject(m, "Region", (PyObject *)&RegionType) < 0 ||
        PyModule_AddIntConstant(m, "FAST_OUT", PP_FAST_OUT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
