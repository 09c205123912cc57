// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * _wirepack.c - export records packed from flow rows in one pass (netflow_agent._wirepack).
 *
 * pack_rows() writes fixed-size export records (a v9/IPFIX template's data records) from
 * the rows of a record array (agent/model.py's FlowBatch columns): per record, a list of
 * field copies (src offset in the row, dst offset in the record, length, kind: copy, copy
 * reversed, or write zeros), the
 * rows in order or picked by an index array. agent/wire.py's pack_template() builds the
 * copies from the two dtypes: an address is its column's first `length` bytes, an integer
 * field its native column's low `length` bytes swapped to network order (the value modulo
 * 2**(8 * length), as NumPy's cast into the big-endian field gives), an unsigned column
 * narrower than its field zeros then its bytes swapped (the cast's zero extension, e.g.
 * IPFIX's 2-byte tcpControlBits from the 1-byte tcp_flags column). What NumPy did in a
 * structured cast (a strided loop per field, over a copy of each template's rows) is one
 * pass over the picked rows here, no copy of them.
 *
 * Two kinds compute a field from its row: the milliseconds since a base of an int64 ns
 * column (v9's FIRST/LAST_SWITCHED: sysUpTime ms, floor((ns - base) / 10**6) modulo 2**32,
 * the value of plugins/export_netflow/v5.py's uptime_ms()), and ICMP type/code (v9's
 * ICMP_TYPE: the 2-byte destination port when the row's protocol byte is ICMP or ICMPv6,
 * else 0). What NumPy did for them per template (a gather of each column at the template's
 * rows, the arithmetic, a strided assignment into the records) is done in the same pass.
 *
 * frame() cuts whole export packets from such a block of records: a header whose sequence
 * number counts up, a set header, the next records, padding; one bytes object each, what a
 * b"".join per packet in Python built (v9's full packets, plugins/export_netflow/v9.py).
 * pack_rows' swaps turn native integers into network order on a little-endian host:
 * agent/wire.py uses it only there (np.little_endian).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* What a field op does (the low byte of its `kind`): copy `len` bytes, copy them reversed,
 * write zeros, the ms since `base` of the int64 at `src` (len 4), ICMP type/code (len 2: the
 * uint16 at `src` if the byte at `kind >> 8` is 1 or 58, else 0), both in network order. */
enum { OP_COPY = 0, OP_SWAP = 1, OP_ZERO = 2, OP_MS_SINCE = 3, OP_ICMP = 4 };
#define OP_KIND(k) ((k) & 0xFF)

/* One field: `len` bytes at `src` of a row to `dst` of a record, as `kind` says (OP_ZERO:
 * `len` zero bytes at `dst`, `src` unused). */
struct fieldop {
	uint32_t src, dst, len, kind;
};

/* floor(ns / 10**6) and ns's sub-millisecond rest (0 to 999999) */
static inline int64_t floor_ms(int64_t ns, int64_t *rest)
{
	int64_t q = ns / 1000000, r = ns % 1000000;

	if (r < 0) {
		r += 1000000;
		q -= 1;
	}
	*rest = r;
	return q;
}

/* a base time as floor_ms() splits it, once per call */
struct ms_base {
	int64_t ms, rest;
};

/* floor((ns - base) / 10**6) modulo 2**32, exact for every int64 ns and base: the floored
 * ms of each, less one where ns's rest is below base's (ns - base itself may not fit int64) */
static inline uint32_t ms_since(const uint8_t *src, const struct ms_base *base)
{
	int64_t ns, rest, q;

	memcpy(&ns, src, 8);
	q = floor_ms(ns, &rest) - base->ms;
	return (uint32_t)(uint64_t)(q - (rest < base->rest));
}

static inline void derived_op(uint8_t *dst, const uint8_t *row, const struct fieldop *op,
			      const struct ms_base *base)
{
	if (OP_KIND(op->kind) == OP_MS_SINCE) {
		uint32_t v = __builtin_bswap32(ms_since(row + op->src, base));

		memcpy(dst, &v, 4);
	} else {
		uint8_t proto = row[op->kind >> 8];
		uint16_t v = 0;

		if (proto == 1 || proto == 58) {
			memcpy(&v, row + op->src, 2);
			v = __builtin_bswap16(v);
		}
		memcpy(dst, &v, 2);
	}
}

static inline void copy_op(uint8_t *dst, const uint8_t *src, const struct fieldop *op)
{
	if (op->kind == OP_ZERO) {
		memset(dst, 0, op->len);
	} else if (op->kind == OP_COPY) {
		switch (op->len) {
		case 1: *dst = *src; break;
		case 2: memcpy(dst, src, 2); break;
		case 4: memcpy(dst, src, 4); break;
		case 16: memcpy(dst, src, 16); break;
		default: memcpy(dst, src, op->len); break;
		}
	} else if (op->len == 2) {
		uint16_t v;
		memcpy(&v, src, 2);
		v = __builtin_bswap16(v);
		memcpy(dst, &v, 2);
	} else if (op->len == 4) {
		uint32_t v;
		memcpy(&v, src, 4);
		v = __builtin_bswap32(v);
		memcpy(dst, &v, 4);
	} else if (op->len == 8) {
		uint64_t v;
		memcpy(&v, src, 8);
		v = __builtin_bswap64(v);
		memcpy(dst, &v, 8);
	} else {
		for (uint32_t i = 0; i < op->len; i++)
			dst[i] = src[op->len - 1 - i];
	}
}

PyDoc_STRVAR(pack_rows_doc,
	     "pack_rows(records, stride, ops, out, size, rows=None, base=0) -> None\n\n"
	     "Write one `size`-byte record into `out` (a writable C-contiguous buffer) per row of\n"
	     "`records` (C-contiguous rows of `stride` bytes), or per entry of `rows` (int64 row\n"
	     "numbers, in that order): for each uint32 quadruple (src, dst, len, kind) of `ops`,\n"
	     "`len` bytes at `src` of the row to `dst` of the record, as they are (kind 0) or\n"
	     "reversed (kind 1), or `len` zero bytes at `dst` (kind 2, `src` unused); kind 3\n"
	     "(len 4): floor((int64 at `src` - `base`) / 10**6) mod 2**32 (the difference exact, not\n"
	     "wrapped to int64), big-endian; kind 4\n"
	     "| p << 8 (len 2): the uint16 at `src` big-endian if the byte at p is 1 or 58, else 0.\n"
	     "Bytes of a record no op writes are left as they are. Raises ValueError (nothing\n"
	     "written) for an op outside a row or a record, a row number out of range, or an\n"
	     "`out` of another size than the records.");

static int check_ops(const Py_buffer *ops, Py_ssize_t stride, Py_ssize_t size)
{
	const struct fieldop *op = ops->buf;
	size_t n = (size_t)ops->len / sizeof(struct fieldop);

	if ((size_t)ops->len % sizeof(struct fieldop))
		goto bad;
	for (size_t i = 0; i < n; i++, op++) {
		uint32_t kind = OP_KIND(op->kind), reads = op->len;

		if (kind == OP_MS_SINCE || kind == OP_ICMP) {
			if (op->len != (kind == OP_MS_SINCE ? 4u : 2u)
			    || (kind == OP_MS_SINCE && op->kind != OP_MS_SINCE)
			    || (kind == OP_ICMP && (op->kind >> 8) >= (uint64_t)stride))
				goto bad;
			reads = kind == OP_MS_SINCE ? 8 : 2;
		} else if (op->kind > OP_ZERO) {
			goto bad;
		}
		if (!op->len || (kind != OP_ZERO && (uint64_t)op->src + reads > (uint64_t)stride)
		    || (uint64_t)op->dst + op->len > (uint64_t)size)
			goto bad;
	}
	return 0;
bad:
	PyErr_SetString(PyExc_ValueError, "ops: need uint32 (src, dst, len, kind) quadruples "
			"inside a row and a record");
	return -1;
}

static int check_rows(const Py_buffer *rows, size_t n)
{
	const int64_t *v = rows->buf;

	char c = rows->format ? rows->format[rows->format[0] == '<' || rows->format[0] == '='
					     || rows->format[0] == '@'] : 0;

	/* c == 0: an empty or prefix-only format (strchr would find the terminator) */
	if (rows->itemsize != 8 || rows->len % 8 || !c || !strchr("qlQL", c)) {
		PyErr_SetString(PyExc_ValueError, "rows: need int64 row numbers");
		return -1;
	}
	for (size_t r = 0; r < (size_t)rows->len / 8; r++)
		if (v[r] < 0 || (uint64_t)v[r] >= n) {
			PyErr_Format(PyExc_ValueError, "rows: row %lld (entry %zu) is not one of the "
				     "%zu records", (long long)v[r], r, n);
			return -1;
		}
	return 0;
}

static PyObject *pack_rows(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"records", "stride", "ops", "out", "size", "rows", "base", NULL};
	long long base_ns = 0;
	PyObject *rec_obj, *ops_obj, *out_obj, *rows_obj = Py_None;
	Py_ssize_t stride, size;
	Py_buffer rec = {0}, ops = {0}, out = {0}, rows = {0};
	PyObject *result = NULL;
	size_t n, m, nops;
	const int64_t *pick = NULL;
	int have_rows;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnOOn|OL:pack_rows", kwlist, &rec_obj,
					 &stride, &ops_obj, &out_obj, &size, &rows_obj, &base_ns))
		return NULL;
	have_rows = rows_obj != Py_None;
	if (stride < 1 || size < 1)
		return PyErr_Format(PyExc_ValueError, "%s: %zd is not positive",
				    stride < 1 ? "stride" : "size", stride < 1 ? stride : size);
	if (PyObject_GetBuffer(rec_obj, &rec, PyBUF_C_CONTIGUOUS) < 0)
		return NULL;
	if (PyObject_GetBuffer(ops_obj, &ops, PyBUF_C_CONTIGUOUS) < 0)
		goto done;
	if (PyObject_GetBuffer(out_obj, &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
		goto done;
	if (rows_obj != Py_None
	    && PyObject_GetBuffer(rows_obj, &rows, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
		goto done;
	if (rec.len % stride) {
		PyErr_Format(PyExc_ValueError, "records: buffer of %zd bytes is not a whole number "
			     "of %zd-byte rows", rec.len, stride);
		goto done;
	}
	n = (size_t)(rec.len / stride);
	if (check_ops(&ops, stride, size) < 0 || (have_rows && check_rows(&rows, n) < 0))
		goto done;
	m = have_rows ? (size_t)rows.len / 8 : n;
	if ((size_t)out.len / (size_t)size != m || (size_t)out.len % (size_t)size) {
		PyErr_Format(PyExc_ValueError, "out: %zd bytes for %zu records of %zd bytes",
			     out.len, m, size);
		goto done;
	}
	pick = have_rows ? rows.buf : NULL;
	nops = (size_t)ops.len / sizeof(struct fieldop);
	{
		const struct fieldop *op0 = ops.buf;
		const uint8_t *base = rec.buf;
		uint8_t *dst = out.buf;
		struct ms_base since;

		since.ms = floor_ms(base_ns, &since.rest);
		for (size_t r = 0; r < m; r++, dst += size) {
			const uint8_t *row = base + (pick ? (size_t)pick[r] : r) * (size_t)stride;
			for (size_t i = 0; i < nops; i++) {
				if (OP_KIND(op0[i].kind) >= OP_MS_SINCE)
					derived_op(dst + op0[i].dst, row, &op0[i], &since);
				else
					copy_op(dst + op0[i].dst, row + op0[i].src, &op0[i]);
			}
		}
	}
	result = Py_None;
	Py_INCREF(result);
done:
	if (rows.obj)
		PyBuffer_Release(&rows);
	if (out.obj)
		PyBuffer_Release(&out);
	if (ops.obj)
		PyBuffer_Release(&ops);
	PyBuffer_Release(&rec);
	return result;
}

PyDoc_STRVAR(frame_doc,
	     "frame(block, start, body, count, head, seq_at, seq, seq_step, middle, tail)\n"
	     "-> list of bytes\n\n"
	     "`count` datagrams of records cut from `block` (any buffer): datagram j is `head`\n"
	     "with its 4 bytes at `seq_at` set to the big-endian (seq + j * seq_step) mod 2**32,\n"
	     "then `middle`, then block[start + j * body:start + (j + 1) * body], then `tail`.\n"
	     "Raises ValueError when the records or the sequence field lie outside.");

static PyObject *frame(PyObject *Py_UNUSED(m), PyObject *args)
{
	Py_buffer block, head, middle, tail;
	Py_ssize_t start, body, count, seq_at;
	unsigned long long seq, step;
	PyObject *out = NULL;

	if (!PyArg_ParseTuple(args, "y*nnny*nKKy*y*:frame", &block, &start, &body, &count, &head,
			      &seq_at, &seq, &step, &middle, &tail))
		return NULL;
	if (start < 0 || body < 0 || count < 0 || (count && start > block.len)
	    || (count && body > (block.len - start) / count)) {
		PyErr_Format(PyExc_ValueError, "block: %zd records of %zd bytes from byte %zd "
			     "lie outside its %zd bytes", count, body, start, block.len);
		goto done;
	}
	if (seq_at < 0 || seq_at > head.len - 4) {
		PyErr_Format(PyExc_ValueError, "seq_at: %zd is not inside the %zd-byte head",
			     seq_at, head.len);
		goto done;
	}
	out = PyList_New(count);
	if (!out)
		goto done;
	for (Py_ssize_t j = 0; j < count; j++) {
		Py_ssize_t n = head.len + middle.len + body + tail.len;
		PyObject *d = PyBytes_FromStringAndSize(NULL, n);
		char *p;
		uint32_t v;
		if (!d) {
			Py_CLEAR(out);
			goto done;
		}
		p = PyBytes_AS_STRING(d);
		memcpy(p, head.buf, (size_t)head.len);
		v = (uint32_t)(seq + (unsigned long long)j * step);
		p[seq_at] = (char)(v >> 24);
		p[seq_at + 1] = (char)(v >> 16);
		p[seq_at + 2] = (char)(v >> 8);
		p[seq_at + 3] = (char)v;
		p += head.len;
		memcpy(p, middle.buf, (size_t)middle.len);
		p += middle.len;
		memcpy(p, (const char *)block.buf + start + j * body, (size_t)body);
		memcpy(p + body, tail.buf, (size_t)tail.len);
		PyList_SET_ITEM(out, j, d);
	}
done:
	PyBuffer_Release(&tail);
	PyBuffer_Release(&middle);
	PyBuffer_Release(&head);
	PyBuffer_Release(&block);
	return out;
}

static PyMethodDef module_methods[] = {
	{"pack_rows", (PyCFunction)(void (*)(void))pack_rows, METH_VARARGS | METH_KEYWORDS,
	 pack_rows_doc},
	{"frame", (PyCFunction)frame, METH_VARARGS, frame_doc},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef wirepack_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "netflow_agent._wirepack",
	.m_doc = "Export records packed from flow rows in one pass (agent/_wirepack.c).",
	.m_size = -1,
	.m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__wirepack(void)
{
	return PyModule_Create(&wirepack_module);
}
