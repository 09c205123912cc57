/* The floor of an NFLOG reader: receive a bound NETLINK_NETFILTER socket's datagrams and
 * discard them (mode "recv"), or also walk their netlink messages and attributes (mode
 * "walk": the message chain, NFULA_SEQ for the loss count, the payload found; no parsing of
 * the packet, no flow table). Built and run by bench/nflog/floor.py, which opens and binds the
 * socket with the agent's own code and settings and passes its descriptor.
 *
 * The loop is the agent's (plugins/ingest_nflog/_nflog.c, serve_socket/read_socket): wait in
 * ppoll(), read with recvmmsg() of up to `batch` datagrams (MSG_DONTWAIT | MSG_TRUNC) into
 * buffers of `bufsize` bytes each until the socket is empty or 64 datagrams / 1 MiB were
 * read, then, when it emptied the socket, sleep `pause_ms` so kernel batches gather.
 *
 *   floor_reader MODE BATCH BUFSIZE PAUSE_MS FD
 *
 * Runs until SIGTERM, then drains what waits and prints one line of JSON: datagrams, bytes,
 * messages (NFULNL_MSG_PACKET), seq_gaps, the attribute types of the first packet message
 * with their lengths, and its own user and system CPU seconds (getrusage).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_BATCH 64
#define DRAIN_DATAGRAMS 64
#define DRAIN_BYTES (1u << 20)
#define MSG_PACKET ((4 << 8) | 0)
#define NFULA_SEQ 12
#define NFULA_PAYLOAD 9

static volatile sig_atomic_t stop;
static int FD = 3;
static unsigned long long datagrams, bytes, messages, seq_gaps, expect_seq, seen_seq;
static char first_attrs[512];

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* the attribute chain of the first packet message, "type:len,..." */
static void note_attrs(const uint8_t *b, size_t a, size_t end)
{
	size_t used = 0;

	while (a + 4 <= end && used + 16 < sizeof(first_attrs)) {
		uint16_t alen, atype;

		memcpy(&alen, b + a, 2);
		memcpy(&atype, b + a + 2, 2);
		if (alen < 4 || alen > end - a)
			break;
		used += (size_t)snprintf(first_attrs + used, sizeof(first_attrs) - used, "%s%u:%u",
					 used ? "," : "", atype & 0x3fff, alen);
		a += (alen + 3u) & ~3u;
	}
}

/* the messages and attributes of one datagram, as the agent's walk_any finds them */
static void walk(const uint8_t *b, size_t n)
{
	size_t off = 0;

	while (off + 16 <= n) {
		uint32_t mlen;
		uint16_t mtype;
		size_t a, end;

		memcpy(&mlen, b + off, 4);
		memcpy(&mtype, b + off + 4, 2);
		if (mlen < 16 || mlen > n - off)
			return;
		a = off + 20;
		end = off + mlen;
		off += (mlen + 3u) & ~3u;
		if (mtype != MSG_PACKET)
			continue;
		if (!messages)
			note_attrs(b, a, end);
		messages++;
		while (a + 4 <= end) {
			uint16_t alen, atype;

			memcpy(&alen, b + a, 2);
			memcpy(&atype, b + a + 2, 2);
			if (alen < 4 || alen > end - a)
				break;
			atype &= 0x3fff;
			if (atype == NFULA_SEQ && alen == 8) {
				uint32_t seq = be32(b + a + 4);

				if (seen_seq && seq != (uint32_t)expect_seq &&
				    (uint32_t)(seq - expect_seq) < 0x80000000u)
					seq_gaps += (uint32_t)(seq - expect_seq);
				expect_seq = (uint32_t)(seq + 1);
				seen_seq = 1;
			} else if (atype == NFULA_PAYLOAD) {
				break; /* the last attribute */
			}
			a += (alen + 3u) & ~3u;
		}
	}
}

/* one round: read until empty or the agent's bounds; 1 = stopped at a bound */
static int drain(uint8_t *buf, size_t bufsize, unsigned int batch, int do_walk)
{
	struct mmsghdr msgs[MAX_BATCH];
	struct iovec iov[MAX_BATCH];
	unsigned long long round_dg = 0, round_bytes = 0;

	while (round_dg < DRAIN_DATAGRAMS) {
		int got;

		for (unsigned int i = 0; i < batch; i++) {
			iov[i].iov_base = buf + (size_t)i * bufsize;
			iov[i].iov_len = bufsize;
			memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
		}
		got = recvmmsg(FD, msgs, batch, MSG_DONTWAIT | MSG_TRUNC, NULL);
		if (got < 0) {
			if (errno == EINTR || errno == ENOBUFS)
				continue;
			return 0;
		}
		for (int i = 0; i < got; i++) {
			size_t len = msgs[i].msg_len < bufsize ? msgs[i].msg_len : bufsize;

			if (do_walk)
				walk(iov[i].iov_base, len);
			round_bytes += len;
			bytes += len;
		}
		round_dg += (unsigned long long)got;
		datagrams += (unsigned long long)got;
		if (round_bytes >= DRAIN_BYTES)
			break;
		if ((unsigned int)got < batch && round_dg < batch)
			return 0;
	}
	return 1;
}

int main(int argc, char **argv)
{
	int do_walk, last = 0;
	unsigned int batch;
	size_t bufsize;
	long pause_ms;
	uint8_t *buf;
	struct rusage ru;
	struct pollfd p = {.events = POLLIN};
	struct sigaction sa = {.sa_handler = on_term};

	if (argc != 6) {
		fprintf(stderr, "usage: %s recv|walk BATCH BUFSIZE PAUSE_MS FD\n", argv[0]);
		return 2;
	}
	p.fd = FD = atoi(argv[5]);
	do_walk = strcmp(argv[1], "walk") == 0;
	batch = (unsigned int)atoi(argv[2]);
	bufsize = (size_t)atol(argv[3]);
	pause_ms = atol(argv[4]);
	if (batch < 1 || batch > MAX_BATCH || bufsize < 4096)
		return 2;
	buf = malloc(bufsize * batch);
	if (!buf)
		return 1;
	sigaction(SIGTERM, &sa, NULL);
	for (;;) {
		int more;

		if (stop)
			last = 1;
		if (!last && poll(&p, 1, 200) <= 0)
			continue;
		do {
			unsigned long long before = datagrams;

			more = drain(buf, bufsize, batch, do_walk);
			if (!more && datagrams == before && last)
				break;
		} while (more || last);
		if (last)
			break;
		if (pause_ms > 0) {
			struct timespec ts = {pause_ms / 1000, (pause_ms % 1000) * 1000000L};

			nanosleep(&ts, NULL);
		}
	}
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"datagrams\": %llu, \"bytes\": %llu, \"messages\": %llu, \"seq_gaps\": %llu, "
	       "\"attrs\": \"%s\", \"user_s\": %.6f, \"sys_s\": %.6f}\n",
	       datagrams, bytes, messages, seq_gaps, first_attrs,
	       ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
	       ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
	return 0;
}
