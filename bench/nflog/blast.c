// SPDX-License-Identifier: GPL-2.0-or-later
// Bounded UDP flood with sendmmsg(2): 18-byte payloads (64-byte frames) to DST:PORT, batches
// of 64, until SECONDS elapse or MAX packets are sent. Prints "sent <n> <seconds>".
#define _GNU_SOURCE
#include <arpa/inet.h>
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
	if (argc < 5) {
		fprintf(stderr, "usage: blast DST PORT SECONDS MAX [FLOWS]\n");
		return 2;
	}
	double seconds = atof(argv[3]);
	long max = atol(argv[4]), sent = 0;
	int flows = argc > 5 ? atoi(argv[5]) : 1;
	struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	inet_pton(AF_INET, argv[1], &dst.sin_addr);
	int fds[256];
	for (int i = 0; i < flows && i < 256; i++) { // one socket per flow (source port)
		fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
		if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&dst, sizeof(dst)) < 0) {
			perror("socket/connect");
			return 1;
		}
	}
	char payload[18] = "netflow-agent-blst";
	struct iovec iov = {.iov_base = payload, .iov_len = sizeof(payload)};
	struct mmsghdr msgs[BATCH];
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	double start = now(), end = start + seconds;
	int turn = 0;
	while (sent < max && now() < end) {
		int want = max - sent < BATCH ? (int)(max - sent) : BATCH;
		int n = sendmmsg(fds[turn++ % flows], msgs, want, 0);
		if (n > 0)
			sent += n;
	}
	printf("sent %ld %.6f\n", sent, now() - start);
	return 0;
}
