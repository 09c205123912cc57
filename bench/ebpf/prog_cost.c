// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * prog_cost.c - what flow_tc_ingress costs per packet, without a network in the way.
 *
 * Loads the agent's BPF object through its skeleton (built by prog_cost.py), sets the rodata
 * knobs the way the loader does, and runs the program with BPF_PROG_TEST_RUN on 60-byte
 * UDP frames of `flows` distinct destination ports, `repeat` runs each. Prints the kernel's
 * mean ns per run (the test-run loop included: subtract the empty program's figure).
 *
 *   prog_cost SLOTS PRECISE_CLOCK FLOWS REPEAT
 *   prog_cost --empty OBJECT REPEAT      the same frame through empty.bpf.c's program
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "flow.skel.h"

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

/* Mean ns per run of `fd` over `repeat` runs of the frame of `flow`; < 0 on failure. */
static double test_run(int fd, int flow, unsigned int repeat)
{
	unsigned char pkt[60];
	LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = pkt, .data_size_in = sizeof(pkt),
		    .repeat = repeat);

	make_frame(pkt, flow);
	if (bpf_prog_test_run_opts(fd, &opts))
		return -1;
	return opts.duration;
}

/* The test-run loop's own cost: empty.bpf.c's program on the same frame. */
static int run_empty(const char *path, unsigned int repeat)
{
	struct bpf_object *obj = bpf_object__open_file(path, NULL);
	double ns;

	if (!obj || bpf_object__load(obj))
		return perror("load empty program"), 1;
	ns = test_run(bpf_program__fd(bpf_object__find_program_by_name(obj, "empty_tc")), 0,
		      repeat);
	if (ns < 0)
		return perror("BPF_PROG_TEST_RUN"), 1;
	printf("%.1f\n", ns);
	bpf_object__close(obj);
	return 0;
}

int main(int argc, char **argv)
{
	unsigned int slots, precise, flows, repeat;
	double total = 0, ns;
	struct flow_bpf *skel;
	int fd;

	if (argc == 4 && !strcmp(argv[1], "--empty"))
		return run_empty(argv[2], atoi(argv[3]));
	if (argc != 5) {
		fprintf(stderr, "usage: %s SLOTS PRECISE_CLOCK FLOWS REPEAT | --empty OBJECT "
			"REPEAT\n", argv[0]);
		return 2;
	}
	slots = atoi(argv[1]), precise = atoi(argv[2]), flows = atoi(argv[3]);
	repeat = atoi(argv[4]);
	skel = flow_bpf__open();
	if (!skel)
		return perror("open"), 1;
	skel->rodata->slot_mask = slots ? slots - 1 : 0;
	skel->rodata->slot_seed = 0x5eed;
	skel->rodata->precise_clock = precise;
	/* as the loader: CPU c owns slot entries [c * slots, (c + 1) * slots) */
	bpf_map__set_max_entries(skel->maps.slots_a, slots ? slots * libbpf_num_possible_cpus() : 1);
	bpf_map__set_max_entries(skel->maps.slots_b, slots ? slots * libbpf_num_possible_cpus() : 1);
	if (flow_bpf__load(skel))
		return perror("load"), 1;
	fd = bpf_program__fd(skel->progs.flow_tc_ingress);
	for (unsigned int f = 0; f < flows; f++) {
		ns = test_run(fd, f, repeat);
		if (ns < 0)
			return perror("BPF_PROG_TEST_RUN"), 1;
		total += ns;
	}
	printf("%.1f\n", total / flows);
	flow_bpf__destroy(skel);
	return 0;
}
