// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * prog_cost.c - what flow_tc_ingress costs per packet, without a network in the way.
 *
 * Loads the agent's BPF object through its skeleton (built by prog_cost.py), sets the rodata
 * knobs the way the loader does, and runs the program with BPF_PROG_TEST_RUN on 60-byte
 * UDP frames of `flows` distinct destination ports, `repeat` runs each. Prints the kernel's
 * mean ns per run (the test-run loop included: subtract the empty program's figure).
 *
 *   prog_cost SLOTS PRECISE_CLOCK FLOWS REPEAT [FRAG_TRACK DECAP FRAME [KEEP_OUTER
 *             [L2_FIELDS MPLS_LABELS]]]
 *   prog_cost --empty OBJECT REPEAT      the same frame through empty.bpf.c's program
 *   prog_cost --new SLOTS MAXFLOWS FLOWS PERCPU [STEADY]
 *             FLOWS distinct flows (source 10.128.0.0 + flow) run once each into tables of
 *             MAXFLOWS with the loader's defaults (tick clock, overflow ring, early drain at
 *             half the table), then once each again: prints "new existing", the mean ns per
 *             run of each pass (one run per test-run call: subtract `--empty OBJECT 1`);
 *             exits 1 unless the tables hold all 2 x FLOWS packets with 0 < first <= last;
 *             STEADY 1: the table filled and emptied once first, flows in a shuffled order;
 *             exits 1 as well unless the early-drain fill count and signal are right
 *
 * FRAG_TRACK (0/1), DECAP (TUNNEL_* bits) and KEEP_OUTER (0/1) set the knobs of
 * [cache] fragments = "track", decapsulate and keep_outer; FRAME is 0 for the plain UDP frame,
 * 1 for the same frame inside VXLAN (UDP 4789, 110 bytes), 2 for a non-first IPv4 fragment of
 * it (a fragment-map lookup), 3 for it with an 802.1Q tag (64 bytes), 4 behind two MPLS labels
 * (68 bytes). L2_FIELDS (L2_* bits) and MPLS_LABELS are [flow]'s optional key fields; the flow
 * tables hash the key's prefix they use (flow_key_size()), as the loader sets them up.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "flow.h"
#include "flow.skel.h"

#define MAX_FRAME 128

static void make_frame(unsigned char *pkt, int flow)
{
	unsigned char *ip = pkt + 14, *udp = ip + 20;

	memset(pkt, 0, 60);
	memset(pkt, 0x02, 12);
	pkt[12] = 0x08;				/* IPv4 */
	ip[0] = 0x45;
	ip[3] = 46;				/* total length 20 + 8 + 18 */
	ip[8] = 64;
	ip[9] = 17;				/* UDP */
	ip[12] = 10, ip[15] = 1;		/* 10.0.0.1 -> 10.0.0.2 */
	ip[16] = 10, ip[19] = 2;
	udp[0] = 0x30, udp[1] = 0x39;		/* 12345 -> 20000 + flow */
	udp[2] = (20000 + flow) >> 8, udp[3] = (20000 + flow) & 0xff;
	udp[5] = 26;
}

/* The frame of `flow` inside VXLAN (VNI 42) between 10.9.0.1 and 10.9.0.2; 110 bytes. */
static int make_vxlan(unsigned char *pkt, int flow)
{
	unsigned char *ip = pkt + 14, *udp = ip + 20, *vx = udp + 8;

	memset(pkt, 0, 50);
	memset(pkt, 0x04, 12);
	pkt[12] = 0x08;
	ip[0] = 0x45;
	ip[2] = 0, ip[3] = 20 + 8 + 8 + 60;
	ip[8] = 64;
	ip[9] = 17;
	ip[12] = 10, ip[13] = 9, ip[15] = 1;
	ip[16] = 10, ip[17] = 9, ip[19] = 2;
	udp[0] = 0xc0, udp[1] = flow & 0xff;	/* source port: the inner flow's hash */
	udp[2] = 4789 >> 8, udp[3] = 4789 & 0xff;
	udp[5] = 8 + 8 + 60;
	vx[0] = 0x08;				/* I flag */
	vx[6] = 42;				/* VNI 42 */
	make_frame(vx + 8, flow);
	return 50 + 60;
}

/* The frame of `flow` with an 802.1Q tag (priority 1, VLAN 100); 64 bytes. */
static int make_tagged(unsigned char *pkt, int flow)
{
	unsigned char plain[60];

	make_frame(plain, flow);
	memcpy(pkt, plain, 12);
	pkt[12] = 0x81, pkt[13] = 0x00, pkt[14] = 0x20, pkt[15] = 100;
	memcpy(pkt + 16, plain + 12, 48);
	return 64;
}

/* The IP packet of `flow` behind labels 16 and 17 (bottom of stack); 68 bytes. */
static int make_mpls(unsigned char *pkt, int flow)
{
	static const unsigned char stack[8] = { 0x00, 0x01, 0x00, 64, 0x00, 0x01, 0x11, 64 };
	unsigned char plain[60];

	make_frame(plain, flow);
	memcpy(pkt, plain, 12);
	pkt[12] = 0x88, pkt[13] = 0x47;
	memcpy(pkt + 14, stack, sizeof(stack));
	memcpy(pkt + 22, plain + 14, 46);
	return 68;
}

/* Flow `flow` of the new-flow mode: the plain frame from source 10.128.0.0 + flow. */
static int make_sourced(unsigned char *pkt, int flow)
{
	make_frame(pkt, 0);
	pkt[14 + 12] = 10, pkt[14 + 13] = 128 | ((flow >> 16) & 0x7f);
	pkt[14 + 14] = (flow >> 8) & 0xff, pkt[14 + 15] = flow & 0xff;
	return 60;
}

static int make_any(unsigned char *pkt, int flow, int frame)
{
	switch (frame) {
	case 5:
		return make_sourced(pkt, flow);
	case 1:
		return make_vxlan(pkt, flow);
	case 3:
		return make_tagged(pkt, flow);
	case 4:
		return make_mpls(pkt, flow);
	}
	make_frame(pkt, flow);
	return 60;
}

/* Mean ns per run of `fd` over `repeat` runs of the frame of `flow`; < 0 on failure. */
static double test_run_frame(int fd, int flow, unsigned int repeat, int frame)
{
	unsigned char pkt[MAX_FRAME];
	int len = make_any(pkt, flow, frame);
	LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = pkt, .data_size_in = len,
		    .repeat = repeat);

	if (frame == 2)
		pkt[14 + 6] = 0x00, pkt[14 + 7] = 0xb9;	/* offset 1480: a non-first fragment */
	if (bpf_prog_test_run_opts(fd, &opts))
		return -1;
	return opts.duration;
}

static double test_run(int fd, int flow, unsigned int repeat)
{
	return test_run_frame(fd, flow, repeat, 0);
}

/* The test-run loop's own cost: empty.bpf.c's program on the same frame. */
static int run_empty(const char *path, unsigned int repeat)
{
	struct bpf_object *obj = bpf_object__open_file(path, NULL);
	double ns;

	if (!obj || bpf_object__load(obj))
		return perror("load empty program"), 1;
	int fd = bpf_program__fd(bpf_object__find_program_by_name(obj, "empty_tc"));
	/* one run per call (the new-flow mode): the mean over many calls */
	unsigned int calls = repeat == 1 ? 100000 : 1;
	double total = 0;

	for (unsigned int i = 0; i < calls; i++) {
		ns = test_run(fd, 0, repeat);
		if (ns < 0)
			return perror("BPF_PROG_TEST_RUN"), 1;
		total += ns;
	}
	printf("%.1f\n", total / calls);
	bpf_object__close(obj);
	return 0;
}

/* log2 of the loader's drain window for `slots` per-CPU slots (_loader.c window_entries) */
static __u32 window_shift(__u32 slots)
{
	__u32 w = slots < 4096 ? slots : 4096;

	while (w && slots / w > 64)
		w <<= 1;
	return w ? (__u32)__builtin_ctz(w) : 0;
}

/* As the loader: CPU c owns slot entries [c * slots, (c + 1) * slots) and their tag words
 * [c * words, (c + 1) * words), 8 slots to a word (one word below 8 slots). */
static void size_slots(struct flow_bpf *skel, unsigned int slots)
{
	unsigned int ncpu = libbpf_num_possible_cpus(), words = slots >= 8 ? slots / 8 : 1;

	skel->rodata->tag_words = words;
	bpf_map__set_max_entries(skel->maps.slots_a, slots ? slots * ncpu : 1);
	bpf_map__set_max_entries(skel->maps.slots_b, slots ? slots * ncpu : 1);
	bpf_map__set_max_entries(skel->maps.tags_a, slots ? words * ncpu : 1);
	bpf_map__set_max_entries(skel->maps.tags_b, slots ? words * ncpu : 1);
}

/* Packets in table 0 (hash and slots), -1 if an entry's times are not 0 < first <= last
 * (line slots: last not before first in their 32-bit units). */
static long long table_packets(struct flow_bpf *skel, int percpu)
{
	int ncpu = libbpf_num_possible_cpus(), nvals = percpu ? ncpu : 1;
	int hash = bpf_map__fd(skel->maps.flows_a), slots = bpf_map__fd(skel->maps.slots_a);
	unsigned char key[FLOW_KEY_BASE_SIZE], next[FLOW_KEY_BASE_SIZE];
	struct flow_metrics m[nvals];
	struct flow_slot rec;
	long long total = 0;
	void *prev = NULL;

	while (!bpf_map_get_next_key(hash, prev, next)) {
		memcpy(key, next, sizeof(key));
		prev = key;
		if (bpf_map_lookup_elem(hash, key, m))
			return -1;
		for (int c = 0; c < nvals; c++) {
			if (m[c].packets && (!m[c].first_ns || m[c].first_ns > m[c].last_ns))
				return -1;
			total += m[c].packets;
		}
	}
	for (__u32 i = 0; i < bpf_map__max_entries(skel->maps.slots_a); i++) {
		if (bpf_map_lookup_elem(slots, &i, &rec))
			return -1;
		if (skel->rodata->slot_line) {	/* struct flow_slot_line: 32-bit times */
			struct flow_slot_line *l = (struct flow_slot_line *)&rec;

			if (l->packets && (__u32)(l->last - l->first) >= 1U << 31)
				return -1;
			total += l->packets;
			continue;
		}
		if (rec.m.packets && (!rec.m.first_ns || rec.m.first_ns > rec.m.last_ns))
			return -1;
		total += rec.m.packets;
	}
	return total;
}

/* Delete every entry of `map` (key size `key_size`, values of `val_size`) with
 * BPF_MAP_LOOKUP_AND_DELETE_BATCH, as a drain does: the preallocated elements go back to the
 * free list in the order of the hash walk. */
static int empty_table(int map, size_t key_size, size_t val_size)
{
	enum { CHUNK = 4096 };
	void *keys = malloc(CHUNK * key_size), *vals = malloc(CHUNK * val_size);
	__u32 batch = 0, count;
	int first = 1, err = 0;
	LIBBPF_OPTS(bpf_map_batch_opts, opts);

	while (keys && vals && !err) {
		count = CHUNK;
		err = bpf_map_lookup_and_delete_batch(map, first ? NULL : &batch, &batch, keys,
						      vals, &count, &opts);
		first = 0;
	}
	free(keys), free(vals);
	return err == -ENOENT ? 0 : -1;
}

/* Zero entries 0..n-1 of array `map` (values of `size` bytes), as a drain leaves them. */
static int zero_entries(int map, __u32 n, size_t size)
{
	void *zero = calloc(1, size);
	int err = !zero;

	for (__u32 i = 0; !err && i < n; i++)
		err = bpf_map_update_elem(map, &i, zero, BPF_ANY);
	free(zero);
	return err;
}

/* A fixed permutation of 0..n-1 (xorshift Fisher-Yates): the flood's order of flows after a
 * drain, not the order the table's elements were handed out in. */
static unsigned int *shuffled(unsigned int n)
{
	unsigned int *order = malloc(sizeof(*order) * n);
	unsigned long long x = 0x9e3779b97f4a7c15ULL;

	for (unsigned int i = 0; order && i < n; i++)
		order[i] = i;
	for (unsigned int i = n; order && i > 1; i--) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		unsigned int j = x % i, t = order[i - 1];

		order[i - 1] = order[j], order[j] = t;
	}
	return order;
}

/* Hash inserts the program counted in flow_stats (CNT_HASH_NEW, summed over the CPUs). */
static long long hash_inserts(struct flow_bpf *skel)
{
	int ncpu = libbpf_num_possible_cpus();
	struct flow_counters c[ncpu];
	__u32 zero = 0;
	long long n = 0;

	if (bpf_map_lookup_elem(bpf_map__fd(skel->maps.flow_stats), &zero, c))
		return -1;
	for (int i = 0; i < ncpu; i++)
		n += c[i].v[CNT_HASH_NEW];
	return n;
}

static int count_signal(void *ctx, void *data, size_t size)
{
	(void)data, (void)size;
	++*(int *)ctx;
	return 0;
}

/* The early-drain trigger after `inserted` hash inserts into table 0 since it was emptied:
 * its shared count is off by less than FILL_STEP (64) per CPU (a CPU adds 64 at every 64th
 * insert of its own since load; exact for thresholds below 4096), and the program signalled the drain iff the count reached the threshold. */
static int check_fill(struct flow_bpf *skel, long long inserted, unsigned long long threshold)
{
	long long slack = threshold >= 64 * 64 ? 64LL * libbpf_num_possible_cpus() : 1;
	struct ring_buffer *rb;
	struct flow_fill fill;
	__u32 zero = 0;
	int signals = 0;

	if (bpf_map_lookup_elem(bpf_map__fd(skel->maps.flow_fill), &zero, &fill))
		return perror("read the fill count"), 1;
	rb = ring_buffer__new(bpf_map__fd(skel->maps.fill_signal), count_signal, &signals, NULL);
	if (!rb || ring_buffer__consume(rb) < 0)
		return perror("read the fill signal"), 1;
	ring_buffer__free(rb);
	if ((long long)fill.inserts >= inserted + slack ||
	    (long long)fill.inserts <= inserted - slack ||
	    (signals > 0) != (fill.inserts >= threshold)) {
		fprintf(stderr, "fill count %llu after %lld inserts (threshold %llu): %d signals\n",
			(unsigned long long)fill.inserts, inserted, threshold, signals);
		return 1;
	}
	return 0;
}

/* Each of `flows` flows run once, twice over: the mean ns per run of the pass that inserts
 * them (new flows) and of the pass that finds them (existing flows). Fails unless the tables
 * then hold every run's packet with sane times. `steady`: the table was filled and emptied
 * once before (its free list in drain order, as after the first drain of a flood) and both
 * passes visit the flows in a shuffled order, so neither the elements nor the buckets are
 * walked in memory order; else a fresh table, flows in order. */
static int run_new(unsigned int slots, unsigned int maxflows, unsigned int flows, int percpu,
		   int steady, unsigned int probes)
{
	struct flow_bpf *skel = flow_bpf__open();
	double pass[2] = { 0, 0 }, ns;
	unsigned int *order = shuffled(flows);
	long long before;
	int fd;

	if (!skel)
		return perror("open"), 1;
	skel->rodata->slot_mask = slots ? slots - 1 : 0;
	skel->rodata->slot_seed = 0x5eed;
	skel->rodata->slot_probes = probes;
	skel->rodata->slot_window_shift = window_shift(slots);
	skel->rodata->percpu = percpu;
	skel->rodata->fill_threshold = maxflows / 2;	/* drain_threshold = 50 */
	size_slots(skel, slots);
	/* as the loader: no key fields, tick clock */
	skel->rodata->slot_line = flow_slot_is_line(FLOW_KEY_BASE_SIZE, 0);
	bpf_map__set_value_size(skel->maps.slots_a, flow_slot_size(FLOW_KEY_BASE_SIZE, 0));
	bpf_map__set_value_size(skel->maps.slots_b, flow_slot_size(FLOW_KEY_BASE_SIZE, 0));
	bpf_map__set_key_size(skel->maps.flows_a, FLOW_KEY_BASE_SIZE);
	bpf_map__set_key_size(skel->maps.flows_b, FLOW_KEY_BASE_SIZE);
	bpf_map__set_max_entries(skel->maps.flows_a, maxflows);
	bpf_map__set_max_entries(skel->maps.flows_b, maxflows);
	bpf_map__set_type(skel->maps.flows_a, percpu ? BPF_MAP_TYPE_PERCPU_HASH : BPF_MAP_TYPE_HASH);
	bpf_map__set_type(skel->maps.flows_b, percpu ? BPF_MAP_TYPE_PERCPU_HASH : BPF_MAP_TYPE_HASH);
	if (flow_bpf__load(skel))
		return perror("load"), 1;
	fd = bpf_program__fd(skel->progs.flow_tc_ingress);
	if (!order)
		return perror("malloc"), 1;
	if (steady) {
		for (unsigned int f = 0; f < flows; f++)
			if (test_run_frame(fd, flows + f, 1, 5) < 0)
				return perror("BPF_PROG_TEST_RUN"), 1;
		if (empty_table(bpf_map__fd(skel->maps.flows_a), FLOW_KEY_BASE_SIZE,
				sizeof(struct flow_metrics) * (percpu ? libbpf_num_possible_cpus() : 1)) ||
		    zero_entries(bpf_map__fd(skel->maps.slots_a),
				 bpf_map__max_entries(skel->maps.slots_a), sizeof(struct flow_slot)) ||
		    zero_entries(bpf_map__fd(skel->maps.tags_a),
				 bpf_map__max_entries(skel->maps.tags_a), sizeof(__u64)) ||
		    zero_entries(bpf_map__fd(skel->maps.flow_fill), 1, sizeof(struct flow_fill)))
			return perror("drain the table"), 1;
	}
	if (steady) {			/* the churn's signal, if any, was the drain's */
		struct ring_buffer *rb = ring_buffer__new(bpf_map__fd(skel->maps.fill_signal),
							  count_signal, &(int){ 0 }, NULL);

		if (!rb || ring_buffer__consume(rb) < 0)
			return perror("read the fill signal"), 1;
		ring_buffer__free(rb);
	}
	before = hash_inserts(skel);
	for (int p = 0; p < 2; p++) {
		for (unsigned int f = 0; f < flows; f++) {
			ns = test_run_frame(fd, steady ? order[f] : f, 1, 5);
			if (ns < 0)
				return perror("BPF_PROG_TEST_RUN"), 1;
			pass[p] += ns;
		}
		if (p == 0 && check_fill(skel, hash_inserts(skel) - before, maxflows / 2))
			return 1;
	}
	free(order);
	if (table_packets(skel, percpu) != 2LL * flows) {
		fprintf(stderr, "accounting: %lld packets in the tables, %u runs\n",
			table_packets(skel, percpu), 2 * flows);
		return 1;
	}
	printf("%.1f %.1f\n", pass[0] / flows, pass[1] / flows);
	flow_bpf__destroy(skel);
	return 0;
}

int main(int argc, char **argv)
{
	unsigned int slots, precise, flows, repeat, frag_track = 0, decap = 0, frame = 0;
	unsigned int l2_fields = 0, mpls_labels = 0;
	unsigned int keep_outer = 0;
	double total = 0, ns;
	struct flow_bpf *skel;
	int fd;

	if (argc == 4 && !strcmp(argv[1], "--empty"))
		return run_empty(argv[2], atoi(argv[3]));
	if (argc >= 6 && argc <= 8 && !strcmp(argv[1], "--new"))
		return run_new(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]),
			       argc >= 7 && atoi(argv[6]), argc == 8 ? atoi(argv[7]) : 4);
	if (argc != 5 && argc != 8 && argc != 9 && argc != 11) {
		fprintf(stderr, "usage: %s SLOTS PRECISE_CLOCK FLOWS REPEAT [FRAG_TRACK DECAP "
			"FRAME [KEEP_OUTER [L2_FIELDS MPLS_LABELS]]] | --empty OBJECT REPEAT | "
			"--new SLOTS MAXFLOWS FLOWS PERCPU [STEADY [PROBES]]\n",
			argv[0]);
		return 2;
	}
	slots = atoi(argv[1]), precise = atoi(argv[2]), flows = atoi(argv[3]);
	repeat = atoi(argv[4]);
	if (argc >= 8)
		frag_track = atoi(argv[5]), decap = atoi(argv[6]), frame = atoi(argv[7]);
	if (argc >= 9)
		keep_outer = atoi(argv[8]);
	if (argc == 11)
		l2_fields = atoi(argv[9]), mpls_labels = atoi(argv[10]);
	skel = flow_bpf__open();
	if (!skel)
		return perror("open"), 1;
	skel->rodata->slot_mask = slots ? slots - 1 : 0;
	skel->rodata->slot_seed = 0x5eed;
	skel->rodata->slot_window_shift = window_shift(slots);
	skel->rodata->precise_clock = precise;
	skel->rodata->frag_track = frag_track;
	skel->rodata->decap = decap;
	skel->rodata->keep_outer = keep_outer;
	skel->rodata->l2_fields = l2_fields;	/* [flow] fields, as the loader */
	skel->rodata->mpls_labels = mpls_labels;
	skel->rodata->key_words = l2_fields || mpls_labels ?
					(flow_key_size(l2_fields, mpls_labels) + 7) / 8 : 0;
	bpf_map__set_key_size(skel->maps.flows_a, flow_key_size(l2_fields, mpls_labels));
	bpf_map__set_key_size(skel->maps.flows_b, flow_key_size(l2_fields, mpls_labels));
	size_slots(skel, slots);
	skel->rodata->slot_line = flow_slot_is_line(flow_key_size(l2_fields, mpls_labels), precise);
	bpf_map__set_value_size(skel->maps.slots_a,
				flow_slot_size(flow_key_size(l2_fields, mpls_labels), precise));
	bpf_map__set_value_size(skel->maps.slots_b,
				flow_slot_size(flow_key_size(l2_fields, mpls_labels), precise));
	if (flow_bpf__load(skel))
		return perror("load"), 1;
	fd = bpf_program__fd(skel->progs.flow_tc_ingress);
	for (unsigned int f = 0; f < flows; f++) {
		ns = test_run_frame(fd, f, repeat, frame);
		if (ns < 0)
			return perror("BPF_PROG_TEST_RUN"), 1;
		total += ns;
	}
	printf("%.1f\n", total / flows);
	flow_bpf__destroy(skel);
	return 0;
}
