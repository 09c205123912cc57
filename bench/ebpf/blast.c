// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * blast.c - bounded UDP flood for the benchmarks (bench/ebpf, bench/nflog, bench/compare):
 * sendmmsg() batches of 64, until `seconds` or `max_packets`, whichever comes first. IPv4 only.
 * Usage: blast DST_IP BASE_PORT FLOWS SECONDS MAX_PACKETS PAYLOAD [sport]
 *   default: one socket, FLOWS destination ports BASE_PORT .. BASE_PORT+FLOWS-1;
 *   "sport":  FLOWS connected sockets (1-256, one source port each) to DST_IP:BASE_PORT, used
 *             in turn per batch (a single destination port, as bench/nflog's nft rule expects).
 * Prints: "<packets sent> <elapsed seconds>".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64
#define MAX_SOCKETS 256

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* FLOWS sockets connected to dst (each gets its own ephemeral source port). */
static int connect_sockets(int *fds, unsigned long flows, const struct sockaddr_in *dst)
{
	for (unsigned long i = 0; i < flows; i++) {
		fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
		if (fds[i] < 0 || connect(fds[i], (const struct sockaddr *)dst, sizeof(*dst)) < 0) {
			perror("socket/connect");
			return -1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in dst[BATCH];
	struct mmsghdr msgs[BATCH];
	struct iovec iov;
	char payload[1500] = { 0 };
	unsigned long sent = 0, max_packets, flows, base, next = 0, turn = 0;
	double seconds, start, elapsed;
	int fds[MAX_SOCKETS], vary_sport;

	vary_sport = argc == 8 && strcmp(argv[7], "sport") == 0;
	if (argc != 7 && !vary_sport) {
		fprintf(stderr, "usage: %s DST BASE_PORT FLOWS SECONDS MAX_PACKETS PAYLOAD [sport]\n",
			argv[0]);
		return 2;
	}
	base = strtoul(argv[2], NULL, 10);
	flows = strtoul(argv[3], NULL, 10);
	seconds = atof(argv[4]);
	max_packets = strtoul(argv[5], NULL, 10);
	if (flows == 0 || (vary_sport && flows > MAX_SOCKETS)) {
		fprintf(stderr, "FLOWS must be 1..%d with sport, >= 1 otherwise\n", MAX_SOCKETS);
		return 2;
	}
	iov.iov_base = payload;
	iov.iov_len = (size_t)atoi(argv[6]) % sizeof(payload);
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		dst[i].sin_family = AF_INET;
		dst[i].sin_port = htons(base);
		inet_pton(AF_INET, argv[1], &dst[i].sin_addr);
		if (!vary_sport) {
			msgs[i].msg_hdr.msg_name = &dst[i];
			msgs[i].msg_hdr.msg_namelen = sizeof(dst[i]);
		}
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	if (vary_sport) {
		if (connect_sockets(fds, flows, &dst[0]) < 0)
			return 1;
	} else {
		fds[0] = socket(AF_INET, SOCK_DGRAM, 0);
		if (fds[0] < 0) {
			perror("socket");
			return 1;
		}
	}
	start = now();
	while (sent < max_packets && (elapsed = now() - start) < seconds) {
		unsigned int n = max_packets - sent < BATCH ? max_packets - sent : BATCH;
		int r;

		if (vary_sport) {
			r = sendmmsg(fds[turn++ % flows], msgs, n, 0);
		} else {
			for (unsigned int i = 0; i < n; i++, next++)
				dst[i].sin_port = htons(base + next % flows);
			r = sendmmsg(fds[0], msgs, n, 0);
			next -= n - (r > 0 ? r : 0);	/* ports of unsent messages are reused */
		}
		if (r > 0)
			sent += r;
	}
	printf("%lu %.6f\n", sent, now() - start);
	return 0;
}
