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
 * A datagram is any object with a contiguous buffer (bytes, the encoders' output; bytearray,
 * memoryview). Each is held by a buffer view while the GIL is released: the sequence may change
 * meanwhile, and a bytearray cannot be resized, so no datagram is freed or moved under the call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define CHUNK 256 /* datagrams per sendmmsg call (the kernel's cap is UIO_MAXIOV, 1024) */

/* Send `n` (<= CHUNK) datagrams; the kernel's count, or -1 with errno. */
static int send_chunk(int fd, struct iovec *iov, int n)
{
	struct mmsghdr msgs[CHUNK];
	int i, rc;

	memset(msgs, 0, sizeof(msgs[0]) * (size_t)n);
	for (i = 0; i < n; i++) {
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	do {
		rc = sendmmsg(fd, msgs, (unsigned int)n, MSG_DONTWAIT);
	} while (rc < 0 && errno == EINTR);
	return rc;
}

/* Send every item in chunks until one chunk stops short; sets *err on a refused datagram. */
static Py_ssize_t send_all(int fd, struct iovec *iov, Py_ssize_t count, int *err)
{
	Py_ssize_t sent = 0;

	*err = 0;
	while (sent < count) {
		int want = count - sent > CHUNK ? CHUNK : (int)(count - sent);
		int rc = send_chunk(fd, iov + sent, want);

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

/* Release the first `n` views and the arrays. */
static void release_views(Py_buffer *views, struct iovec *iov, Py_ssize_t n)
{
	Py_ssize_t i;

	for (i = 0; i < n; i++)
		PyBuffer_Release(&views[i]);
	PyMem_Free(views);
	PyMem_Free(iov);
}

/* A view and an iovec per datagram; -1 with an exception (nothing left held) on failure. */
static int hold_views(PyObject **items, Py_ssize_t start, Py_ssize_t count, Py_buffer **views,
		      struct iovec **iov)
{
	Py_ssize_t i;

	*views = PyMem_Malloc(sizeof(**views) * (size_t)count);
	*iov = PyMem_Malloc(sizeof(**iov) * (size_t)count);
	if (*views == NULL || *iov == NULL) {
		release_views(*views, *iov, 0);
		PyErr_NoMemory();
		return -1;
	}
	for (i = 0; i < count; i++) {
		if (PyObject_GetBuffer(items[i], &(*views)[i], PyBUF_SIMPLE) < 0) {
			release_views(*views, *iov, i);
			PyErr_Format(PyExc_TypeError, "datagram %zd is %.100s, not a bytes-like object",
				     start + i, Py_TYPE(items[i])->tp_name);
			return -1;
		}
		(*iov)[i].iov_base = (*views)[i].buf;
		(*iov)[i].iov_len = (size_t)(*views)[i].len;
	}
	return 0;
}

static PyObject *send_burst(PyObject *self, PyObject *args)
{
	int fd, err = 0;
	PyObject *seq, *fast;
	Py_ssize_t start, count, total, sent = 0;
	Py_buffer *views;
	struct iovec *iov;

	(void)self;
	if (!PyArg_ParseTuple(args, "iOnn:send_burst", &fd, &seq, &start, &count))
		return NULL;
	fast = PySequence_Fast(seq, "datagrams must be a sequence of bytes-like objects");
	if (fast == NULL)
		return NULL;
	total = PySequence_Fast_GET_SIZE(fast);
	if (start < 0 || count < 0 || start > total || count > total - start) {
		Py_DECREF(fast);
		PyErr_SetString(PyExc_IndexError, "start and count must lie within datagrams");
		return NULL;
	}
	if (count > 0) {
		if (hold_views(PySequence_Fast_ITEMS(fast) + start, start, count, &views, &iov) < 0) {
			Py_DECREF(fast);
			return NULL;
		}
		Py_BEGIN_ALLOW_THREADS
		sent = send_all(fd, iov, count, &err);
		Py_END_ALLOW_THREADS
		release_views(views, iov, count);
	}
	Py_DECREF(fast);
	return Py_BuildValue("(ni)", sent, err);
}

static PyMethodDef methods[] = {
	{"send_burst", send_burst, METH_VARARGS,
	 "send_burst(fd, datagrams, start, count) -> (sent, errno)\n\n"
	 "Send datagrams[start:start + count] (bytes-like objects) on the connected socket\n"
	 "`fd` with sendmmsg(2), without blocking and with the GIL released. `sent`: how\n"
	 "many were accepted, in\n"
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
