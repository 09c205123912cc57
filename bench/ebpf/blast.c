// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * blast.c - bounded UDP flood for bench/ebpf: sendmmsg() batches of 64 to `flows` destination
 * ports, until `seconds` or `max_packets`, whichever comes first. IPv4 only.
 * Usage: blast DST_IP BASE_PORT FLOWS SECONDS MAX_PACKETS PAYLOAD
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

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct sockaddr_in dst[BATCH];
	struct mmsghdr msgs[BATCH];
	struct iovec iov;
	char payload[1500] = { 0 };
	unsigned long sent = 0, max_packets, flows, base, next = 0;
	double seconds, start, elapsed;
	int fd;

	if (argc != 7) {
		fprintf(stderr, "usage: %s DST BASE_PORT FLOWS SECONDS MAX_PACKETS PAYLOAD\n", argv[0]);
		return 2;
	}
	base = strtoul(argv[2], NULL, 10);
	flows = strtoul(argv[3], NULL, 10);
	seconds = atof(argv[4]);
	max_packets = strtoul(argv[5], NULL, 10);
	iov.iov_base = payload;
	iov.iov_len = (size_t)atoi(argv[6]) % sizeof(payload);
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0 || flows == 0) {
		perror("socket");
		return 1;
	}
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		dst[i].sin_family = AF_INET;
		inet_pton(AF_INET, argv[1], &dst[i].sin_addr);
		msgs[i].msg_hdr.msg_name = &dst[i];
		msgs[i].msg_hdr.msg_namelen = sizeof(dst[i]);
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	start = now();
	while (sent < max_packets && (elapsed = now() - start) < seconds) {
		unsigned int n = max_packets - sent < BATCH ? max_packets - sent : BATCH;
		int r;

		for (unsigned int i = 0; i < n; i++, next++)
			dst[i].sin_port = htons(base + next % flows);
		r = sendmmsg(fd, msgs, n, 0);
		if (r > 0)
			sent += r;
		next -= n - (r > 0 ? r : 0);	/* ports of unsent messages are reused */
	}
	printf("%lu %.6f\n", sent, now() - start);
	return 0;
}
