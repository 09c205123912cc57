// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * flowgen.c - bounded flood of many distinct flows as raw Ethernet frames, with a schedule
 * simple enough that the exact truth of every flow is known without capturing anything
 * (tests/support/flowgen.py mirrors it). Used by the eBPF-at-scale test
 * (tests/ingest_ebpf/test_ebpf_scale.py), bench/ebpf/scale.py and bench/compare/run.py.
 *
 * Usage: flowgen IFNAME DST_MAC SRC_MAC DST_IP FLOWS PACKETS_PER_FLOW CONCURRENT PAYLOAD SECONDS
 *                [DST_IP6|- [udp|mix]]
 *
 * Flow f (0 <= f < FLOWS) comes from 10.128.0.0 + f (IPv4) or fd00:80::<f> (IPv6), source port
 * 1024 + f % 50000, so any number of flows up to 2^23 differ. With DST_IP6 (not "-"), odd flows
 * are IPv6. PACKETS_PER_FLOW is N, or A-B: flow f then has A + (f / 6) % (B - A + 1) packets.
 *
 * "udp" (the default): every flow is UDP to DST_IP (DST_IP6) port 7000.
 * "mix": flow f is UDP, TCP or ICMP by (f / 2) % 3 (ICMP: echo request, ICMPv6 128, with
 * identifier f & 0xffff); its destination is DST_IP + (f / 2) % 4096 (IPv6: DST_IP6 plus the
 * same number in the last 32 bits); its destination port (UDP, TCP) is
 * PORTS[(f / 18) % 8]. TCP packets carry SYN first, then ACK.
 *
 * Each IP packet is the IP header (20 or 40 bytes), the transport header (UDP 8, TCP 20,
 * ICMP 8) and PAYLOAD zero bytes, all checksums valid. Flows go in windows of CONCURRENT: a
 * window sends rounds r = 0, 1, ..., one packet of every flow of the window that has more than
 * r packets per round, in flow order; so CONCURRENT flows are active at once. sendmmsg() on an
 * AF_PACKET socket in batches of 64; stops after SECONDS. Prints "<packets sent> <elapsed
 * seconds>": the packets the device accepted (packet k of the schedule is sent only after
 * packets 0..k-1 were), so the ground truth is the schedule's first <packets sent> packets.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64
#define FRAME_MAX 1514
#define DSTS 4096

static const uint16_t PORTS[8] = { 53, 80, 123, 443, 993, 5060, 8080, 51820 };

enum proto { P_UDP, P_TCP, P_ICMP };

struct shape {
	unsigned long flows, window, ppf_min, ppf_span;
	int v6, mix;
	uint32_t dst4;		/* host order */
	uint8_t dst6[16];
	unsigned int payload;
};

/* Position in the schedule: window w (its first flow), round r, next flow f of the round. */
struct cursor {
	unsigned long first, r, f;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int parse_mac(const char *s, uint8_t *mac)
{
	return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3],
		      &mac[4], &mac[5]) == 6 ? 0 : -1;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = v >> 8;
	p[1] = v & 0xff;
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)(v >> 16));
	put16(p + 2, (uint16_t)v);
}

/* One's complement sum of `len` bytes (even length) added to `sum`. */
static uint32_t sum16(const uint8_t *p, size_t len, uint32_t sum)
{
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)p[i] << 8 | p[i + 1];
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static unsigned long packets_of(const struct shape *s, unsigned long f)
{
	return s->ppf_min + (f / 6) % s->ppf_span;
}

static enum proto proto_of(const struct shape *s, unsigned long f)
{
	return s->mix ? (enum proto)((f / 2) % 3) : P_UDP;
}

/* Transport header of flow f's packet number `round` at `l4`; returns its length and
 * IP protocol number (checksum left 0, filled by the caller). */
static size_t fill_l4(const struct shape *s, uint8_t *l4, unsigned long f, unsigned long round,
		      int v6, uint8_t *ipproto)
{
	enum proto p = proto_of(s, f);
	uint16_t dport = s->mix ? PORTS[(f / 18) % 8] : 7000;
	size_t len = p == P_TCP ? 20 : 8;

	memset(l4, 0, len + s->payload);
	if (p == P_ICMP) {
		*ipproto = v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP;
		l4[0] = v6 ? 128 : 8;	/* echo request, code 0 */
		put16(l4 + 4, (uint16_t)f);
		put16(l4 + 6, (uint16_t)round);
		return len;
	}
	put16(l4, (uint16_t)(1024 + f % 50000));
	put16(l4 + 2, dport);
	if (p == P_UDP) {
		*ipproto = IPPROTO_UDP;
		put16(l4 + 4, (uint16_t)(8 + s->payload));
		return len;
	}
	*ipproto = IPPROTO_TCP;
	put32(l4 + 4, (uint32_t)(1000 + round * s->payload));	/* sequence number */
	put32(l4 + 8, round ? 1 : 0);				/* acknowledgment number */
	l4[12] = 5 << 4;					/* data offset */
	l4[13] = round ? 0x10 : 0x02;				/* ACK : SYN */
	put16(l4 + 14, 65535);
	return len;
}

/* Where the checksum of transport protocol `ipproto` is, from the start of its header. */
static size_t csum_offset(uint8_t ipproto)
{
	return ipproto == IPPROTO_TCP ? 16 : ipproto == IPPROTO_UDP ? 6 : 2;
}

/* The frame of flow f's packet number `round` into `fr` (MACs already there); its length. */
static size_t fill_frame(const struct shape *s, uint8_t *fr, unsigned long f, unsigned long round)
{
	int v6 = s->v6 && f % 2;
	uint8_t *ip = fr + 14, *l4 = ip + (v6 ? 40 : 20), ipproto = 0;
	uint32_t off = s->mix ? (uint32_t)((f / 2) % DSTS) : 0;
	size_t l4len = fill_l4(s, l4, f, round, v6, &ipproto) + s->payload;
	uint32_t sum = 0;
	uint16_t c;

	if (v6) {
		put16(fr + 12, ETH_P_IPV6);
		memset(ip, 0, 40);
		ip[0] = 0x60;
		put16(ip + 4, (uint16_t)l4len);
		ip[6] = ipproto;
		ip[7] = 64;
		ip[8] = 0xfd;
		ip[11] = 0x80;
		put32(ip + 20, (uint32_t)f);		/* fd00:80::<f> */
		memcpy(ip + 24, s->dst6, 16);
		put32(ip + 36, ((uint32_t)s->dst6[12] << 24 | (uint32_t)s->dst6[13] << 16 |
				(uint32_t)s->dst6[14] << 8 | s->dst6[15]) + off);
		sum = sum16(ip + 8, 32, 0);	/* pseudo-header: addresses, length, next header */
		sum += (uint32_t)l4len + ipproto;
	} else {
		put16(fr + 12, ETH_P_IP);
		memset(ip, 0, 20);
		ip[0] = 0x45;
		put16(ip + 2, (uint16_t)(20 + l4len));
		ip[8] = 64;
		ip[9] = ipproto;
		put32(ip + 12, 0x0a800000u + (uint32_t)f);	/* 10.128.0.0 + f */
		put32(ip + 16, s->dst4 + off);
		put16(ip + 10, fold(sum16(ip, 20, 0)));
		if (ipproto != IPPROTO_ICMP)
			sum = sum16(ip + 12, 8, 0) + (uint32_t)l4len + ipproto;
	}
	if (v6 || ipproto != IPPROTO_UDP) {	/* IPv4 UDP: checksum 0 = none */
		c = fold(sum16(l4, l4len, sum));
		put16(l4 + csum_offset(ipproto), ipproto == IPPROTO_UDP && !c ? 0xffff : c);
	}
	return (size_t)(l4 - fr) + l4len;
}

/* Step `c` to the next packet of the schedule; 0 when the schedule is over. */
static int advance(const struct shape *s, struct cursor *c)
{
	unsigned long max_r = s->ppf_min + s->ppf_span - 1;

	for (;;) {
		unsigned long end = c->first + s->window < s->flows ? c->first + s->window : s->flows;

		if (++c->f >= end) {
			c->f = c->first;
			if (++c->r >= max_r) {
				c->r = 0;
				c->first = end;
				c->f = end;
				if (end >= s->flows)
					return 0;
			}
		}
		if (packets_of(s, c->f) > c->r)
			return 1;
	}
}

static int parse_args(int argc, char **argv, struct shape *s, uint8_t *dmac, uint8_t *smac)
{
	struct in_addr dst;
	char *dash;
	unsigned long ppf_max;

	if (argc < 10 || argc > 12 || parse_mac(argv[2], dmac) || parse_mac(argv[3], smac) ||
	    inet_pton(AF_INET, argv[4], &dst) != 1)
		return -1;
	memset(s, 0, sizeof(*s));
	s->dst4 = ntohl(dst.s_addr);
	s->v6 = argc >= 11 && strcmp(argv[10], "-");
	if (s->v6 && inet_pton(AF_INET6, argv[10], s->dst6) != 1)
		return -1;
	if (argc == 12 && strcmp(argv[11], "udp") && strcmp(argv[11], "mix"))
		return -1;
	s->mix = argc == 12 && !strcmp(argv[11], "mix");
	s->flows = strtoul(argv[5], NULL, 10);
	s->ppf_min = strtoul(argv[6], &dash, 10);
	ppf_max = *dash == '-' ? strtoul(dash + 1, NULL, 10) : s->ppf_min;
	s->window = strtoul(argv[7], NULL, 10);
	s->payload = (unsigned int)strtoul(argv[8], NULL, 10);
	if (!s->flows || s->flows > (1ul << 23) || !s->ppf_min || ppf_max < s->ppf_min ||
	    !s->window || s->payload > FRAME_MAX - 14 - 40 - 20) {
		fprintf(stderr, "FLOWS 1..2^23, PACKETS_PER_FLOW N or A-B with 1 <= A <= B, "
			"CONCURRENT >= 1, PAYLOAD <= %d\n", FRAME_MAX - 74);
		return -2;
	}
	s->ppf_span = ppf_max - s->ppf_min + 1;
	return 0;
}

int main(int argc, char **argv)
{
	static uint8_t frames[BATCH][FRAME_MAX];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	struct cursor at[BATCH + 1], pos = { 0, 0, 0 };
	struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_halen = ETH_ALEN };
	uint8_t dmac[6], smac[6];
	struct shape s;
	unsigned long sent = 0;
	double seconds, start;
	int fd, more = 1, err = parse_args(argc, argv, &s, dmac, smac);

	if (err) {
		if (err == -1)
			fprintf(stderr, "usage: %s IFNAME DST_MAC SRC_MAC DST_IP FLOWS "
				"PACKETS_PER_FLOW CONCURRENT PAYLOAD SECONDS [DST_IP6|- [udp|mix]]\n",
				argv[0]);
		return 2;
	}
	seconds = atof(argv[9]);
	fd = socket(AF_PACKET, SOCK_RAW, 0);	/* protocol 0: send only, receive nothing */
	sll.sll_ifindex = (int)if_nametoindex(argv[1]);
	if (fd < 0 || !sll.sll_ifindex) {
		perror("socket/if_nametoindex");
		return 1;
	}
	memcpy(sll.sll_addr, dmac, 6);
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		memcpy(frames[i], dmac, 6);
		memcpy(frames[i] + 6, smac, 6);
		iov[i].iov_base = frames[i];
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
		msgs[i].msg_hdr.msg_name = &sll;
		msgs[i].msg_hdr.msg_namelen = sizeof(sll);
	}
	start = now();
	while (more && now() - start < seconds) {
		struct cursor c = pos;
		unsigned int n = 0;
		int r;

		while (n < BATCH) {	/* at[i]: the schedule position of frame i */
			at[n] = c;
			iov[n].iov_len = fill_frame(&s, frames[n], c.f, c.r);
			n++;
			if (!(more = advance(&s, &c)))
				break;
		}
		at[n] = c;
		r = sendmmsg(fd, msgs, n, 0);
		if (r < 0)
			r = 0;
		sent += (unsigned long)r;
		pos = at[r];	/* unsent frames are rebuilt and sent in the next batch */
		more = more || (unsigned int)r < n;
	}
	printf("%lu %.6f\n", sent, now() - start);
	return 0;
}
