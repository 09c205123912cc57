// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* empty.bpf.c - bench/ebpf's floor: a TCX program that does nothing but let the packet on. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int empty_tc(struct __sk_buff *skb)
{
	return -1;	/* TC_ACT_UNSPEC == TCX_NEXT */
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
