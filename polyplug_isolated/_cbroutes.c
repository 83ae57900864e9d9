/*
 * Calls back answered without Python's request parsing (and, between
 * bundles, without Python at all).
 *
 * A call back (worker/callback.h) reaches _channel.c's reply_callback on the
 * host thread T waiting on the caller's slot. Before handing it to Python
 * (pp_on_callback), reply_callback asks the hook here. Once _callbacks.py has
 * answered a kind of request the slow way, it leaves a route for it, keyed
 * by the worker it came from (owner) and the request's first 32 bytes (op,
 * function, contract id, handle, instance); a route answers only requests
 * with the flags of the one that made it, and FORWARD only args of its size.
 *
 *   PYTHON   a host contract whose arguments and result are numbers: the
 *            answer closure is called with the request's bytes, under the
 *            GIL, skipping cffi's conversions and the request parsing.
 *   FORWARD  a plain call into another bundle (no views, out of at most 7
 *            bytes, the default instance): T calls the providing worker from
 *            here, on its own lease there (pp_call_fast), and writes the
 *            reply. No GIL. Anything but an Ok answer (nothing sent, a plugin
 *            error, the callee crashed or timed out) goes to the route's
 *            `failed` callable in Python, which does what the Python route
 *            does with the same outcome, so behaviour is the same either way.
 *
 * Trust: the request lies in the caller's segment and may change under our
 * feet: its header is copied once and checked (args_len against the length
 * reply_callback bounds-checked), the args are copied by pp_call_fast into
 * the callee's slot with a length fixed here, and the callee never sees a
 * pointer into the caller's segment. A request that does not fit its route
 * exactly goes to Python.
 *
 * Lifetime: a FORWARD route holds the cffi cdata that owns the callee's
 * pp_conn. Routes are used without the GIL, so a route dropped while a
 * thread uses it is parked and released (under the GIL) by the next change
 * of the table once nobody uses it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "_channel.h"
#include "callback.h"

#define KEY_BYTES 32 /* what an answer depends on: op, function, id, handle, instance */
#define BUCKETS 256
#define MAX_ROUTES 4096

enum { PYTHON = 1, FORWARD = 2 };

typedef struct route {
    struct route *next;
    uint64_t owner;
    uint8_t key[KEY_BYTES];
    int kind;
    int users; /* threads answering through it now (under g_lock) */
    PyObject *answer;    /* PYTHON: answer(request: bytes) -> reply bytes */
    PyObject *conn_owner; /* FORWARD: the cdata that keeps the callee's pp_conn mapped */
    PyObject *failed;    /* FORWARD: failed(status, args: bytes) -> reply bytes */
    pp_conn *conn;
    uint32_t flags; /* the request's PP_CB_* flags, as when the route was made */
    uint32_t contract, function, args_size, out_size;
    double timeout_s;
} route;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static route *g_buckets[BUCKETS];
static route *g_parked; /* dropped while in use */
static uint32_t g_routes;
static const pp_fast_api *g_api;
static _Atomic uint64_t g_answered[3]; /* by kind (0: handed to Python) */

static uint32_t bucket_of(uint64_t owner, const uint8_t *key)
{
    uint64_t h = 1469598103934665603ull ^ owner;
    for (int i = 0; i < KEY_BYTES; i++)
        h = (h ^ key[i]) * 1099511628211ull;
    return (uint32_t)(h ^ h >> 32) % BUCKETS;
}

/* The route for (owner, key), taken for use (users + 1), or NULL. */
static route *take(uint64_t owner, const uint8_t *key)
{
    pthread_mutex_lock(&g_lock);
    route *r = g_buckets[bucket_of(owner, key)];
    while (r && (r->owner != owner || memcmp(r->key, key, KEY_BYTES) != 0))
        r = r->next;
    if (r)
        r->users++;
    pthread_mutex_unlock(&g_lock);
    return r;
}

static void give_back(route *r)
{
    pthread_mutex_lock(&g_lock);
    r->users--;
    pthread_mutex_unlock(&g_lock);
}

/* ---- answering (called by reply_callback, without the GIL) --------------------- */

/* Copies a Python answer into the reply area, as pp_on_callback does: one
 * that does not fit becomes a BufferTooSmall reply; an exception (the answer
 * closures catch the plugin-facing ones) is reported and nobody answers (-1).
 * Never PP_CB_UNHANDLED: the answer has run and must not run twice. */
static int64_t copy_reply(PyObject *callable, PyObject *answer, uint8_t *reply, uint32_t cap)
{
    char *bytes;
    Py_ssize_t n;
    if (!answer || PyBytes_AsStringAndSize(answer, &bytes, &n) < 0) {
        PyErr_WriteUnraisable(callable);
        return -1;
    }
    if ((uint64_t)n <= cap) {
        memcpy(reply, bytes, (size_t)n);
        return n;
    }
    char why[160];
    int len = snprintf(why, sizeof why,
                       "polyplug_isolated: the answer (%zd bytes) exceeds the %u bytes left in the slot", n, cap);
    pp_cb_reply head = {2 /* BufferTooSmall */, (uint32_t)len, 0, 0, 0};
    uint64_t size = sizeof head + PP_ALIGN8((uint64_t)len);
    if (size > cap)
        return -1;
    memset(reply, 0, size);
    memcpy(reply, &head, sizeof head);
    memcpy(reply + sizeof head, why, (size_t)len);
    return (int64_t)size;
}

static int64_t in_python(route *r, const uint8_t *request, uint32_t len, uint8_t *reply, uint32_t cap)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *data = PyBytes_FromStringAndSize((const char *)request, len);
    PyObject *answer = data ? PyObject_CallFunctionObjArgs(r->answer, data, NULL) : NULL;
    int64_t n = copy_reply(r->answer, answer, reply, cap);
    Py_XDECREF(answer);
    Py_XDECREF(data);
    PyGILState_Release(gil);
    return n;
}

static int64_t failed_in_python(route *r, int status, const uint8_t *args, uint32_t args_len, uint8_t *reply,
                                uint32_t cap)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *answer = PyObject_CallFunction(r->failed, "iy#", status, (const char *)args, (Py_ssize_t)args_len);
    int64_t n = copy_reply(r->failed, answer, reply, cap);
    Py_XDECREF(answer);
    PyGILState_Release(gil);
    return n;
}

static int64_t forward(route *r, const uint8_t *request, uint32_t len, uint8_t *reply, uint32_t cap)
{
    uint32_t args_len = len - (uint32_t)sizeof(pp_cb_request);
    uint64_t size = sizeof(pp_cb_reply) + PP_ALIGN8(r->out_size);
    /* The worker's trampoline sends the record padded to 8; anything else is Python's to judge. */
    if (args_len < r->args_size || args_len > PP_ALIGN8(r->args_size) || size > cap)
        return PP_CB_UNHANDLED;
    uint8_t args[PP_INLINE_ARGS * 8];
    if (args_len > sizeof args)
        return PP_CB_UNHANDLED;
    memcpy(args, request + sizeof(pp_cb_request), args_len);
    const uint8_t *out;
    int rc = g_api->call(r->conn, r->contract, r->function, args, args_len, r->out_size, r->timeout_s, &out);
    while (rc == PP_CALL_PENDING)
        rc = g_api->resume(r->conn);
    if (rc != PP_CALL_OK)
        return failed_in_python(r, rc, args, args_len, reply, cap);
    pp_cb_reply head = {0 /* Ok */, 0, r->out_size, 0, 0};
    memset(reply, 0, size);
    memcpy(reply, &head, sizeof head);
    memcpy(reply + sizeof head, out, r->out_size);
    return (int64_t)size;
}

/* reply_callback's hook: the reply's length, -1, or PP_CB_UNHANDLED (Python answers). */
static int64_t answer_call_back(uint64_t owner, const uint8_t *request, uint32_t len, uint8_t *reply, uint32_t cap)
{
    pp_cb_request q;
    if (len < sizeof q)
        return PP_CB_UNHANDLED;
    memcpy(&q, request, sizeof q);
    if (q.args_len != len - sizeof q || (q.op != PP_CB_HOST_CALL && q.op != PP_CB_GUEST_CALL))
        return PP_CB_UNHANDLED;
    route *r = take(owner, (const uint8_t *)&q);
    if (!r)
        return PP_CB_UNHANDLED;
    if (r->flags != q.flags) {
        give_back(r);
        return PP_CB_UNHANDLED;
    }
    int kind = r->kind;
    int64_t n = kind == FORWARD ? forward(r, request, len, reply, cap) : in_python(r, request, len, reply, cap);
    give_back(r);
    g_answered[n == PP_CB_UNHANDLED ? 0 : kind]++;
    return n;
}

/* ---- the table (from Python, with the GIL) --------------------------------------- */

static void release(route *r)
{
    Py_XDECREF(r->answer);
    Py_XDECREF(r->conn_owner);
    Py_XDECREF(r->failed);
    PyMem_RawFree(r);
}

/* Unlinks owner's routes (all, or the one with key) into
 * *gone when unused, else parks them; takes unused parked ones too. Under g_lock. */
static void unlink_routes(uint64_t owner, const uint8_t *key, route **gone)
{
    for (uint32_t b = 0; b < BUCKETS; b++) {
        for (route **at = &g_buckets[b]; *at;) {
            route *r = *at;
            if (r->owner != owner || (key && memcmp(r->key, key, KEY_BYTES) != 0)) {
                at = &r->next;
                continue;
            }
            *at = r->next;
            g_routes--;
            r->next = r->users ? g_parked : *gone;
            *(r->users ? &g_parked : gone) = r;
        }
    }
    for (route **at = &g_parked; *at;) {
        route *r = *at;
        if (r->users) {
            at = &r->next;
            continue;
        }
        *at = r->next;
        r->next = *gone;
        *gone = r;
    }
}

static void release_all(route *gone)
{
    while (gone) { /* outside g_lock: a release may run Python code */
        route *next = gone->next;
        release(gone);
        gone = next;
    }
}

/* Adds r in place of any route with its owner and key. */
static PyObject *put(route *r)
{
    route *gone = NULL;
    pthread_mutex_lock(&g_lock);
    unlink_routes(r->owner, r->key, &gone);
    int room = g_routes < MAX_ROUTES;
    if (room) {
        uint32_t b = bucket_of(r->owner, r->key);
        r->next = g_buckets[b];
        g_buckets[b] = r;
        g_routes++;
    }
    pthread_mutex_unlock(&g_lock);
    release_all(gone);
    if (!room)
        release(r); /* past MAX_ROUTES, Python answers: slower, never wrong */
    return PyBool_FromLong(room);
}

/* A route for requests like `request` (its header: the key and the flags). */
static route *new_route(uint64_t owner, Py_buffer *request, int kind)
{
    if (request->len < (Py_ssize_t)sizeof(pp_cb_request)) {
        PyErr_SetString(PyExc_ValueError, "a route is made from a whole request");
        return NULL;
    }
    route *r = PyMem_RawCalloc(1, sizeof *r);
    if (!r) {
        PyErr_NoMemory();
        return NULL;
    }
    r->owner = owner;
    r->kind = kind;
    memcpy(r->key, request->buf, KEY_BYTES);
    r->flags = ((const pp_cb_request *)request->buf)->flags;
    return r;
}

static PyObject *answer_in_python(PyObject *self, PyObject *args)
{
    unsigned long long owner;
    Py_buffer request;
    PyObject *answer;
    if (!PyArg_ParseTuple(args, "Ky*O:answer_in_python", &owner, &request, &answer))
        return NULL;
    route *r = new_route(owner, &request, PYTHON);
    PyBuffer_Release(&request);
    if (!r)
        return NULL;
    Py_INCREF(answer);
    r->answer = answer;
    return put(r);
}

static PyObject *forward_to(PyObject *self, PyObject *args)
{
    unsigned long long owner, address;
    Py_buffer request;
    PyObject *conn_owner, *failed;
    unsigned int contract, function, args_size, out_size;
    double timeout_s;
    if (!PyArg_ParseTuple(args, "Ky*OKIIIIdO:forward", &owner, &request, &conn_owner, &address, &contract, &function,
                          &args_size, &out_size, &timeout_s, &failed))
        return NULL;
    if (g_api == NULL || out_size > PP_FAST_OUT || args_size > PP_INLINE_ARGS * 8) {
        PyBuffer_Release(&request);
        PyErr_SetString(PyExc_ValueError, "forward: not bound, or the out or args are too large for a route");
        return NULL;
    }
    route *r = new_route(owner, &request, FORWARD);
    PyBuffer_Release(&request);
    if (!r)
        return NULL;
    Py_INCREF(conn_owner);
    Py_INCREF(failed);
    r->conn_owner = conn_owner;
    r->failed = failed;
    r->conn = (pp_conn *)(uintptr_t)address;
    r->contract = contract;
    r->function = function;
    r->args_size = args_size;
    r->out_size = out_size;
    r->timeout_s = timeout_s;
    return put(r);
}

static PyObject *drop(PyObject *self, PyObject *arg)
{
    unsigned long long owner = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    route *gone = NULL;
    pthread_mutex_lock(&g_lock);
    unlink_routes(owner, NULL, &gone);
    pthread_mutex_unlock(&g_lock);
    release_all(gone);
    Py_RETURN_NONE;
}

static PyObject *answered(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("KKK", (unsigned long long)g_answered[0], (unsigned long long)g_answered[PYTHON],
                         (unsigned long long)g_answered[FORWARD]);
}

static PyObject *held(PyObject *self, PyObject *unused)
{
    pthread_mutex_lock(&g_lock);
    uint32_t parked = 0;
    for (route *r = g_parked; r; r = r->next)
        parked++;
    PyObject *counts = Py_BuildValue("II", g_routes, parked);
    pthread_mutex_unlock(&g_lock);
    return counts;
}

static PyObject *bind(PyObject *self, PyObject *arg)
{
    unsigned long long address = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    const pp_fast_api *api = (const pp_fast_api *)(uintptr_t)address;
    if (api->size != sizeof *api) {
        PyErr_SetString(PyExc_RuntimeError, "_cbroutes.bind: the data plane's table is of another build");
        return NULL;
    }
    g_api = api;
    return PyLong_FromUnsignedLongLong((uintptr_t)answer_call_back);
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_O, "bind(address of pp_fast_api_table()) -> address of the hook for reply_callback"},
    {"answer_in_python", answer_in_python, METH_VARARGS, "answer_in_python(owner, request, answer): answer requests like this one with answer(request)"},
    {"forward", forward_to, METH_VARARGS,
     "forward(owner, request, conn_owner, conn_address, contract, function, args_size, out_size, timeout_s, failed)"},
    {"drop", drop, METH_O, "drop(owner): every route of the worker `owner`"},
    {"answered", answered, METH_NOARGS,
     "calls back that found a route: (left to pp_on_callback, answered by a Python closure, forwarded)"},
    {"held", held, METH_NOARGS, "(routes, routes dropped while in use and not released yet)"},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "polyplug_isolated._cbroutes",
    .m_doc = "Routes for calls back (see _cbroutes.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__cbroutes(void) { return PyModule_Create(&module_def); }
