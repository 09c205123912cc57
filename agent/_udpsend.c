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
 * in order and returns (sent, err, gso_err):
 *   - sent: how many of them, from `start` on, the kernel accepted;
 *   - err: the errno of datagrams[start + sent] when the kernel refused that one (sendmmsg
 *     returned -1 for it); 0 when all were sent, or when the kernel stopped short after
 *     accepting some (sendmmsg drops the error of a call that sent at least one datagram; the
 *     caller tries the rest again to learn it).
 * With gso_max > 0 (send_burst's fifth argument: the largest payload per segment the socket's
 * path MTU allows, agent/transport/udp.py), each run of datagrams of one size <= gso_max (a
 * shorter last one joins it; at most GSO_SEGMENTS datagrams and GSO_BYTES) is one message
 * with a UDP_SEGMENT cmsg (UDP GSO, udp(7)): the kernel runs its output path once per run and
 * cuts it into the same datagrams. Counts stay per datagram: a refused GSO message names its
 * first datagram as refused (the caller sends the rest one per call). A GSO message the
 * socket refuses as such (EINVAL, EIO) is sent again without GSO, with the rest of the call,
 * and the third value returned, gso_err, says so.
 * send_paced(fd, datagrams, start, count, gso_max, state) is the paced sender's loop (the
 * PacedSender's thread, agent/transport/pacing.py): with the GIL released for the whole call,
 * it waits on a token bucket (clock_nanosleep on CLOCK_MONOTONIC, the clock of Python's
 * time.monotonic) and sends each burst the tokens allow as send_burst does, until every
 * datagram is sent, a burst stops short (returned as (sent, err, gso_err, paid): `paid`
 * datagrams from start + sent had their tokens but were not sent, the caller counts them
 * one by one), or the deadline in `state` passes. `state` is a writable buffer of PACE_STATE
 * doubles, shared with the Python thread while the call runs (one aligned double each, so a
 * field is read or written whole): the bucket (tokens, stamp in seconds, rate, burst), the
 * tokens a wake-up waits for, the closing deadline (0: none; the caller may set it at any
 * time, the loop reads it at every wake-up), and what the call reports as it goes: datagrams
 * sent (added to the count the caller keeps for a chunk: the backlog shown in the stats), bursts, and the send queue's fill after each
 * burst (SIOCOUTQ: the last and the largest). A wake-up here costs a timer and a context
 * switch, no interpreter and no GIL: the Python thread runs once per call, not per burst.
 * A datagram is any object with a contiguous buffer (bytes, the encoders' output; bytearray,
 * memoryview). Each is held by a buffer view while the GIL is released: the sequence may change
 * meanwhile, and a bytearray cannot be resized, so no datagram is freed or moved under the call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#define CHUNK 256 /* messages per sendmmsg call (the kernel's cap is UIO_MAXIOV, 1024) */
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* linux/udp.h, Linux >= 4.18 */
#endif
#define GSO_SEGMENTS 64	    /* segments per GSO send (UDP_MAX_SEGMENTS of the first kernels) */
#define GSO_BYTES 65507	    /* payload bytes per GSO send: the largest UDP payload over IPv4 */

#ifndef SIOCOUTQ
#define SIOCOUTQ 0x5411 /* linux/sockios.h: bytes not yet sent from the socket's queue */
#endif

/* send_paced's state: indexes into its buffer of doubles (exported as PACE_* constants) */
enum {
	ST_TOKENS,   /* the bucket's tokens now */
	ST_STAMP,    /* when they were counted, CLOCK_MONOTONIC seconds */
	ST_RATE,     /* tokens per second (> 0) */
	ST_BURST,    /* most tokens saved up (>= 1) */
	ST_WANT,     /* tokens a wake-up waits for (at most the burst) */
	ST_DEADLINE, /* closing: > 0, send what the tokens allow and stop at this time */
	ST_DONE,     /* out: datagrams sent (added to: the caller counts a chunk's progress) */
	ST_BURSTS,   /* out: bursts sent (added to) */
	ST_FILLED,   /* out: the send queue's bytes after the last burst */
	ST_PEAK,     /* out: the most seen after a burst (raised, never lowered) */
	PACE_STATE
};

/* One message of a burst: `n` datagrams from `first` (iov index); gso > 0: sent as one
 * UDP_SEGMENT send of n segments of `gso` bytes (the last may be shorter). */
struct part {
	Py_ssize_t first;
	int n;
	uint16_t gso;
};

/* How many datagrams from iov[i] (of `count`) go in one message: a run of equal lengths
 * (<= gso_max each, the last may be shorter) within GSO_SEGMENTS and GSO_BYTES, else 1. */
static int run_length(const struct iovec *iov, Py_ssize_t i, Py_ssize_t count, size_t gso_max)
{
	size_t size = iov[i].iov_len, total = size;
	int n = 1;

	if (gso_max == 0 || size == 0 || size > gso_max)
		return 1;
	while (i + n < count && n < GSO_SEGMENTS && iov[i + n].iov_len <= size &&
	       iov[i + n].iov_len > 0 && total + iov[i + n].iov_len <= GSO_BYTES) {
		total += iov[i + n].iov_len;
		n++;
		if (iov[i + n - 1].iov_len < size) /* a shorter one ends the run */
			break;
	}
	return n;
}

/* Send up to `n` (<= CHUNK) parts as messages; the kernel's count of messages, or -1. */
static int send_chunk(int fd, struct iovec *iov, const struct part *parts, int n)
{
	struct mmsghdr msgs[CHUNK];
	union {
		char buf[CMSG_SPACE(sizeof(uint16_t))];
		struct cmsghdr align;
	} ctl[CHUNK];
	int i, rc;

	memset(msgs, 0, sizeof(msgs[0]) * (size_t)n);
	for (i = 0; i < n; i++) {
		struct msghdr *hdr = &msgs[i].msg_hdr;

		hdr->msg_iov = &iov[parts[i].first];
		hdr->msg_iovlen = (size_t)parts[i].n;
		if (parts[i].gso) {
			struct cmsghdr *cm;

			memset(&ctl[i], 0, sizeof(ctl[i]));
			hdr->msg_control = ctl[i].buf;
			hdr->msg_controllen = sizeof(ctl[i].buf);
			cm = CMSG_FIRSTHDR(hdr);
			cm->cmsg_level = SOL_UDP;
			cm->cmsg_type = UDP_SEGMENT;
			cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
			memcpy(CMSG_DATA(cm), &parts[i].gso, sizeof(uint16_t));
		}
	}
	do {
		rc = sendmmsg(fd, msgs, (unsigned int)n, MSG_DONTWAIT);
	} while (rc < 0 && errno == EINTR);
	return rc;
}

/* Cut iov[from:count] into parts (GSO runs when gso_max > 0); the number of parts. */
static Py_ssize_t plan(const struct iovec *iov, Py_ssize_t from, Py_ssize_t count,
		       size_t gso_max, struct part *parts)
{
	Py_ssize_t np = 0, i = from;

	while (i < count) {
		int n = run_length(iov, i, count, gso_max);

		parts[np].first = i;
		parts[np].n = n;
		parts[np].gso = n > 1 ? (uint16_t)iov[i].iov_len : 0;
		np++;
		i += n;
	}
	return np;
}

/* Send every datagram, in chunks of parts, until one chunk stops short; sets *err on a
 * refused message (its first datagram is named). A GSO send the socket refuses as such
 * (EINVAL: segment over the path MTU, no UDP_SEGMENT; EIO: no checksum offload) sets *gso_err
 * and the rest goes without GSO. The number of datagrams sent. */
static Py_ssize_t send_all(int fd, struct iovec *iov, struct part *parts, Py_ssize_t count,
			   size_t gso_max, int *err, int *gso_err)
{
	Py_ssize_t sent = 0, np = plan(iov, 0, count, gso_max, parts), p = 0;

	*err = 0;
	while (p < np) {
		int want = np - p > CHUNK ? CHUNK : (int)(np - p);
		int rc = send_chunk(fd, iov, parts + p, want), i;

		if (rc < 0 && parts[p].gso && (errno == EINVAL || errno == EIO) && !*gso_err) {
			*gso_err = errno;
			np = plan(iov, sent, count, 0, parts);
			p = 0;
			continue;
		}
		if (rc <= 0) { /* 0 only for an empty vector: never, but never loop on it */
			*err = rc < 0 ? errno : EIO;
			break;
		}
		for (i = 0; i < rc; i++)
			sent += parts[p + i].n;
		p += rc;
		if (rc < want)
			break;
	}
	return sent;
}

static double mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Sleep until CLOCK_MONOTONIC reads `when` (seconds); a signal only shortens the sleep. */
static void sleep_until(double when)
{
	struct timespec ts;

	if (when <= 0)
		return;
	ts.tv_sec = (time_t)when;
	ts.tv_nsec = (long)((when - (double)ts.tv_sec) * 1e9);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

/* The bucket's tokens at `now` (TokenBucket.refill in agent/transport/pacing.py). */
static void refill(volatile double *st, double now)
{
	if (now > st[ST_STAMP]) {
		double tokens = st[ST_TOKENS] + (now - st[ST_STAMP]) * st[ST_RATE];

		st[ST_TOKENS] = tokens < st[ST_BURST] ? tokens : st[ST_BURST];
	}
	st[ST_STAMP] = now;
}

static void sample_fill(int fd, volatile double *st)
{
	int filled = 0;

	if (ioctl(fd, SIOCOUTQ, &filled) < 0)
		return;
	st[ST_FILLED] = filled;
	if (filled > st[ST_PEAK])
		st[ST_PEAK] = filled;
}

/* The tokens to wait for before the next burst: `want`, at most what is left and the burst. */
static double wanted(volatile const double *st, Py_ssize_t left)
{
	double want = st[ST_WANT] < st[ST_BURST] ? st[ST_WANT] : st[ST_BURST];

	if (want > (double)left)
		want = (double)left;
	return want < 1 ? 1 : want;
}

/* send_paced's loop (the GIL released): bursts as the tokens allow, sleeping in between. The
 * datagrams sent; *paid: those of a burst that stopped short that were not sent (fd < 0: a
 * whole burst, for the caller to try). */
static Py_ssize_t pace_all(int fd, struct iovec *iov, struct part *parts, Py_ssize_t count,
			   size_t gso_max, volatile double *st, int *err, int *gso_err,
			   Py_ssize_t *paid)
{
	Py_ssize_t done = 0;

	*err = 0;
	*paid = 0;
	while (done < count) {
		double now = mono_now(), deadline = st[ST_DEADLINE], want, wait;
		Py_ssize_t n, sent;

		if (deadline > 0 && now >= deadline)
			break;
		refill(st, now);
		want = wanted(st, count - done);
		n = (Py_ssize_t)st[ST_TOKENS];
		if (n > count - done)
			n = count - done;
		if (n > 0 && (st[ST_TOKENS] >= want || deadline > 0)) {
			st[ST_TOKENS] -= (double)n;
			if (fd < 0) { /* nothing sent: not a burst (ST_BURSTS counts real sends) */
				*paid = n;
				break;
			}
			st[ST_BURSTS] += 1;
			sent = send_all(fd, iov + done, parts, n, *gso_err ? 0 : gso_max, err,
					gso_err);
			done += sent;
			st[ST_DONE] += (double)sent;
			sample_fill(fd, st);
			if (sent < n) {
				*paid = n - sent;
				break;
			}
			continue;
		}
		wait = (want - st[ST_TOKENS]) / st[ST_RATE];
		if (deadline > 0 && now + wait > deadline)
			wait = deadline - now;
		sleep_until(now + wait);
	}
	return done;
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
	int fd, err = 0, gso_err = 0;
	PyObject *seq, *fast;
	Py_ssize_t start, count, total, sent = 0, gso_max = 0;
	Py_buffer *views;
	struct iovec *iov;
	struct part *parts;

	(void)self;
	if (!PyArg_ParseTuple(args, "iOnn|n:send_burst", &fd, &seq, &start, &count, &gso_max))
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
		parts = PyMem_Malloc(sizeof(*parts) * (size_t)count);
		if (parts == NULL) {
			Py_DECREF(fast);
			return PyErr_NoMemory();
		}
		if (hold_views(PySequence_Fast_ITEMS(fast) + start, start, count, &views, &iov) < 0) {
			PyMem_Free(parts);
			Py_DECREF(fast);
			return NULL;
		}
		Py_BEGIN_ALLOW_THREADS
		sent = send_all(fd, iov, parts, count, gso_max > 0 ? (size_t)gso_max : 0, &err,
				&gso_err);
		Py_END_ALLOW_THREADS
		release_views(views, iov, count);
		PyMem_Free(parts);
	}
	Py_DECREF(fast);
	return Py_BuildValue("(nii)", sent, err, gso_err);
}

/* A rate the loop can divide by and a burst it can count in: finite, rate > 0, burst >= 1
 * (NaN fails every comparison, so each test is written to fail for it). */
static int pace_bucket_ok(const double *st)
{
	return st[ST_RATE] > 0 && isfinite(st[ST_RATE]) && st[ST_BURST] >= 1 &&
	       isfinite(st[ST_BURST]);
}

static PyObject *send_paced(PyObject *self, PyObject *args)
{
	int fd, err = 0, gso_err = 0;
	PyObject *seq, *fast, *state;
	Py_ssize_t start, count, total, sent = 0, paid = 0, gso_max = 0;
	Py_buffer views_state, *views = NULL;
	struct iovec *iov = NULL;
	struct part *parts = NULL;

	(void)self;
	if (!PyArg_ParseTuple(args, "iOnnnO:send_paced", &fd, &seq, &start, &count, &gso_max,
			      &state))
		return NULL;
	if (PyObject_GetBuffer(state, &views_state, PyBUF_WRITABLE) < 0)
		return NULL;
	if (views_state.len < (Py_ssize_t)(PACE_STATE * sizeof(double)) ||
	    ((uintptr_t)views_state.buf % sizeof(double)) != 0 ||
	    !pace_bucket_ok((const double *)views_state.buf)) {
		PyBuffer_Release(&views_state);
		PyErr_SetString(PyExc_ValueError, "state must be PACE_STATE aligned doubles with "
				"a positive rate and a burst of at least 1, both finite");
		return NULL;
	}
	fast = PySequence_Fast(seq, "datagrams must be a sequence of bytes-like objects");
	if (fast == NULL)
		goto fail_state;
	total = PySequence_Fast_GET_SIZE(fast);
	if (start < 0 || count < 0 || start > total || count > total - start) {
		PyErr_SetString(PyExc_IndexError, "start and count must lie within datagrams");
		goto fail;
	}
	if (count > 0) {
		parts = PyMem_Malloc(sizeof(*parts) * (size_t)count);
		if (parts == NULL) {
			PyErr_NoMemory();
			goto fail;
		}
		if (hold_views(PySequence_Fast_ITEMS(fast) + start, start, count, &views, &iov) < 0) {
			PyMem_Free(parts);
			goto fail;
		}
		Py_BEGIN_ALLOW_THREADS
		sent = pace_all(fd, iov, parts, count, gso_max > 0 ? (size_t)gso_max : 0,
				(volatile double *)views_state.buf, &err, &gso_err, &paid);
		Py_END_ALLOW_THREADS
		release_views(views, iov, count);
		PyMem_Free(parts);
	}
	Py_DECREF(fast);
	PyBuffer_Release(&views_state);
	return Py_BuildValue("(niin)", sent, err, gso_err, paid);
fail:
	Py_DECREF(fast);
fail_state:
	PyBuffer_Release(&views_state);
	return NULL;
}

static PyMethodDef methods[] = {
	{"send_burst", send_burst, METH_VARARGS,
	 "send_burst(fd, datagrams, start, count, gso_max=0) -> (sent, errno, gso_errno)\n\n"
	 "Send datagrams[start:start + count] (bytes-like objects) on the connected socket\n"
	 "`fd` with sendmmsg(2), without blocking and with the GIL released. `sent`: how\n"
	 "many were accepted, in order; `errno`: why datagrams[start + sent] was refused, or 0\n"
	 "(all sent, or the kernel stopped short and dropped the reason: try the rest again).\n"
	 "gso_max > 0: runs of equal-length datagrams of at most gso_max bytes go as one\n"
	 "UDP_SEGMENT (GSO) send each; `gso_errno`: why the socket refused a GSO send as such\n"
	 "(EINVAL, EIO), after which the rest went without GSO; 0 otherwise."},
	{"send_paced", send_paced, METH_VARARGS,
	 "send_paced(fd, datagrams, start, count, gso_max, state) -> (sent, errno, gso_errno, paid)\n\n"
	 "Send datagrams[start:start + count] as send_burst does, in bursts paced by the token\n"
	 "bucket in `state` (a writable buffer of PACE_STATE doubles, PACE_* indexes), sleeping\n"
	 "between bursts, with the GIL released for the whole call. Returns once all are sent\n"
	 "(`sent` == count), at the deadline in state (`sent` < count, `paid` 0), or when a burst\n"
	 "stops short: `paid` datagrams from start + sent had their tokens but were not sent\n"
	 "(`errno`: why the first of them was refused, or 0). fd < 0: no socket, each burst is\n"
	 "returned as `paid` for the caller to handle."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "netflow_agent._udpsend",
	.m_doc = "Send bursts of UDP datagrams with sendmmsg(2), one at once or paced by a token "
		  "bucket (agent/_udpsend.c).",
	.m_size = -1,
	.m_methods = methods,
};

/* The state buffer's layout for Python: PACE_STATE and an index constant per field. */
static int add_pace_constants(PyObject *mod)
{
	static const struct {
		const char *name;
		int index;
	} fields[] = {
		{"PACE_TOKENS", ST_TOKENS}, {"PACE_STAMP", ST_STAMP}, {"PACE_RATE", ST_RATE},
		{"PACE_BURST", ST_BURST}, {"PACE_WANT", ST_WANT}, {"PACE_DEADLINE", ST_DEADLINE},
		{"PACE_DONE", ST_DONE}, {"PACE_BURSTS", ST_BURSTS}, {"PACE_FILLED", ST_FILLED},
		{"PACE_PEAK", ST_PEAK}, {"PACE_STATE", PACE_STATE},
	};
	size_t i;

	for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		if (PyModule_AddIntConstant(mod, fields[i].name, fields[i].index) < 0)
			return -1;
	return 0;
}

PyMODINIT_FUNC PyInit__udpsend(void)
{
	PyObject *mod = PyModule_Create(&module);

	if (mod != NULL && (PyModule_AddIntConstant(mod, "CHUNK", CHUNK) < 0 ||
			    PyModule_AddIntConstant(mod, "GSO_SEGMENTS", GSO_SEGMENTS) < 0 ||
			    PyModule_AddIntConstant(mod, "GSO_BYTES", GSO_BYTES) < 0 ||
			    add_pace_constants(mod) < 0)) {
		Py_DECREF(mod);
		return NULL;
	}
	return mod;
}
