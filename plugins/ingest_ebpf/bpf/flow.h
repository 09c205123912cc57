/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * flow.h - the one layout shared by flow.bpf.c, _loader.c and decode.py.
 *
 * Every struct here is mirrored by a struct.Struct in decode.py; the extension exports
 * sizeof/offsetof of each field and tests/ingest_ebpf/test_layout.py compares them.
 * Fields are host byte order. IANA IPFIX Information Element ids in comments.
 */
#ifndef NFA_FLOW_H
#define NFA_FLOW_H

#include <linux/types.h>

/* The optional key fields of [flow] (agent/schema.py OPTIONAL_KEY) the program can see. The
 * loader turns on the ones the active schema has (rodata `l2_fields`, `mpls_labels`); the
 * block stays zero otherwise. The flow tables hash only the key's prefix up to the last field
 * in use (flow_key_size()): 44 bytes without any, 64 with MAC/VLAN. 68 bytes, no holes. */
struct flow_key_ext {
	__u8 src_mac[6];	/* sourceMacAddress (56) */
	__u8 dst_mac[6];	/* destinationMacAddress (80) */
	__u16 eth_type;		/* ethernetType (256): 0x0800 / 0x86DD, the accounted packet's */
	__u16 vlan_id;		/* vlanId (58): the outer tag (skb->vlan_tci when offloaded) */
	__u16 inner_vlan_id;	/* dot1qCustomerVlanId (245): the second tag */
	__u8 vlan_prio;		/* dot1qPriority (244) */
	__u8 inner_vlan_prio;	/* dot1qCustomerPriority (246) */
	__u32 tunnel_type;	/* layer2SegmentId (351) = tunnel_type << 56 | tunnel_id */
	__u32 tunnel_id;	/* VXLAN/Geneve VNI, GRE key of the outermost tunnel removed */
	__u32 mpls[10];		/* mplsTopLabelStackSection (70), 71-79: label << 4 | TC << 1 | S */
};

/* Bits of flow.bpf.c's `l2_fields` knob: which flow_key_ext fields the program fills. */
enum l2_field {
	L2_MAC = 1,		/* src_mac, dst_mac (and eth_type) */
	L2_VLAN = 2,		/* vlan_*, inner_vlan_* (and eth_type) */
	L2_TUNNEL_ID = 4,	/* tunnel_type, tunnel_id (with decapsulate) */
};

/* layer2SegmentId segment types (RFC 7133 section 4.4.2) */
#define SEGMENT_VXLAN 0x01

/* Flow key: the agent's key (agent/model.py make_key) plus the observation point, then the
 * optional fields. The first FLOW_KEY_BASE_SIZE (44) bytes are the base key; 112 bytes in all,
 * no padding holes, so a zero-initialised key hashes the same on every path. */
struct flow_key {
	__u8 saddr[16];		/* sourceIPv4Address (8) in bytes 0..3 / sourceIPv6Address (27) */
	__u8 daddr[16];		/* destinationIPv4Address (12) / destinationIPv6Address (28) */
	__u32 ifindex;		/* ingressInterface (10) or egressInterface (14), see direction */
	__u16 sport;		/* sourceTransportPort (7); 0 for non-first fragments */
	__u16 dport;		/* destinationTransportPort (11); ICMP/ICMPv6: type << 8 | code */
	__u8 ip_version;	/* ipVersion (60): 4 or 6 */
	__u8 proto;		/* protocolIdentifier (4) */
	__u8 tos;		/* ipClassOfService (5): IPv4 TOS byte / IPv6 traffic class */
	__u8 direction;		/* flowDirection (61): 0 ingress, 1 egress */
	struct flow_key_ext ext;	/* zero unless [flow] turns fields on */
};
#define FLOW_KEY_BASE_SIZE 44

/* Bytes of the key the flow tables hash for these [flow] fields: the prefix through the last
 * field in use (the rest of the block stays zero). */
static inline __u32 flow_key_size(__u32 l2_fields, __u32 mpls_labels)
{
	if (mpls_labels)
		return __builtin_offsetof(struct flow_key, ext.mpls) + 4 * mpls_labels;
	if (l2_fields & L2_TUNNEL_ID)
		return __builtin_offsetof(struct flow_key, ext.mpls);
	if (l2_fields)
		return __builtin_offsetof(struct flow_key, ext.tunnel_type);
	return FLOW_KEY_BASE_SIZE;
}

/* Counters of one flow since the last drain. 40 bytes. */
struct flow_metrics {
	__u64 packets;		/* packetDeltaCount (2): wire segments (skb->gso_segs ?: 1) */
	__u64 bytes;		/* octetDeltaCount (1): IP total length of every wire segment */
	__u64 first_ns;		/* flowStartMilliseconds (152), CLOCK_MONOTONIC ns */
	__u64 last_ns;		/* flowEndMilliseconds (153), CLOCK_MONOTONIC ns */
	__u32 tcp_flags;	/* tcpControlBits (6): OR over all packets (u32 for atomic OR) */
	__u32 pad;
};

/* What the loader's drain() hands to Python: key plus CPU-summed metrics.
 * 152 bytes. Without optional fields the drain hands compact rows instead: the base key, 4
 * pad bytes, the metrics (88 bytes, FLOW_RECORD_BASE_SIZE). */
struct flow_record {
	struct flow_key key;
	struct flow_metrics m;
};
#define FLOW_RECORD_BASE_SIZE 88

/* A per-CPU flow slot (maps slots_a/slots_b): the metrics first, then the key, so that
 * without optional fields a slot is only its first FLOW_SLOT_BASE_SIZE bytes (the loader sizes
 * the arrays' values so, flow_slot_size()) and the program touches no byte past them: 88-byte
 * slots instead of 152 (two or three cache lines per slot at an 88-byte stride). Internal to the program and the
 * loader, which drains slots into flow_record rows. */
struct flow_slot {
	struct flow_metrics m;
	struct flow_key key;
};
#define FLOW_SLOT_BASE_SIZE 88

/* The default slot (no optional key fields, tick timestamps): one 64-byte cache line, the base
 * key first, then 32-bit counters and times. A slot costs the program one line instead of the
 * two or three an 88-byte slot spans (each a cache miss, its stores an ownership request that
 * the next atomic instruction of the sender's path waits for: docs/performance-history.md, "The
 * sender's cost with the eBPF hook, decomposed"). A packet that would carry a counter past
 * 2^32 - 1 goes to the hash instead (one flow, two rows: the cache adds them). Times are
 * CLOCK_MONOTONIC ns >> SLOT_TIME_SHIFT, the low 32 bits (1.024 us units, 73 minutes around):
 * the loader restores them from its own clock at the drain, which follows within a poll
 * interval; the tick clock they come from is 4 ms coarse anyway. */
struct flow_slot_line {
	__u8 key[FLOW_KEY_BASE_SIZE];	/* struct flow_key's base: 8-aligned at offset 0 */
	__u32 packets;			/* 0: a free slot */
	__u32 bytes;
	__u32 first;			/* (first_ns >> SLOT_TIME_SHIFT) & 0xffffffff */
	__u32 last;
	__u32 tcp_flags;
};
#define FLOW_SLOT_LINE_SIZE 64
#define SLOT_TIME_SHIFT 10
_Static_assert(sizeof(struct flow_slot_line) == FLOW_SLOT_LINE_SIZE, "a line slot is one line");
_Static_assert(__builtin_offsetof(struct flow_slot_line, packets) == FLOW_KEY_BASE_SIZE,
	       "a line slot's counters follow the base key");

/* Whether slots are flow_slot_line: without optional key fields and with tick timestamps. */
static inline int flow_slot_is_line(__u32 key_size, int precise_clock)
{
	return key_size <= FLOW_KEY_BASE_SIZE && !precise_clock;
}

/* Bytes of a slot array's value: one line by default, compact (88) with precise timestamps,
 * else the whole slot. */
static inline __u32 flow_slot_size(__u32 key_size, int precise_clock)
{
	if (flow_slot_is_line(key_size, precise_clock))
		return FLOW_SLOT_LINE_SIZE;
	return key_size > FLOW_KEY_BASE_SIZE ? sizeof(struct flow_slot) : FLOW_SLOT_BASE_SIZE;
}

/* One packet the full flow table could not take, sent through the overflow ring buffer.
 * The loader turns it into a flow_record (first = last = ts_ns). 136 bytes. */
struct overflow_event {
	struct flow_key key;
	__u32 tcp_flags;
	__u32 pad;
	__u64 packets;
	__u64 bytes;
	__u64 ts_ns;
};

/* Slots of the per-CPU counters array entry (struct flow_counters). Cumulative since load. */
enum flow_counter {
	CNT_PACKETS = 0,	/* packets the program saw (before sampling) */
	CNT_SAMPLED_OUT,	/* packets skipped by sampling */
	CNT_NON_IP,		/* frames that are not IPv4/IPv6 (ARP, LLDP, ...): not flows */
	CNT_TRUNC,		/* IP packets too short or inconsistent to parse: dropped */
	CNT_TRUNC_BYTES,	/* bytes of those (frame length after the link header) */
	CNT_FRAG,		/* IP fragments seen (accounted; non-first ones with ports 0) */
	CNT_FULL_PACKETS,	/* packets lost: flow table full and overflow ring full/off */
	CNT_FULL_BYTES,		/* their bytes */
	CNT_UPDATE_ERR,		/* packets lost: other insert failures (ENOMEM, lock timeout)
				 * and the overflow ring full/off */
	CNT_RING_PACKETS,	/* packets of flows the table could not take, sent through the
				 * overflow ring (full table or any other insert failure) */
	CNT_SLOT_PACKETS,	/* packets accounted in a per-CPU slot (the rest went to the hash) */
	CNT_UPDATE_ERR_BYTES,	/* bytes of the CNT_UPDATE_ERR packets */
	CNT_HASH_NEW,		/* flows inserted into a hash table: with the count at the last
				 * flip, how full the active table is (early drains) */
	CNT_FRAG_TRACKED,	/* non-first fragments given their first fragment's ports
				 * (fragments = "track") */
	CNT_FRAG_UNMATCHED,	/* non-first fragments with no (live) first fragment in
				 * frag_ports: accounted with ports 0 (fragments = "track") */
	CNT_DECAPSULATED,	/* tunnel headers removed: packets accounted to an inner flow
				 * (one per tunnel level) */
	CNT_DECAP_FAILED,	/* tunnel packets accounted as the outer flow: a fragment, no IP
				 * payload or an inner header that does not parse */
	CNT_MAX,
};

/* One per CPU: the counters, then the tick clock's cache (not counters: never summed). */
struct flow_counters {
	__u64 v[CNT_MAX];
	__u64 clock_jiffies;	/* jiffies when this CPU last read the monotonic clock */
	__u64 clock_ns;		/* what it read then (CLOCK_MONOTONIC ns) */
};

/* Fill of one flow table since it was last drained (map flow_fill, one entry per table). */
struct flow_fill {
	__u64 inserts;		/* flows inserted into the hash table (atomic add) */
	__u64 signalled;	/* 1 once the program asked for an early drain of this table */
};

/* Bits of flow.bpf.c's `decap` knob: the tunnels of the decapsulate option. */
enum tunnel_kind {
	TUNNEL_GRE = 1,		/* GRE v0 with IPv4/IPv6, Ethernet (0x6558) or ERSPAN I-III */
	TUNNEL_VXLAN = 2,	/* UDP 4789 and 8472 */
	TUNNEL_GENEVE = 4,	/* UDP 6081 */
	TUNNEL_IPIP = 8,	/* IP protocols 4 and 41 */
};

/* Identity of a fragmented datagram: RFC 791 (source, destination, protocol, id) for IPv4,
 * RFC 8200 (source, destination, id) for IPv6 (proto 0). 40 bytes, no holes. */
struct frag_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 id;		/* IPv4: the 16-bit identification; IPv6: the fragment header's */
	__u8 ip_version;
	__u8 proto;
	__u16 pad;
};

/* What the first fragment (offset 0) left for the later ones. 16 bytes. */
struct frag_ports {
	__u64 ts_ns;		/* when the first fragment was seen (CLOCK_MONOTONIC ns) */
	__u16 sport;
	__u16 dport;		/* ICMP: type << 8 | code */
	__u8 proto;		/* IPv6: the transport found behind the first fragment's headers */
	__u8 pad[3];
};

/* The flow maps are double-buffered: the program writes to flows[active], userspace flips
 * `active`, waits for in-flight programs, then drains the other map without racing them. */
#define FLOW_MAPS 2

#endif /* NFA_FLOW_H */
