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
 * 0 for a time before base,
 * the value of plugins/export_netflow/v5.py's uptime_ms()), and ICMP type/code (v9's
 * ICMP_TYPE: the 2-byte destination port when the row's protocol byte is ICMP or ICMPv6,
 * else 0). What NumPy did for them per template (a gather of each column at the template's
 * rows, the arithmetic, a strided assignment into the records) is done in the same pass.
 *
 * IPFIX's ms since the epoch and a constant (selectorId) are two more kinds. The ops run
 * over 64 rows at a time, each op's loop chosen once per block, and write into `out` or a
 * new bytes object (the records without an array copied out by tobytes()).
 *
 * frame() cuts whole export packets from such a block of records: a header whose sequence
 * number counts up (by 1 or by the records of a packet), a set header, the next records,
 * padding; one bytes object each, what a b"".join per packet in Python built (v9's, v5's
 * and IPFIX's full packets). pack_rows' swaps turn native integers into network order on
 * a little-endian host: agent/wire.py uses it only there (np.little_endian).
 *
 * classify() is the encoders' one pass over a part's rows before packing (agent/wire.py's
 * classify_rows): each row's template class (IPv6, routed, ICMP), the rows grouped by class
 * in row order, the latest/earliest/lowest times and the largest counter, which NumPy took
 * a dozen passes and a stable sort for.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* What a field op does (the low byte of its `kind`): copy `len` bytes, copy them reversed,
 * write zeros, the ms since `base` of the int64 at `src` (len 4), ICMP type/code (len 2: the
 * uint16 at `src` if the byte at `kind >> 8` is 1 or 58, else 0), the ms since the epoch of
 * the int64 ns at `src` (len 8: floor(ns / 10**6) as int64, IPFIX's dateTimeMilliseconds),
 * the constant `src` (len 1, 2 or 4: its low `len` bytes), all in network order. */
enum { OP_COPY = 0, OP_SWAP = 1, OP_ZERO = 2, OP_MS_SINCE = 3, OP_ICMP = 4, OP_EPOCH_MS = 5,
       OP_CONST = 6 };
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
 * ms of each, less one where ns's rest is below base's (ns - base itself may not fit int64);
 * 0 for a time before base (a record's uptime is never after its header's: RFC 3954) */
static inline uint32_t ms_since(const uint8_t *src, const struct ms_base *base)
{
	int64_t ns, rest, q;

	memcpy(&ns, src, 8);
	q = floor_ms(ns, &rest) - base->ms - (rest < base->rest);
	return q < 0 ? 0 : (uint32_t)(uint64_t)q;
}

static inline void derived_op(uint8_t *dst, const uint8_t *row, const struct fieldop *op,
			      const struct ms_base *base)
{
	if (OP_KIND(op->kind) == OP_MS_SINCE) {
		uint32_t v = __builtin_bswap32(ms_since(row + op->src, base));

		memcpy(dst, &v, 4);
	} else if (OP_KIND(op->kind) == OP_EPOCH_MS) {
		int64_t ns, rest;
		uint64_t v;

		memcpy(&ns, row + op->src, 8);
		v = __builtin_bswap64((uint64_t)floor_ms(ns, &rest));
		memcpy(dst, &v, 8);
	} else if (OP_KIND(op->kind) == OP_CONST) {
		for (uint32_t i = 0; i < op->len; i++)
			dst[i] = (uint8_t)(op->src >> (8 * (op->len - 1 - i)));
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
	     "pack_rows(records, stride, ops, out, size, rows=None, base_ms=0, base_rest=0)\n"
	     "-> None | bytes\n\n"
	     "Write one `size`-byte record into `out` (a writable C-contiguous buffer; None: a new\n"
	     "bytes object, returned, whose bytes no op writes are zeros) per row of\n"
	     "`records` (C-contiguous rows of `stride` bytes), or per entry of `rows` (int64 row\n"
	     "numbers, in that order): for each uint32 quadruple (src, dst, len, kind) of `ops`,\n"
	     "`len` bytes at `src` of the row to `dst` of the record, as they are (kind 0) or\n"
	     "reversed (kind 1), or `len` zero bytes at `dst` (kind 2, `src` unused); kind 3\n"
	     "(len 4): floor((int64 at `src` - base) / 10**6) mod 2**32 (0 before base), base = `base_ms` * 10**6 +\n"
	     "`base_rest` (0..999999; the base need not fit int64, the difference is exact),\n"
	     "big-endian; kind 4\n"
	     "| p << 8 (len 2): the uint16 at `src` big-endian if the byte at p is 1 or 58, else 0;\n"
	     "kind 5 (len 8): floor(int64 at `src` / 10**6) as int64, big-endian; kind 6 (len 1, 2\n"
	     "or 4): the constant `src`, big-endian (it must fit `len` bytes).\n"
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

		if (kind == OP_MS_SINCE || kind == OP_ICMP || kind == OP_EPOCH_MS) {
			if (op->len != (kind == OP_MS_SINCE ? 4u : kind == OP_ICMP ? 2u : 8u)
			    || (kind != OP_ICMP && op->kind != kind)
			    || (kind == OP_ICMP && (op->kind >> 8) >= (uint64_t)stride))
				goto bad;
			reads = kind == OP_ICMP ? 2 : 8;
		} else if (kind == OP_CONST) {
			if (op->kind != OP_CONST || (op->len != 1 && op->len != 2 && op->len != 4)
			    || (op->len < 4 && op->src >> (8 * op->len)))
				goto bad;
			reads = 0;
		} else if (op->kind > OP_ZERO) {
			goto bad;
		}
		if (!op->len || (kind != OP_ZERO && kind != OP_CONST
				 && (uint64_t)op->src + reads > (uint64_t)stride)
		    || (uint64_t)op->dst + op->len > (uint64_t)size)
			goto bad;
	}
	return 0;
bad:
	PyErr_SetString(PyExc_ValueError, "ops: need uint32 (src, dst, len, kind) quadruples "
			"inside a row and a record");
	return -1;
}

/* The number of `stride`-byte rows in `rec` into *n; -1 (ValueError) when it holds a part. */
static int whole_rows(const Py_buffer *rec, Py_ssize_t stride, size_t *n)
{
	if (rec->len % stride) {
		PyErr_Format(PyExc_ValueError, "records: buffer of %zd bytes is not a whole number "
			     "of %zd-byte rows", rec->len, stride);
		return -1;
	}
	*n = (size_t)(rec->len / stride);
	return 0;
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

/* An op as the row loop runs it: one switch on `code`, the kind and length decided once per
 * call (compile_ops), not per field of every row. */
enum {
	C_COPY1, C_COPY2, C_COPY4, C_COPY8, C_COPY16, C_COPYN, C_SWAP2, C_SWAP4, C_SWAP8, C_SWAPN,
	C_ZERO, C_MS_SINCE, C_ICMP, C_DERIVED,
};

struct runop {
	uint32_t src, dst, len;
	uint32_t code;
	const struct fieldop *op;
};

/* whether the ops write every byte of a `size`-byte record (a new record needs no zeros) */
static int ops_cover(const struct fieldop *op, size_t n, size_t size)
{
	uint8_t seen[512] = {0};
	size_t covered = 0;

	if (size > sizeof(seen))
		return 0;
	for (size_t i = 0; i < n; i++, op++)
		for (uint32_t b = op->dst; b < op->dst + op->len; b++)
			if (!seen[b]) {
				seen[b] = 1;
				covered++;
			}
	return covered == size;
}

static void compile_ops(struct runop *run, const struct fieldop *op, size_t n)
{
	for (size_t i = 0; i < n; i++, op++) {
		uint32_t kind = OP_KIND(op->kind), code;

		if (kind == OP_MS_SINCE)
			code = C_MS_SINCE;
		else if (kind == OP_ICMP)
			code = C_ICMP;
		else if (kind > OP_ICMP)
			code = C_DERIVED;
		else if (kind == OP_ZERO)
			code = C_ZERO;
		else if (kind == OP_COPY)
			code = op->len == 1 ? C_COPY1 : op->len == 2 ? C_COPY2 : op->len == 4 ? C_COPY4
			     : op->len == 8 ? C_COPY8 : op->len == 16 ? C_COPY16 : C_COPYN;
		else
			code = op->len == 2 ? C_SWAP2 : op->len == 4 ? C_SWAP4 : op->len == 8 ? C_SWAP8
			     : C_SWAPN;
		run[i] = (struct runop){op->src, op->dst, op->len, code, op};
	}
}

/* rows per block: each op runs over a block's rows in a loop of its own (its code decided
 * once per block, not per row: no indirect branch per field), the block's rows and records
 * staying in L1 (64 rows of ~100 bytes, their ~60-byte records) */
#define BLOCK 64

#define EACH_ROW(stmt)                                                                \
	for (size_t j = 0; j < nb; j++) {                                             \
		const uint8_t *src = rowp[j] + o->src;                                \
		uint8_t *to = rec + j * size + o->dst;                                \
		(void)src;                                                            \
		stmt;                                                                 \
	}

static void pack_loop(uint8_t *dst, const uint8_t *base, size_t stride, const int64_t *pick,
		      size_t m, const struct runop *run, size_t nops, size_t size,
		      const struct ms_base *since)
{
	const uint8_t *rowp[BLOCK];

	for (size_t r0 = 0; r0 < m; r0 += BLOCK) {
		size_t nb = m - r0 < BLOCK ? m - r0 : BLOCK;
		uint8_t *rec = dst + r0 * size;

		for (size_t j = 0; j < nb; j++)
			rowp[j] = base + (pick ? (size_t)pick[r0 + j] : r0 + j) * stride;
		for (size_t i = 0; i < nops; i++) {
			const struct runop *o = &run[i];

			switch (o->code) {
			case C_COPY1: EACH_ROW(*to = *src); break;
			case C_COPY2: EACH_ROW(memcpy(to, src, 2)); break;
			case C_COPY4: EACH_ROW(memcpy(to, src, 4)); break;
			case C_COPY8: EACH_ROW(memcpy(to, src, 8)); break;
			case C_COPY16: EACH_ROW(memcpy(to, src, 16)); break;
			case C_COPYN: EACH_ROW(memcpy(to, src, o->len)); break;
			case C_SWAP2: EACH_ROW(uint16_t v; memcpy(&v, src, 2);
					       v = __builtin_bswap16(v); memcpy(to, &v, 2)); break;
			case C_SWAP4: EACH_ROW(uint32_t v; memcpy(&v, src, 4);
					       v = __builtin_bswap32(v); memcpy(to, &v, 4)); break;
			case C_SWAP8: EACH_ROW(uint64_t v; memcpy(&v, src, 8);
					       v = __builtin_bswap64(v); memcpy(to, &v, 8)); break;
			case C_SWAPN: EACH_ROW(copy_op(to, src, o->op)); break;
			case C_ZERO: EACH_ROW(memset(to, 0, o->len)); break;
			case C_MS_SINCE: EACH_ROW(uint32_t v = __builtin_bswap32(ms_since(src, since));
						  memcpy(to, &v, 4)); break;
			case C_ICMP: {
				uint32_t at = o->op->kind >> 8;

				EACH_ROW(uint8_t p = rowp[j][at]; uint16_t v = 0;
					 if (p == 1 || p == 58) {
						 memcpy(&v, src, 2);
						 v = __builtin_bswap16(v);
					 }
					 memcpy(to, &v, 2));
				break;
			}
			default: EACH_ROW(derived_op(to, rowp[j], o->op, since)); break;
			}
		}
	}
}

static PyObject *pack_rows(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"records", "stride", "ops", "out", "size", "rows", "base_ms",
				 "base_rest", NULL};
	long long base_ms = 0, base_rest = 0;
	PyObject *rec_obj, *ops_obj, *out_obj, *rows_obj = Py_None;
	Py_ssize_t stride, size;
	Py_buffer rec = {0}, ops = {0}, out = {0}, rows = {0};
	PyObject *result = NULL, *made = NULL;
	size_t n, m, nops;
	const int64_t *pick = NULL;
	int have_rows;
	uint8_t *dst;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnOOn|OLL:pack_rows", kwlist, &rec_obj,
					 &stride, &ops_obj, &out_obj, &size, &rows_obj, &base_ms,
					 &base_rest))
		return NULL;
	/* a base's ms within +-2**50 keeps floor_ms(ns) - base_ms inside int64 for every ns */
	if (base_rest < 0 || base_rest >= 1000000 || base_ms < -(1LL << 50)
	    || base_ms > (1LL << 50))
		return PyErr_Format(PyExc_ValueError, "base: %lld ms + %lld ns is not a time",
				    base_ms, base_rest);
	have_rows = rows_obj != Py_None;
	if (stride < 1 || size < 1)
		return PyErr_Format(PyExc_ValueError, "%s: %zd is not positive",
				    stride < 1 ? "stride" : "size", stride < 1 ? stride : size);
	if (PyObject_GetBuffer(rec_obj, &rec, PyBUF_C_CONTIGUOUS) < 0)
		return NULL;
	if (PyObject_GetBuffer(ops_obj, &ops, PyBUF_C_CONTIGUOUS) < 0)
		goto done;
	if (out_obj != Py_None
	    && PyObject_GetBuffer(out_obj, &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
		goto done;
	if (rows_obj != Py_None
	    && PyObject_GetBuffer(rows_obj, &rows, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
		goto done;
	if (whole_rows(&rec, stride, &n) < 0)
		goto done;
	if (check_ops(&ops, stride, size) < 0 || (have_rows && check_rows(&rows, n) < 0))
		goto done;
	m = have_rows ? (size_t)rows.len / 8 : n;
	if (out_obj == Py_None && m && size > PY_SSIZE_T_MAX / (Py_ssize_t)m) {
		PyErr_Format(PyExc_OverflowError, "%zu records of %zd bytes do not fit a bytes "
			     "object", m, size);
		goto done;
	}
	if (out_obj == Py_None) {  /* the records as a new bytes object, every byte written */
		made = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(m * (size_t)size));
		if (!made)
			goto done;
		dst = (uint8_t *)PyBytes_AS_STRING(made);
		if (!ops_cover(ops.buf, (size_t)ops.len / sizeof(struct fieldop), (size_t)size))
			memset(dst, 0, m * (size_t)size);
	} else if ((size_t)out.len / (size_t)size != m || (size_t)out.len % (size_t)size) {
		PyErr_Format(PyExc_ValueError, "out: %zd bytes for %zu records of %zd bytes",
			     out.len, m, size);
		goto done;
	} else {
		dst = out.buf;
	}
	pick = have_rows ? rows.buf : NULL;
	nops = (size_t)ops.len / sizeof(struct fieldop);
	{
		struct runop local[64], *run = nops <= 64 ? local : PyMem_Malloc(nops * sizeof(*run));
		struct ms_base since;

		if (!run) {
			PyErr_NoMemory();
			goto done;
		}
		compile_ops(run, ops.buf, nops);
		since.ms = base_ms;
		since.rest = base_rest;
		pack_loop(dst, rec.buf, (size_t)stride, pick, m, run, nops, (size_t)size, &since);
		if (run != local)
			PyMem_Free(run);
	}
	if (made) {
		result = made;
		made = NULL;
	} else {
		result = Py_None;
		Py_INCREF(result);
	}
done:
	Py_XDECREF(made);
	if (rows.obj)
		PyBuffer_Release(&rows);
	if (out.obj)
		PyBuffer_Release(&out);
	if (ops.obj)
		PyBuffer_Release(&ops);
	PyBuffer_Release(&rec);
	return result;
}


PyDoc_STRVAR(classify_doc,
	     "classify(records, stride, *, version, v6_exact, next_hop, src_mask, dst_mask,\n"
	     "protocol, packets, octets, start, end, v6_weight, routed_weight, icmp_weight)\n"
	     "-> (rows, counts, latest, earliest, lowest, largest)\n\n"
	     "One pass over the rows of `records` (C-contiguous rows of `stride` bytes; the other\n"
	     "arguments are column offsets in a row and the weights of a row's class): a row's\n"
	     "class is v6_weight * IPv6 (ip_version byte != 4, or == 6 with v6_exact) +\n"
	     "routed_weight * routed (16-byte next hop not all zeros, or a prefix length byte\n"
	     "not 0) + icmp_weight * ICMP (protocol byte 1 or 58), below 8. `counts`: rows per\n"
	     "class (8 ints); `rows`: every row number (int64, native order, as bytes) ordered by\n"
	     "class, in row order within one, or None when one class holds every row; `latest`:\n"
	     "the largest int64 start or end (0 without rows), `earliest` the smallest start that\n"
	     "is not 0 (0: none), `lowest` the smallest start or end (0 without rows), `largest`\n"
	     "the largest uint64 packets or octets (0 without rows).");

static PyObject *classify(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"records", "stride", "version", "v6_exact", "next_hop",
				 "src_mask", "dst_mask", "protocol", "packets", "octets", "start",
				 "end", "v6_weight", "routed_weight", "icmp_weight", NULL};
	PyObject *rec_obj, *rows_obj = NULL, *result = NULL;
	Py_buffer rec = {0};
	Py_ssize_t stride, at[10], w6, wr, wi;
	int v6_exact;
	size_t n, counts[8] = {0}, start[8], used = 0;
	int64_t latest = 0, earliest = 0, lowest = 0;
	uint64_t largest = 0;
	uint8_t *cls = NULL;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "On$npnnnnnnnnnnn:classify", kwlist,
					 &rec_obj, &stride, &at[0], &v6_exact, &at[1], &at[2],
					 &at[3], &at[4], &at[5], &at[6], &at[7], &at[8], &w6, &wr,
					 &wi))
		return NULL;
	if (stride < 1)
		return PyErr_Format(PyExc_ValueError, "stride: %zd is not positive", stride);
	/* each weight checked before the sum: huge ones would overflow it (and a class above 7
	 * would index past counts[8]) */
	if (w6 < 0 || wr < 0 || wi < 0 || w6 > 7 || wr > 7 || wi > 7 || w6 + wr + wi > 7)
		return PyErr_Format(PyExc_ValueError, "weights: classes must lie in 0..7");
	/* widths: version 1, next hop 16, masks 1, protocol 1, counters 8, times 8 */
	{
		static const Py_ssize_t width[9] = {1, 16, 1, 1, 1, 8, 8, 8, 8};

		for (int i = 0; i < 9; i++)
			if (at[i] < 0 || at[i] > stride - width[i])
				return PyErr_Format(PyExc_ValueError,
						    "column offset %zd lies outside a %zd-byte row",
						    at[i], stride);
	}
	if (PyObject_GetBuffer(rec_obj, &rec, PyBUF_C_CONTIGUOUS) < 0)
		return NULL;
	if (whole_rows(&rec, stride, &n) < 0)
		goto done;
	cls = PyMem_Malloc(n ? n : 1);
	if (!cls) {
		PyErr_NoMemory();
		goto done;
	}
	{
		const uint8_t *row = rec.buf;

		if (n) {
			memcpy(&latest, row + at[7], 8);
			lowest = latest;
		}
		for (size_t r = 0; r < n; r++, row += stride) {
			uint64_t hop[2], packets, octets;
			int64_t t0, t1;
			uint8_t ver = row[at[0]], proto = row[at[4]];
			int v6 = v6_exact ? ver == 6 : ver != 4, routed, icmp;

			memcpy(hop, row + at[1], 16);
			routed = (hop[0] | hop[1]) != 0 || row[at[2]] || row[at[3]];
			icmp = proto == 1 || proto == 58;
			cls[r] = (uint8_t)(w6 * v6 + wr * routed + wi * icmp);
			counts[cls[r]]++;
			memcpy(&packets, row + at[5], 8);
			memcpy(&octets, row + at[6], 8);
			memcpy(&t0, row + at[7], 8);
			memcpy(&t1, row + at[8], 8);
			if (packets > largest)
				largest = packets;
			if (octets > largest)
				largest = octets;
			if (t0 > latest)
				latest = t0;
			if (t1 > latest)
				latest = t1;
			if (t0 < lowest)
				lowest = t0;
			if (t1 < lowest)
				lowest = t1;
			if (t0 != 0 && (earliest == 0 || t0 < earliest))
				earliest = t0;
		}
	}
	for (int c = 0; c < 8; c++) {
		start[c] = used;
		used += counts[c];
	}
	{
		int classes = 0;

		for (int c = 0; c < 8; c++)
			classes += counts[c] != 0;
		if (classes > 1) {
			int64_t *out;

			rows_obj = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * 8));
			if (!rows_obj)
				goto done;
			out = (int64_t *)PyBytes_AS_STRING(rows_obj);
			for (size_t r = 0; r < n; r++)
				out[start[cls[r]]++] = (int64_t)r;
		} else {
			rows_obj = Py_None;
			Py_INCREF(rows_obj);
		}
	}
	result = Py_BuildValue("N(nnnnnnnn)LLLK", rows_obj, (Py_ssize_t)counts[0],
			       (Py_ssize_t)counts[1], (Py_ssize_t)counts[2], (Py_ssize_t)counts[3],
			       (Py_ssize_t)counts[4], (Py_ssize_t)counts[5], (Py_ssize_t)counts[6],
			       (Py_ssize_t)counts[7], (long long)latest, (long long)earliest,
			       (long long)lowest, (unsigned long long)largest);
	rows_obj = NULL;  /* the tuple owns it (N), or Py_BuildValue released it */
done:
	Py_XDECREF(rows_obj);
	PyMem_Free(cls);
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
	{"classify", (PyCFunction)(void (*)(void))classify, METH_VARARGS | METH_KEYWORDS,
	 classify_doc},
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
