// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * flow.bpf.c - per-flow accounting in the kernel for the netflow-agent eBPF ingest.
 *
 * Parses Ethernet (up to two 802.1Q/802.1ad tags left in the frame, an MPLS label stack),
 * IPv4 (RFC 791, fragments), IPv6 (RFC 8200 extension headers, fragment header),
 * TCP/UDP/UDP-Lite/DCCP/SCTP ports and ICMP/ICMPv6 type/code, exactly like agent/packet.py
 * does for packet ingests, and adds each packet to a flow table keyed like the agent's cache
 * (flow.h), with the [flow] MAC/VLAN/MPLS/tunnel id fields when on. Optional, as in the packet
 * ingests: non-first fragments take their first fragment's ports (agent/fragments.py,
 * without the hold) and tunnels are accounted as their inner flow (agent/tunnels.py).
 * Packets of new flows that do not fit in the full table go through a ring buffer instead,
 * or are counted as lost. Packets count wire segments (skb->gso_segs ?: 1) and bytes are the
 * IP total length of each wire segment. A length field of 0 (IPv4 total length, IPv6 payload
 * length with a payload: BIG TCP over 64 KiB, jumbograms) means the skb's own length from the
 * IP header on, which packet.py reads from a pcap record's original length. The programs observe only: they always let the packet
 * continue (TC_ACT_UNSPEC / TCX_NEXT, XDP_PASS).
 *
 * Only UAPI headers: packet layouts are ABI and __sk_buff/xdp_md are rewritten by the
 * verifier, so no CO-RE relocation (and no vmlinux BTF at build time) is needed.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "flow.h"
#include "maps.h"

#define E2BIG_ 7
#define EEXIST_ 17
#define EINVAL_ 22
#define ETH_P_8021AD_ 0x88A8
#define MAX_VLAN_TAGS 2
#define ETH_P_MPLS_UC_ 0x8847
#define ETH_P_MPLS_MC_ 0x8848
#define MAX_MPLS_SCAN 12		/* label stack entries walked to reach the IP packet */
#define MAX_MPLS_OFF 64			/* deepest label stack (behind Ethernet and 2 tags) */
#define MAX_MPLS_KEY 10			/* entries flow_key_ext holds */
#define MAX_EXT_HEADERS 8
#define PULL_LEN 256		/* enough for two tunnel levels' headers */
#define MAX_SLOT_PROBES 8	/* most slot_probes the program unrolls */

/* if_ether.h: ETH_P_TEB 0x6558 (transparent Ethernet bridging), ETH_P_ERSPAN 0x88BE
 * (ERSPAN type II), ETH_P_ERSPAN2 0x22EB (type III) */
#define VXLAN_PORT 4789
#define VXLAN_PORT_LINUX 8472		/* Linux's VXLAN default without dstport */
#define GENEVE_PORT 6081
#define MAX_TUNNEL_DEPTH 2		/* tunnels inside tunnels, as agent/tunnels.py */
_Static_assert((MAX_TUNNEL_DEPTH & (MAX_TUNNEL_DEPTH - 1)) == 0,
	       "MAX_TUNNEL_DEPTH indexes decap_scratch with a mask: a power of two");
#define MAX_TUNNEL_OFF 512		/* deepest tunnel header decapsulated */
#define MAX_INNER_OFF 1024		/* deepest inner IP header */

#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_NONE 59
#define NEXTHDR_DEST 60
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_DCCP_ 33

/* Knobs set by the loader before load (rodata). */
const volatile __u32 sampling = 1;	/* account 1 in `sampling` packets (1 = all) */
const volatile __u8 percpu = 0;		/* flow maps are per-CPU (else shared with atomics) */
const volatile __u8 use_overflow = 1;	/* send full-table packets through the ring buffer */
const volatile __u8 precise_clock = 0;	/* read the clock for every packet (else once a tick) */
const volatile __u32 slot_mask = 0;	/* per-CPU flow slots - 1 (a power of two); 0 = no slots */
const volatile __u64 slot_seed = 0;	/* random per load: slot positions are not predictable */
const volatile __u32 slot_probes = 8;	/* slots of the key's tag word probed (1..8) */
const volatile __u32 tag_words = 1;	/* tag words per CPU: slots / 8, at least 1 */
const volatile __u32 slot_window_shift = 12; /* log2 of a drain window's entries (slot_touched) */
const volatile __u64 fill_threshold = 0; /* inserts that make a table ask for a drain; 0 = off */
const volatile __u8 frag_track = 0;	/* non-first fragments take their first one's ports */
const volatile __u64 frag_timeout_ns = 30000000000ULL;	/* how long a first fragment counts */
const volatile __u8 decap = 0;		/* TUNNEL_* bits: tunnels accounted as their inner flow */
const volatile __u8 keep_outer = 0;	/* with decap: the outer flow of a tunnel packet too */
const volatile __u8 l2_fields = 0;	/* L2_* bits: the optional key fields to fill */
const volatile __u8 mpls_labels = 0;	/* MPLS label stack entries in the key (0-10) */
const volatile __u8 key_words = 0;	/* 8-byte words the tables hash; 0 = the base key only
					 * (the slots then compare the base, else the whole key) */
const volatile __u8 slot_line = 0;	/* slots are 64-byte flow_slot_line (flow_slot_is_line()) */

/* PARSE_MPLS: an MPLS label stack at pi->l3_off, for parse_mpls_*() */
enum parse_result { PARSE_OK, PARSE_NON_IP, PARSE_TRUNC, PARSE_MPLS };

/* pkt_info.frag */
enum { FRAG_NONE, FRAG_FIRST, FRAG_LATER };

/* What one packet contributes, filled by parse(). Aligned: the key is read as 64-bit words. */
struct pkt_info {
	struct flow_key key;
	__u32 ip_len;		/* IP total length from the header; 0: the frame's (packet_bytes) */
	__u32 hdr_len;		/* IP + extension + TCP/UDP header bytes (GSO byte accounting) */
	__u32 l3_off;		/* offset of the IP header in the frame */
	__u32 l4_off;		/* offset of the transport header (tunnel header) in the frame */
	__u32 tcp_flags;
	__u32 frag_id;		/* IPv4 identification / IPv6 fragment header id */
	__u8 frag;		/* FRAG_* */
	__u8 decapsulated;	/* tunnel levels removed to reach this (inner) packet */
	__u8 decap_failed;	/* 1: a tunnel packet accounted as it is (see decapsulate()) */
	__u8 inner_short;	/* 1: an inner header ran past the linear data (tc pulls more) */
	__u8 vlan_tags;		/* VLAN tags seen (offloaded first), for record_vlan() */
	__u8 jumbo_hbh;		/* 8: a payload-length-0 IPv6 packet opens with the 8-byte
				 * hop-by-hop Jumbo header (C2 04) Linux < 7.0 puts in BIG TCP
				 * skbs and no wire segment carries (packet_bytes) */
} __attribute__((aligned(8)));

/* decapsulate: scratch space per CPU rather than on the stack (512 bytes for the program and
 * the functions it calls, each frame rounded up to 32 bytes on older kernels, 5.x, 6.1, 6.6,
 * and by the interpreter; 16 on 6.18): p[SCRATCH_NEXT] the inner packet being parsed,
 * p[SCRATCH_OUTER + depth] keep_outer's tunnel packets a packet was taken out of, outermost
 * first. One array, not a struct of structs: the verifier bounds how deeply the structs
 * behind a global function's pointer argument nest, and pkt_info already holds flow_key and
 * its flow_key_ext.
 * Looked up only with decapsulate on; the programs do not nest on one CPU. */
#define SCRATCH_NEXT 0
#define SCRATCH_OUTER 1
struct decap_scratch {
	struct pkt_info p[SCRATCH_OUTER + MAX_TUNNEL_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_scratch);
} decap_scratch SEC(".maps");

/* Ports and TCP flags/header length from the transport header at `l4`. */
static __always_inline int parse_l4(void *l4, void *end, __u8 proto, struct pkt_info *pi)
{
	__u8 *b = l4;

	switch (proto) {
	case IPPROTO_TCP:
		if ((void *)(b + 20) > end)
			return PARSE_TRUNC;
		pi->key.sport = ((__u16)b[0] << 8) | b[1];
		pi->key.dport = ((__u16)b[2] << 8) | b[3];
		pi->tcp_flags = b[13];
		pi->hdr_len += (b[12] >> 4) * 4;
		return PARSE_OK;
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
		if ((void *)(b + 8) > end)
			return PARSE_TRUNC;
		pi->hdr_len += 8;
		/* fall through */
	case IPPROTO_SCTP:
	case IPPROTO_DCCP_:
		if ((void *)(b + 4) > end)
			return PARSE_TRUNC;
		pi->key.sport = ((__u16)b[0] << 8) | b[1];
		pi->key.dport = ((__u16)b[2] << 8) | b[3];
		return PARSE_OK;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_:
		if ((void *)(b + 2) > end)
			return PARSE_TRUNC;
		pi->key.dport = ((__u16)b[0] << 8) | b[1];	/* type << 8 | code */
		return PARSE_OK;
	}
	return PARSE_OK;
}

static __always_inline int parse_ipv4(void *data, void *end, __u32 off, struct pkt_info *pi)
{
	struct iphdr *ip = data + off;
	__u8 vihl;
	__u16 frag;
	__u32 ihl;

	if ((void *)(ip + 1) > end)
		return PARSE_TRUNC;
	vihl = *(__u8 *)ip;	/* version/ihl by hand: no bitfields */
	ihl = (vihl & 0x0f) * 4;
	pi->ip_len = bpf_ntohs(ip->tot_len);
	/* a total length of 0 with a whole header: a BIG TCP (GRO/GSO) packet over 64 KiB, whose
	 * bytes are the skb's (packet_bytes), as packet.py takes a pcap's original length */
	if ((vihl >> 4) != 4 || ihl < 20 || (pi->ip_len < ihl && pi->ip_len))
		return PARSE_TRUNC;
	/* with a total length of 0 the whole header must be there (packet.py, _nflog.c) */
	if (!pi->ip_len && (void *)ip + ihl > end)
		return PARSE_TRUNC;
	pi->l3_off = off;
	pi->l4_off = off + ihl;
	pi->key.ip_version = 4;
	pi->key.proto = ip->protocol;
	pi->key.tos = ip->tos;
	__builtin_memcpy(pi->key.saddr, &ip->saddr, 4);
	__builtin_memcpy(pi->key.daddr, &ip->daddr, 4);
	pi->hdr_len = ihl;
	frag = bpf_ntohs(ip->frag_off);
	if (frag & 0x3fff) {			/* MF set or offset != 0 */
		pi->frag_id = bpf_ntohs(ip->id);
		pi->frag = FRAG_FIRST;
		if (frag & 0x1fff) {		/* non-first: no transport header */
			pi->frag = FRAG_LATER;
			return PARSE_OK;
		}
	}
	return parse_l4((void *)ip + ihl, end, ip->protocol, pi);
}

static __always_inline int parse_ipv6(void *data, void *end, __u32 off, struct pkt_info *pi)
{
	struct ipv6hdr *ip6 = data + off;
	__u8 *cur, nh;
	__u32 vtf;

	if ((void *)(ip6 + 1) > end)
		return PARSE_TRUNC;
	vtf = bpf_ntohl(*(__u32 *)ip6);
	if ((vtf >> 28) != 6)
		return PARSE_TRUNC;
	pi->l3_off = off;
	pi->key.ip_version = 6;
	pi->key.tos = (vtf >> 20) & 0xff;
	pi->ip_len = 40 + bpf_ntohs(ip6->payload_len);
	/* payload length 0 with a payload: IPv6 BIG TCP or an RFC 2675 jumbogram, whose bytes
	 * are the skb's (packet_bytes); with no next header (59) it is a 40-byte packet */
	if (pi->ip_len == 40 && ip6->nexthdr != NEXTHDR_NONE)
		pi->ip_len = 0;
	__builtin_memcpy(pi->key.saddr, &ip6->saddr, 16);
	__builtin_memcpy(pi->key.daddr, &ip6->daddr, 16);
	pi->hdr_len = 40;
	nh = ip6->nexthdr;
	cur = (__u8 *)(ip6 + 1);
#pragma unroll
	for (int i = 0; i < MAX_EXT_HEADERS; i++) {
		__u32 len;

		/* not the Mobility Header: the upper layer (Payload Proto 59), as packet.py */
		if (nh != NEXTHDR_HOP && nh != NEXTHDR_ROUTING && nh != NEXTHDR_DEST &&
		    nh != NEXTHDR_FRAGMENT && nh != NEXTHDR_AUTH)
			break;
		if ((void *)(cur + 8) > end)	/* every extension header is >= 8 bytes */
			return PARSE_TRUNC;
		if (nh == NEXTHDR_FRAGMENT) {
			pi->frag = FRAG_FIRST;
			pi->frag_id = bpf_ntohl(*(__u32 *)(cur + 4));
			nh = cur[0];
			pi->hdr_len += 8;
			if ((((__u16)cur[2] << 8) | cur[3]) & 0xfff8) {	/* non-first */
				pi->frag = FRAG_LATER;
				pi->key.proto = nh;
				return PARSE_OK;
			}
			cur += 8;
			continue;
		}
		len = nh == NEXTHDR_AUTH ? ((__u32)cur[1] + 2) * 4 : ((__u32)cur[1] + 1) * 8;
		/* the first header a bare hop-by-hop Jumbo option (hdrlen 0, C2 04) */
		if (i == 0 && nh == NEXTHDR_HOP && !pi->ip_len && cur[1] == 0 && cur[2] == 0xc2 &&
		    cur[3] == 4)
			pi->jumbo_hbh = 8;
		nh = cur[0];
		pi->hdr_len += len;
		cur += len;
	}
	pi->key.proto = nh;
	pi->l4_off = (void *)cur - data;
	return parse_l4(cur, end, nh, pi);
}

/* The IP packet at `off` (IPv4 or IPv6, by its version nibble). */
static __always_inline int parse_ip(void *data, void *end, __u32 off, struct pkt_info *pi)
{
	__u8 *v = data + off;

	if ((void *)(v + 1) > end)
		return PARSE_TRUNC;
	if ((*v >> 4) == 4)
		return parse_ipv4(data, end, off, pi);
	return parse_ipv6(data, end, off, pi);
}

/* --- [flow] optional key fields (flow_key_ext): what the observed frame's link layer says --- */

/* A VLAN tag (its TCI) of the frame: the first one seen is the outer tag, the second the inner
 * (QinQ customer) tag; deeper ones are not kept. */
static __always_inline void record_vlan(struct pkt_info *pi, __u16 tci)
{
	if (!(l2_fields & L2_VLAN))
		return;
	if (pi->vlan_tags == 0) {
		pi->key.ext.vlan_id = tci & 0x0fff;
		pi->key.ext.vlan_prio = tci >> 13;
	} else if (pi->vlan_tags == 1) {
		pi->key.ext.inner_vlan_id = tci & 0x0fff;
		pi->key.ext.inner_vlan_prio = tci >> 13;
	}
	pi->vlan_tags++;
}

/* The frame's MAC addresses (the Ethernet header at data, already bounds-checked). */
static __always_inline void record_macs(const __u8 *eth, struct pkt_info *pi)
{
	if (!(l2_fields & L2_MAC))
		return;
	__builtin_memcpy(pi->key.ext.dst_mac, eth, 6);
	__builtin_memcpy(pi->key.ext.src_mac, eth + 6, 6);
}

/* ethernetType of the accounted (inner) IP packet, when MAC or VLAN fields are on. */
static __always_inline void record_eth_type(struct pkt_info *pi)
{
	if (l2_fields & (L2_MAC | L2_VLAN))
		pi->key.ext.eth_type = pi->key.ip_version == 4 ? ETH_P_IP : ETH_P_IPV6;
}

/* Offset of the IP header behind the Ethernet header at `off` (up to MAX_VLAN_TAGS tags),
 * its EtherType in *etype; -PARSE_NON_IP or -PARSE_TRUNC when there is none. With `pi` (the
 * observed frame, not a tunnel's inner one) the tags are recorded and an MPLS label stack
 * is an answer too (its offset, *etype MPLS). */
static __always_inline int ethernet_ip_type(void *data, void *end, __u32 off, __u16 *etype,
					    struct pkt_info *pi)
{
	__u16 proto;

	if (data + off + ETH_HLEN > end)
		return -PARSE_TRUNC;
	proto = *(__u16 *)(data + off + 12);
	off += ETH_HLEN;
#pragma unroll
	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD_))
			break;
		if (data + off + 4 > end)
			return -PARSE_TRUNC;
		if (pi)
			record_vlan(pi, bpf_ntohs(*(__u16 *)(data + off)));
		proto = *(__u16 *)(data + off + 2);	/* encapsulated protocol */
		off += 4;
	}
	*etype = proto;
	if (proto == bpf_htons(ETH_P_IP) || proto == bpf_htons(ETH_P_IPV6))
		return off;
	if (pi && (proto == bpf_htons(ETH_P_MPLS_UC_) || proto == bpf_htons(ETH_P_MPLS_MC_)))
		return off;
	return -PARSE_NON_IP;
}

static __always_inline int ethernet_ip(void *data, void *end, __u32 off)
{
	__u16 etype;

	return ethernet_ip_type(data, end, off, &etype, NULL);
}

/* Fill pi from the frame at data..end (Ethernet). The EtherType picks the parser, as before
 * tunnels: fewer paths for the verifier than the version nibble (parse_ip) would give. */
static __always_inline int parse(void *data, void *end, struct pkt_info *pi)
{
	__u16 etype = 0;
	int off = ethernet_ip_type(data, end, 0, &etype, pi);

	if (off < 0) {
		pi->l3_off = ETH_HLEN;
		return -off;
	}
	record_macs(data, pi);		/* ethernet_ip_type() checked the header's bounds */
	pi->l3_off = off;
	if (etype == bpf_htons(ETH_P_IP))
		return parse_ipv4(data, end, off, pi);
	if (etype == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(data, end, off, pi);
	return PARSE_MPLS;		/* parse_mpls_*(): verified on its own */
}

/* The IP packet behind the MPLS label stack at pi->l3_off (RFC 3032): the first mpls_labels
 * entries go into the key (label << 4 | TC << 1 | S, the TTL left out), the IP header after
 * the bottom-of-stack entry is parsed by its version nibble. */
static __always_inline int parse_mpls(void *data, void *end, struct pkt_info *pi)
{
	/* reloaded as a 32-bit value, so the verifier sees the bound checked below */
	__u32 off = *(volatile __u32 *)&pi->l3_off;

	if (off > MAX_MPLS_OFF)
		return PARSE_TRUNC;
#pragma unroll
	for (int i = 0; i < MAX_MPLS_SCAN; i++) {
		__u8 *b = data + off + i * 4;

		if ((void *)(b + 4) > end)
			return PARSE_TRUNC;
		if (i < MAX_MPLS_KEY && i < mpls_labels)
			pi->key.ext.mpls[i] = ((__u32)b[0] << 16) | ((__u32)b[1] << 8) | b[2];
		if (b[2] & 1)			/* bottom of stack */
			return parse_ip(data, end, off + i * 4 + 4, pi);
	}
	return PARSE_NON_IP;			/* a deeper stack than we walk */
}

/* --- tunnels (decapsulate): agent/tunnels.py's rules, one level per decapsulate() call --- */

/* Whether pi (an unfragmented packet) is a tunnel packet of a configured kind. */
static __always_inline int tunnel_candidate(const struct pkt_info *pi)
{
	__u8 p = pi->key.proto;
	__u16 d = pi->key.dport;

	if (p == IPPROTO_UDP)
		return ((decap & TUNNEL_VXLAN) && (d == VXLAN_PORT || d == VXLAN_PORT_LINUX)) ||
		       ((decap & TUNNEL_GENEVE) && d == GENEVE_PORT);
	if (p == IPPROTO_GRE)
		return decap & TUNNEL_GRE;
	return (decap & TUNNEL_IPIP) && (p == IPPROTO_IPIP || p == IPPROTO_IPV6);
}

/* Offset of the inner IP header behind EtherType `etype` at `off` (IP, or an Ethernet frame
 * for transparent Ethernet bridging); negative when there is none. */
static __always_inline int payload_ip(void *data, void *end, __u16 etype, __u32 off)
{
	if (etype == ETH_P_IP || etype == ETH_P_IPV6)
		return off;
	if (etype == ETH_P_TEB)
		return ethernet_ip(data, end, off);
	return -PARSE_NON_IP;
}

static __always_inline __u16 be16_at(__u8 *b)
{
	return ((__u16)b[0] << 8) | b[1];
}

/* GRE version 0 (RFC 2784/2890) at `off`, ERSPAN types I-III behind it. */
static __always_inline int gre_inner(void *data, void *end, __u32 off)
{
	__u8 *b = data + off;
	__u16 flags, etype;
	__u32 pos = off + 4;

	if ((void *)(b + 4) > end)
		return -PARSE_TRUNC;
	flags = be16_at(b);
	etype = be16_at(b + 2);
	if (flags & 0x0007)			/* version 1 (PPTP) and others */
		return -PARSE_NON_IP;
	pos += (flags & 0x8000 ? 4 : 0) + (flags & 0x2000 ? 4 : 0) + (flags & 0x1000 ? 4 : 0);
	if (etype == ETH_P_ERSPAN) {
		if (!(flags & 0x1000))		/* type I: the frame follows GRE directly */
			return ethernet_ip(data, end, pos);
		return ethernet_ip(data, end, pos + 8);
	}
	if (etype == ETH_P_ERSPAN2) {
		b = data + pos;
		if ((void *)(b + 12) > end)
			return -PARSE_TRUNC;
		return ethernet_ip(data, end, pos + 12 + (b[11] & 1 ? 8 : 0));
	}
	return payload_ip(data, end, etype, pos);
}

/* Offset of the inner IP header of the tunnel packet pi; negative when there is none. */
static __always_inline int tunnel_inner(void *data, void *end, struct pkt_info *pi)
{
	/* reloaded as a 32-bit value, so the verifier sees the bound checked below */
	__u32 off = *(volatile __u32 *)&pi->l4_off;
	__u8 *b;

	if (off > MAX_TUNNEL_OFF)		/* bounded offsets for the verifier */
		return -PARSE_TRUNC;
	if (pi->key.proto == IPPROTO_GRE)
		return gre_inner(data, end, off);
	if (pi->key.proto != IPPROTO_UDP)	/* IP-in-IP: the inner header follows */
		return off;
	b = data + off + 8;			/* VXLAN / Geneve header */
	if ((void *)(b + 8) > end)
		return -PARSE_TRUNC;
	if (pi->key.dport == GENEVE_PORT) {
		if (b[0] >> 6)			/* version 0 */
			return -PARSE_NON_IP;
		return payload_ip(data, end, be16_at(b + 2), off + 16 + (b[0] & 0x3f) * 4);
	}
	if (!(b[0] & 0x08))			/* VXLAN I flag: the VNI is valid */
		return -PARSE_NON_IP;
	return ethernet_ip(data, end, off + 16);
}

/* The id of the tunnel packet pi for the key's tunnel_id: the VXLAN or Geneve VNI (segment
 * type 0x01), the GRE key (segment type 0: RFC 7133 names none for GRE); 0 without one. */
static __always_inline void tunnel_segment(void *data, void *end, const struct pkt_info *pi,
					   struct flow_key_ext *ext)
{
	__u32 off = *(volatile __u32 *)&pi->l4_off;
	__u8 *b = data + off;
	__u16 flags;

	if (off > MAX_TUNNEL_OFF)
		return;
	if (pi->key.proto == IPPROTO_UDP) {	/* VXLAN and Geneve: the VNI at bytes 4..6 */
		if ((void *)(b + 16) > end)
			return;
		ext->tunnel_type = SEGMENT_VXLAN;
		ext->tunnel_id = ((__u32)b[12] << 16) | ((__u32)b[13] << 8) | b[14];
		return;
	}
	if (pi->key.proto != IPPROTO_GRE || (void *)(b + 4) > end)
		return;
	flags = be16_at(b);
	if (!(flags & 0x2000))			/* K: no key */
		return;
	if (flags & 0x8000)			/* C: the checksum word comes first */
		b += 4;
	if ((void *)(b + 8) > end)
		return;
	ext->tunnel_type = 0;
	ext->tunnel_id = ((__u32)b[4] << 24) | ((__u32)b[5] << 16) | ((__u32)b[6] << 8) | b[7];
}

/* Replace the tunnel packet in pi by its inner packet. 0 when it is not a tunnel packet of a
 * configured kind; otherwise 1, with pi the inner packet, or with pi unchanged and
 * decap_failed set (no IP payload, an inner header that does not parse), as
 * agent/tunnels.py does. `next` is scratch space. */
static __always_inline int decapsulate(void *data, void *end, struct pkt_info *pi,
				       struct pkt_info *next)
{
	int inner, result = PARSE_TRUNC;

	if (pi->frag || !tunnel_candidate(pi))
		return 0;	/* fragments: counted as failed after tracking (observe) */
	inner = tunnel_inner(data, end, pi);
	__builtin_memset(next, 0, sizeof(*next));
	if (inner >= 0 && inner <= MAX_INNER_OFF) {
		result = parse_ip(data, end, inner, next);
		if (result == PARSE_OK) {
			next->decapsulated = pi->decapsulated + 1;
			if (key_words)		/* the observed frame's fields stay */
				next->key.ext = pi->key.ext;
			if ((l2_fields & L2_TUNNEL_ID) && !pi->decapsulated)
				tunnel_segment(data, end, pi, &next->key.ext);
			*pi = *next;
			return 1;
		}
	} else if (inner < 0) {
		result = -inner;
	}
	pi->inner_short = result == PARSE_TRUNC;	/* tc pulls more data and tries again */
	pi->decap_failed = 1;
	return 1;
}

/*
 * Tunnels as global functions, once per context type: the verifier checks a global function
 * once, on its own, instead of along every path of the caller, which keeps the tunnel parsers
 * (two levels, each with IPv6 extension headers and VLAN tags) well within its limits. They
 * read the packet bounds from the context itself. decapsulate_*: one level; decapsulate_all_*:
 * the configured tunnels removed from pi, up to MAX_TUNNEL_DEPTH levels (as agent/tunnels.py
 * does), each tunnel packet kept in ds (keep_outer, SCRATCH_OUTER) before its inner packet
 * replaces it; ds's SCRATCH_NEXT entry is the inner packet being parsed. `ds` is checked here, not by the caller:
 * the verifier then follows the caller's paths apart (NULL or not) only from observe() on.
 */
#define DEFINE_DECAPSULATE(name, all_name, ctx_type)					\
__noinline int name(ctx_type *ctx, struct pkt_info *pi, struct pkt_info *next)		\
{											\
	if (!pi || !next)								\
		return 0;								\
	return decapsulate((void *)(long)ctx->data, (void *)(long)ctx->data_end, pi, next); \
}											\
											\
__noinline int all_name(ctx_type *ctx, struct pkt_info *pi, struct decap_scratch *ds)	\
{											\
	if (!pi || !ds || !decap)							\
		return 0;								\
	for (int depth = 0; depth < MAX_TUNNEL_DEPTH; depth++) {			\
		if (keep_outer && !pi->frag && tunnel_candidate(pi))			\
			ds->p[SCRATCH_OUTER + (depth & (MAX_TUNNEL_DEPTH - 1))] = *pi;	\
		if (!name(ctx, pi, &ds->p[SCRATCH_NEXT]) || pi->decap_failed)		\
			break;								\
	}										\
	return 0;									\
}
DEFINE_DECAPSULATE(decapsulate_tc, decapsulate_all_tc, struct __sk_buff)
DEFINE_DECAPSULATE(decapsulate_xdp, decapsulate_all_xdp, struct xdp_md)

/* parse_mpls() as a global function per context type (verified once: the label walk and
 * both IP parsers, not once per VLAN tag combination of the caller). */
#define DEFINE_PARSE_MPLS(name, ctx_type)						\
__noinline int name(ctx_type *ctx, struct pkt_info *pi)					\
{											\
	if (!pi)									\
		return PARSE_TRUNC;							\
	return parse_mpls((void *)(long)ctx->data, (void *)(long)ctx->data_end, pi);	\
}
DEFINE_PARSE_MPLS(parse_mpls_tc, struct __sk_buff)
DEFINE_PARSE_MPLS(parse_mpls_xdp, struct xdp_md)

/* The per-CPU decapsulate scratch space, or NULL when decapsulate is off (the verifier then
 * drops the lookup: the default path has none). */
static __always_inline struct decap_scratch *decap_space(void)
{
	__u32 zero = 0;

	return decap ? bpf_map_lookup_elem(&decap_scratch, &zero) : NULL;
}

/* Hand one packet of a flow the full table could not take to userspace; 0 if the ring is full. */
static __always_inline int overflow_event(struct pkt_info *pi, __u64 segs, __u64 bytes, __u64 now)
{
	struct overflow_event *e = bpf_ringbuf_reserve(&overflow, sizeof(*e), 0);

	if (!e)
		return 0;
	e->key = pi->key;
	e->tcp_flags = pi->tcp_flags;
	e->packets = segs;
	e->bytes = bytes;
	e->ts_ns = now;
	bpf_ringbuf_submit(e, 0);
	return 1;
}

/*
 * The time of this packet. bpf_ktime_get_ns() costs about 30 ns here (a third of the
 * program), so by default each CPU reads it once per jiffy and reuses it: timestamps then
 * have tick precision (4 ms at HZ=250), the precision ipt_NETFLOW's jiffies had.
 * bpf_jiffies64() is a memory read. New flows take the same cached reading as the packets of
 * known ones (they are where a flood of new flows spends its time), so a CPU's times never go
 * backwards and a flow's last packet is never older than its first.
 */
static __always_inline __u64 clock_now(struct flow_counters *cnt)
{
	__u64 jiffies;

	if (precise_clock)
		return bpf_ktime_get_ns();
	jiffies = bpf_jiffies64();
	if (jiffies != cnt->clock_jiffies) {
		cnt->clock_jiffies = jiffies;
		cnt->clock_ns = bpf_ktime_get_ns();
	}
	return cnt->clock_ns;
}

/* --- fragments (fragments = "track"): agent/fragments.py's rules, without the hold --- */

static __always_inline void frag_identity(const struct pkt_info *pi, struct frag_key *fk)
{
	__builtin_memcpy(fk->saddr, pi->key.saddr, 16);
	__builtin_memcpy(fk->daddr, pi->key.daddr, 16);
	fk->id = pi->frag_id;
	fk->ip_version = pi->key.ip_version;
	fk->proto = pi->key.ip_version == 4 ? pi->key.proto : 0;
}

/* A first fragment leaves its ports; a later one takes them if the first is younger than
 * frag_timeout_ns, else keeps ports 0 (counted unmatched: nothing is held in the kernel).
 * A global function, verified once rather than along every path of the caller. */
__noinline int track_fragment(struct pkt_info *pi)
{
	__u32 zero = 0;
	struct flow_counters *cnt = bpf_map_lookup_elem(&flow_stats, &zero);
	struct frag_key fk = {};
	struct frag_ports *fp;
	__u64 now;

	if (!pi || !cnt)
		return 0;
	now = clock_now(cnt);
	frag_identity(pi, &fk);
	if (pi->frag == FRAG_FIRST) {
		struct frag_ports v = { .ts_ns = now, .sport = pi->key.sport,
					.dport = pi->key.dport, .proto = pi->key.proto };

		bpf_map_update_elem(&frag_ports, &fk, &v, BPF_ANY);
		return 0;
	}
	fp = bpf_map_lookup_elem(&frag_ports, &fk);
	if (fp && now - fp->ts_ns <= frag_timeout_ns) {
		pi->key.sport = fp->sport;
		pi->key.dport = fp->dport;
		pi->key.proto = fp->proto;
		cnt->v[CNT_FRAG_TRACKED]++;
	} else {
		cnt->v[CNT_FRAG_UNMATCHED]++;
	}
	return 0;
}

/* Ask the drain thread, once per table and drain, to drain table `table` now. */
static __always_inline void request_drain(struct flow_fill *fill, __u32 table)
{
	if (fill->signalled)
		return;
	fill->signalled = 1;	/* a race between CPUs sends a second signal: harmless */
	bpf_ringbuf_output(&fill_signal, &table, sizeof(table), BPF_RB_FORCE_WAKEUP);
}

/*
 * Count an insert into table `table`; at fill_threshold, ask for an early drain. The count is
 * only that trigger (what was accounted is counted per CPU in flow_stats), so a CPU adds its
 * inserts in steps of FILL_STEP: an atomic add is a full barrier that waits for the new
 * element's stores (cache misses in a large table) to complete, 60-90 ns per new flow
 * (docs/performance-history.md, "The tc program's cost per packet, second pass"). The shared count
 * is then off by less than FILL_STEP per CPU (a CPU adds FILL_STEP at every FILL_STEP-th
 * insert of its own since load, whichever table); thresholds below FILL_STEP * 64 (small
 * tables) count every insert. A plain atomic add (no fetch: kernels before 5.12)
 * and a read: a threshold crossed by two CPUs at once is still seen. `cnt` is this CPU's
 * counters, CNT_HASH_NEW already counting this insert.
 */
#define FILL_STEP 64
static __always_inline void count_insert(__u32 table, const struct flow_counters *cnt)
{
	__u64 step = fill_threshold >= FILL_STEP * 64 ? FILL_STEP : 1;
	struct flow_fill *fill;

	if (!fill_threshold || (cnt->v[CNT_HASH_NEW] & (step - 1)))
		return;
	fill = bpf_map_lookup_elem(&flow_fill, &table);
	if (!fill)
		return;
	__sync_fetch_and_add(&fill->inserts, step);
	if (fill->inserts >= fill_threshold)
		request_drain(fill, table);
}

/* A packet was lost in table `table`: ask for a drain at once. */
static __always_inline void lost_in(__u32 table)
{
	struct flow_fill *fill = bpf_map_lookup_elem(&flow_fill, &table);

	if (fill && fill_threshold)
		request_drain(fill, table);
}

/* A packet the flow table could not take (insert error `err`): through the overflow ring,
 * else counted as lost, by cause. Every failure branch ends here: nothing is lost uncounted. */
static __always_inline void not_in_table(struct pkt_info *pi, __u64 segs, __u64 bytes,
					 __u64 now, long err, __u32 table,
					 struct flow_counters *cnt)
{
	if (use_overflow && overflow_event(pi, segs, bytes, now)) {
		cnt->v[CNT_RING_PACKETS] += segs;
		return;
	}
	lost_in(table);
	if (err == -E2BIG_) {
		cnt->v[CNT_FULL_PACKETS] += segs;
		cnt->v[CNT_FULL_BYTES] += bytes;
	} else {
		cnt->v[CNT_UPDATE_ERR] += segs;
		cnt->v[CNT_UPDATE_ERR_BYTES] += bytes;
	}
}

/* Insert a new flow into hash table `table` (`map`), having marked the table as written by this
 * CPU first (hash_touched): the loader walks a table only when a CPU marked it, so the mark
 * must never miss an entry. It is set before the insert in the same run, and the loader reads
 * it only after the flip and an RCU grace period (every program that wrote the table has
 * returned), so a table with an entry has a mark. A write only when the mark is not set yet:
 * once per table and drain on each CPU. Without the mark (no such entry: not expected) the
 * flow is not inserted: not_in_table() counts its packet. */
static __always_inline long hash_insert(void *map, __u32 table, const struct flow_key *key,
					const struct flow_metrics *nm)
{
	__u64 *mark = bpf_map_lookup_elem(&hash_touched, &table);

	if (!mark)		/* (never: table < FLOW_MAPS) not inserted unmarked: counted */
		return -EINVAL_;
	if (!*mark)
		*mark = 1;
	return bpf_map_update_elem(map, key, nm, BPF_NOEXIST);
}

/* Add one packet to the flow table `map`; hand it to not_in_table() when it cannot. */
static __always_inline void account(void *map, __u32 table, struct pkt_info *pi, __u64 segs,
				    __u64 bytes, struct flow_counters *cnt)
{
	struct flow_metrics *m = bpf_map_lookup_elem(map, &pi->key);
	__u64 now = clock_now(cnt);

	if (!m) {
		struct flow_metrics nm = { .packets = segs, .bytes = bytes, .first_ns = now,
					   .last_ns = now, .tcp_flags = pi->tcp_flags };
		/* E2BIG: table full; ENOMEM (no-prealloc maps), EDEADLK/ETIMEDOUT (bucket lock,
		 * 6.15+): not inserted either */
		long err = hash_insert(map, table, &pi->key, &nm);

		if (!err) {
			cnt->v[CNT_HASH_NEW]++;
			count_insert(table, cnt);
			return;
		}
		if (err == -EEXIST_)		/* another CPU created it just now */
			m = bpf_map_lookup_elem(map, &pi->key);
		if (!m) {
			not_in_table(pi, segs, bytes, now, err, table, cnt);
			return;
		}
	}
	if (percpu) {			/* this CPU's slot: plain arithmetic */
		m->packets += segs;
		m->bytes += bytes;
		if (!m->first_ns)	/* slot created zeroed by another CPU's insert */
			m->first_ns = now;
		m->last_ns = now;
		m->tcp_flags |= pi->tcp_flags;
	} else {			/* one slot for all CPUs */
		__sync_fetch_and_add(&m->packets, segs);
		__sync_fetch_and_add(&m->bytes, bytes);
		if (now > m->last_ns)
			m->last_ns = now;
		if ((m->tcp_flags | pi->tcp_flags) != m->tcp_flags)
			__sync_fetch_and_or(&m->tcp_flags, pi->tcp_flags);
	}
}

/* A key's slot hash: multiply-add over its 64-bit words (the key is 44 bytes, 8-aligned), the
 * high bits folded onto the low ones (a product's low bits see only its inputs' low bits). */
static __always_inline __u64 slot_hash(const struct flow_key *k)
{
	const __u64 *w = (const __u64 *)k;
	__u64 h = slot_seed;

	h += w[0] * 0x9e3779b97f4a7c15ULL;
	h += w[1] * 0xc2b2ae3d27d4eb4fULL;
	h += w[2] * 0x165667b19e3779f9ULL;
	h += w[3] * 0xd6e8feb86659fd93ULL;
	h += w[4] * 0xff51afd7ed558ccdULL;
	if (key_words) {		/* w[5] and the extension block (zero where unused) */
#pragma unroll
		for (int i = 5; i < (int)(sizeof(*k) / 8); i++)
			h += w[i] * (0xc4ceb9fe1a85ec53ULL + 2 * i);
	} else {
		h += (__u64)*(const __u32 *)&w[5] * 0xc4ceb9fe1a85ec53ULL;
	}
	h ^= h >> 32;
	h ^= h >> 15;
	return h;
}

/* The home slot of a key with slot hash h: its low bits. */
static __always_inline __u32 slot_home(__u64 h)
{
	return (__u32)h & slot_mask;
}

/* The tag of a key with slot hash h: the top byte of h times an odd constant (which every bit
 * of h reaches, most of them not the home slot's), 1-255: 0 marks a free slot. */
static __always_inline __u64 slot_tag(__u64 h)
{
	__u64 tag = (h * 0x9e3779b97f4a7c15ULL) >> 56;

	return tag + !tag;
}

static __always_inline int key_equal(const struct flow_key *a, const struct flow_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	if (key_words) {
#pragma unroll
		for (int i = 5; i < (int)(sizeof(*a) / 8); i++)
			if (x[i] != y[i])
				return 0;
	}
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4] &&
	       *(const __u32 *)&x[5] == *(const __u32 *)&y[5];
}

/* Mark drain window `pos >> slot_window_shift` of this CPU's region in table `table` as
 * holding a taken slot (slot_touched): the loader maps and scans only marked windows. */
static __always_inline void touch_window(__u32 table, __u32 pos)
{
	__u64 *word = bpf_map_lookup_elem(&slot_touched, &table);
	__u64 bit = 1ULL << ((pos >> slot_window_shift) & 63);

	if (word && !(*word & bit))
		*word |= bit;
}

/* Take free slot s for pi's flow. */
static __always_inline void slot_take(struct flow_slot *s, struct pkt_info *pi, __u64 segs,
				      __u64 bytes, struct flow_counters *cnt)
{
	__u64 now = clock_now(cnt);

	if (key_words)
		s->key = pi->key;
	else			/* the base key: the drain zeroed the rest, pi's is zero */
		__builtin_memcpy(&s->key, &pi->key, FLOW_KEY_BASE_SIZE);
	s->m.packets = segs;
	s->m.bytes = bytes;
	s->m.first_ns = now;
	s->m.last_ns = now;
	s->m.tcp_flags = pi->tcp_flags;
}

/* Add one more packet of its flow to slot s. */
static __always_inline void slot_add(struct flow_slot *s, struct pkt_info *pi, __u64 segs,
				     __u64 bytes, struct flow_counters *cnt)
{
	s->m.packets += segs;
	s->m.bytes += bytes;
	s->m.last_ns = clock_now(cnt);
	s->m.tcp_flags |= pi->tcp_flags;
}

/* Take free line slot s for pi's flow: 0 when a counter does not fit 32 bits (the hash then). */
static __always_inline int line_take(struct flow_slot_line *s, struct pkt_info *pi, __u64 segs,
				     __u64 bytes, struct flow_counters *cnt)
{
	__u32 now = (__u32)(clock_now(cnt) >> SLOT_TIME_SHIFT);

	if ((segs | bytes) >> 32)
		return 0;
	__builtin_memcpy(s->key, &pi->key, FLOW_KEY_BASE_SIZE);
	s->packets = segs;
	s->bytes = bytes;
	s->first = now;
	s->last = now;
	s->tcp_flags = pi->tcp_flags;
	return 1;
}

/* Add one more packet of its flow to line slot s: 0 when a counter would pass 2^32 - 1. */
static __always_inline int line_add(struct flow_slot_line *s, struct pkt_info *pi, __u64 segs,
				    __u64 bytes, struct flow_counters *cnt)
{
	if (s->packets + segs > 0xffffffffULL || s->bytes + bytes > 0xffffffffULL)
		return 0;
	s->packets += segs;
	s->bytes += bytes;
	s->last = (__u32)(clock_now(cnt) >> SLOT_TIME_SHIFT);
	s->tcp_flags |= pi->tcp_flags;
	return 1;
}

/*
 * Account the packet in this CPU's slots: up to slot_probes slots of its key's tag word (8
 * slots), from its home slot on (wrapping within the word), the first that holds the key or
 * is free; 0 when all of them hold other flows (the caller then uses the hash). Only the tags
 * are read to find it (tags_a/tags_b): a free slot (tag 0) is taken without reading it, a
 * slot with another tag is skipped without reading it, and only a slot whose tag matches the
 * key's is read and its key compared. Exact without a tombstone: within a drain period a slot
 * is only ever taken, never freed (the drain empties the idle table after the flip and then
 * clears its tags), so a key is always found before the first free slot of its probe
 * sequence, and a flow that found them all taken keeps going to the hash until the table is
 * drained. A matching tag on an empty slot (tags the loader could not clear) is a free slot.
 * No atomics: a CPU's slots and tag words are only written by that CPU, and the programs do
 * not nest on one CPU (softirq / bottom halves off). `line` (a constant at each call):
 * the slots are flow_slot_line, whose 32-bit counters send a packet that would overflow them
 * to the hash (0), the flow staying in its slot for its later packets.
 */
static __always_inline int slot_probe(void *slots, void *tags, __u32 table,
				      struct pkt_info *pi, __u64 segs, __u64 bytes,
				      struct flow_counters *cnt, const int line)
{
	__u32 cpu = bpf_get_smp_processor_id();
	__u64 h = slot_hash(&pi->key), tag = slot_tag(h), tw;
	__u32 home = slot_home(h), word = cpu * tag_words + (home >> 3);
	__u32 gmask = slot_mask < 7 ? slot_mask : 7;	/* slots of a tag word - 1 */
	__u64 *tagp = bpf_map_lookup_elem(tags, &word);

	if (!tagp)
		return 0;
	tw = *tagp;
#pragma unroll
	for (__u32 i = 0; i < MAX_SLOT_PROBES; i++) {
		__u32 pos = (home & ~gmask) | ((home + i) & gmask);
		__u32 idx = cpu * (slot_mask + 1) + pos, shift = (pos & 7) * 8;
		__u64 t = (tw >> shift) & 0xff;
		struct flow_slot *s;

		if (i >= slot_probes)	/* rodata: the verifier drops the probes past it */
			break;
		if (t && t != tag)
			continue;	/* another flow's slot: probe the next */
		if (line) {	/* a constant: each caller's frame holds one layout's spills */
			struct flow_slot_line *l = bpf_map_lookup_elem(slots, &idx);

			if (!l)
				return 0;
			if (t && l->packets) {
				if (!key_equal((const struct flow_key *)l->key, &pi->key))
					continue;	/* another flow with the same tag */
				if (!line_add(l, pi, segs, bytes, cnt))
					return 0;
			} else {
				if (!line_take(l, pi, segs, bytes, cnt))
					return 0;
				*tagp = tw | (tag << shift);
				touch_window(table, pos);
			}
			cnt->v[CNT_SLOT_PACKETS] += segs;
			return 1;
		}
		s = bpf_map_lookup_elem(slots, &idx);	/* NULL past the end */
		if (!s)
			return 0;
		if (t && s->m.packets) {
			if (!key_equal(&s->key, &pi->key))
				continue;	/* another flow with the same tag */
			slot_add(s, pi, segs, bytes, cnt);
		} else {		/* free (the drain zeroes what it read): take it */
			slot_take(s, pi, segs, bytes, cnt);
			*tagp = tw | (tag << shift);
			touch_window(table, pos);
		}
		cnt->v[CNT_SLOT_PACKETS] += segs;
		return 1;
	}
	return 0;
}

/*
 * slot_probe() in table `table`'s slots. A BPF-to-BPF call, not inlined: the probe loop's
 * values live across its (inlined) map lookups and spill to the stack, and inlined they would
 * spill into the frames of the program and of account_outer(), whose sum (keep_outer) must
 * stay within the 512-byte stack, each frame rounded up to 32 bytes on older kernels (5.x,
 * 6.1, 6.6; 16 on 6.18) and by the interpreter. Each table has its own call of the lookup:
 * the verifier inlines a map lookup only when a single map reaches the call instruction.
 */
static __noinline int slot_account(struct pkt_info *pi, struct flow_counters *cnt, __u32 table,
				   __u32 segs, __u64 bytes)
{
	if (!pi || !cnt)
		return 0;
	if (table)
		return slot_probe(&slots_b, &tags_b, 1, pi, segs, bytes, cnt, 0);
	return slot_probe(&slots_a, &tags_a, 0, pi, segs, bytes, cnt, 0);
}

/* slot_account() for line slots (slot_line): a function of its own, so that each has the
 * stack frame of one layout (the verifier removes the call of the other). */
static __noinline int slot_account_line(struct pkt_info *pi, struct flow_counters *cnt,
					__u32 table, __u32 segs, __u64 bytes)
{
	if (!pi || !cnt)
		return 0;
	if (table)
		return slot_probe(&slots_b, &tags_b, 1, pi, segs, bytes, cnt, 1);
	return slot_probe(&slots_a, &tags_a, 0, pi, segs, bytes, cnt, 1);
}

/* The packet in this CPU's slots of table `table`: 1, else 0 (the hash then). */
static __always_inline int in_slot(struct pkt_info *pi, struct flow_counters *cnt, __u32 table,
				   __u32 segs, __u64 bytes)
{
	if (slot_line)		/* rodata: the verifier drops the other call */
		return slot_account_line(pi, cnt, table, segs, bytes);
	return slot_account(pi, cnt, table, segs, bytes);
}

/* Shared body of every program: sample, parse, account. `frame_len` is the whole frame,
 * `segs` the GSO segment count (1 when not GSO). Returns nothing: the caller passes. */
/* The bytes of pi's packet: its IP length; for a GSO skb of `segs` segments the sum of the
 * segments' IP lengths (every segment repeats the headers); for a length field of 0 (BIG TCP
 * over 64 KiB, an IPv6 jumbogram: ip_len 0) the frame's bytes from the IP header on, with the
 * headers of the other segments when it is GSO. */
static __always_inline __u64 packet_bytes(const struct pkt_info *pi, __u32 frame_len, __u32 segs)
{
	/* a GSO skb's Jumbo hop-by-hop header is the kernel's (ip6_xmit, ipv6_gro_complete):
	 * its wire segments have payload lengths and no such header */
	__u32 fake = segs > 1 ? pi->jumbo_hbh : 0;

	if (segs > 1 || !pi->ip_len)
		return (frame_len - pi->l3_off - fake) + (__u64)(segs - 1) * (pi->hdr_len - fake);
	return pi->ip_len;
}

/* Add pi's packet to the active table: its slot (with `slots`, a constant at each call site),
 * else the hash. */
static __always_inline void account_active(struct pkt_info *pi, __u32 segs, __u64 bytes,
					   struct flow_counters *cnt, int slots)
{
	__u32 zero = 0, *active = bpf_map_lookup_elem(&flow_active, &zero);

	/* One call site per map, not a pointer chosen at run time: the verifier inlines a map
	 * lookup only when a single map reaches the call instruction. */
	if (active && *active) {
		if (!slots || !slot_mask || !in_slot(pi, cnt, 1, segs, bytes))
			account(&flows_b, 1, pi, segs, bytes, cnt);
	} else {
		if (!slots || !slot_mask || !in_slot(pi, cnt, 0, segs, bytes))
			account(&flows_a, 0, pi, segs, bytes, cnt);
	}
}

/* keep_outer: account a tunnel packet as its outer flow too, as without decapsulate, in the
 * slots and then the hash like any flow. A global function, verified once rather than along
 * every path of the caller. The chain program -> account_outer() -> slot_account() is the
 * deepest: 448 bytes in 32-byte frames, with decapsulate's scratch pkt_info in decap_scratch
 * rather than on the program's stack (tests/ingest_ebpf/test_verifier_stack.py checks every
 * chain at 480 at most). */
__noinline int account_outer(struct pkt_info *outer, __u32 frame_len, __u32 segs,
			     __u32 ifindex, __u32 direction)
{
	__u32 zero = 0;
	struct flow_counters *cnt = bpf_map_lookup_elem(&flow_stats, &zero);

	if (!outer || !cnt)
		return 0;
	outer->key.ifindex = ifindex;
	outer->key.direction = direction;
	record_eth_type(outer);
	account_active(outer, segs, packet_bytes(outer, frame_len, segs), cnt, 1);
	return 0;
}

/* Shared body of every program: count, track fragments, account. `frame_len` is the whole
 * frame, `segs` the GSO segment count (1 when not GSO), `ds` the decapsulate scratch space
 * (NULL: off), with keep_outer's outer packets. Returns nothing: the caller passes. */
static __always_inline void observe(__u32 frame_len, __u32 ifindex, __u8 direction,
				    __u32 segs, int result, struct pkt_info *pi,
				    struct decap_scratch *ds, struct flow_counters *cnt)
{
	if (result == PARSE_NON_IP) {
		cnt->v[CNT_NON_IP]++;
		return;
	}
	if (result == PARSE_TRUNC) {
		cnt->v[CNT_TRUNC]++;
		cnt->v[CNT_TRUNC_BYTES] += frame_len > pi->l3_off ? frame_len - pi->l3_off : 0;
		return;
	}
	if (pi->frag) {
		cnt->v[CNT_FRAG]++;
		if (frag_track)
			track_fragment(pi);
		if (decap && tunnel_candidate(pi))	/* a tunnel fragment stays the outer flow */
			pi->decap_failed = 1;
	}
	if (decap) {
		cnt->v[CNT_DECAPSULATED] += pi->decapsulated;
		cnt->v[CNT_DECAP_FAILED] += pi->decap_failed;
	}
	if (keep_outer && ds) {
		if (pi->decapsulated > 0)
			account_outer(&ds->p[SCRATCH_OUTER], frame_len, segs, ifindex,
				      direction);
		if (pi->decapsulated > 1)
			account_outer(&ds->p[SCRATCH_OUTER + 1], frame_len, segs, ifindex,
				      direction);
	}
	pi->key.ifindex = ifindex;
	pi->key.direction = direction;
	record_eth_type(pi);
	account_active(pi, segs, packet_bytes(pi, frame_len, segs), cnt, 1);
}

/* Sampling and the counters entry; NULL means "skip this packet". */
static __always_inline struct flow_counters *begin(void)
{
	__u32 zero = 0;
	struct flow_counters *cnt = bpf_map_lookup_elem(&flow_stats, &zero);

	if (!cnt)
		return NULL;
	cnt->v[CNT_PACKETS]++;
	if (sampling > 1 && bpf_get_prandom_u32() % sampling) {
		cnt->v[CNT_SAMPLED_OUT]++;
		return NULL;
	}
	return cnt;
}

/* parse() and, when it parsed, the tunnels removed (tc; `ds`: decapsulate's scratch space). */
static __always_inline int tc_parse(struct __sk_buff *skb, struct pkt_info *pi,
				    struct decap_scratch *ds)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	int result;

	/* opaque to the compiler: else it may copy the packet pointer with a 32-bit move (the
	 * field is a __u32), which the verifier takes for a plain number */
	asm volatile("" : "+r"(data), "+r"(end));
	if ((l2_fields & L2_VLAN) && skb->vlan_present)	/* the tag the stack took out */
		record_vlan(pi, skb->vlan_tci);
	result = parse(data, end, pi);
	if (result == PARSE_MPLS)
		result = parse_mpls_tc(skb, pi);
	if (result == PARSE_OK && decap)	/* off: the verifier drops the call itself */
		decapsulate_all_tc(skb, pi, ds);
	return result;
}

static __always_inline int tc_observe(struct __sk_buff *skb, __u8 direction)
{
	struct flow_counters *cnt = begin();
	struct pkt_info pi = {};
	struct decap_scratch *ds;
	int result;

	if (!cnt)
		return TC_ACT_UNSPEC;
	ds = decap_space();
	result = tc_parse(skb, &pi, ds);
	if ((result == PARSE_TRUNC || pi.inner_short) && skb->data_end - skb->data < skb->len) {
		/* headers beyond the linear part: pull them in and parse again */
		bpf_skb_pull_data(skb, skb->len < PULL_LEN ? skb->len : PULL_LEN);
		__builtin_memset(&pi, 0, sizeof(pi));
		result = tc_parse(skb, &pi, ds);
	}
	observe(skb->len, skb->ifindex, direction, skb->gso_segs ?: 1, result, &pi, ds, cnt);
	return TC_ACT_UNSPEC;	/* == TCX_NEXT: observe only, later filters/programs still run */
}

SEC("tc")
int flow_tc_ingress(struct __sk_buff *skb)
{
	return tc_observe(skb, 0);
}

SEC("tc")
int flow_tc_egress(struct __sk_buff *skb)
{
	return tc_observe(skb, 1);
}

SEC("xdp")
int flow_xdp(struct xdp_md *ctx)
{
	struct flow_counters *cnt = begin();
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct pkt_info pi = {};
	struct decap_scratch *ds;
	int result;

	if (!cnt)
		return XDP_PASS;
	ds = decap_space();
	result = parse(data, end, &pi);
	if (result == PARSE_MPLS)
		result = parse_mpls_xdp(ctx, &pi);
	if (result == PARSE_OK && decap)
		decapsulate_all_xdp(ctx, &pi, ds);
	observe(end - data, ctx->ingress_ifindex, 0, 1, result, &pi, ds, cnt);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
