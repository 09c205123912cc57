// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * _nflog.c - the NFLOG per-packet loop in C (plugins.ingest_nflog._nflog, optional).
 *
 * Aggregator.feed(buffer, n, recv_ns) walks the netlink messages of one receive buffer,
 * reads each NFULNL_MSG_PACKET's attributes (include/uapi/linux/netfilter/nfnetlink_log.h),
 * parses the IP header of the payload and adds the packet to its flow in a C hash table, with
 * the GIL released. Aggregator.take() then returns one row per flow for everything fed since
 * the last take (a reader feeds every datagram waiting on its socket, then takes once), so
 * Python sees one row per flow and burst instead of one tuple per packet.
 *
 * Semantics are exactly those of the Python path, which stays the reference:
 *   - netlink walk: plugins/ingest_nflog/netlink.py NflogDecoder.decode/_walk (messages
 *     that are not NFULNL_MSG_PACKET are skipped, a length that does not fit ends the
 *     buffer as malformed, non-zero bytes after the last message are malformed);
 *   - IP parse: agent/packet.py PacketParser (RFC 791, RFC 8200 extension headers,
 *     fragments, ICMP type << 8 | code in the destination port, trunc);
 *   - keys: agent/model.py KEY4/KEY6 (make_key), byte for byte.
 * tests/ingest_nflog/test_c_decoder.py compares both on recorded and fuzzed buffers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* linux/netlink.h, linux/netfilter/nfnetlink_log.h */
#define NLMSG_HDRLEN 16 /* struct nlmsghdr */
#define NFGENMSG_LEN 4 /* struct nfgenmsg */
#define NLA_HDRLEN 4 /* struct nlattr */
#define NLA_TYPE_MASK 0x3FFF
#define MSG_PACKET ((4 << 8) | 0) /* NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET */
#define NFULA_PACKET_HDR 1
#define NFULA_TIMESTAMP 3
#define NFULA_IFINDEX_INDEV 4
#define NFULA_IFINDEX_OUTDEV 5
#define NFULA_PAYLOAD 9
#define NFULA_SEQ 12
#define NF_INET_LOCAL_OUT 3

/* agent/model.py: flow key layout and directions */
#define KEY4_LEN 20
#define KEY6_LEN 44
#define DIRECTION_INGRESS 0
#define DIRECTION_EGRESS 1

/* netinet/in.h protocol numbers (agent/packet.py) */
#define IPPROTO_HOPOPTS_ 0
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_DCCP_ 33
#define IPPROTO_ROUTING_ 43
#define IPPROTO_FRAGMENT_ 44
#define IPPROTO_AH_ 51
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_DSTOPTS_ 60
#define IPPROTO_SCTP_ 132
#define IPPROTO_MH_ 135
#define IPPROTO_UDPLITE_ 136
#define MAX_EXT_HEADERS 8

#define FIRST_SLOTS 512 /* hash slots at the first packet; doubled when half full */
/* the cache's time columns are int64 ns: a timestamp beyond that is garbage */
#define TS_SEC_MAX (INT64_MAX / 1000000000LL)

/* One flow of the buffers fed since the last take. */
struct flow {
	uint8_t key[KEY6_LEN];
	uint8_t key_len;
	uint8_t tcp_flags; /* OR of the packets' TCP flags */
	uint32_t out_if; /* last non-zero output interface */
	uint32_t slot; /* where the hash table points at it */
	uint64_t hash;
	uint64_t packets;
	uint64_t octets; /* IP total lengths */
	int64_t first_ns;
	int64_t last_ns;
};

/* Counters since the last take(). */
struct call_counts {
	uint64_t packets; /* parsed into flows */
	uint64_t trunc; /* payload without a usable IP header */
	uint64_t frag; /* fragments (all of them; accounted) */
	uint64_t trunc_bytes; /* total lengths of IPv4 packets with a bad header length */
	uint64_t seq_gaps; /* packets the kernel logged that never arrived */
};

typedef struct {
	PyObject_HEAD
	/* decoder state and cumulative counters (same names as NflogDecoder) */
	unsigned long long expect_seq;
	unsigned long long messages;
	unsigned long long seq_gaps;
	unsigned long long seq_resets;
	unsigned long long malformed;
	/* what was fed since the last take() */
	struct call_counts acc;
	struct flow *flows; /* room for slots_cap / 2 */
	size_t nflows;
	uint32_t *slots; /* open addressing: flow index + 1, 0 = empty */
	size_t slots_cap; /* a power of two, or 0 before the first packet */
	int nomem; /* a packet was lost for want of memory (reported as MemoryError) */
	int busy; /* feed() running with the GIL released */
} Aggregator;

static inline uint16_t be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t be64(const uint8_t *p)
{
	return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static inline uint32_t host32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static inline uint16_t host16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static inline int port_protocol(unsigned int proto)
{
	return proto == IPPROTO_TCP_ || proto == IPPROTO_UDP_ || proto == IPPROTO_DCCP_ ||
	       proto == IPPROTO_SCTP_ || proto == IPPROTO_UDPLITE_;
}

static inline int ext_len8(unsigned int nh)
{
	return nh == IPPROTO_HOPOPTS_ || nh == IPPROTO_ROUTING_ || nh == IPPROTO_DSTOPTS_ ||
	       nh == IPPROTO_MH_;
}

/* The fixed head of a key: version, protocol, tos, direction, in_if, ports (network order). */
static inline void key_head(uint8_t *key, unsigned int version, unsigned int proto,
			    unsigned int tos, unsigned int direction, uint32_t in_if,
			    unsigned int sport, unsigned int dport)
{
	key[0] = (uint8_t)version;
	key[1] = (uint8_t)proto;
	key[2] = (uint8_t)tos;
	key[3] = (uint8_t)direction;
	key[4] = (uint8_t)(in_if >> 24);
	key[5] = (uint8_t)(in_if >> 16);
	key[6] = (uint8_t)(in_if >> 8);
	key[7] = (uint8_t)in_if;
	key[8] = (uint8_t)(sport >> 8);
	key[9] = (uint8_t)sport;
	key[10] = (uint8_t)(dport >> 8);
	key[11] = (uint8_t)dport;
}

/* One parsed packet. */
struct packet {
	uint8_t key[KEY6_LEN];
	uint8_t key_len;
	uint8_t tcp_flags;
	uint64_t octets;
};

/* IPv4 (RFC 791), as PacketParser._ipv4. Returns 1 with a packet, 0 when truncated. */
static int parse_ipv4(const uint8_t *d, size_t len, uint32_t in_if, unsigned int direction,
		      struct packet *pkt, struct call_counts *cc)
{
	size_t ihl = (size_t)(d[0] & 0x0F) * 4;
	unsigned int tos = d[1], total = be16(d + 2), frag = be16(d + 6), proto = d[9];
	unsigned int sport = 0, dport = 0, flags = 0;

	if (ihl < 20 || total < ihl) {
		cc->trunc++;
		cc->trunc_bytes += total;
		return 0;
	}
	if (frag & 0x3FFF) { /* MF set or offset != 0 */
		cc->frag++;
		if (frag & 0x1FFF) /* not the first fragment: no transport header */
			goto done;
	}
	if (port_protocol(proto)) {
		if (len >= ihl + 4) {
			sport = be16(d + ihl);
			dport = be16(d + ihl + 2);
			if (proto == IPPROTO_TCP_ && len >= ihl + 14)
				flags = d[ihl + 13];
		}
	} else if (proto == IPPROTO_ICMP_ && len >= ihl + 2) {
		dport = (unsigned int)d[ihl] << 8 | d[ihl + 1];
	}
done:
	key_head(pkt->key, 4, proto, tos, direction, in_if, sport, dport);
	memcpy(pkt->key + 12, d + 12, 8); /* source and destination address */
	pkt->key_len = KEY4_LEN;
	pkt->tcp_flags = (uint8_t)flags;
	pkt->octets = total;
	return 1;
}

/* IPv6 (RFC 8200) with extension headers, as PacketParser._ipv6. Always a packet. */
static int parse_ipv6(const uint8_t *d, size_t n, uint32_t in_if, unsigned int direction,
		      struct packet *pkt, struct call_counts *cc)
{
	unsigned int tos = (be32(d) >> 20) & 0xFF, nh = d[6];
	unsigned int sport = 0, dport = 0, flags = 0;
	size_t off = 40;
	int fragmented = 0;

	for (int i = 0; i < MAX_EXT_HEADERS; i++) {
		if (ext_len8(nh)) {
			if (n < off + 2)
				break;
			nh = d[off];
			off += ((size_t)d[off + 1] + 1) * 8;
		} else if (nh == IPPROTO_FRAGMENT_) {
			if (n < off + 8)
				break;
			if (!fragmented) { /* a packet is one fragment, however many headers */
				cc->frag++;
				fragmented = 1;
			}
			unsigned int offset_flags = be16(d + off + 2);

			nh = d[off];
			off += 8;
			if (offset_flags & 0xFFF8) /* non-first fragment */
				goto done;
		} else if (nh == IPPROTO_AH_) {
			if (n < off + 2)
				break;
			nh = d[off];
			off += ((size_t)d[off + 1] + 2) * 4;
		} else {
			break;
		}
	}
	if (port_protocol(nh)) {
		if (n >= off + 4) {
			sport = be16(d + off);
			dport = be16(d + off + 2);
			if (nh == IPPROTO_TCP_ && n >= off + 14)
				flags = d[off + 13];
		}
	} else if (nh == IPPROTO_ICMPV6_ && n >= off + 2) {
		dport = (unsigned int)d[off] << 8 | d[off + 1];
	}
done:
	key_head(pkt->key, 6, nh, tos, direction, in_if, sport, dport);
	memcpy(pkt->key + 12, d + 8, 32); /* source and destination address */
	pkt->key_len = KEY6_LEN;
	pkt->tcp_flags = (uint8_t)flags;
	pkt->octets = 40 + (uint64_t)be16(d + 4);
	return 1;
}

static inline uint64_t key_hash(const uint8_t *key, size_t len)
{
	uint64_t h = len, w;

	for (size_t i = 0; i + 8 <= len; i += 8) {
		memcpy(&w, key + i, 8);
		h = (h ^ w) * 0x9E3779B97F4A7C15ULL;
		h ^= h >> 29;
	}
	w = host32(key + len - 4); /* 20 and 44 both end on a 4-byte tail */
	h = (h ^ w) * 0x9E3779B97F4A7C15ULL;
	return h ^ (h >> 32);
}

/* Double the hash table (GIL released: PyMem_Raw* only). Returns 0, or -1 without memory. */
static int grow(Aggregator *self)
{
	size_t cap = self->slots_cap ? self->slots_cap * 2 : FIRST_SLOTS, mask = cap - 1;
	uint32_t *slots;
	struct flow *flows;

	if (cap / 2 > UINT32_MAX - 1)
		return -1;
	slots = PyMem_RawCalloc(cap, sizeof(*slots));
	if (!slots)
		return -1;
	flows = PyMem_RawRealloc(self->flows, cap / 2 * sizeof(*flows));
	if (!flows) {
		PyMem_RawFree(slots);
		return -1;
	}
	for (size_t i = 0; i < self->nflows; i++) { /* rehash */
		size_t s = (size_t)flows[i].hash & mask;

		while (slots[s])
			s = (s + 1) & mask;
		slots[s] = (uint32_t)(i + 1);
		flows[i].slot = (uint32_t)s;
	}
	PyMem_RawFree(self->slots);
	self->slots = slots;
	self->flows = flows;
	self->slots_cap = cap;
	return 0;
}

/* Add one packet to its flow. Returns 0, or -1 when the table cannot grow. */
static int account(Aggregator *self, const struct packet *pkt, int64_t ts, uint32_t out_if)
{
	uint64_t h = key_hash(pkt->key, pkt->key_len);
	size_t mask, s;
	struct flow *f;

	if ((self->nflows + 1) * 2 > self->slots_cap && grow(self) < 0)
		return -1;
	mask = self->slots_cap - 1;
	for (s = (size_t)h & mask; self->slots[s]; s = (s + 1) & mask) {
		f = &self->flows[self->slots[s] - 1];
		if (f->hash == h && f->key_len == pkt->key_len &&
		    memcmp(f->key, pkt->key, pkt->key_len) == 0)
			goto found;
	}
	f = &self->flows[self->nflows];
	self->slots[s] = (uint32_t)++self->nflows;
	memcpy(f->key, pkt->key, pkt->key_len);
	f->key_len = pkt->key_len;
	f->slot = (uint32_t)s;
	f->hash = h;
	f->tcp_flags = 0;
	f->out_if = 0;
	f->packets = f->octets = 0;
	f->first_ns = f->last_ns = ts;
found:
	f->packets++;
	f->octets += pkt->octets;
	if (ts < f->first_ns)
		f->first_ns = ts;
	if (ts > f->last_ns)
		f->last_ns = ts;
	f->tcp_flags |= pkt->tcp_flags;
	if (out_if)
		f->out_if = out_if;
	return 0;
}

/* The values of one message's attributes (absent ones keep these defaults). */
struct msg_attrs {
	unsigned int hook;
	uint32_t indev, outdev;
	uint64_t sec, usec;
	int has_seq;
	uint32_t seq;
	const uint8_t *payload;
	size_t payload_len;
};

/* Read attributes from a to end as NflogDecoder._walk. Returns 1 with a payload, else 0. */
static int read_attrs(const uint8_t *buf, size_t a, size_t end, struct msg_attrs *m)
{
	memset(m, 0, sizeof(*m));
	while (a + NLA_HDRLEN <= end) {
		size_t alen = host16(buf + a), vlen = alen - NLA_HDRLEN;
		unsigned int atype = host16(buf + a + 2) & NLA_TYPE_MASK;
		const uint8_t *v = buf + a + NLA_HDRLEN;

		if (alen < NLA_HDRLEN || a + alen > end)
			return 0;
		switch (atype) {
		case NFULA_PAYLOAD:
			m->payload = v;
			m->payload_len = vlen;
			return 1;
		case NFULA_PACKET_HDR: /* __be16 hw_protocol; __u8 hook; __u8 _pad */
			if (vlen == 4)
				m->hook = v[2];
			break;
		case NFULA_IFINDEX_INDEV:
			if (vlen == 4)
				m->indev = be32(v);
			break;
		case NFULA_IFINDEX_OUTDEV:
			if (vlen == 4)
				m->outdev = be32(v);
			break;
		case NFULA_TIMESTAMP: /* __aligned_be64 sec; __aligned_be64 usec */
			if (vlen == 16) {
				m->sec = be64(v);
				m->usec = be64(v + 8);
			}
			break;
		case NFULA_SEQ:
			if (vlen == 4) {
				m->seq = be32(v);
				m->has_seq = 1;
			}
			break;
		}
		a += (alen + 3) & ~(size_t)3;
	}
	return 0;
}

/* Wall-clock ns of a message: NFULA_TIMESTAMP, else the receive time. */
static inline int64_t message_time(const struct msg_attrs *m, int64_t recv_ns)
{
	int64_t t;

	if (!m->sec || m->sec > (uint64_t)TS_SEC_MAX)
		return recv_ns;
	t = (int64_t)m->sec * 1000000000LL;
	if (m->usec > (uint64_t)((INT64_MAX - t) / 1000))
		return recv_ns;
	return t + (int64_t)m->usec * 1000;
}

/* Sequence bookkeeping, as NflogDecoder.decode. */
static inline void track_seq(Aggregator *self, uint32_t seq, struct call_counts *cc)
{
	uint32_t expect = (uint32_t)self->expect_seq;

	if (seq != expect) {
		uint32_t gap = seq - expect;

		if (gap < 0x80000000u) {
			cc->seq_gaps += gap;
			self->seq_gaps += gap;
		}
		else
			self->seq_resets++;
	}
	self->expect_seq = (uint32_t)(seq + 1);
}

/* One message's payload into the flow table. Returns -1 only when memory ran out. */
static int packet_message(Aggregator *self, const struct msg_attrs *m, int64_t recv_ns,
			  struct call_counts *cc)
{
	const uint8_t *d = m->payload;
	size_t len = m->payload_len;
	uint32_t in_if = m->indev;
	unsigned int direction = DIRECTION_INGRESS;
	struct packet pkt;
	int ok;

	if (m->hook >= NF_INET_LOCAL_OUT && !m->indev) { /* OUTPUT, POSTROUTING */
		in_if = m->outdev;
		direction = DIRECTION_EGRESS;
	}
	if (len >= 20 && d[0] >> 4 == 4) {
		ok = parse_ipv4(d, len, in_if, direction, &pkt, cc);
	} else if (len >= 40 && d[0] >> 4 == 6) {
		ok = parse_ipv6(d, len, in_if, direction, &pkt, cc);
	} else {
		cc->trunc++; /* no IP header */
		ok = 0;
	}
	if (!ok)
		return 0;
	cc->packets++;
	return account(self, &pkt, message_time(m, recv_ns), m->outdev);
}

/* Walk buf[:n] into the flow table (GIL released). */
static void walk(Aggregator *self, const uint8_t *buf, size_t n, int64_t recv_ns)
{
	struct call_counts *cc = &self->acc;
	size_t off = 0;
	struct msg_attrs m;

	while (off + NLMSG_HDRLEN <= n) {
		size_t mlen = host32(buf + off);
		unsigned int mtype = host16(buf + off + 4);
		size_t start = off + NLMSG_HDRLEN + NFGENMSG_LEN, end = off + mlen;

		if (mlen < NLMSG_HDRLEN || mlen > n - off) {
			self->malformed++;
			return;
		}
		off += (mlen + 3) & ~(size_t)3;
		if (mtype != MSG_PACKET) /* NLMSG_DONE ends each batch; acks; nothing else */
			continue;
		if (!read_attrs(buf, start, end, &m)) {
			self->malformed++;
			continue;
		}
		self->messages++;
		if (m.has_seq)
			track_seq(self, m.seq, cc);
		if (packet_message(self, &m, recv_ns, cc) < 0)
			self->nomem = 1;
	}
	for (size_t i = off; i < n; i++) { /* anything but zero padding left over */
		if (buf[i]) {
			self->malformed++;
			return;
		}
	}
}

static PyObject *flow_row(const struct flow *f)
{
	PyObject *row = PyTuple_New(7);
	PyObject *items[7];

	if (!row)
		return NULL;
	items[0] = PyBytes_FromStringAndSize((const char *)f->key, f->key_len);
	items[1] = PyLong_FromUnsignedLongLong(f->packets);
	items[2] = PyLong_FromUnsignedLongLong(f->octets);
	items[3] = PyLong_FromLongLong(f->first_ns);
	items[4] = PyLong_FromLongLong(f->last_ns);
	items[5] = PyLong_FromLong(f->tcp_flags);
	items[6] = PyLong_FromUnsignedLong(f->out_if);
	for (int i = 0; i < 7; i++) {
		if (!items[i]) {
			for (int j = 0; j < 7; j++)
				Py_XDECREF(items[j]);
			Py_DECREF(row);
			return NULL;
		}
	}
	for (int i = 0; i < 7; i++)
		PyTuple_SET_ITEM(row, i, items[i]);
	return row;
}

PyDoc_STRVAR(feed_doc,
	     "feed(buffer, n, recv_ns) -> packets\n\n"
	     "Decode the NFLOG messages in buffer[:n] and add their packets to the flow table;\n"
	     "returns how many packets this buffer held (trunc not included).\n"
	     "recv_ns: wall-clock receive time, for messages without NFULA_TIMESTAMP.");

static PyObject *Aggregator_feed(Aggregator *self, PyObject *args)
{
	Py_buffer view;
	Py_ssize_t n;
	long long recv_ns;
	uint64_t before = self->acc.packets;

	if (!PyArg_ParseTuple(args, "y*nL:feed", &view, &n, &recv_ns))
		return NULL;
	if (n < 0 || n > view.len) {
		PyBuffer_Release(&view);
		return PyErr_Format(PyExc_ValueError, "n=%zd outside the buffer (0-%zd)", n,
				    view.len);
	}
	if (self->busy) {
		PyBuffer_Release(&view);
		PyErr_SetString(PyExc_RuntimeError, "feed() is already running on this object");
		return NULL;
	}
	self->busy = 1;
	Py_BEGIN_ALLOW_THREADS
	walk(self, view.buf, (size_t)n, recv_ns);
	Py_END_ALLOW_THREADS
	self->busy = 0;
	PyBuffer_Release(&view);
	if (self->nomem) {
		self->nomem = 0;
		return PyErr_NoMemory();
	}
	return PyLong_FromUnsignedLongLong(self->acc.packets - before);
}

PyDoc_STRVAR(take_doc,
	     "take() -> (flows, packets, trunc, frag, trunc_bytes, seq_gaps)\n\n"
	     "Everything fed since the last take, and start over. flows: list of\n"
	     "(key, packets, octets, first_ns, last_ns, tcp_flags, out_if) in the order of each\n"
	     "key's first packet; the counts are those of the same buffers.");

static PyObject *Aggregator_take(Aggregator *self, PyObject *Py_UNUSED(ignored))
{
	struct call_counts *cc = &self->acc;
	PyObject *rows, *out;

	if (self->busy) {
		PyErr_SetString(PyExc_RuntimeError, "feed() is running on this object");
		return NULL;
	}
	rows = PyList_New((Py_ssize_t)self->nflows);
	if (!rows)
		return NULL;
	for (size_t i = 0; i < self->nflows; i++) {
		PyObject *row = flow_row(&self->flows[i]);

		if (!row) {
			Py_DECREF(rows);
			return NULL;
		}
		PyList_SET_ITEM(rows, (Py_ssize_t)i, row);
	}
	out = Py_BuildValue("(NKKKKK)", rows, (unsigned long long)cc->packets,
			    (unsigned long long)cc->trunc, (unsigned long long)cc->frag,
			    (unsigned long long)cc->trunc_bytes, (unsigned long long)cc->seq_gaps);
	if (!out)
		return NULL;
	for (size_t i = 0; i < self->nflows; i++) /* clear only the slots in use */
		self->slots[self->flows[i].slot] = 0;
	self->nflows = 0;
	memset(cc, 0, sizeof(*cc));
	return out;
}

PyDoc_STRVAR(decode_doc,
	     "decode(buffer, n, recv_ns) -> (flows, packets, trunc, frag, trunc_bytes, seq_gaps)\n\n"
	     "feed() one buffer, then take().");

static PyObject *Aggregator_decode(Aggregator *self, PyObject *args)
{
	PyObject *fed = Aggregator_feed(self, args);

	if (!fed)
		return NULL;
	Py_DECREF(fed);
	return Aggregator_take(self, NULL);
}

static int Aggregator_init(Aggregator *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {NULL};

	if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Aggregator", kwlist))
		return -1;
	if (self->busy) {
		PyErr_SetString(PyExc_RuntimeError, "feed() is running on this object");
		return -1;
	}
	self->expect_seq = 0; /* a fresh instance numbers its packets from 0 */
	self->messages = self->seq_gaps = self->seq_resets = self->malformed = 0;
	for (size_t i = 0; i < self->nflows; i++)
		self->slots[self->flows[i].slot] = 0;
	self->nflows = 0;
	memset(&self->acc, 0, sizeof(self->acc));
	return 0;
}

static void Aggregator_dealloc(Aggregator *self)
{
	PyMem_RawFree(self->flows);
	PyMem_RawFree(self->slots);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Aggregator_methods[] = {
	{"feed", (PyCFunction)Aggregator_feed, METH_VARARGS, feed_doc},
	{"take", (PyCFunction)Aggregator_take, METH_NOARGS, take_doc},
	{"decode", (PyCFunction)Aggregator_decode, METH_VARARGS, decode_doc},
	{NULL, NULL, 0, NULL},
};

static PyMemberDef Aggregator_members[] = {
	{"expect_seq", T_ULONGLONG, offsetof(Aggregator, expect_seq), READONLY,
	 "next expected NFULA_SEQ"},
	{"messages", T_ULONGLONG, offsetof(Aggregator, messages), READONLY,
	 "NFULNL_MSG_PACKET messages with a payload (packets + trunc)"},
	{"seq_gaps", T_ULONGLONG, offsetof(Aggregator, seq_gaps), READONLY,
	 "packets the kernel logged that never arrived"},
	{"seq_resets", T_ULONGLONG, offsetof(Aggregator, seq_resets), READONLY,
	 "times the sequence jumped backwards (instance re-created)"},
	{"malformed", T_ULONGLONG, offsetof(Aggregator, malformed), READONLY,
	 "messages or buffer tails whose lengths did not add up (skipped)"},
	{NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(Aggregator_doc,
	     "Aggregator()\n\n"
	     "Decodes the receive buffers of one NFLOG group into per-flow sums. Holds the\n"
	     "group's sequence state and cumulative counters; one per reader thread.");

static PyTypeObject AggregatorType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "netflow_agent.plugins.ingest_nflog._nflog.Aggregator",
	.tp_basicsize = sizeof(Aggregator),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = Aggregator_doc,
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Aggregator_init,
	.tp_dealloc = (destructor)Aggregator_dealloc,
	.tp_methods = Aggregator_methods,
	.tp_members = Aggregator_members,
};

static struct PyModuleDef nflog_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "_nflog",
	.m_doc = "NFLOG receive buffers -> per-flow sums, in C (see _nflog.c).",
	.m_size = -1,
};

PyMODINIT_FUNC PyInit__nflog(void)
{
	PyObject *m;

	if (PyType_Ready(&AggregatorType) < 0)
		return NULL;
	m = PyModule_Create(&nflog_module);
	if (!m)
		return NULL;
	if (PyModule_AddObjectRef(m, "Aggregator", (PyObject *)&AggregatorType) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
