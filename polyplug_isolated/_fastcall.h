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

/* Points a fast-path object at another worker: all fields change before any
 * old reference is dropped (a drop may run Python code, and another thread). */
void ppf_rebind_fields(Conn **conn_field, PyObject **proxy_field, uint32_t *contract_field, PyObject *conn,
                       PyObject *proxy, uint32_t contract);

#endif
