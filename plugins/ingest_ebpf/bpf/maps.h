/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * maps.h - the maps of flow.bpf.c (decap_scratch, decapsulate's scratch space, is there: its
 * value is the program's own struct pkt_info). The loader resizes flows_a/flows_b to `maxflows` and
 * may switch them to BPF_MAP_TYPE_PERCPU_HASH (map_type = "percpu") before load.
 */
#ifndef NFA_MAPS_H
#define NFA_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "flow.h"

/* Double-buffered flow tables (see FLOW_MAPS in flow.h). The key is sized, not typed: the
 * loader hashes only the base key (FLOW_KEY_BASE_SIZE) when no optional field is on. */
struct flow_map {
	__uint(type, BPF_MAP_TYPE_HASH);	/* the default map_type, "shared" */
	__uint(max_entries, 65536);
	__uint(key_size, sizeof(struct flow_key));
	__type(value, struct flow_metrics);
};
struct flow_map flows_a SEC(".maps");
struct flow_map flows_b SEC(".maps");

/* Per-CPU flow slots, checked before the hash: open addressing within the key's group of 8
 * slots, found through a tag byte per slot (tags_a/tags_b, 8 to a word: slot_probes of them
 * read in one word, a slot read only when its tag matches) and a key compare instead of a
 * hash walk. A flow whose probed slots other flows hold goes to the hash. CPU c
 * owns entries [c * slots, (c + 1) * slots): a plain array rather than a per-CPU one so that
 * userspace can mmap it (window by window, see slot_touched) and drain it without a syscall
 * per slot.
 * Double-buffered with the hash tables (flow_active picks both); the loader sizes them
 * (slots x possible CPUs) or leaves them at one entry when `cpu_slots = 0`. */
struct slot_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	/* struct flow_slot; no BTF value type, so that the loader can size it (flow_slot_size) */
	__uint(value_size, sizeof(struct flow_slot));
};
struct slot_map slots_a SEC(".maps");
struct slot_map slots_b SEC(".maps");

/* Tags of the slots: one byte per slot of slots_a (tags_a) / slots_b (tags_b), eight to a
 * value (the slots [8w, 8w + 8) of one CPU's region; one value per CPU below 8 slots), 0 while
 * the slot is free, else a fingerprint (1-255) of the key it holds. A packet reads its key's
 * tag word first and loads only the slots whose tag matches: a new flow takes a free slot
 * without reading it, and one whose probes are all taken goes to the hash without touching
 * them. The slots it probes are those of that word. 256 KB per CPU and table for 262,144 slots
 * (in the L2 cache and 64 pages, where the line slots are 16 MB in 4,096 pages). The loader sizes them
 * with the slots and clears a drained window's tags (mmap) after emptying its slots, so a zero
 * tag always means a free slot. */
struct tag_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
};
struct tag_map tags_a SEC(".maps");
struct tag_map tags_b SEC(".maps");

/* Which drain windows of each slot array a CPU took an entry in since the table was last
 * drained: bit w of CPU c's word for table t = entries [w, w + 1) << slot_window_shift of
 * CPU c's region in slots_a (t = 0) / slots_b (t = 1). A CPU writes only its own word and
 * only the active table's; the loader reads the drained (idle) table's words, maps only
 * those windows and clears the words after emptying them, so an idle agent scans nothing. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FLOW_MAPS);
	__type(key, __u32);
	__type(value, __u64);
} slot_touched SEC(".maps");

/* Whether a CPU inserted into hash table t (flows_a / flows_b) since the loader last walked
 * it to the end: set by the program before each insert (hash_insert()), read by the loader
 * at drain_begin() and cleared after a whole walk, so a drain whose table no CPU inserted
 * into skips the walk of its buckets (524,288 of them at the derived size: ~1 ms even when
 * empty). A CPU writes only its own word and only the active table's. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FLOW_MAPS);
	__type(key, __u32);
	__type(value, __u64);
} hash_touched SEC(".maps");

/* Which flow table the program writes: 0 = flows_a, 1 = flows_b. Written by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} flow_active SEC(".maps");

/* Packets of flows the full table could not take (struct overflow_event); the loader sizes
 * it from the config and consumes it every tick [netobserv direct_flows]. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} overflow SEC(".maps");

/* How full each flow table is: inserts since userspace last drained it (shared, atomic add),
 * and whether the program already asked for an early drain of it. Userspace zeroes an entry
 * after draining its table. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FLOW_MAPS);
	__type(key, __u32);
	__type(value, struct flow_fill);
} flow_fill SEC(".maps");

/* The program's wake-up call to the drain thread (epoll on the ring): a table reached
 * fill_threshold, or a packet was lost in it. One __u32 (the table) per signal. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} fill_signal SEC(".maps");

/* First fragments' ports for the later fragments of their datagram (fragments = "track"):
 * bounded, the least recently used entry goes when full; the loader sizes it from
 * [cache] fragment_table (1 entry when not tracking). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
} frag_ports SEC(".maps");

/* Cumulative per-CPU counters (enum flow_counter); userspace sums the CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_counters);
} flow_stats SEC(".maps");

#endif /* NFA_MAPS_H */
