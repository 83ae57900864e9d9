/*
 * What the two halves of the _fastcall extension share: _fastcall.c (the
 * module, Conn, Region, the raw call) and _fastcall_typed.c (typed functions).
 */
#ifndef PP_FASTCALL_H
#define PP_FASTCALL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_channel.h"

/* The data plane's hot-path functions (pp_fast_api_table(), set by bind()). */
extern const pp_fast_api *ppf_api;

/* A data-plane connection, kept alive while a call uses it. */
typedef struct {
    PyObject_HEAD
    PyObject *owner; /* the cffi cdata whose finaliser unmaps the segment */
    pp_conn *conn;
} Conn;

extern PyTypeObject ppf_ConnType;
extern PyTypeObject ppf_FunctionType;

/* Waits out a call that came back PENDING (signal handlers run in between;
 * an exception they raise abandons the call): the outcome, or -1. */
int ppf_settle(pp_conn *conn, int rc);

/* What every fast-path callable holds: the worker binding it calls through,
 * and where it sends what it does not take. Raw is exactly this; Function
 * starts with it. Another thread may re-bind the object while a call runs,
 * so a call reads conn/proxy/contract once and holds references to them. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *dict; /* __signature__, __doc__, __name__ */
    Conn *conn;
    PyObject *proxy; /* the worker proxy the binding belongs to (for failed()) */
    uint32_t contract;
    double timeout;
    PyObject *slow;   /* the general path, called with the same arguments */
    PyObject *failed; /* a call that did not answer Ok (arguments: see each type) */
} Binding;

/* Sets every field (a re-init drops the old references last). */
void ppf_binding_set(Binding *self, PyObject *conn, PyObject *proxy, uint32_t contract, double timeout,
                     PyObject *slow, PyObject *failed, vectorcallfunc vectorcall);
int ppf_binding_traverse(Binding *self, visitproc visit, void *arg);
int ppf_binding_clear(Binding *self);
void ppf_binding_dealloc(Binding *self); /* clears through the type's tp_clear */
/* rebind(conn, proxy, contract): the contract's worker changed. */
PyObject *ppf_binding_rebind(Binding *self, PyObject *args);

extern PyMemberDef ppf_binding_members[];

/* Room for `count` args records of `rec` bytes and their outs of `out_size`
 * bytes (a spare of each, so that no size is 0), records zeroed (padding goes
 * out as zeros): 0, or -1 with MemoryError set (both freed). */
int ppf_batch_room(Py_ssize_t count, size_t rec, size_t out_size, uint8_t **records, uint8_t **outs);

/* Runs `count` packed args records (args_size bytes each) in batches of
 * per_batch, one hand-off each, without the GIL; the outs (out_size bytes
 * each) land in outs. PP_CALL_OK; a failure's PP_CALL_* with *failed_at the
 * first call of its batch (ppf_api->last_result()->done_count of it
 * completed); or -1: an exception. */
int ppf_run_batches(Binding *b, uint32_t function, const uint8_t *records, size_t args_size, Py_ssize_t count,
                    Py_ssize_t per_batch, uint8_t *outs, size_t out_size, Py_ssize_t *failed_at);

/* The type object of a Binding-based callable. */
#define PPF_BINDING_TYPE(name, c_type, init, traverse, clear, methods, doc)                                                    \
    {                                                                                                         \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = name, .tp_basicsize = sizeof(c_type),                        \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,                      \
        .tp_new = PyType_GenericNew, .tp_init = (initproc)(init), .tp_dealloc = (destructor)ppf_binding_dealloc, \
        .tp_traverse = (traverseproc)(traverse),         .tp_clear = (inquiry)(clear),                          \
        .tp_call = PyVectorcall_Call, .tp_vectorcall_offset = offsetof(Binding, vectorcall),                   \
        .tp_dictoffset = offsetof(Binding, dict), .tp_methods = (methods), .tp_members = ppf_binding_members,   \
        .tp_doc = (doc),                                                                                      \
    }

#endif
