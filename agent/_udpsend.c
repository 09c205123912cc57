// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * _udpsend.c - send a burst of datagrams with sendmmsg(2) (netflow_agent._udpsend).
 *
 * The UDP exporters' destinations (agent/transport/udp.py) hand a burst of encoded
 * datagrams (a paced burst, or an unpaced export part) to send_burst(), which sends them on a
 * connected socket with as few sendmmsg(2) calls as the kernel allows, with the GIL released:
 * one syscall and one GIL hand-over per burst instead of one per datagram.
 *
 * What it reports is exactly what happened to each datagram, so the caller keeps counting
 * per datagram: send_burst(fd, datagrams, start, count) tries datagrams[start:start + count]
 * in order and returns (sent, err):
 *   - sent: how many of them, from `start` on, the kernel accepted;
 *   - err: the errno of datagrams[start + sent] when the kernel refused that one (sendmmsg
 *     returned -1 for it); 0 when all were sent, or when the kernel stopped short after
 *     accepting some (sendmmsg drops the error of a call that sent at least one datagram; the
 *     caller tries the rest again to learn it).
 * The datagrams must be bytes (the encoders' output); they are held (a reference each) while
 * the GIL is released, so another thread changing the sequence meanwhile cannot free them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define CHUNK 256 /* datagrams per sendmmsg call (the kernel's cap is UIO_MAXIOV, 1024) */

/* Send `n` (<= CHUNK) datagrams; the kernel's count, or -1 with errno. */
static int send_chunk(int fd, PyObject *const *items, int n)
{
	struct mmsghdr msgs[CHUNK];
	struct iovec iov[CHUNK];
	int i, rc;

	memset(msgs, 0, sizeof(msgs[0]) * (size_t)n);
	for (i = 0; i < n; i++) {
		iov[i].iov_base = PyBytes_AS_STRING(items[i]);
		iov[i].iov_len = (size_t)PyBytes_GET_SIZE(items[i]);
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	do {
		rc = sendmmsg(fd, msgs, (unsigned int)n, MSG_DONTWAIT);
	} while (rc < 0 && errno == EINTR);
	return rc;
}

/* Send every item in chunks until one chunk stops short; sets *err on a refused datagram. */
static Py_ssize_t send_all(int fd, PyObject *const *items, Py_ssize_t count, int *err)
{
	Py_ssize_t sent = 0;

	*err = 0;
	while (sent < count) {
		int want = count - sent > CHUNK ? CHUNK : (int)(count - sent);
		int rc = send_chunk(fd, items + sent, want);

		if (rc <= 0) { /* 0 only for an empty vector: never, but never loop on it */
			*err = rc < 0 ? errno : EIO;
			break;
		}
		sent += rc;
		if (rc < want)
			break;
	}
	return sent;
}

static PyObject *send_burst(PyObject *self, PyObject *args)
{
	int fd, err = 0;
	PyObject *seq, *fast;
	Py_ssize_t start, count, total, i, sent = 0;
	PyObject **items;

	(void)self;
	if (!PyArg_ParseTuple(args, "iOnn:send_burst", &fd, &seq, &start, &count))
		return NULL;
	fast = PySequence_Fast(seq, "datagrams must be a sequence of bytes");
	if (fast == NULL)
		return NULL;
	total = PySequence_Fast_GET_SIZE(fast);
	if (start < 0 || count < 0 || start > total || count > total - start) {
		Py_DECREF(fast);
		PyErr_SetString(PyExc_IndexError, "start and count must lie within datagrams");
		return NULL;
	}
	items = PySequence_Fast_ITEMS(fast) + start;
	for (i = 0; i < count; i++) {
		if (!PyBytes_Check(items[i])) {
			Py_DECREF(fast);
			return PyErr_Format(PyExc_TypeError, "datagram %zd is %.100s, not bytes",
					    start + i, Py_TYPE(items[i])->tp_name);
		}
	}
	if (count > 0) {
		PyObject **held = PyMem_Malloc(sizeof(*held) * (size_t)count);

		if (held == NULL) {
			Py_DECREF(fast);
			return PyErr_NoMemory();
		}
		for (i = 0; i < count; i++) {
			held[i] = items[i];
			Py_INCREF(held[i]);
		}
		Py_BEGIN_ALLOW_THREADS
		sent = send_all(fd, held, count, &err);
		Py_END_ALLOW_THREADS
		for (i = 0; i < count; i++)
			Py_DECREF(held[i]);
		PyMem_Free(held);
	}
	Py_DECREF(fast);
	return Py_BuildValue("(ni)", sent, err);
}

static PyMethodDef methods[] = {
	{"send_burst", send_burst, METH_VARARGS,
	 "send_burst(fd, datagrams, start, count) -> (sent, errno)\n\n"
	 "Send datagrams[start:start + count] on the connected socket `fd` with sendmmsg(2),\n"
	 "without blocking and with the GIL released. `sent`: how many were accepted, in\n"
	 "order; `errno`: why datagrams[start + sent] was refused, or 0 (all sent, or the\n"
	 "kernel stopped short and dropped the reason: try the rest again)."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "netflow_agent._udpsend",
	.m_doc = "Send a burst of UDP datagrams with one sendmmsg(2) call (agent/_udpsend.c).",
	.m_size = -1,
	.m_methods = methods,
};

PyMODINIT_FUNC PyInit__udpsend(void)
{
	PyObject *mod = PyModule_Create(&module);

	if (mod != NULL && PyModule_AddIntConstant(mod, "CHUNK", CHUNK) < 0) {
		Py_DECREF(mod);
		return NULL;
	}
	return mod;
}
