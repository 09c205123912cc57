// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * _nflog.c - the NFLOG per-packet loop in C (plugins.ingest_nflog._nflog, optional).
 *
 * Aggregator.feed(buffer, n, recv_ns) walks the netlink messages of one receive buffer,
 * reads each NFULNL_MSG_PACKET's attributes (include/uapi/linux/netfilter/nfnetlink_log.h),
 * parses the IP header of the payload and adds the packet to its flow in a C hash table, with
 * the GIL released. Aggregator.take() then returns one row per flow for everything fed since
 * the last take (a reader feeds every datagram waiting on its socket, then takes once), so
 * Python sees one row per flow and burst instead of one tuple per packet. Under a flood of
 * new flows, where no packet finds its flow held, the table switches to append mode for a
 * few cycles (APPEND_*): each packet is its own row, not hashed; the cache sums the rows.
 * Aggregator.serve() is the reader's receive loop around feed(): it waits for the socket,
 * reads every waiting datagram and pauses coalesce_ms, all with the GIL released, until the
 * sums are due or its timeout passes (the reader thread runs Python once per emit).
 * Aggregator.read() is one read round without the wait, for tests and benches.
 *
 * Semantics are exactly those of the Python path, which stays the reference:
 *   - netlink walk: plugins/ingest_nflog/netlink.py NflogDecoder.decode/_walk (messages
 *     that are not NFULNL_MSG_PACKET are skipped, a length that does not fit ends the
 *     buffer as malformed, non-zero bytes after the last message are malformed);
 *   - IP parse: agent/packet.py PacketParser (RFC 791, RFC 8200 extension headers,
 *     fragments, ICMP type << 8 | code in the destination port, trunc);
 *   - fragment tracking (frag_timeout_ns > 0): agent/fragments.py FragmentTracker, rule for
 *     rule (first fragments in insertion order, refreshed in place, the oldest forgotten when
 *     full; early fragments held in arrival order; released ones accounted before the packet
 *     that released them);
 *   - tunnels (decapsulate mask): agent/tunnels.py DecapParser and agent/linklayer.py ip_after
 *     (outer flow accounted before the inner one with keep_outer);
 *   - keys: agent/model.py KEY4/KEY6 (make_key), byte for byte.
 * tests/ingest_nflog/test_c_decoder.py compares both on recorded and fuzzed buffers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/socket.h>

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
#define NFULA_IFINDEX_PHYSINDEV 6
#define NFULA_IFINDEX_PHYSOUTDEV 7
#define NFULA_PAYLOAD 9
#define NFULA_SEQ 12
#define NFULA_HWTYPE 15
#define NFULA_HWHEADER 16
#define NFULA_VLAN 20
#define NFULA_VLAN_PROTO 1
#define NFULA_VLAN_TCI 2
#define ARPHRD_ETHER 1
#define NF_INET_LOCAL_OUT 3

/* agent/model.py: flow key layout and directions */
#define KEY_LEN 44 /* one width for both versions: IPv4 addresses zero-padded to 16 bytes */
/* With layer-2 fields on (Aggregator l2 mask), a block after the base key, part of the flow's
 * identity (decoders.py L2_DTYPE): destination MAC[6], source MAC[6], VLAN TCI be16,
 * EtherType of the IP packet be16, bridge port in be32, bridge port out be32. A flow whose
 * packet got no block (released fragments, outer flows of tunnels) has it all zero. */
#define L2_LEN 24
#define KEY6_LEN (KEY_LEN + L2_LEN)
#define L2_MAC 1 /* [flow] mac */
#define L2_VLAN 2 /* [flow] vlan */
#define L2_PHYS 4 /* [flow] physdev = "export" */
#define L2_OVERRIDE 8 /* [flow] physdev = "override": bridge ports replace the interfaces */
#define L2_KEYED (L2_MAC | L2_VLAN | L2_PHYS)
#define DIRECTION_INGRESS 0
#define DIRECTION_EGRESS 1

/* netinet/in.h protocol numbers (agent/packet.py) */
/* the longest packet a length field may claim: GSO_MAX_SIZE rounded up (packet.py) */
#define MAX_PACKET_LEN (512 * 1024)
#define IPPROTO_HOPOPTS_ 0
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_DCCP_ 33
#define IPPROTO_ROUTING_ 43
#define IPPROTO_FRAGMENT_ 44
#define IPPROTO_AH_ 51
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_NONE_ 59
#define IPPROTO_DSTOPTS_ 60
#define IPPROTO_SCTP_ 132
#define IPPROTO_UDPLITE_ 136
#define MAX_EXT_HEADERS 8

#define FIRST_SLOTS 512 /* hash slots at the first packet; doubled when half full */
/* row buffers take() keeps for reuse (each up to TAKE_LIMIT rows, 1.6 MB): a pipeline that
 * keeps up holds at most one batch while the next is taken; more in flight get fresh ones */
#define TAKE_POOL 2
/* the most rows a pooled buffer has room for beyond the take at hand (decoders.py
 * TAKE_LIMIT: the reader's largest take), and an appending fill's room without a limit */
#define POOL_ROWS 16384
/* Append mode (a flood of new flows, issue 14): a cycle of the table (from empty to empty
 * again) of at least `hold` packets (the Aggregator's init argument: the reader's hold,
 * component.py _HOLD_FLOWS; 0: no cycle decides) fed in more than one round (feed() or a
 * read round that received) in which at most one packet in APPEND_SUMMED summed into a flow
 * already held makes the next APPEND_CYCLES cycles append each packet as its own row (no
 * hash, no probe: the cache sums them); the cycle after is hashed again to see whether
 * summing pays again. So only a cycle that filled the table with distinct flows decides,
 * never a single read round however large (64 datagrams of qthreshold packets, up to
 * 1 MiB and up to RECV_BATCH - 1 datagrams more: the rest of the recvmmsg() that crossed
 * it), such as the first of a flood after an idle reader, whose packets are each flow's
 * first even where the flows then repeat (W1). */
#define APPEND_SUMMED 16
#define APPEND_CYCLES 15
/* the cache's time columns are int64 ns: a timestamp beyond that is garbage */
#define TS_SEC_MAX (INT64_MAX / 1000000000LL)
/* datagrams read per recvmmsg() call (read_socket) */
#define RECV_BATCH 8
/* the largest receive buffer (RECV_BATCH datagrams of read()/serve()'s bufsize): 32 MiB,
 * 4 MiB a datagram (a netlink datagram is at most nlbufsiz, 128 KiB, or one packet) */
#define RBUF_MAX ((size_t)32 << 20)
#define BUFSIZE_MAX ((Py_ssize_t)(RBUF_MAX / RECV_BATCH))
/* the CPU's cache line (x86-64, arm64): prefetch_flow() touches each line of a flow */
#define CACHE_LINE 64
/* hashed mode: packets parsed, hashed and their slot's line prefetched before any of them is
 * summed (the slots and a table of 8,192 flows outgrow the 512 KiB L2: one miss per packet
 * on the slot, one or two on the flow, each waited for in turn); the flow of the packet
 * PREFETCH_AHEAD places on is prefetched while the current one is summed */
#define PREFETCH_QUEUE 16
#define PREFETCH_AHEAD 6

/* One flow of the buffers fed since the last take. */
struct flow {
	uint8_t key[KEY6_LEN];
	uint8_t key_len;
	uint8_t tcp_flags; /* OR of the packets' TCP flags */
	uint32_t out_if; /* last non-zero output interface */
	uint32_t slot; /* where the hash table points at it (unset in append mode) */
	uint64_t hash; /* key_hash() of the key (unset in append mode) */
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

/* One parsed packet. */
struct packet {
	uint8_t key[KEY6_LEN];
	uint8_t key_len;
	uint8_t tcp_flags;
	uint64_t octets;
};

/* A fragment's identity (agent/fragments.py): RFC 791 (src, dst, proto, id) or RFC 8200
 * (src, dst, id, with proto 0); zero-padded so that it hashes and compares as bytes. */
struct frag_key {
	uint8_t version;
	uint8_t proto;
	uint8_t pad[2];
	uint32_t id;
	uint8_t src[16];
	uint8_t dst[16];
};

/* A first fragment's protocol and ports, kept until deadline (FragmentTracker.firsts). */
struct frag_first {
	struct frag_key k;
	int64_t deadline;
	int32_t next; /* next entry in the same hash bucket, -1 = none */
	uint32_t bucket;
	uint16_t sport, dport;
	uint8_t proto;
};

/* A non-first fragment waiting for its first one (FragmentTracker.held). */
struct frag_held {
	struct frag_key k;
	struct packet pkt;
	int64_t ts, deadline;
	uint32_t out_if;
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
	size_t taken; /* flows[:taken] already returned by a bounded take() */
	uint8_t *rbuf; /* read()'s receive buffer, reused (allocated at the first read) */
	size_t rbuf_len; /* per datagram: rbuf holds RECV_BATCH of them */
	/* read() and serve(), cumulative and live (updated per datagram, GIL released) */
	unsigned long long read_datagrams, read_packets, read_enobufs, read_cut, read_rounds;
	int64_t resume_at; /* CLOCK_MONOTONIC ns: serve()'s next read waits until then */
	uint32_t *slots; /* open addressing: flow index + 1, 0 = empty */
	size_t slots_cap; /* a power of two, or 0 before the first packet */
	int nomem; /* a packet was lost for want of memory (reported as MemoryError) */
	int busy; /* feed() running with the GIL released */
	/* options (Aggregator keywords) */
	int64_t frag_timeout_ns; /* > 0: fragments = "track" */
	uint32_t frag_cap, held_cap;
	unsigned int decap_mask; /* TUNNEL_* bits */
	int keep_outer;
	unsigned int l2; /* L2_* bits */
	/* fragment tracking: a ring of first fragments in insertion order, hashed by identity */
	struct frag_first *firsts;
	int32_t *fbuckets;
	uint32_t fbucket_mask, fhead, fcount;
	struct frag_held *held; /* arrival order */
	uint32_t nheld;
	unsigned long long frag_tracked, frag_held, frag_unmatched, decapsulated, decap_failed;
	/* take()'s row buffers, reused once nobody holds them (take_buffer) */
	PyObject *pool[TAKE_POOL];
	unsigned long long pool_reused, pool_fresh; /* batches handed on in a reused / new one */
	size_t take_limit; /* the last take()'s limit (0: none): a pooled buffer's row capacity */
	/* append mode with native rows (`native`, no layer-2 key): the walk writes each packet's
	 * FlowBatch row straight into `fill` (a bytearray of the pool, one reference more so
	 * take_buffer never picks it), fill_cap rows, fill_rows written, fill_taken returned by
	 * a bounded take; a take of all of them returns a view of it (no copy) and the next
	 * cycle fills another. Pending rows: fill[fill_taken:fill_rows], then flows[taken:]
	 * (rows go to `flows` once the fill is full or absent, until the table empties). */
	int native;
	int fill_wanted; /* a take() ended a cycle with more to append; drop_buffers() clears */
	PyObject *fill;
	uint8_t *fill_data;
	size_t fill_cap, fill_rows, fill_taken;
	int fill_fresh; /* the fill was allocated, not reused (counted when handed on) */
	/* append mode: cycles left to append (0: hashed); the packets and the rows the takes
	 * of the current cycle returned (counted per take, not per packet) and its rounds
	 * (feed() calls, read rounds that received); the fewest packets a cycle decides with */
	unsigned int append_left;
	uint64_t cycle_packets, cycle_flows, cycle_rounds;
	Py_ssize_t append_hold;
	unsigned long long append_cycles, hashed_cycles; /* cycles done in each mode */
	/* key_hash()'s seeds, per instance from getrandom() (init): crafted addresses and
	 * ports cannot be chosen to share a probe chain (a flow-table or fragment-table DoS) */
	uint64_t seed_a, seed_b;
	/* hashed mode: packets parsed but not yet summed, in arrival order (queue_packet);
	 * always empty outside a walk (walk_buffer flushes, add_packet flushes first) */
	struct queued {
		struct packet pkt;
		int64_t ts;
		uint64_t hash;
		uint32_t out_if;
	} queue[PREFETCH_QUEUE];
	unsigned int nqueued;
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

/* Extension headers walked to the transport behind them, as packet.py's _EXT_LEN8: not the
 * Mobility Header (135), which is the upper layer (its Payload Proto is always 59). */
static inline int ext_len8(unsigned int nh)
{
	return nh == IPPROTO_HOPOPTS_ || nh == IPPROTO_ROUTING_ || nh == IPPROTO_DSTOPTS_;
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

static inline uint64_t key_hash(const uint8_t *key, size_t len, uint64_t seed_a,
				uint64_t seed_b)
{
	/* two independent multiply chains over alternate words, then one mix: half the
	 * latency of a single chain over the 5 (or 8) words (the chain was a quarter of the
	 * walk at 4,000 concurrent flows); each chain starts from the instance's seed, so
	 * which keys share a slot is not known outside (not a keyed PRF: hardening only) */
	uint64_t a = seed_a ^ len, b = seed_b, w;
	size_t i = 0;

	for (; i + 16 <= len; i += 16) {
		memcpy(&w, key + i, 8);
		a = (a ^ w) * 0x9E3779B97F4A7C15ULL;
		a ^= a >> 29;
		memcpy(&w, key + i + 8, 8);
		b = (b ^ w) * 0xC2B2AE3D27D4EB4FULL;
		b ^= b >> 29;
	}
	if (i + 8 <= len) {
		memcpy(&w, key + i, 8);
		a = (a ^ w) * 0x9E3779B97F4A7C15ULL;
		a ^= a >> 29;
	}
	w = host32(key + len - 4); /* 44 and 68 both end on a 4-byte tail */
	b = (b ^ w) * 0xC2B2AE3D27D4EB4FULL;
	a = (a ^ (b >> 31 | b << 33)) * 0x9E3779B97F4A7C15ULL;
	return a ^ (a >> 32);
}

/* One row of the default schema's FlowBatch record array (decoders.py NATIVE_DTYPE,
 * agent/schema.py record_dtype without optional fields) from a 44-byte key and its sums:
 * the key's head with in_if and the ports in native order, the addresses, the sums, then
 * tcp_flags, out_if, end_reason, src_mask, dst_mask and next_hop (zero). */
#define NATIVE_LEN 100
static inline void native_row(const uint8_t *key, uint64_t packets, uint64_t octets,
			      int64_t first_ns, int64_t last_ns, uint8_t tcp_flags,
			      uint32_t out_if, uint8_t *out)
{
	uint32_t in_if = be32(key + 4);
	uint16_t sport = be16(key + 8), dport = be16(key + 10);

	memcpy(out, key, 4);
	memcpy(out + 4, &in_if, 4);
	memcpy(out + 8, &sport, 2);
	memcpy(out + 10, &dport, 2);
	memcpy(out + 12, key + 12, 32);
	memcpy(out + 44, &packets, 8);
	memcpy(out + 52, &octets, 8);
	memcpy(out + 60, &first_ns, 8);
	memcpy(out + 68, &last_ns, 8);
	out[76] = tcp_flags;
	memcpy(out + 77, &out_if, 4);
	memset(out + 81, 0, NATIVE_LEN - 81);
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
	for (size_t i = 0; !self->append_left && i < self->nflows; i++) { /* rehash */
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

/* Sum one packet into its flow, found by its key's hash h in the slots (hashed mode: the
 * table has room for it). Inlined: it is most of the per-packet work. */
static inline __attribute__((always_inline)) int sum_hashed(Aggregator *self,
							   const struct packet *pkt, int64_t ts,
							   uint32_t out_if, uint64_t h)
{
	int base = pkt->key_len == KEY_LEN;
	size_t mask, s;
	struct flow *f;

	mask = self->slots_cap - 1;
	for (s = (size_t)h & mask; self->slots[s]; s = (s + 1) & mask) {
		f = &self->flows[self->slots[s] - 1];
		if (f->hash == h && f->key_len == pkt->key_len &&
		    (base ? memcmp(f->key, pkt->key, KEY_LEN) : memcmp(f->key, pkt->key, KEY6_LEN))
		    == 0)
			goto found;
	}
	f = &self->flows[self->nflows];
	self->slots[s] = (uint32_t)++self->nflows;
	if (base)
		memcpy(f->key, pkt->key, KEY_LEN);
	else
		memcpy(f->key, pkt->key, KEY6_LEN);
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

/* Add one packet to its flow. Returns 0, or -1 when the table cannot grow. Inlined: it is
 * most of the per-packet work. */
static inline __attribute__((always_inline)) int account(Aggregator *self, const struct packet *pkt, int64_t ts, uint32_t out_if)
{
	/* the two key widths as constants: the hash unrolled, the compare and the copy inlined
	 * (a copy of variable length was a `rep movsq`, a tenth of this loop's time) */
	int base = pkt->key_len == KEY_LEN;
	uint64_t h;
	struct flow *f;

	if (self->append_left && !self->nflows && self->fill_rows < self->fill_cap) {
		/* the packet's FlowBatch row straight into the fill buffer: take() hands it on
		 * as it is (native: 44-byte keys only) */
		native_row(pkt->key, 1, pkt->octets, ts, ts, pkt->tcp_flags, out_if,
			   self->fill_data + self->fill_rows++ * NATIVE_LEN);
		return 0;
	}
	if ((self->nflows + 1) * 2 > self->slots_cap && grow(self) < 0)
		return -1;
	if (self->append_left) { /* a row of its own: the slots stay empty, hash unused */
		f = &self->flows[self->nflows++];
		if (base)
			memcpy(f->key, pkt->key, KEY_LEN);
		else
			memcpy(f->key, pkt->key, KEY6_LEN);
		f->key_len = pkt->key_len;
		f->tcp_flags = pkt->tcp_flags;
		f->out_if = out_if;
		f->packets = 1;
		f->octets = pkt->octets;
		f->first_ns = f->last_ns = ts;
		return 0;
	}
	h = base ? key_hash(pkt->key, KEY_LEN, self->seed_a, self->seed_b)
		 : key_hash(pkt->key, KEY6_LEN, self->seed_a, self->seed_b);
	return sum_hashed(self, pkt, ts, out_if, h);
}

/* Prefetch the lines of the flow the slot of hash h points at (the slot's line was
 * prefetched when the packet was queued; a hint only: the sum probes again). */
static inline void prefetch_flow(const Aggregator *self, uint64_t h)
{
	uint32_t at;

	if (!self->slots_cap)
		return;
	at = self->slots[h & (self->slots_cap - 1)];
	if (at) {
		uintptr_t start = (uintptr_t)&self->flows[at - 1];
		uintptr_t last = start + sizeof(struct flow) - 1;

		/* a 120-byte flow spans up to three lines: the middle one holds the key's tail
		 * and key_len, which the compare reads */
		for (uintptr_t line = start & ~(uintptr_t)(CACHE_LINE - 1); line <= last;
		     line += CACHE_LINE)
			__builtin_prefetch((const void *)line, 1);
	}
}

/* Sum the queued packets in arrival order (hashed mode), each flow's lines prefetched
 * PREFETCH_AHEAD packets before it is summed. The flows and sums are those of account()
 * per packet: the slots are probed again at the sum (an earlier packet of the queue may
 * have inserted a flow or grown the table since the prefetch). */
static __attribute__((noinline)) void flush_queue(Aggregator *self)
{
	unsigned int n = self->nqueued;

	self->nqueued = 0;
	for (unsigned int i = 0; i < n && i < PREFETCH_AHEAD; i++)
		prefetch_flow(self, self->queue[i].hash);
	for (unsigned int i = 0; i < n; i++) {
		const struct queued *q = &self->queue[i];

		if (i + PREFETCH_AHEAD < n)
			prefetch_flow(self, self->queue[i + PREFETCH_AHEAD].hash);
		if ((self->nflows + 1) * 2 > self->slots_cap && grow(self) < 0) {
			self->nomem = 1;
			continue;
		}
		sum_hashed(self, &q->pkt, q->ts, q->out_if, q->hash);
	}
}

/* Count one packet and account it: hashed, queued (its key hashed now, its slot's line
 * prefetched) and summed when the queue is full or the walk ends; appending, at once. */
static inline __attribute__((always_inline)) void queue_packet(Aggregator *self,
								  const struct packet *pkt,
								  int64_t ts, uint32_t out_if)
{
	struct queued *q;

	self->acc.packets++;
	if (self->append_left) { /* no queue: the row as it comes (account) */
		if (account(self, pkt, ts, out_if) < 0)
			self->nomem = 1;
		return;
	}
	if (self->nqueued == PREFETCH_QUEUE)
		flush_queue(self);
	q = &self->queue[self->nqueued++];
	q->pkt = *pkt;
	q->ts = ts;
	q->out_if = out_if;
	q->hash = pkt->key_len == KEY_LEN
			  ? key_hash(pkt->key, KEY_LEN, self->seed_a, self->seed_b)
			  : key_hash(pkt->key, KEY6_LEN, self->seed_a, self->seed_b);
	if (self->slots_cap)
		__builtin_prefetch(&self->slots[q->hash & (self->slots_cap - 1)], 0);
}

/* Count and account one packet (fragments released, outer flows: off the hot path), after
 * the packets queued before it. */
static __attribute__((noinline)) void add_packet(Aggregator *self, const struct packet *pkt, int64_t ts,
			      uint32_t out_if)
{
	if (self->nqueued)
		flush_queue(self);
	self->acc.packets++;
	if (account(self, pkt, ts, out_if) < 0)
		self->nomem = 1;
}

/* The table was emptied by take(): choose how the next cycle accounts its packets (the
 * slots are all empty here in either mode). Hashed, a cycle whose packets hardly ever found
 * their flow held (a flood of new flows: each packet a row, summed by the cache anyway)
 * switches to append mode for APPEND_CYCLES cycles; then one hashed cycle measures again. */
static void next_cycle(Aggregator *self)
{
	if (self->append_left) {
		self->append_cycles++;
		self->append_left--;
	} else {
		self->hashed_cycles++;
		if (self->append_hold && self->cycle_packets >= (uint64_t)self->append_hold &&
		    self->cycle_rounds > 1 &&
		    (self->cycle_packets - self->cycle_flows) * APPEND_SUMMED <= self->cycle_packets)
			self->append_left = APPEND_CYCLES;
	}
	self->cycle_packets = self->cycle_flows = self->cycle_rounds = 0;
}

/* Empty the hash slots of the flows held (only those in use: the table may be large). In
 * append mode the rows have no slot and the slots are all empty already. */
static void clear_slots(Aggregator *self)
{
	for (size_t i = 0; !self->append_left && i < self->nflows; i++)
		self->slots[self->flows[i].slot] = 0;
}

/* Forget the flows a bounded take() already returned, so that new packets never add to a
 * flow that left (GIL held or busy: the table is ours). Keeps the others in order. */
static void drop_taken(Aggregator *self)
{
	size_t mask = self->slots_cap - 1, keep = self->nflows - self->taken;

	if (self->fill_taken) { /* a copy of them was returned: the fill is not shared */
		memmove(self->fill_data, self->fill_data + self->fill_taken * NATIVE_LEN,
			(self->fill_rows - self->fill_taken) * NATIVE_LEN);
		self->fill_rows -= self->fill_taken;
		self->fill_taken = 0;
	}
	if (!self->taken)
		return;
	clear_slots(self);
	memmove(self->flows, self->flows + self->taken, keep * sizeof(*self->flows));
	for (size_t i = 0; !self->append_left && i < keep; i++) { /* re-insert, as grow() does */
		size_t s = (size_t)self->flows[i].hash & mask;

		while (self->slots[s])
			s = (s + 1) & mask;
		self->slots[s] = (uint32_t)(i + 1);
		self->flows[i].slot = (uint32_t)s;
	}
	self->nflows = keep;
	self->taken = 0;
}

/* --- link layer: agent/linklayer.py ip_after, same results ------------------------------ */

#define ETH_P_IP_ 0x0800
#define ETH_P_IPV6_ 0x86DD
#define ETH_P_MPLS_UC_ 0x8847
#define ETH_P_MPLS_MC_ 0x8848
#define ETH_P_PPP_SES_ 0x8864
#define ETH_P_TEB_ 0x6558
#define ETH_P_ERSPAN2_ 0x88BE
#define ETH_P_ERSPAN3_ 0x22EB
#define MAX_VLAN_TAGS 8
#define MAX_MPLS_LABELS 16
#define MAX_NESTING 2
#define L2_NOT_IP (-1)
#define L2_TRUNCATED (-2)
#define L2_TOO_DEEP (-3)

static inline int vlan_tpid(unsigned int t)
{
	return t == 0x8100 || t == 0x88A8 || t == 0x9100 || t == 0x9200 || t == 0x9300;
}

static long ip_after(const uint8_t *f, size_t n, unsigned int etype, size_t off, int depth);

static long ethernet_ip_offset(const uint8_t *f, size_t n, size_t off, int depth)
{
	if (n < off + 14)
		return L2_TRUNCATED;
	return ip_after(f, n, be16(f + off + 12), off + 14, depth);
}

static long mpls_payload(const uint8_t *f, size_t n, size_t off, int depth)
{
	int i;

	for (i = 0; i < MAX_MPLS_LABELS; i++) {
		int bottom;

		if (n < off + 4)
			return L2_TRUNCATED;
		bottom = f[off + 2] & 1;
		off += 4;
		if (bottom)
			break;
	}
	if (i == MAX_MPLS_LABELS)
		return L2_TOO_DEEP;
	if (n <= off)
		return L2_TRUNCATED;
	switch (f[off] >> 4) {
	case 4:
	case 6:
		return (long)off;
	case 0: /* pseudowire control word, then an Ethernet frame */
		if (depth >= MAX_NESTING)
			return L2_TOO_DEEP;
		return ethernet_ip_offset(f, n, off + 4, depth + 1);
	}
	return L2_NOT_IP;
}

static long pppoe_payload(const uint8_t *f, size_t n, size_t off, int depth)
{
	unsigned int proto;

	if (n < off + 8)
		return L2_TRUNCATED;
	if (f[off] != 0x11 || f[off + 1] != 0)
		return L2_NOT_IP;
	proto = be16(f + off + 6);
	if (proto == 0x0021 || proto == 0x0057)
		return (long)(off + 8);
	if (proto == 0x0281)
		return mpls_payload(f, n, off + 8, depth);
	return L2_NOT_IP;
}

static long snap_payload(const uint8_t *f, size_t n, size_t off, int depth)
{
	static const uint8_t snap[6] = {0xAA, 0xAA, 0x03, 0, 0, 0};
	unsigned int etype;

	if (n < off + 8)
		return L2_TRUNCATED;
	if (memcmp(f + off, snap, sizeof(snap)) != 0)
		return L2_NOT_IP;
	etype = be16(f + off + 6);
	if (etype < 0x0600)
		return L2_NOT_IP;
	return ip_after(f, n, etype, off + 8, depth);
}

static long ip_after(const uint8_t *f, size_t n, unsigned int etype, size_t off, int depth)
{
	int i;

	if (etype == ETH_P_IP_ || etype == ETH_P_IPV6_)
		return (long)off;
	for (i = 0; i < MAX_VLAN_TAGS; i++) {
		if (!vlan_tpid(etype))
			break;
		if (n < off + 4)
			return L2_TRUNCATED;
		etype = be16(f + off + 2);
		off += 4;
		if (etype == ETH_P_IP_ || etype == ETH_P_IPV6_)
			return (long)off;
	}
	if (i == MAX_VLAN_TAGS && vlan_tpid(etype))
		return L2_TOO_DEEP;
	if (etype == ETH_P_MPLS_UC_ || etype == ETH_P_MPLS_MC_)
		return mpls_payload(f, n, off, depth);
	if (etype == ETH_P_PPP_SES_)
		return pppoe_payload(f, n, off, depth);
	if (etype < 0x0600)
		return snap_payload(f, n, off, depth);
	return L2_NOT_IP;
}

/* --- tunnels: agent/tunnels.py find_inner, same results ---------------------------------- */

#define TUNNEL_GRE 1 /* bits in agent/tunnels.py TUNNELS order */
#define TUNNEL_VXLAN 2
#define TUNNEL_GENEVE 4
#define TUNNEL_IPIP 8
#define IPPROTO_IPIP_ 4
#define IPPROTO_IPV6_ 41
#define IPPROTO_GRE_ 47
#define MAX_DECAP_DEPTH 2

/* Protocol of an unfragmented packet and where its transport header starts, or -1. */
static int transport_offset(const uint8_t *d, size_t n, size_t *off)
{
	unsigned int nh;
	size_t o = 40;

	if (d[0] >> 4 == 4) {
		size_t ihl = (size_t)(d[0] & 0x0F) * 4;

		if (be16(d + 6) & 0x3FFF || n < ihl)
			return -1;
		*off = ihl;
		return d[9];
	}
	nh = d[6];
	for (int i = 0; i < 8; i++) {
		if (!ext_len8(nh))
			break;
		if (n < o + 2)
			return -1;
		nh = d[o];
		o += ((size_t)d[o + 1] + 1) * 8;
	}
	if (nh == IPPROTO_FRAGMENT_)
		return -1;
	*off = o;
	return (int)nh;
}

static long vxlan_inner(const uint8_t *d, size_t n, size_t off)
{
	if (n < off + 8 || !(d[off] & 0x08)) /* the I flag: the VNI is valid */
		return -1;
	return ethernet_ip_offset(d, n, off + 8, 0);
}

static long geneve_inner(const uint8_t *d, size_t n, size_t off)
{
	unsigned int proto;
	size_t payload;

	if (n < off + 8 || d[off] >> 6) /* version 0 */
		return -1;
	proto = be16(d + off + 2);
	payload = off + 8 + (size_t)(d[off] & 0x3F) * 4;
	if (proto == ETH_P_TEB_)
		return ethernet_ip_offset(d, n, payload, 0);
	return ip_after(d, n, proto, payload, 0);
}

static long erspan_inner(const uint8_t *d, size_t n, size_t pos, unsigned int proto,
			 unsigned int sequenced)
{
	if (proto == ETH_P_ERSPAN2_ && !sequenced) /* type I: the frame follows GRE */
		return ethernet_ip_offset(d, n, pos, 0);
	if (n < pos + 12)
		return -1;
	if (proto == ETH_P_ERSPAN2_)
		return ethernet_ip_offset(d, n, pos + 8, 0);
	return ethernet_ip_offset(d, n, pos + 12 + ((d[pos + 11] & 1) ? 8 : 0), 0);
}

static long gre_inner(const uint8_t *d, size_t n, size_t off)
{
	unsigned int flags, proto;
	size_t pos;

	if (n < off + 4)
		return -1;
	flags = be16(d + off);
	if (flags & 0x0007) /* version 1 (PPTP) and others */
		return -1;
	proto = be16(d + off + 2);
	pos = off + 4 + ((flags & 0x8000) ? 4 : 0);
	if (flags & 0x2000) { /* key */
		if (n < pos + 4)
			return -1;
		pos += 4;
	}
	if (flags & 0x1000) /* sequence number */
		pos += 4;
	if (proto == ETH_P_TEB_)
		return ethernet_ip_offset(d, n, pos, 0);
	if (proto == ETH_P_ERSPAN2_ || proto == ETH_P_ERSPAN3_)
		return erspan_inner(d, n, pos, proto, flags & 0x1000);
	return ip_after(d, n, proto, pos, 0);
}

/* Offset of the inner IP packet of a tunnel packet, or < 0. */
static long find_inner(const uint8_t *d, size_t n, unsigned int mask)
{
	size_t off = 0;
	int proto = transport_offset(d, n, &off);

	if (proto == IPPROTO_UDP_ && n >= off + 8) {
		unsigned int dport = be16(d + off + 2);

		if ((dport == 4789 || dport == 8472) && (mask & TUNNEL_VXLAN))
			return vxlan_inner(d, n, off + 8);
		if (dport == 6081 && (mask & TUNNEL_GENEVE))
			return geneve_inner(d, n, off + 8);
		return -1;
	}
	if (proto == IPPROTO_GRE_ && (mask & TUNNEL_GRE))
		return gre_inner(d, n, off);
	if ((proto == IPPROTO_IPIP_ || proto == IPPROTO_IPV6_) && (mask & TUNNEL_IPIP))
		return n > off ? (long)off : -1;
	return -1;
}

/* Whether a parsed packet's key names a tunnel this aggregator decapsulates. */
static inline int tunnel_candidate(unsigned int mask, const struct packet *pkt)
{
	unsigned int proto = pkt->key[1], dport = (unsigned int)pkt->key[10] << 8 | pkt->key[11];

	if (proto == IPPROTO_GRE_)
		return mask & TUNNEL_GRE;
	if (proto == IPPROTO_IPIP_ || proto == IPPROTO_IPV6_)
		return mask & TUNNEL_IPIP;
	if (proto != IPPROTO_UDP_)
		return 0;
	if (dport == 4789 || dport == 8472)
		return mask & TUNNEL_VXLAN;
	return dport == 6081 && (mask & TUNNEL_GENEVE);
}

/* --- fragments: agent/fragments.py FragmentTracker, same rules --------------------------- */

static inline int64_t deadline_after(int64_t ts, int64_t timeout)
{
	return ts > INT64_MAX - timeout ? INT64_MAX : ts + timeout;
}

static inline void set_ports(struct packet *pkt, unsigned int proto, unsigned int sport,
			     unsigned int dport)
{
	pkt->key[1] = (uint8_t)proto;
	pkt->key[8] = (uint8_t)(sport >> 8);
	pkt->key[9] = (uint8_t)sport;
	pkt->key[10] = (uint8_t)(dport >> 8);
	pkt->key[11] = (uint8_t)dport;
}

static inline uint32_t frag_bucket(const Aggregator *self, const struct frag_key *k)
{
	return (uint32_t)key_hash((const uint8_t *)k, sizeof(*k), self->seed_a, self->seed_b) &
	       self->fbucket_mask;
}

static int32_t first_find(const Aggregator *self, const struct frag_key *k, uint32_t bucket)
{
	for (int32_t i = self->fbuckets[bucket]; i >= 0; i = self->firsts[i].next)
		if (memcmp(&self->firsts[i].k, k, sizeof(*k)) == 0)
			return i;
	return -1;
}

/* Forget the oldest first fragment. */
static void first_pop(Aggregator *self)
{
	uint32_t i = self->fhead;
	int32_t *p = &self->fbuckets[self->firsts[i].bucket];

	while (*p != (int32_t)i)
		p = &self->firsts[*p].next;
	*p = self->firsts[i].next;
	self->fhead = (self->fhead + 1) % self->frag_cap;
	self->fcount--;
}

/* Account the held fragments of k with these ports, in arrival order; keep the others. */
static void release_waiting(Aggregator *self, const struct frag_key *k, unsigned int proto,
			    unsigned int sport, unsigned int dport)
{
	uint32_t j = 0;

	for (uint32_t i = 0; i < self->nheld; i++) {
		struct frag_held *h = &self->held[i];

		if (memcmp(&h->k, k, sizeof(*k)) == 0) {
			set_ports(&h->pkt, proto, sport, dport);
			self->frag_tracked++;
			add_packet(self, &h->pkt, h->ts, h->out_if);
		} else {
			if (j != i)
				self->held[j] = *h;
			j++;
		}
	}
	self->nheld = j;
}

/* A first fragment: remember its ports, release the fragments that waited for it. */
static void frag_first(Aggregator *self, const struct frag_key *k, unsigned int proto,
		       unsigned int sport, unsigned int dport, int64_t ts)
{
	uint32_t bucket = frag_bucket(self, k);
	int32_t i = first_find(self, k, bucket);
	struct frag_first *e;

	if (i < 0) {
		if (self->fcount == self->frag_cap)
			first_pop(self);
		i = (int32_t)((self->fhead + self->fcount) % self->frag_cap);
		e = &self->firsts[i];
		e->k = *k;
		e->bucket = bucket;
		e->next = self->fbuckets[bucket];
		self->fbuckets[bucket] = i;
		self->fcount++;
	}
	e = &self->firsts[i];
	e->proto = (uint8_t)proto;
	e->sport = (uint16_t)sport;
	e->dport = (uint16_t)dport;
	e->deadline = deadline_after(ts, self->frag_timeout_ns);
	if (self->nheld)
		release_waiting(self, k, proto, sport, dport);
}

/* A non-first fragment: 1 = account pkt (with its first fragment's ports when known),
 * 0 = held until its first fragment comes. */
static int frag_later(Aggregator *self, const struct frag_key *k, struct packet *pkt,
		      int64_t ts, uint32_t out_if)
{
	int32_t i = first_find(self, k, frag_bucket(self, k));
	struct frag_held *h;

	if (i >= 0 && ts <= self->firsts[i].deadline) {
		const struct frag_first *e = &self->firsts[i];

		self->frag_tracked++;
		set_ports(pkt, e->proto, e->sport, e->dport);
		return 1;
	}
	if (self->nheld >= self->held_cap) {
		self->frag_unmatched++;
		return 1;
	}
	h = &self->held[self->nheld++];
	h->k = *k;
	h->pkt = *pkt;
	h->ts = ts;
	h->out_if = out_if;
	h->deadline = deadline_after(ts, self->frag_timeout_ns);
	self->frag_held++;
	return 0;
}

/* Account held fragments older than now (all when now < 0) with ports 0; forget old firsts. */
static void frag_release(Aggregator *self, int64_t now)
{
	uint32_t j = 0;

	for (uint32_t i = 0; i < self->nheld; i++) {
		struct frag_held *h = &self->held[i];

		if (now < 0 || h->deadline < now) {
			self->frag_unmatched++;
			add_packet(self, &h->pkt, h->ts, h->out_if);
		} else {
			if (j != i)
				self->held[j] = *h;
			j++;
		}
	}
	self->nheld = j;
	while (now >= 0 && self->fcount && self->firsts[self->fhead].deadline < now)
		first_pop(self);
}

/* --- IP: agent/packet.py PacketParser (and DecapParser), same results --------------------- */

/* Where a message's packets go. */
struct pctx {
	Aggregator *self;
	struct call_counts *cc;
	int64_t ts;
	uint32_t in_if, out_if;
	unsigned int direction;
	uint64_t wire_len;	/* a tunnel's inner packet: its outer's bytes from it on, for a
				 * length field of 0 (packet.py wire_len); 0 otherwise */
};

static inline void frag_key4(struct frag_key *k, const uint8_t *d)
{
	memset(k, 0, sizeof(*k));
	k->version = 4;
	k->proto = d[9];
	k->id = be16(d + 4);
	memcpy(k->src, d + 12, 4);
	memcpy(k->dst, d + 16, 4);
}

static inline void frag_key6(struct frag_key *k, const uint8_t *d, size_t frag_hdr)
{
	memset(k, 0, sizeof(*k));
	k->version = 6;
	k->id = be32(d + frag_hdr + 4);
	memcpy(k->src, d + 8, 16);
	memcpy(k->dst, d + 24, 16);
}

/* The transport ports (ICMP type/code in dport) and TCP flags at d + off. */
static inline void transport(const uint8_t *d, size_t len, size_t off, unsigned int proto,
			     unsigned int icmp, unsigned int *sport, unsigned int *dport,
			     unsigned int *flags)
{
	if (port_protocol(proto)) {
		if (len >= off + 4) {
			*sport = be16(d + off);
			*dport = be16(d + off + 2);
			if (proto == IPPROTO_TCP_ && len >= off + 14)
				*flags = d[off + 13];
		}
	} else if (proto == icmp && len >= off + 2) {
		*dport = (unsigned int)d[off] << 8 | d[off + 1];
	}
}

/* Fill pkt for an IPv4 packet with these ports and flags. */
static inline void ipv4_packet(const struct pctx *c, const uint8_t *d, uint64_t total,
			       struct packet *pkt, unsigned int sport, unsigned int dport,
			       unsigned int flags)
{
	key_head(pkt->key, 4, d[9], d[1], c->direction, c->in_if, sport, dport);
	memcpy(pkt->key + 12, d + 12, 4); /* source address, zero-padded to 16 bytes */
	memset(pkt->key + 16, 0, 12);
	memcpy(pkt->key + 28, d + 16, 4); /* destination address */
	memset(pkt->key + 32, 0, 12);
	pkt->key_len = KEY_LEN;
	pkt->tcp_flags = (uint8_t)flags;
	pkt->octets = total;
}

/* An IPv4 fragment, as PacketParser._fragment4 (out of the hot path). */
static __attribute__((noinline)) int parse_fragment4(const struct pctx *c, const uint8_t *d,
						    size_t len, size_t ihl, uint64_t total,
						    struct packet *pkt)
{
	unsigned int sport = 0, dport = 0, flags = 0;
	int track = c->self->frag_timeout_ns > 0;
	struct frag_key fk;

	c->cc->frag++;
	if (track)
		frag_key4(&fk, d);
	if (be16(d + 6) & 0x1FFF) { /* not the first fragment: no transport header */
		ipv4_packet(c, d, total, pkt, 0, 0, 0);
		return !track || frag_later(c->self, &fk, pkt, c->ts, c->out_if);
	}
	transport(d, len, ihl, d[9], IPPROTO_ICMP_, &sport, &dport, &flags);
	if (track)
		frag_first(c->self, &fk, d[9], sport, dport, c->ts);
	ipv4_packet(c, d, total, pkt, sport, dport, flags);
	return 1;
}

/* IPv4 (RFC 791), as PacketParser._ipv4. 1 with a packet to account, 0 when truncated
 * (counted) or held. */
static inline __attribute__((always_inline)) int parse_ipv4(const struct pctx *c,
							       const uint8_t *d, size_t len,
							       struct packet *pkt)
{
	size_t ihl = (size_t)(d[0] & 0x0F) * 4;
	uint64_t total = be16(d + 2);
	unsigned int sport = 0, dport = 0, flags = 0;

	/* a total length of 0 is a BIG TCP packet over 65,535 bytes: NFLOG copied at most 65,531
	 * of them and no attribute says how long it was, so it is counted as truncated rather
	 * than accounted with a wrong length (packet.py _offloaded_length); a tunnel's inner
	 * packet takes its outer's bytes from it on (wire_len) */
	if (!total && ihl >= 20 && len >= ihl && c->wire_len >= ihl)
		total = c->wire_len;
	if (ihl < 20 || total < ihl) {
		c->cc->trunc++;
		c->cc->trunc_bytes += total;
		return 0;
	}
	if (be16(d + 6) & 0x3FFF) /* MF set or offset != 0 */
		return parse_fragment4(c, d, len, ihl, total, pkt);
	transport(d, len, ihl, d[9], IPPROTO_ICMP_, &sport, &dport, &flags);
	ipv4_packet(c, d, total, pkt, sport, dport, flags);
	return 1;
}

/* Fill pkt for an IPv6 packet with these protocol, ports and flags. */
static inline void ipv6_packet(const struct pctx *c, const uint8_t *d, struct packet *pkt,
			       uint64_t octets, unsigned int nh, unsigned int sport,
			       unsigned int dport, unsigned int flags)
{
	key_head(pkt->key, 6, nh, (be32(d) >> 20) & 0xFF, c->direction, c->in_if, sport, dport);
	memcpy(pkt->key + 12, d + 8, 32); /* source and destination address */
	pkt->key_len = KEY_LEN;
	pkt->tcp_flags = (uint8_t)flags;
	pkt->octets = octets;
}

/* The length of an IPv6 packet whose payload length is 0 from its Jumbo Payload option
 * (RFC 2675: type 0xC2, 4 bytes, in a hop-by-hop header right after the fixed header); 0
 * when there is none or its length is no jumbogram's (<= 65,535) or over MAX_PACKET_LEN
 * (packet.py _jumbo_length). */
static __attribute__((noinline)) uint64_t jumbo_length(const uint8_t *d, size_t n)
{
	size_t end, off = 42;

	if (d[6] != IPPROTO_HOPOPTS_ || n < 48)
		return 0;
	end = 40 + ((size_t)d[41] + 1) * 8;
	if (end > n)
		end = n;
	while (off < end) {
		if (d[off] == 0) { /* Pad1 */
			off++;
			continue;
		}
		if (off + 2 > end)
			break;
		if (d[off] == 0xC2 && d[off + 1] == 4 && off + 6 <= end) {
			uint64_t jumbo = be32(d + off + 2);

			return jumbo > 65535 && jumbo <= MAX_PACKET_LEN - 40 ? 40 + jumbo : 0;
		}
		off += 2 + (size_t)d[off + 1];
	}
	return 0;
}

/* IPv6 (RFC 8200) with extension headers, as PacketParser._ipv6. 1 with a packet, 0 held. */
static inline __attribute__((always_inline)) int parse_ipv6(const struct pctx *c,
							       const uint8_t *d, size_t n,
							       struct packet *pkt)
{
	unsigned int nh = d[6], sport = 0, dport = 0, flags = 0;
	uint64_t octets = 40 + (uint64_t)be16(d + 4);
	size_t off = 40;
	int fragmented = 0, track = 0;
	struct frag_key fk;

	/* payload length 0 with a payload: a jumbogram, or IPv6 BIG TCP over 65,535 bytes whose
	 * length nothing in the NFLOG message says (counted as truncated, as IPv4's) */
	if (octets == 40 && nh != IPPROTO_NONE_) {
		octets = jumbo_length(d, n);
		if (!octets)
			octets = c->wire_len;
		if (!octets) {
			c->cc->trunc++;
			return 0;
		}
	}
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
				c->cc->frag++;
				fragmented = 1;
				track = c->self->frag_timeout_ns > 0;
				if (track)
					frag_key6(&fk, d, off);
			}
			unsigned int offset_flags = be16(d + off + 2);

			nh = d[off];
			off += 8;
			if (offset_flags & 0xFFF8) { /* non-first fragment */
				ipv6_packet(c, d, pkt, octets, nh, 0, 0, 0);
				return !track || frag_later(c->self, &fk, pkt, c->ts, c->out_if);
			}
		} else if (nh == IPPROTO_AH_) {
			if (n < off + 2)
				break;
			nh = d[off];
			off += ((size_t)d[off + 1] + 2) * 4;
		} else {
			break;
		}
	}
	transport(d, n, off, nh, IPPROTO_ICMPV6_, &sport, &dport, &flags);
	if (track)
		frag_first(c->self, &fk, nh, sport, dport, c->ts);
	ipv6_packet(c, d, pkt, octets, nh, sport, dport, flags);
	return 1;
}

static int parse_ip(const struct pctx *c, const uint8_t *d, size_t len, struct packet *pkt,
		    int depth);

/* A tunnel packet (pkt parsed from d): its inner packet instead, as DecapParser. */
static int decapsulate(const struct pctx *c, const uint8_t *d, size_t len, struct packet *pkt,
		       int depth)
{
	Aggregator *self = c->self;
	long inner_off = find_inner(d, len, self->decap_mask);
	uint64_t trunc = c->cc->trunc, trunc_bytes = c->cc->trunc_bytes;
	struct packet inner;
	struct pctx ic = *c;
	int ok;

	if (inner_off < 0 || (size_t)inner_off > len) {
		self->decap_failed++;
		return 1;
	}
	/* an inner length field of 0: the outer's accounted bytes from the inner header on */
	ic.wire_len = pkt->octets > (uint64_t)inner_off ? pkt->octets - (uint64_t)inner_off : 0;
	ok = parse_ip(&ic, d + inner_off, len - (size_t)inner_off, &inner, depth + 1);
	if (!ok && c->cc->trunc != trunc) { /* no IP packet inside after all */
		c->cc->trunc = trunc;
		c->cc->trunc_bytes = trunc_bytes;
		self->decap_failed++;
		return 1;
	}
	self->decapsulated++;
	if (self->keep_outer)
		add_packet(self, pkt, c->ts, c->out_if);
	if (!ok)
		return 0;
	*pkt = inner;
	return 1;
}

/* One IP packet, no tunnels: 1 with the packet to account in *pkt, 0 when truncated
 * (counted) or held. Inlined into the per-message path. */
static inline __attribute__((always_inline)) int parse_packet(const struct pctx *c,
								 const uint8_t *d, size_t len,
								 struct packet *pkt)
{
	if (len >= 20 && d[0] >> 4 == 4)
		return parse_ipv4(c, d, len, pkt);
	if (len >= 40 && d[0] >> 4 == 6)
		return parse_ipv6(c, d, len, pkt);
	c->cc->trunc++; /* no IP header */
	return 0;
}

/* As parse_packet, and a tunnel packet gives its inner packet (DecapParser.parse). */
static int parse_ip(const struct pctx *c, const uint8_t *d, size_t len, struct packet *pkt,
		    int depth)
{
	int ok = parse_packet(c, d, len, pkt);

	if (!ok || !c->self->decap_mask || depth >= MAX_DECAP_DEPTH ||
	    !tunnel_candidate(c->self->decap_mask, pkt))
		return ok;
	return decapsulate(c, d, len, pkt, depth);
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
	/* layer 2 (read only with an l2 mask) */
	uint32_t physin, physout;
	unsigned int hwtype;
	const uint8_t *hwheader; /* 14 bytes when set */
	int has_tci;
	uint16_t tci;
};

/* NFULA_VLAN's nested attributes (16 bytes: TCI and PROTO, any order), as _vlan_tags. */
static void read_vlan(const uint8_t *v, size_t vlen, struct msg_attrs *m)
{
	size_t a = 0;

	while (a + NLA_HDRLEN <= vlen) {
		size_t alen = host16(v + a);

		if (alen < NLA_HDRLEN || a + alen > vlen)
			return;
		if (alen == 6 && (host16(v + a + 2) & NLA_TYPE_MASK) == NFULA_VLAN_TCI) {
			m->tci = be16(v + a + NLA_HDRLEN);
			m->has_tci = 1;
		}
		a += (alen + 3) & ~(size_t)3;
	}
}

/* Read attributes from a to end as NflogDecoder._walk. Returns 1 with a payload, else 0. */
/* The layer-2 attributes (only read with an l2 mask). */
static __attribute__((noinline)) void read_l2_attr(unsigned int atype, const uint8_t *v,
						   size_t vlen, struct msg_attrs *m)
{
	switch (atype) {
	case NFULA_IFINDEX_PHYSINDEV:
		if (vlen == 4)
			m->physin = be32(v);
		break;
	case NFULA_IFINDEX_PHYSOUTDEV:
		if (vlen == 4)
			m->physout = be32(v);
		break;
	case NFULA_HWTYPE:
		if (vlen == 2)
			m->hwtype = be16(v);
		break;
	case NFULA_HWHEADER:
		if (vlen == 14)
			m->hwheader = v;
		break;
	case NFULA_VLAN:
		if (vlen == 16)
			read_vlan(v, vlen, m);
		break;
	}
}

static inline __attribute__((always_inline)) int read_attrs(const uint8_t *buf, size_t a,
							     size_t end, struct msg_attrs *m,
							     unsigned int l2)
{
	/* the layer-2 values only when they are read (l2 = 0 folds this to the base part) */
	memset(m, 0, l2 ? sizeof(*m) : offsetof(struct msg_attrs, physin));
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
		default:
			if (l2)
				read_l2_attr(atype, v, vlen, m);
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

/* The layer-2 block after the message's packet's key (NflogL2.parse and L2KeyPacker). */
static __attribute__((noinline)) void l2_block(unsigned int l2, const struct msg_attrs *m,
						  struct packet *pkt)
{
	uint8_t *b = pkt->key + KEY_LEN;

	memset(b, 0, L2_LEN);
	if ((l2 & L2_MAC) && m->hwtype == ARPHRD_ETHER && m->hwheader)
		memcpy(b, m->hwheader, 12);
	if ((l2 & L2_VLAN) && m->has_tci) {
		b[12] = (uint8_t)(m->tci >> 8);
		b[13] = (uint8_t)m->tci;
	}
	if (l2 & (L2_MAC | L2_VLAN)) {
		unsigned int etype = pkt->key[0] == 6 ? ETH_P_IPV6_ : ETH_P_IP_;

		b[14] = (uint8_t)(etype >> 8);
		b[15] = (uint8_t)etype;
	}
	if (l2 & L2_PHYS) {
		for (int i = 0; i < 4; i++) {
			b[16 + i] = (uint8_t)(m->physin >> (24 - 8 * i));
			b[20 + i] = (uint8_t)(m->physout >> (24 - 8 * i));
		}
	}
	pkt->key_len = KEY_LEN + L2_LEN;
}

/* One message's payload into the flow table (self->nomem when memory ran out). */
static inline __attribute__((always_inline)) void packet_message(
	Aggregator *self, const struct msg_attrs *m, int64_t recv_ns, struct call_counts *cc,
	unsigned int l2)
{
	uint32_t indev = m->indev, outdev = m->outdev;
	struct pctx c = {self, cc, message_time(m, recv_ns), indev, outdev, DIRECTION_INGRESS, 0};
	struct packet pkt;

	if (l2 & L2_OVERRIDE) { /* NflogL2.parse */
		c.in_if = indev = m->physin ? m->physin : indev;
		c.out_if = outdev = m->physout ? m->physout : outdev;
	}
	if (m->hook >= NF_INET_LOCAL_OUT && !indev) { /* OUTPUT, POSTROUTING */
		c.in_if = outdev;
		c.direction = DIRECTION_EGRESS;
	}
	if (!parse_packet(&c, m->payload, m->payload_len, &pkt))
		return;
	if (self->decap_mask && tunnel_candidate(self->decap_mask, &pkt) &&
	    !decapsulate(&c, m->payload, m->payload_len, &pkt, 0))
		return;
	if (l2 & L2_KEYED)
		l2_block(l2, m, &pkt);
	queue_packet(self, &pkt, c.ts, outdev); /* add_packet, inlined on the hot path */
}

/* Walk buf[:n] into the flow table (GIL released). */
static inline __attribute__((always_inline)) void walk_any(Aggregator *self, const uint8_t *buf,
							     size_t n, int64_t recv_ns,
							     unsigned int l2)
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
		if (!read_attrs(buf, start, end, &m, l2)) {
			self->malformed++;
			continue;
		}
		self->messages++;
		if (m.has_seq)
			track_seq(self, m.seq, cc);
		packet_message(self, &m, recv_ns, cc, l2);
	}
	for (size_t i = off; i < n; i++) { /* anything but zero padding left over */
		if (buf[i]) {
			self->malformed++;
			return;
		}
	}
}

/* walk_any compiled twice: without layer-2 fields (l2 = 0 folds every test away: the
 * defaults run the code they ran before the fields existed) and with them. */
static void walk(Aggregator *self, const uint8_t *buf, size_t n, int64_t recv_ns)
{
	walk_any(self, buf, n, recv_ns, 0);
}

static __attribute__((noinline)) void walk_l2(Aggregator *self, const uint8_t *buf, size_t n,
					       int64_t recv_ns)
{
	walk_any(self, buf, n, recv_ns, self->l2);
}

/* One flow as a packed record of take()'s buffer (decoders.py TAKE_DTYPE, native order);
 * with layer-2 fields, the key's block follows (zeros for a 44-byte key). */
#define RECORD_LEN 84
static void flow_record(const struct flow *f, uint8_t *out, int l2)
{
	uint32_t out_if = f->out_if;

	if (l2) {
		memset(out + RECORD_LEN, 0, L2_LEN);
		memcpy(out + RECORD_LEN, f->key + KEY_LEN, (size_t)f->key_len - KEY_LEN);
	}
	memcpy(out, f->key, KEY_LEN);
	memcpy(out + 44, &f->packets, 8);
	memcpy(out + 52, &f->octets, 8);
	memcpy(out + 60, &f->first_ns, 8);
	memcpy(out + 68, &f->last_ns, 8);
	memcpy(out + 76, &out_if, 4);
	out[80] = f->tcp_flags;
	memset(out + 81, 0, 3);
}

/* One flow as a row of the default schema's FlowBatch record array (native_row). */
static void flow_native(const struct flow *f, uint8_t *out)
{
	native_row(f->key, f->packets, f->octets, f->first_ns, f->last_ns, f->tcp_flags,
		   f->out_if, out);
}

PyDoc_STRVAR(feed_doc,
	     "feed(buffer, n, recv_ns) -> packets\n\n"
	     "Decode the NFLOG messages in buffer[:n] and add their packets to the flow table;\n"
	     "returns how many packets this buffer held (trunc not included).\n"
	     "recv_ns: wall-clock receive time, for messages without NFULA_TIMESTAMP.");

static void ensure_fill(Aggregator *self);

/* Rows not yet returned by take(): the fill's, then the table's. */
static inline size_t pending_flows(const Aggregator *self)
{
	return self->fill_rows - self->fill_taken + self->nflows - self->taken;
}

/* Mark the object busy (feed, read, serve: the GIL is released while the table changes);
 * while appending, a row buffer for the rows first (ensure_fill). */
static int enter(Aggregator *self)
{
	if (self->busy) {
		PyErr_SetString(PyExc_RuntimeError, "feed() is already running on this object");
		return -1;
	}
	self->busy = 1;
	ensure_fill(self);
	return 0;
}

/* Leave busy; NULL with MemoryError when a packet was lost for want of memory. */
static int leave(Aggregator *self)
{
	self->busy = 0;
	if (self->nomem) {
		self->nomem = 0;
		PyErr_NoMemory();
		return -1;
	}
	return 0;
}

static void walk_buffer(Aggregator *self, const uint8_t *buf, size_t n, int64_t recv_ns)
{
	drop_taken(self);
	if (self->l2)
		walk_l2(self, buf, n, recv_ns);
	else
		walk(self, buf, n, recv_ns);
	if (self->nqueued)
		flush_queue(self);
}

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
	if (enter(self) < 0) {
		PyBuffer_Release(&view);
		return NULL;
	}
	Py_BEGIN_ALLOW_THREADS
	walk_buffer(self, view.buf, (size_t)n, recv_ns);
	Py_END_ALLOW_THREADS
	self->cycle_rounds++;
	PyBuffer_Release(&view);
	if (leave(self) < 0)
		return NULL;
	return PyLong_FromUnsignedLongLong(self->acc.packets - before);
}

/* What one read() call did. */
struct read_counts {
	unsigned long long datagrams, bytes, enobufs, cut;
	int error; /* errno of a failed recv other than EAGAIN/ENOBUFS/EINTR, else 0 */
	int full; /* stopped at a bound: more may be waiting */
};

static int64_t wall_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Walk one received datagram of n bytes (its true length: MSG_TRUNC) from buf. */
static void read_one(Aggregator *self, const uint8_t *buf, size_t n, int64_t recv_ns,
		     struct read_counts *rc)
{
	uint64_t before = self->acc.packets;

	if (n > self->rbuf_len) { /* cannot happen with our size: a gap */
		rc->cut++;
		self->read_cut++;
		n = self->rbuf_len;
	}
	walk_buffer(self, buf, n, recv_ns);
	self->read_packets += self->acc.packets - before; /* live: agent stats */
	self->read_datagrams++;
	rc->datagrams++;
	rc->bytes += (unsigned long long)n;
}

/* Read datagrams from fd into the table until none waits or a bound (GIL released): up to
 * RECV_BATCH per recvmmsg() (one system call where recv() took one per datagram), each into
 * its own rbuf_len bytes of rbuf, then walked in arrival order. A round whose first call
 * came back short (a low rate: fewer waited) takes no call more to find the socket empty;
 * a round that read RECV_BATCH or more does (one call more after two or more), as a short batch
 * may also mean recvmmsg() met an error after its first datagram and left it for the next
 * call. The bytes bound is checked after each call, so a round may read up to
 * RECV_BATCH - 1 datagrams past it. */
static void read_socket(Aggregator *self, int fd, size_t max_datagrams, size_t max_bytes,
			struct read_counts *rc)
{
	struct mmsghdr msgs[RECV_BATCH];
	struct iovec iov[RECV_BATCH];

	while (rc->datagrams < max_datagrams) {
		size_t want = max_datagrams - rc->datagrams;
		unsigned int vlen = want < RECV_BATCH ? (unsigned int)want : RECV_BATCH;
		int got;
		int64_t recv_ns;

		for (unsigned int i = 0; i < vlen; i++) {
			iov[i].iov_base = self->rbuf + (size_t)i * self->rbuf_len;
			iov[i].iov_len = self->rbuf_len;
			memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
		}
		got = recvmmsg(fd, msgs, vlen, MSG_DONTWAIT | MSG_TRUNC, NULL);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOBUFS) { /* the kernel dropped batches: seq gaps count them */
				rc->enobufs++;
				self->read_enobufs++;
				continue;
			}
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				rc->error = errno;
			return;
		}
		recv_ns = wall_ns();
		for (int i = 0; i < got; i++)
			read_one(self, iov[i].iov_base, msgs[i].msg_len, recv_ns, rc);
		if (rc->bytes >= max_bytes || self->nomem)
			break;
		if ((unsigned int)got < vlen && rc->datagrams < RECV_BATCH)
			return; /* empty, or the next round's first call reports the error */
		/* a short batch after a full one: the socket is empty, or an error (ENOBUFS on
		 * overrun) cut the batch and waits in sk_err. Netlink drops every new kernel
		 * batch while it is congested, until the reader empties the queue, so a busy
		 * round reads on: the next call finds it empty (EAGAIN), reports the error
		 * (counted once, above) and drains on, or receives more. */
	}
	rc->full = 1;
}

PyDoc_STRVAR(read_doc,
	     "read(fd, max_datagrams, max_bytes, bufsize) -> (datagrams, bytes, packets, enobufs,\n"
	     "                                              cut, errno, full)\n\n"
	     "Receive the datagrams waiting on the non-blocking NFLOG socket fd into the flow\n"
	     "table (as feed() each, with its receive time), with the GIL released, into\n"
	     "buffers of bufsize (4096 to 4 MiB) bytes per datagram, 8 of them, reused from call\n"
	     "to call (up to 8 datagrams per system call; a call that read 8 or more makes one\n"
	     "more to tell an empty socket from an error that cut its last batch short); stops\n"
	     "when none is waiting, after max_datagrams, or once\n"
	     "max_bytes were read (full = 1: more may be waiting; up to 7 datagrams past it).\n"
	     "enobufs: ENOBUFS reads (the kernel's loss shows as sequence gaps); cut: datagrams\n"
	     "longer than the buffer; errno: the error that ended the read (0: none).");

/* The receive buffer: RECV_BATCH datagrams of `size` bytes each (kept from call to call;
 * pages no datagram reached are never touched; at most RBUF_MAX in all). 0, or -1 without
 * memory (also for a size past the bound). */
static int reserve_rbuf(Aggregator *self, size_t size)
{
	uint8_t *buf;

	if (size == self->rbuf_len)
		return 0;
	if (size > RBUF_MAX / RECV_BATCH)
		return -1;
	buf = PyMem_RawRealloc(self->rbuf, size * RECV_BATCH);
	if (!buf)
		return -1;
	self->rbuf = buf;
	self->rbuf_len = size;
	return 0;
}

static PyObject *Aggregator_read(Aggregator *self, PyObject *args)
{
	int fd;
	Py_ssize_t max_datagrams, max_bytes, bufsize;
	struct read_counts rc = {0};
	uint64_t before = self->acc.packets;

	if (!PyArg_ParseTuple(args, "innn:read", &fd, &max_datagrams, &max_bytes, &bufsize))
		return NULL;
	if (fd < 0 || max_datagrams < 1 || max_bytes < 1 || bufsize < 4096 ||
	    bufsize > BUFSIZE_MAX) {
		PyErr_SetString(PyExc_ValueError, "fd >= 0, max_datagrams and max_bytes >= 1, "
				"4096 <= bufsize <= 4 MiB");
		return NULL;
	}
	if (enter(self) < 0) /* before the buffer changes: another thread may be reading */
		return NULL;
	if (reserve_rbuf(self, (size_t)bufsize) < 0) {
		self->busy = 0;
		return PyErr_NoMemory();
	}
	Py_BEGIN_ALLOW_THREADS
	read_socket(self, fd, (size_t)max_datagrams, (size_t)max_bytes, &rc);
	Py_END_ALLOW_THREADS
	self->cycle_rounds += rc.datagrams > 0;
	if (leave(self) < 0)
		return NULL;
	return Py_BuildValue("(KKKKKii)", rc.datagrams, rc.bytes,
			     (unsigned long long)(self->acc.packets - before), rc.enobufs, rc.cut,
			     rc.error, rc.full);
}

/* Monotonic ns (serve()'s deadlines). */
static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}


/* What serve() did: read()'s counts summed over its rounds, and why it returned. */
struct serve_counts {
	struct read_counts r;
	unsigned long long rounds; /* wakeups that read the socket */
	int timed_out; /* the socket stayed empty until the deadline */
	int poll_failed; /* r.error is ppoll's, not recv's */
	int euid_changed; /* the effective UID changed: returned before reading */
};

/* One wait for the socket, until `until` (CLOCK_MONOTONIC ns): 1 readable, 0 timed out,
 * -1 with errno (EINTR retried). */
static int wait_readable(int fd, int64_t until)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};

	for (;;) {
		int64_t left = until - mono_ns();
		struct timespec ts;
		int r;

		if (left < 0)
			left = 0;
		ts.tv_sec = (time_t)(left / 1000000000LL);
		ts.tv_nsec = (long)(left % 1000000000LL);
		r = ppoll(&p, 1, &ts, NULL);
		if (r >= 0)
			return r > 0;
		if (errno != EINTR)
			return -1;
	}
}

/* Sleep until `until` (CLOCK_MONOTONIC ns; EINTR: sleeps on). */
static void sleep_until(int64_t until)
{
	struct timespec ts = {.tv_sec = (time_t)(until / 1000000000LL),
			      .tv_nsec = (long)(until % 1000000000LL)};

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* How long serve() may wait now: until the sums are due while flows are pending, never past
 * the call's end. */
static inline int64_t wait_until(const Aggregator *self, int64_t end, int64_t due)
{
	return pending_flows(self) && due < end ? due : end;
}

/* serve()'s loop (GIL released): let the kernel batches gather until `resume_at` (set by a
 * round that emptied the socket, this call's or the last one's: the pause outlives the
 * call), wait, read everything waiting, again, until the sums are due (`due`, or `hold`
 * flows pending), the socket stays empty until they are due or, with nothing pending, until
 * `end` (timed_out), or `end` passed (also during the pause: the rest of it is the next
 * call's). `euid` >= 0: return before reading once the effective UID is no longer that
 * (root was dropped: the caller's thread gives up its capabilities before it parses). */
static void serve_socket(Aggregator *self, int fd, int64_t end, int64_t due, int64_t pause,
			 size_t hold, size_t max_datagrams, size_t max_bytes, long euid,
			 struct serve_counts *sc)
{
	for (;;) {
		struct read_counts rc = {0};
		int64_t until = wait_until(self, end, due), now;
		int ready;

		if (self->resume_at > mono_ns()) {
			sleep_until(self->resume_at < until ? self->resume_at : until);
			if (mono_ns() < self->resume_at)
				return; /* the sums are due, or the call's end: before the pause's */
		}
		ready = wait_readable(fd, until);
		if (ready <= 0) {
			if (ready < 0) {
				sc->r.error = errno;
				sc->poll_failed = 1;
			} else { /* not at `end` with sums held that are not due yet */
				sc->timed_out = until == due || !pending_flows(self);
			}
			return;
		}
		if (euid >= 0 && geteuid() != (uid_t)euid) {
			sc->euid_changed = 1;
			return;
		}
		read_socket(self, fd, max_datagrams, max_bytes, &rc);
		self->cycle_rounds += rc.datagrams > 0;
		sc->rounds++;
		self->read_rounds++;
		sc->r.datagrams += rc.datagrams;
		sc->r.bytes += rc.bytes;
		sc->r.enobufs += rc.enobufs;
		sc->r.cut += rc.cut;
		sc->r.full = rc.full;
		if (rc.error || self->nomem)
			sc->r.error = rc.error;
		now = mono_ns();
		/* emptied the socket: the next read waits for more kernel batches to gather */
		self->resume_at = !rc.full && pause > 0 ? now + pause : 0;
		if (rc.error || self->nomem || pending_flows(self) >= hold || now >= end ||
		    (pending_flows(self) && now >= due))
			return;
	}
}

PyDoc_STRVAR(serve_doc,
	     "serve(fd, timeout_ms, due_ms, pause_ms, hold, max_datagrams, max_bytes, bufsize,\n"
	     "      euid=-1)\n"
	     "    -> (datagrams, bytes, packets, enobufs, cut, errno, full, rounds, timed_out,\n"
	     "        poll_failed, euid_changed)\n\n"
	     "The reader's loop, with the GIL released: wait for the non-blocking NFLOG socket\n"
	     "fd, read() what is waiting (at most max_datagrams / max_bytes per round), and\n"
	     "again, until the flows fed are due to go on: due_ms from now passed while flows\n"
	     "are pending, or `hold` flows are pending; or until the socket stays empty that\n"
	     "long (timed_out = 1; with nothing pending, for timeout_ms), or timeout_ms passed\n"
	     "(a call never waits longer), or an error (errno: of the wait when poll_failed,\n"
	     "else of a receive). A round that emptied the socket makes the next read wait\n"
	     "pause_ms after it (the next kernel batches gather: one wakeup for many), in this\n"
	     "call or, when it returned first, at the start of the next one. euid >= 0: return\n"
	     "before reading once the effective UID is not euid any more (euid_changed).\n"
	     "rounds: the wakeups that read; the other values as read() returns them, summed.");

static PyObject *Aggregator_serve(Aggregator *self, PyObject *args)
{
	int fd;
	double timeout_ms, due_ms, pause_ms;
	Py_ssize_t hold, max_datagrams, max_bytes, bufsize;
	long euid = -1;
	struct serve_counts sc = {0};
	uint64_t before = self->acc.packets;
	int64_t now;

	if (!PyArg_ParseTuple(args, "idddnnnn|l:serve", &fd, &timeout_ms, &due_ms, &pause_ms,
			      &hold, &max_datagrams, &max_bytes, &bufsize, &euid))
		return NULL;
	if (fd < 0 || hold < 1 || max_datagrams < 1 || max_bytes < 1 || bufsize < 4096 ||
	    bufsize > BUFSIZE_MAX || !(timeout_ms >= 0 && timeout_ms <= 3.6e6) ||
	    !(due_ms <= 3.6e6) || !(pause_ms >= 0 && pause_ms <= 3.6e6)) {
		PyErr_SetString(PyExc_ValueError, "fd >= 0, hold, max_datagrams and max_bytes >= 1, "
				"4096 <= bufsize <= 4 MiB, 0 <= timeout_ms and pause_ms <= 3600000, "
				"due_ms <= 3600000");
		return NULL;
	}
	if (enter(self) < 0)
		return NULL;
	if (reserve_rbuf(self, (size_t)bufsize) < 0) {
		self->busy = 0;
		return PyErr_NoMemory();
	}
	now = mono_ns();
	Py_BEGIN_ALLOW_THREADS
	serve_socket(self, fd, now + (int64_t)(timeout_ms * 1e6),
		     now + (int64_t)((due_ms > 0 ? due_ms : 0) * 1e6), (int64_t)(pause_ms * 1e6),
		     (size_t)hold, (size_t)max_datagrams, (size_t)max_bytes, euid, &sc);
	Py_END_ALLOW_THREADS
	if (leave(self) < 0)
		return NULL;
	return Py_BuildValue("(KKKKKiiKiii)", sc.r.datagrams, sc.r.bytes,
			     (unsigned long long)(self->acc.packets - before), sc.r.enobufs, sc.r.cut,
			     sc.r.error, sc.r.full, sc.rounds, sc.timed_out, sc.poll_failed,
			     sc.euid_changed);
}

PyDoc_STRVAR(take_doc,
	     "take(limit=0, native=False) -> (flows, packets, trunc, frag, trunc_bytes, seq_gaps)\n\n"
	     "The flows fed since the last take, at most limit of them (0: all), and the counts\n"
	     "since the last take. Flows not returned stay for the next take (`pending`); a\n"
	     "feed() or read() in between first forgets those already returned, so a flow's\n"
	     "later packets come as a new row. flows: a writable memoryview (an empty bytearray\n"
	     "when there is none) of packed 84-byte records\n"
	     "(key[44], packets u64, octets u64, first_ns i64, last_ns i64, out_if u32,\n"
	     "tcp_flags u8, 3 zero bytes; native byte order) in the order of each key's first\n"
	     "packet (while `appending`: one row per packet, in arrival order; a cycle ends\n"
	     "when a take() empties the table and chooses the next one's mode). With layer-2\n"
	     "fields (l2 mask 1, 2 or 4) each record is followed by the\n"
	     "key's 24-byte block (decoders.py L2_DTYPE). native=True (no layer-2 fields only):\n"
	     "100-byte rows of the default FlowBatch record array instead (decoders.py\n"
	     "NATIVE_DTYPE; the default with Aggregator(native=True)). The view's buffer is\n"
	     "reused by a later take() once nothing holds the view or an array over it\n"
	     "(pool_reused, pool_fresh: batches, counted once each); a new pooled one has room\n"
	     "for `limit` rows, at most POOL_ROWS (16384). native: any truth value (not given:\n"
	     "init's native).");

/* A bytearray of the pool that nothing but the pool references: no batch, array or view of
 * it is alive (each holds a reference through the buffer export), so it can be rewritten. */
static inline int pool_free(PyObject *b)
{
	return Py_REFCNT(b) == 1 && ((PyByteArrayObject *)b)->ob_exports == 0;
}

/* A row buffer of at least `bytes` bytes (a new reference, GIL held; *fresh: whether it
 * was allocated): a pooled bytearray nobody holds any more, or a new one put in the pool
 * with room for `cap` bytes (at least `bytes`), or, once the pool's buffers are all in
 * use, a plain new bytearray of `bytes` (it goes with its batch: room would be waste). A
 * fresh buffer is a fresh mmap (the agent's M_MMAP_THRESHOLD is 128 KiB) whose ~400 pages
 * each fault when the rows are written and are unmapped when the batch is freed: a sixth
 * of the reader thread's CPU under a flood of new flows (docs/performance-history.md,
 * "NFLOG ingest: the reader's row buffers and what the rule costs the sender"). So a new
 * pooled buffer has room for the largest take (`cap`: pool_room()), not only for this
 * one: a larger take later reuses it instead of replacing it (pages never written stay
 * unmapped: no RSS for the room). `pooled`: only a buffer of the pool (NULL, no
 * exception, when all of them are held). */
static PyObject *pool_get(Aggregator *self, size_t bytes, size_t cap, int pooled, int *fresh)
{
	PyObject *b = NULL;
	int slot = -1;

	for (int i = 0; i < TAKE_POOL && !b; i++) {
		if (!self->pool[i]) {
			if (slot < 0)
				slot = i;
		} else if (pool_free(self->pool[i])) {
			if ((size_t)PyByteArray_GET_SIZE(self->pool[i]) >= bytes)
				b = self->pool[i];
			else if (slot < 0 || self->pool[slot]) /* too small: replace it */
				slot = i;
		}
	}
	if (b) {
		*fresh = 0;
		Py_INCREF(b);
		return b;
	}
	if (pooled && slot < 0)
		return NULL;
	b = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(slot >= 0 && cap > bytes ? cap : bytes));
	if (!b)
		return NULL;
	*fresh = 1;
	if (slot >= 0) { /* else every pooled buffer is still held: this one is not pooled */
		Py_INCREF(b);
		Py_XSETREF(self->pool[slot], b);
	}
	return b;
}

/* A pooled buffer's room in bytes for takes of `limit` rows (0: no limit, no room beyond
 * the take) of record_len: at most POOL_ROWS rows, so a huge limit neither overflows nor
 * reserves gigabytes. */
static inline size_t pool_room(size_t limit, size_t record_len)
{
	return (limit < POOL_ROWS ? limit : POOL_ROWS) * record_len;
}

/* Count a batch handed on in a row buffer: reused, or allocated for it (or for its rows
 * while appending). Buffers that never become a batch are not counted. */
static inline void count_batch(Aggregator *self, int fresh)
{
	if (fresh)
		self->pool_fresh++;
	else
		self->pool_reused++;
}

/* A view of the first `bytes` bytes of bytearray `b`. */
static PyObject *head_view(PyObject *b, size_t bytes)
{
	PyObject *whole = PyMemoryView_FromObject(b), *view;

	if (!whole)
		return NULL;
	view = PySequence_GetSlice(whole, 0, (Py_ssize_t)bytes);
	Py_DECREF(whole);
	return view;
}

/* take()'s rows object for `bytes` bytes (room for `cap`) and where to write them: a view
 * of a row buffer (pool_get); an empty bytearray when there is nothing to write. */
static PyObject *take_buffer(Aggregator *self, size_t bytes, size_t cap, uint8_t **dst)
{
	PyObject *b, *view;
	int fresh;

	if (!bytes) { /* nothing to write: an empty bytearray, as always */
		*dst = NULL;
		return PyByteArray_FromStringAndSize(NULL, 0);
	}
	b = pool_get(self, bytes, cap, 0, &fresh);
	if (!b)
		return NULL;
	*dst = (uint8_t *)PyByteArray_AS_STRING(b);
	view = head_view(b, bytes);
	Py_DECREF(b);
	if (view)
		count_batch(self, fresh);
	return view;
}

/* Rows for append mode's next packets go straight into a row buffer (GIL held: feed, read
 * and serve call this): with native rows while appending, a pooled buffer of take()'s
 * limit (pool_room) rows once the last one was handed on (not after drop_buffers()
 * before a take() ended a cycle: an idle reader's polls take none), and only while no
 * row of this cycle waits in `flows` (account() writes to the fill only before the
 * first: one grabbed later would sit empty, hold a pool slot and leave the take that
 * copies those rows a fresh buffer). When the pipeline still holds all of the pool's
 * buffers (or memory ran out) the rows go to `flows` as before and take() copies them
 * into a buffer then, when one may be free again: a fresh buffer now would fault all its
 * pages in (nothing lost either way). */
static void ensure_fill(Aggregator *self)
{
	size_t room = pool_room(self->take_limit ? self->take_limit : POOL_ROWS, NATIVE_LEN);

	if (!self->native || !self->append_left || !self->fill_wanted || self->fill ||
	    pending_flows(self))
		return;
	self->fill = pool_get(self, room, room, 1, &self->fill_fresh);
	if (!self->fill) {
		PyErr_Clear();
		return;
	}
	self->fill_data = (uint8_t *)PyByteArray_AS_STRING(self->fill);
	self->fill_cap = (size_t)PyByteArray_GET_SIZE(self->fill) / NATIVE_LEN;
	self->fill_rows = self->fill_taken = 0;
}

/* Let go of the fill buffer (its rows were all handed on). */
static void release_fill(Aggregator *self)
{
	Py_CLEAR(self->fill);
	self->fill_data = NULL;
	self->fill_cap = self->fill_rows = self->fill_taken = 0;
}

/* Copy `count` pending rows into dst: the fill's first (native rows), then the flows'. */
static void copy_rows(Aggregator *self, size_t count, int native, int l2, size_t record_len,
		      uint8_t *dst)
{
	size_t in_fill = self->fill_rows - self->fill_taken, n = count < in_fill ? count : in_fill;

	if (n)
		memcpy(dst, self->fill_data + self->fill_taken * NATIVE_LEN, n * NATIVE_LEN);
	for (size_t i = n; i < count; i++) {
		const struct flow *f = &self->flows[self->taken + i - n];

		if (native)
			flow_native(f, dst + i * record_len);
		else
			flow_record(f, dst + i * record_len, l2);
	}
	self->fill_taken += n;
	self->taken += count - n;
}

/* -1 with RuntimeError while feed(), read() or serve() runs on this object (without the GIL,
 * on its tables), else 0. */
static int refuse_busy(const Aggregator *self)
{
	if (!self->busy)
		return 0;
	PyErr_SetString(PyExc_RuntimeError, "feed() is running on this object");
	return -1;
}

static PyObject *Aggregator_take(Aggregator *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"limit", "native", NULL};
	struct call_counts *cc = &self->acc;
	int l2 = (self->l2 & L2_KEYED) != 0, native = self->native, whole_fill;
	Py_ssize_t limit = 0;
	size_t record_len, count;
	PyObject *rows, *out, *native_arg = NULL;
	uint8_t *dst = NULL;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nO:take", kwlist, &limit, &native_arg))
		return NULL;
	if (refuse_busy(self) < 0)
		return NULL;
	/* any truth value, as the "p" it was (None, numpy booleans); not given: init's */
	if (native_arg && (native = PyObject_IsTrue(native_arg)) < 0)
		return NULL;
	if (limit < 0 || (native && l2) || (self->native && !native)) {
		PyErr_SetString(PyExc_ValueError, "limit >= 0; native only without layer-2 fields; "
				"an Aggregator(native=True) takes native rows only");
		return NULL;
	}
	self->take_limit = (size_t)limit;
	record_len = native ? NATIVE_LEN : RECORD_LEN + (l2 ? L2_LEN : 0);
	count = pending_flows(self);
	if (limit && (size_t)limit < count)
		count = (size_t)limit;
	/* every pending row is in the fill, from its start: hand the fill itself on */
	whole_fill = count && !self->fill_taken && count == self->fill_rows;
	if (whole_fill)
		rows = head_view(self->fill, count * NATIVE_LEN);
	else
		rows = take_buffer(self, count * record_len, pool_room((size_t)limit, record_len),
				   &dst);
	if (!rows)
		return NULL;
	out = Py_BuildValue("(NKKKKK)", rows, (unsigned long long)cc->packets,
			    (unsigned long long)cc->trunc, (unsigned long long)cc->frag,
			    (unsigned long long)cc->trunc_bytes, (unsigned long long)cc->seq_gaps);
	if (!out)
		return NULL;
	if (whole_fill) { /* the view holds it now; the pool may hold it too */
		count_batch(self, self->fill_fresh);
		release_fill(self);
	}
	else
		copy_rows(self, count, native, l2, record_len, dst);
	self->cycle_packets += cc->packets; /* every packet and row of a cycle passes here once */
	self->cycle_flows += count;
	memset(cc, 0, sizeof(*cc));
	if (!pending_flows(self)) {
		clear_slots(self);
		if (self->cycle_flows) { /* an empty take (an idle reader's) is no cycle */
			next_cycle(self);
			/* nor does it want a fill: after drop_buffers() only a cycle's end does */
			self->fill_wanted = self->append_left != 0;
		}
		self->nflows = self->taken = 0;
		self->fill_rows = self->fill_taken = 0;
		if (!self->append_left)
			release_fill(self);
	}
	return out;
}

PyDoc_STRVAR(decode_doc,
	     "decode(buffer, n, recv_ns) -> (flows, packets, trunc, frag, trunc_bytes, seq_gaps)\n\n"
	     "feed() one buffer, then take() everything.");

static PyObject *Aggregator_decode(Aggregator *self, PyObject *args)
{
	PyObject *fed = Aggregator_feed(self, args), *none, *out;

	if (!fed)
		return NULL;
	Py_DECREF(fed);
	none = PyTuple_New(0);
	if (!none)
		return NULL;
	out = Aggregator_take(self, none, NULL);
	Py_DECREF(none);
	return out;
}

static PyObject *Aggregator_pending(Aggregator *self, void *Py_UNUSED(closure))
{
	return PyLong_FromSize_t(pending_flows(self));
}

PyDoc_STRVAR(release_doc,
	     "release(now_ns)\n\n"
	     "Account the fragments that waited for their first fragment since before\n"
	     "now_ns - timeout with ports 0 (all of them when now_ns < 0: the reader stops), and\n"
	     "forget first fragments older than the timeout; take() returns them.");

static PyObject *Aggregator_release(Aggregator *self, PyObject *arg)
{
	long long now = PyLong_AsLongLong(arg);

	if (now == -1 && PyErr_Occurred())
		return NULL;
	if (refuse_busy(self) < 0)
		return NULL;
	drop_taken(self);
	if (self->frag_timeout_ns > 0)
		frag_release(self, now);
	if (self->nomem) {
		self->nomem = 0;
		return PyErr_NoMemory();
	}
	Py_RETURN_NONE;
}

PyDoc_STRVAR(drop_buffers_doc,
	     "drop_buffers() -> None\n\n"
	     "Let go of take()'s reusable row buffers (those still held live on with their\n"
	     "holders): an idle or stopping reader gives their memory back.");

static PyObject *Aggregator_drop_buffers(Aggregator *self, PyObject *Py_UNUSED(ignored))
{
	if (refuse_busy(self) < 0)
		return NULL;
	/* an empty fill goes too, and no feed takes another before the next take(): an idle
	 * reader (which lets go every poll) would otherwise take a fresh one at each */
	if (self->fill_rows == self->fill_taken)
		release_fill(self);
	self->fill_wanted = 0;
	for (int i = 0; i < TAKE_POOL; i++)
		Py_CLEAR(self->pool[i]);
	Py_RETURN_NONE;
}

/* Free the fragment tables. */
static void free_fragments(Aggregator *self)
{
	PyMem_RawFree(self->firsts);
	PyMem_RawFree(self->fbuckets);
	PyMem_RawFree(self->held);
	self->firsts = NULL;
	self->fbuckets = NULL;
	self->held = NULL;
	self->fhead = self->fcount = self->nheld = 0;
}

/* Allocate the fragment tables for the options in self. Returns 0, or -1 (exception set). */
static int alloc_fragments(Aggregator *self)
{
	uint32_t buckets = 1;

	while (buckets < 2 * self->frag_cap)
		buckets <<= 1;
	self->firsts = PyMem_RawCalloc(self->frag_cap, sizeof(*self->firsts));
	self->fbuckets = PyMem_RawMalloc(buckets * sizeof(*self->fbuckets));
	self->held = PyMem_RawCalloc(self->held_cap ? self->held_cap : 1, sizeof(*self->held));
	if (!self->firsts || !self->fbuckets || !self->held) {
		free_fragments(self);
		PyErr_NoMemory();
		return -1;
	}
	memset(self->fbuckets, 0xFF, buckets * sizeof(*self->fbuckets)); /* all -1: empty */
	self->fbucket_mask = buckets - 1;
	return 0;
}

/* splitmix64's finalizer: a fallback seed from weak entropy spread over all 64 bits. */
static uint64_t mix64(uint64_t x)
{
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
	return x ^ (x >> 31);
}

/* key_hash()'s seeds for this instance: getrandom() (non-blocking), or, should the kernel
 * not give them (early boot, seccomp), the clocks and the object's address. */
static void seed_hash(Aggregator *self)
{
	uint64_t seeds[2];

	if (getrandom(seeds, sizeof(seeds), GRND_NONBLOCK) != (ssize_t)sizeof(seeds)) {
		seeds[0] = mix64((uint64_t)wall_ns() ^ (uint64_t)(uintptr_t)self);
		seeds[1] = mix64((uint64_t)mono_ns() + 0x9E3779B97F4A7C15ULL);
	}
	self->seed_a = seeds[0];
	self->seed_b = seeds[1];
}

static int Aggregator_init(Aggregator *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"frag_timeout_ns", "frag_table", "frag_held", "decapsulate",
				 "keep_outer", "l2", "hold", "native", NULL};
	long long timeout = 0;
	unsigned int table = 4096, held = 256, decap = 0, l2 = 0;
	int keep_outer = 0, native = 0;
	Py_ssize_t hold = 0;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$LIIIpInp:Aggregator", kwlist, &timeout,
					 &table, &held, &decap, &keep_outer, &l2, &hold, &native))
		return -1;
	if (refuse_busy(self) < 0)
		return -1;
	if (timeout < 0 || table < 1 || table > (1u << 24) || held > (1u << 20) || decap > 15 ||
	    l2 > 15 || hold < 0 || (native && (l2 & L2_KEYED))) {
		PyErr_SetString(PyExc_ValueError, "frag_timeout_ns >= 0, frag_table 1-2**24, "
				"frag_held 0-2**20, decapsulate and l2 4-bit masks, hold >= 0, "
				"native only without layer-2 key fields");
		return -1;
	}
	self->expect_seq = 0; /* a fresh instance numbers its packets from 0 */
	self->messages = self->seq_gaps = self->seq_resets = self->malformed = 0;
	self->read_datagrams = self->read_packets = self->read_enobufs = self->read_cut = 0;
	self->read_rounds = 0;
	self->resume_at = 0;
	clear_slots(self);
	self->nflows = self->taken = 0;
	release_fill(self);
	self->fill_wanted = 0;
	self->native = native;
	self->take_limit = 0;
	seed_hash(self); /* the table is empty: no stored hash outlives its seeds */
	self->append_left = 0;
	self->cycle_packets = self->cycle_flows = self->cycle_rounds = 0;
	self->append_hold = hold;
	self->append_cycles = self->hashed_cycles = 0;
	memset(&self->acc, 0, sizeof(self->acc));
	free_fragments(self);
	self->frag_tracked = self->frag_held = self->frag_unmatched = 0;
	self->decapsulated = self->decap_failed = 0;
	self->frag_timeout_ns = timeout;
	self->frag_cap = table;
	self->held_cap = held;
	self->decap_mask = decap;
	self->keep_outer = keep_outer;
	self->l2 = l2;
	return timeout > 0 ? alloc_fragments(self) : 0;
}

static void Aggregator_dealloc(Aggregator *self)
{
	PyMem_RawFree(self->flows);
	PyMem_RawFree(self->slots);
	PyMem_RawFree(self->rbuf);
	free_fragments(self);
	Py_CLEAR(self->fill);
	for (int i = 0; i < TAKE_POOL; i++)
		Py_CLEAR(self->pool[i]);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Aggregator_methods[] = {
	{"feed", (PyCFunction)Aggregator_feed, METH_VARARGS, feed_doc},
	{"read", (PyCFunction)Aggregator_read, METH_VARARGS, read_doc},
	{"serve", (PyCFunction)Aggregator_serve, METH_VARARGS, serve_doc},
	{"take", (PyCFunction)(void (*)(void))Aggregator_take, METH_VARARGS | METH_KEYWORDS,
	 take_doc},
	{"decode", (PyCFunction)Aggregator_decode, METH_VARARGS, decode_doc},
	{"release", (PyCFunction)Aggregator_release, METH_O, release_doc},
	{"drop_buffers", (PyCFunction)Aggregator_drop_buffers, METH_NOARGS, drop_buffers_doc},
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
	{"frag_timeout_ns", T_LONGLONG, offsetof(Aggregator, frag_timeout_ns), READONLY,
	 "fragment tracking timeout (0: non-first fragments keep ports 0)"},
	{"frag_tracked", T_ULONGLONG, offsetof(Aggregator, frag_tracked), READONLY,
	 "non-first fragments accounted with their first fragment's ports"},
	{"frag_held", T_ULONGLONG, offsetof(Aggregator, frag_held), READONLY,
	 "non-first fragments that waited for their first fragment"},
	{"frag_unmatched", T_ULONGLONG, offsetof(Aggregator, frag_unmatched), READONLY,
	 "non-first fragments accounted with ports 0 (first never seen, hold full)"},
	{"frag_waiting", T_UINT, offsetof(Aggregator, nheld), READONLY,
	 "fragments waiting now"},
	{"frag_table", T_UINT, offsetof(Aggregator, fcount), READONLY,
	 "first fragments remembered now"},
	{"decapsulate", T_UINT, offsetof(Aggregator, decap_mask), READONLY,
	 "tunnels decapsulated (bits in agent.tunnels.TUNNELS order)"},
	{"l2", T_UINT, offsetof(Aggregator, l2), READONLY,
	 "layer-2 fields: mac 1, vlan 2, physdev export 4, physdev override 8"},
	{"decapsulated", T_ULONGLONG, offsetof(Aggregator, decapsulated), READONLY,
	 "packets accounted to their inner flow"},
	{"decap_failed", T_ULONGLONG, offsetof(Aggregator, decap_failed), READONLY,
	 "tunnel packets accounted as their outer flow (fragment, no IP inside)"},
	{"read_datagrams", T_ULONGLONG, offsetof(Aggregator, read_datagrams), READONLY,
	 "datagrams read() and serve() received (live while they run)"},
	{"read_packets", T_ULONGLONG, offsetof(Aggregator, read_packets), READONLY,
	 "packets of those datagrams parsed into flows (live, per datagram)"},
	{"read_enobufs", T_ULONGLONG, offsetof(Aggregator, read_enobufs), READONLY,
	 "ENOBUFS reads of read() and serve()"},
	{"read_cut", T_ULONGLONG, offsetof(Aggregator, read_cut), READONLY,
	 "datagrams longer than the receive buffer"},
	{"read_rounds", T_ULONGLONG, offsetof(Aggregator, read_rounds), READONLY,
	 "serve()'s wakeups that read the socket (live)"},
	{"pool_reused", T_ULONGLONG, offsetof(Aggregator, pool_reused), READONLY,
	 "take()s whose rows went on in a row buffer reused (no one held it any more)"},
	{"append_cycles", T_ULONGLONG, offsetof(Aggregator, append_cycles), READONLY,
	 "table cycles (empty to empty) that appended each packet as its own row"},
	{"hashed_cycles", T_ULONGLONG, offsetof(Aggregator, hashed_cycles), READONLY,
	 "table cycles that summed packets per flow"},
	{"hold", T_PYSSIZET, offsetof(Aggregator, append_hold), READONLY,
	 "the fewest packets a cycle needs to decide on append mode (init's hold; 0: never)"},
	{"appending", T_UINT, offsetof(Aggregator, append_left), READONLY,
	 "cycles left in append mode (0: the current cycle sums per flow)"},
	{"pool_fresh", T_ULONGLONG, offsetof(Aggregator, pool_fresh), READONLY,
	 "take()s whose rows went on in a row buffer allocated for them (or for append mode's rows)"},
	{"native", T_INT, offsetof(Aggregator, native), READONLY,
	 "init's native: rows are the default FlowBatch's (appended rows written as such)"},
	{NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(Aggregator_doc,
	     "Aggregator(*, frag_timeout_ns=0, frag_table=4096, frag_held=256, decapsulate=0,\n"
	     "           keep_outer=False, l2=0, hold=0, native=False)\n\n"
	     "Decodes the receive buffers of one NFLOG group into per-flow sums. Holds the\n"
	     "group's sequence state and cumulative counters; one per reader thread.\n"
	     "frag_timeout_ns > 0 tracks fragments (agent/fragments.py); decapsulate is a\n"
	     "bit mask of agent/tunnels.py TUNNELS (gre 1, vxlan 2, geneve 4, ipip 8); l2 a\n"
	     "mask of layer-2 fields to key on (mac 1, vlan 2, physdev export 4) and\n"
	     "physdev override 8 (bridge ports replace the interfaces). hold: the reader's\n"
	     "hold (serve()'s), the fewest packets a table cycle fed in more than one round\n"
	     "needs to switch to append mode (`appending`); 0: the table never appends.\n"
	     "native=True (no layer-2 key fields): take() gives the default FlowBatch's rows\n"
	     "(take(native=True) only), and while appending each packet's row is written\n"
	     "straight into a free pooled row buffer that take() hands on without a copy.");

/* The longest probe chain of the flows held: how many slots past its hash's own slot a
 * flow sits (0 for all in append mode), walked on demand: no cost per packet. Refused while
 * feed/read/serve run without the GIL (the table changes, and grow() reallocates it). */
static PyObject *Aggregator_longest_probe(Aggregator *self, void *Py_UNUSED(closure))
{
	size_t mask = self->slots_cap - 1, longest = 0;

	if (refuse_busy(self) < 0)
		return NULL;
	for (size_t i = 0; !self->append_left && i < self->nflows; i++) {
		size_t d = (self->flows[i].slot - (size_t)self->flows[i].hash) & mask;

		if (d > longest)
			longest = d;
	}
	return PyLong_FromSize_t(longest);
}

static PyGetSetDef Aggregator_getset[] = {
	{"pending", (getter)Aggregator_pending, NULL,
	 "flows fed and not yet returned by take()", NULL},
	{"longest_probe", (getter)Aggregator_longest_probe, NULL,
	 "slots the farthest flow held sits past its hash's slot (hash flooding shows here)",
	 NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

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
	.tp_getset = Aggregator_getset,
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
	if (PyModule_AddObjectRef(m, "Aggregator", (PyObject *)&AggregatorType) < 0 ||
	    PyModule_AddIntConstant(m, "TAKE_POOL", TAKE_POOL) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
