// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * flowgen.c - bounded flood of many distinct IPv4 UDP flows as raw Ethernet frames, for the
 * eBPF-at-scale test (tests/ingest_ebpf/test_ebpf_scale.py) and benchmarks.
 *
 * Usage: flowgen IFNAME DST_MAC SRC_MAC DST_IP FLOWS PACKETS_PER_FLOW CONCURRENT PAYLOAD SECONDS
 *                [DST_IP6]
 *
 * Flow f (0 <= f < FLOWS) is 10.128.0.0 + f -> DST_IP, UDP 1024 + f % 50000 -> 7000: distinct
 * source addresses, so any number of flows up to 2^23 differ. With DST_IP6, odd flows are
 * IPv6 instead: fd00:80::<f> -> DST_IP6, same ports, 40 + 8 + PAYLOAD IP bytes. Flows go in windows of
 * CONCURRENT: each window sends PACKETS_PER_FLOW rounds, one packet of every flow of the
 * window per round, so CONCURRENT flows are active at once. Every packet is 20 + 8 + PAYLOAD
 * IP bytes. sendmmsg() on an AF_PACKET socket in batches of 64; stops after SECONDS.
 * Prints "<packets sent> <elapsed seconds>": the packets the device accepted (packet k of the
 * schedule is sent only after packets 0..k-1 were), so the ground truth is the schedule's
 * first <packets sent> packets.
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

static uint16_t ip_checksum(const uint8_t *hdr)
{
	uint32_t sum = 0;

	for (int i = 0; i < 20; i += 2)
		sum += (uint32_t)hdr[i] << 8 | hdr[i + 1];
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = v >> 8;
	p[1] = v & 0xff;
}

/* UDP header at `udp` for flow `flow` (checksum filled by the caller, 0 = none). */
static void fill_udp(uint8_t *udp, unsigned long flow, unsigned int payload)
{
	memset(udp, 0, 8);
	put16(udp, (uint16_t)(1024 + flow % 50000));
	put16(udp + 2, 7000);
	put16(udp + 4, (uint16_t)(8 + payload));
}

/* IPv6 frame of flow `flow`: fd00:80::<flow> -> dst6 (the payload bytes are zero). */
static size_t fill_frame6(uint8_t *f, unsigned long flow, const uint8_t *dst6,
			  unsigned int payload)
{
	uint8_t *ip = f + 14, *udp = ip + 40;
	uint32_t sum = 0;

	f[12] = 0x86;
	f[13] = 0xdd;
	memset(ip, 0, 40);
	ip[0] = 0x60;
	put16(ip + 4, (uint16_t)(8 + payload));
	ip[6] = IPPROTO_UDP;
	ip[7] = 64;
	ip[8] = 0xfd;
	ip[10] = 0x00;
	ip[11] = 0x80;
	for (int i = 0; i < 4; i++)
		ip[20 + i] = (uint8_t)(flow >> (24 - 8 * i));
	memcpy(ip + 24, dst6, 16);
	fill_udp(udp, flow, payload);
	memset(udp + 8, 0, payload);
	/* mandatory in IPv6: pseudo-header (addresses, length, next header) + UDP header */
	for (int i = 8; i < 40; i += 2)
		sum += (uint32_t)ip[i] << 8 | ip[i + 1];
	sum += 8 + payload + IPPROTO_UDP;
	for (int i = 0; i < 8; i += 2)
		sum += (uint32_t)udp[i] << 8 | udp[i + 1];
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	put16(udp + 6, (uint16_t)~sum ? (uint16_t)~sum : 0xffff);
	return 14 + 40 + 8 + payload;
}

/* Write flow `flow`'s IPv4 frame into `f` (the MAC addresses are already there). */
static size_t fill_frame(uint8_t *f, unsigned long flow, uint32_t dst_ip, unsigned int payload)
{
	uint8_t *ip = f + 14, *udp = ip + 20;
	uint32_t src = htonl(0x0a800000u + (uint32_t)flow);	/* 10.128.0.0 + flow */
	uint16_t ip_len = (uint16_t)(28 + payload), c;

	f[12] = 0x08;	/* ETH_P_IP */
	f[13] = 0x00;
	memset(ip, 0, 28);
	ip[0] = 0x45;
	ip[2] = ip_len >> 8;
	ip[3] = ip_len & 0xff;
	ip[8] = 64;
	ip[9] = IPPROTO_UDP;
	memcpy(ip + 12, &src, 4);
	memcpy(ip + 16, &dst_ip, 4);
	c = ip_checksum(ip);
	ip[10] = c >> 8;
	ip[11] = c & 0xff;
	fill_udp(udp, flow, payload);	/* checksum 0: none (IPv4) */
	return 14 + 28 + payload;
}

/* The flow of packet number k of the schedule: windows of `window` flows (the last one may be
 * narrower), `ppf` rounds over each window. */
static unsigned long flow_of(unsigned long k, unsigned long flows, unsigned long ppf,
			     unsigned long window)
{
	unsigned long w = k / (window * ppf), first = w * window;
	unsigned long width = flows - first < window ? flows - first : window;

	return first + (k - w * window * ppf) % width;
}

int main(int argc, char **argv)
{
	static uint8_t frames[BATCH][FRAME_MAX];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_halen = ETH_ALEN };
	uint8_t dmac[6], smac[6];
	struct in_addr dst;
	uint8_t dst6[16];
	int mixed;
	unsigned long flows, ppf, window, total, sent = 0;
	unsigned int payload;
	double seconds, start;
	int fd;

	mixed = argc == 11;
	if ((argc != 10 && !mixed) || parse_mac(argv[2], dmac) || parse_mac(argv[3], smac) ||
	    inet_pton(AF_INET, argv[4], &dst) != 1 ||
	    (mixed && inet_pton(AF_INET6, argv[10], dst6) != 1)) {
		fprintf(stderr, "usage: %s IFNAME DST_MAC SRC_MAC DST_IP FLOWS PACKETS_PER_FLOW "
			"CONCURRENT PAYLOAD SECONDS [DST_IP6]\n", argv[0]);
		return 2;
	}
	flows = strtoul(argv[5], NULL, 10);
	ppf = strtoul(argv[6], NULL, 10);
	window = strtoul(argv[7], NULL, 10);
	payload = (unsigned int)strtoul(argv[8], NULL, 10);
	seconds = atof(argv[9]);
	if (!flows || flows > (1ul << 23) || !ppf || !window || payload > FRAME_MAX - 62) {
		fprintf(stderr, "FLOWS 1..2^23, PACKETS_PER_FLOW and CONCURRENT >= 1, "
			"PAYLOAD <= %d\n", FRAME_MAX - 62);
		return 2;
	}
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
	total = flows * ppf;
	start = now();
	while (sent < total && now() - start < seconds) {
		unsigned int n = total - sent < BATCH ? (unsigned int)(total - sent) : BATCH;
		int r;

		for (unsigned int i = 0; i < n; i++) {
			unsigned long flow = flow_of(sent + i, flows, ppf, window);

			iov[i].iov_len = mixed && flow % 2
				? fill_frame6(frames[i], flow, dst6, payload)
				: fill_frame(frames[i], flow, dst.s_addr, payload);
		}
		r = sendmmsg(fd, msgs, n, 0);
		if (r > 0)	/* unsent frames are rebuilt and sent in the next batch */
			sent += (unsigned long)r;
	}
	printf("%lu %.6f\n", sent, now() - start);
	return 0;
}
