// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * _loader.c - CPython extension over libbpf for the eBPF flow ingest (plugins.ingest_ebpf).
 *
 * Mirrors libbpf-bootstrap's bootstrap.c: open the embedded object (bpftool skeleton of
 * bpf/flow.bpf.c) -> set rodata knobs and map sizes -> load -> attach -> drain -> destroy.
 * Attach: bpf_link_create() for TCX (attach types 46/47, kernel 6.6+) and XDP links, both of
 * which die with the process; tc clsact through bpf_tc_* otherwise. All of them act in the
 * calling thread's network namespace (the Python side wraps them in setns()).
 * drain_begin() + drain_next() empty one flow table in chunks: each drain_next() takes up to
 * `chunk_rows` entries with BPF_MAP_LOOKUP_AND_DELETE_BATCH (then the per-CPU slots), sums the
 * per-CPU values with the GIL released and writes the rows into the caller's buffer: straight
 * into the columns of a FlowBatch record array (a layout from decode.record_layout(); no row
 * buffer, no NumPy pass per column), or as struct flow_record rows: memory stays bounded by
 * the chunk, whatever the table holds.
 * consume() turns the overflow ring's per-packet events into the same rows.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/membarrier.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpf/flow.h"
#include "flow.skel.h"

#define LOG_CAP 8192
#define STATS_CAP 1024		/* a program's verifier statistics (BPF_LOG_STATS) */
#define MAX_PROGS 4		/* programs in flow.bpf.c (3), room for one more */
#define BPF_LOG_STATS_ 4	/* log_level bit: "processed N insns", "stack depth a+b+..." */

/* libbpf's diagnostics (verifier log included) of the current load, for error messages. */
static char libbpf_log[LOG_CAP];
static size_t libbpf_log_len;

static int log_to_buffer(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	int n;

	if (level == LIBBPF_DEBUG || libbpf_log_len >= LOG_CAP - 1)
		return 0;
	n = vsnprintf(libbpf_log + libbpf_log_len, LOG_CAP - libbpf_log_len, fmt, ap);
	if (n > 0)
		libbpf_log_len += (size_t)n < LOG_CAP - libbpf_log_len ? (size_t)n
								: LOG_CAP - 1 - libbpf_log_len;
	return 0;
}

/* Raise OSError(errno, "<what>: <strerror>[\n<libbpf log, its lines \"libbpf: ...\">]"). */
static PyObject *raise_errno(int err, const char *what)
{
	PyObject *msg;

	if (err < 0)
		err = -err;
	while (libbpf_log_len && libbpf_log[libbpf_log_len - 1] == '\n')
		libbpf_log[--libbpf_log_len] = '\0';
	libbpf_log[libbpf_log_len] = '\0';
	msg = PyUnicode_FromFormat("%s: %s%s%s", what, strerror(err),
				   libbpf_log_len ? "\n" : "", libbpf_log);
	libbpf_log_len = 0;
	if (msg) {
		PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iO", err, msg);

		if (exc) {
			PyErr_SetObject(PyExc_OSError, exc);
			Py_DECREF(exc);
		}
		Py_DECREF(msg);
	}
	return NULL;
}

/*
 * A drained row written straight into the caller's record array (a FlowBatch's columns):
 * drain_next(buffer, layout, wall_offset) applies these ops to each flow_record, so no
 * intermediate row buffer and no NumPy pass per column. decode.py's record_layout() builds
 * them from the schema's record dtype; bytes of an output row no op writes are zero.
 */
enum { OP_COPY, OP_INT, OP_TIME, OP_TUNNEL, OP_MAX };

_Static_assert(offsetof(struct flow_key, ext) == FLOW_KEY_BASE_SIZE,
	       "the optional fields follow the base key");

struct layout_op {
	__u16 dst;		/* offset in the output row */
	__u16 src;		/* offset in struct flow_record */
	__u8 dst_width;		/* bytes written: OP_COPY any, OP_INT 1/2/4/8, others 8 */
	__u8 src_width;		/* bytes read: OP_COPY = dst_width, OP_INT 1/2/4/8 */
	__u8 kind;		/* OP_*: copy bytes, unsigned integer (narrowed or widened), a
				 * monotonic time + wall_offset (u64 -> i64), tunnel_type << 56 |
				 * tunnel_id (two u32 at src) */
	__u8 pad;
};

/* a layout: this header, then nops ops */
struct layout_head {
	__u32 row_size;		/* bytes per output row (the record dtype's itemsize) */
	__u32 nops;
};

typedef struct {
	PyObject_HEAD
	struct flow_bpf *skel;
	int flows_fd[FLOW_MAPS];
	int ncpu;		/* value slots per key: possible CPUs, or 1 for the shared map */
	__u32 chunk;		/* rows one drain_next() takes: what keys/vals hold */
	void *keys, *vals;	/* drain buffers, reused by every chunk */
	__u32 slots;		/* per-CPU flow slots (0 = none) */
	int slot_ncpu;		/* possible CPUs: slot arrays hold slots * slot_ncpu entries */
	__u32 probes;		/* slots probed per packet (rodata slot_probes) */
	__u32 window;		/* entries per drain window (a power of two <= slots) */
	__u64 *touched;		/* the drained table's slot_touched words, one per CPU */
	int touched_any;	/* any of them set: they need clearing after the walk */
	__u64 *hash_marks;	/* the drained table's hash_touched words, one per CPU */
	int active;		/* the table set_active() last chose, -1 before the first */
	int synced;		/* a synchronize() returned since that set_active(): no program
				 * writes the other table (hash_walk_done()) */
	int walk_clean;		/* the drain in progress began synced on the inactive table and
				 * no set_active() came since: its end may clear the hash marks
				 * and the slot windows' touched marks */
	int walk_flipped;	/* a set_active() came during the drain in progress: programs
				 * may have taken slots in windows it did not read */
	int force_next[FLOW_MAPS];	/* a hash walk of the table began and did not reach its
					 * end (an error, or a new drain_begin): the next drain of
					 * the table walks the hash, marked or not */
	unsigned long long hash_skips;	/* drains that skipped an unmarked hash's walk */
	unsigned long long hash_walks;	/* drains that walked the hash (marked or forced) */
	unsigned long long mark_clear_errors;	/* whole walks whose mark clear failed */
	unsigned long long slots_read;	/* slots the walks read (tagged ones, or all of a
					 * window whose tags could not be mapped) */
	unsigned long long tag_map_errors;	/* windows read without their tags (mmap failed) */
	unsigned long long windows_scanned;	/* windows mapped and scanned since load */
	__u32 key_size;		/* bytes the flow tables hash: the base key or all of it */
	__u32 rec_size;		/* bytes of a drained row: FLOW_RECORD_BASE_SIZE or a flow_record */
	/* the drain_next() call in progress, with a layout: rows are written as its ops say */
	const struct layout_op *ops;	/* NULL: rows of rec_size (put_record) */
	__u32 nops;
	__u32 out_size;		/* bytes of an output row */
	__s64 wall_offset;	/* ns added to the kernel's CLOCK_MONOTONIC times (OP_TIME) */
	/* the drain in progress (drain_begin): table, phase, batch token, next slot */
	__u32 walk_index;
	int walk_phase;		/* WALK_* */
	int walk_first;		/* the next batch call starts the table's walk */
	__u32 walk_batch;	/* BPF batch token: the bucket to continue at */
	int walk_cpu;		/* CPU region whose touched windows are being scanned */
	__u64 walk_bits;	/* its windows not mapped yet */
	__u32 slot_size;	/* bytes of a slot (flow_slot_size()) */
	int slot_line;		/* slots are flow_slot_line (flow_slot_is_line()) */
	__u64 slot_now;		/* CLOCK_MONOTONIC ns at this drain_slots() call: line slots'
				 * 32-bit times are restored below it */
	char *win;		/* first slot of the mapped window (NULL: none) */
	void *win_map;		/* the window's mapping (page-aligned around it) */
	size_t win_len;
	__u8 *win_tags;		/* the window's tag bytes, one per slot (NULL: not mapped, every
				 * slot of the window is read: map_window_tags()) */
	void *tags_map;		/* their mapping (page-aligned around them) */
	size_t tags_len;
	__u32 win_pos;		/* next entry of the window to look at */
	__u32 pf_pos;		/* entries below it whose tagged slots were prefetched */
	int win_cpu, win_w;	/* the mapped window: CPU region and window number */
	__u32 tag_words;	/* tag words per CPU (rodata tag_words) */
	int tag_err;		/* -errno of the walk's first failed tag clear, else 0 */
	struct ring_buffer *rb;	/* overflow ring, NULL when off */
	struct ring_buffer *sig_rb;	/* the program's early-drain signals */
	unsigned long signals;	/* signals read by the current take_signals() */
	char *ring_out;		/* overflow events of one consume(), rows of rec_size */
	size_t ring_len, ring_cap;
	/* verifier_stats=True: each program's BPF_LOG_STATS output, by program order */
	char (*stats)[STATS_CAP];
} Loader;

enum { WALK_DONE, WALK_HASH, WALK_SLOTS };

/* smallest chunk: a hash bucket (a few entries) must always fit, see drain_hash() */
#define MIN_CHUNK 64

static void unmap_window(Loader *self);

static void loader_release(Loader *self)
{
	ring_buffer__free(self->rb);
	self->rb = NULL;
	ring_buffer__free(self->sig_rb);
	self->sig_rb = NULL;
	free(self->ring_out);
	self->ring_out = NULL;
	self->ring_len = self->ring_cap = 0;
	if (self->skel)
		flow_bpf__destroy(self->skel);	/* closes fds: detaches links we did not close */
	self->skel = NULL;
	free(self->keys);
	free(self->vals);
	unmap_window(self);
	free(self->touched);
	self->touched = NULL;
	free(self->hash_marks);
	self->hash_marks = NULL;
	self->keys = self->vals = NULL;
	self->walk_phase = WALK_DONE;
	free(self->stats);
	self->stats = NULL;
}

static void Loader_dealloc(Loader *self)
{
	loader_release(self);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Write one drained row at dst: the whole flow_record when the key has optional fields,
 * else the compact row (base key, 4 zero bytes, metrics). `key` holds key_size bytes. An IPv4
 * address takes the first 4 bytes of its field; the other 12 are made zero here, so the
 * decoder can take the addresses as they are. */
static __u64 get_uint(const char *p, int width)
{
	switch (width) {
	case 1: return *(const __u8 *)p;
	case 2: { __u16 v; memcpy(&v, p, 2); return v; }
	case 4: { __u32 v; memcpy(&v, p, 4); return v; }
	default: { __u64 v; memcpy(&v, p, 8); return v; }
	}
}

static void put_uint(char *p, int width, __u64 v)
{
	switch (width) {
	case 1: *(__u8 *)p = (__u8)v; break;
	case 2: { __u16 x = (__u16)v; memcpy(p, &x, 2); break; }
	case 4: { __u32 x = (__u32)v; memcpy(p, &x, 4); break; }
	default: memcpy(p, &v, 8);
	}
}

/* memcpy with the widths of the usual copies spelled out: a constant size compiles to plain
 * moves, where a variable one became `rep movs` (slow to start, most of a row's time) */
static void copy_bytes(char *dst, const char *src, unsigned int width)
{
	switch (width) {
	case 1: memcpy(dst, src, 1); break;
	case 2: memcpy(dst, src, 2); break;
	case 4: memcpy(dst, src, 4); break;
	case 8: memcpy(dst, src, 8); break;
	case 16: memcpy(dst, src, 16); break;
	case 32: memcpy(dst, src, 32); break;
	default: memcpy(dst, src, width);
	}
}

/* Write one row at dst as the call's layout says (self->ops), from a whole flow_record. */
static void put_columns(const Loader *self, char *dst, const struct flow_record *r)
{
	const char *src = (const char *)r;

	memset(dst, 0, self->out_size);
	for (__u32 i = 0; i < self->nops; i++) {
		const struct layout_op *op = &self->ops[i];
		__u64 v;

		switch (op->kind) {
		case OP_COPY:
			copy_bytes(dst + op->dst, src + op->src, op->dst_width);
			break;
		case OP_INT:
			put_uint(dst + op->dst, op->dst_width, get_uint(src + op->src, op->src_width));
			break;
		case OP_TIME:	/* CLOCK_MONOTONIC ns are far below 2^63 */
			v = (__u64)((__s64)get_uint(src + op->src, 8) + self->wall_offset);
			memcpy(dst + op->dst, &v, 8);
			break;
		default:	/* OP_TUNNEL */
			v = get_uint(src + op->src, 4) << 56 | get_uint(src + op->src + 4, 4);
			memcpy(dst + op->dst, &v, 8);
		}
	}
}

static void put_record(const Loader *self, char *dst, const void *key,
		       const struct flow_metrics *m)
{
	struct flow_key *k = (struct flow_key *)dst;

	if (self->ops) {	/* straight into the caller's columns */
		struct flow_record r;

		memcpy(&r.key, key, FLOW_KEY_BASE_SIZE);
		memset(&r.key.ext, 0, sizeof(r.key.ext));
		if (self->key_size > FLOW_KEY_BASE_SIZE)
			memcpy(&r.key.ext, (const char *)key + FLOW_KEY_BASE_SIZE,
			       self->key_size - FLOW_KEY_BASE_SIZE);
		r.m = *m;
		if (r.key.ip_version == 4) {
			memset(r.key.saddr + 4, 0, sizeof(r.key.saddr) - 4);
			memset(r.key.daddr + 4, 0, sizeof(r.key.daddr) - 4);
		}
		put_columns(self, dst, &r);
		return;
	}
	if (self->rec_size == sizeof(struct flow_record)) {
		memset(dst, 0, offsetof(struct flow_record, m));
		memcpy(dst, key, self->key_size);
		memcpy(dst + offsetof(struct flow_record, m), m, sizeof(*m));
	} else {
		memcpy(dst, key, FLOW_KEY_BASE_SIZE);
		memset(dst + FLOW_KEY_BASE_SIZE, 0,
		       FLOW_RECORD_BASE_SIZE - FLOW_KEY_BASE_SIZE - sizeof(*m));
		memcpy(dst + FLOW_RECORD_BASE_SIZE - sizeof(*m), m, sizeof(*m));
	}
	if (k->ip_version == 4) {
		memset(k->saddr + 4, 0, sizeof(k->saddr) - 4);
		memset(k->daddr + 4, 0, sizeof(k->daddr) - 4);
	}
}

/* Bytes between two rows drain_next() writes: the layout's row, or a drained row. */
static size_t out_row_size(const Loader *self)
{
	return self->ops ? self->out_size : self->rec_size;
}

/* ring_buffer__consume() callback: one overflow_event becomes one row. */
static int on_overflow_event(void *ctx, void *data, size_t size)
{
	Loader *self = ctx;
	const struct overflow_event *e = data;
	struct flow_metrics m = {};

	if (size < sizeof(*e))
		return 0;
	if (self->ring_len == self->ring_cap) {
		size_t cap = self->ring_cap ? self->ring_cap * 2 : 1024;
		void *grown = realloc(self->ring_out, cap * self->rec_size);

		if (!grown)
			return -ENOMEM;
		self->ring_out = grown;
		self->ring_cap = cap;
	}
	m.packets = e->packets;
	m.bytes = e->bytes;
	m.first_ns = m.last_ns = e->ts_ns;
	m.tcp_flags = e->tcp_flags;
	put_record(self, self->ring_out + self->ring_len++ * self->rec_size, &e->key, &m);
	return 0;
}

/* ring_buffer__consume() callback of the signal ring: count it. */
static int on_signal(void *ctx, void *data, size_t size)
{
	((Loader *)ctx)->signals++;
	return 0;
}

/*
 * Entries per drain window of `slots` per-CPU slots: 4096 (64 pages of 64-byte line slots, 88
 * of 88-byte ones, 152 of 152-byte ones, so windows of a power of two >= 4096 start on a
 * page; map_window() rounds smaller ones out to pages), more when a CPU's region would have
 * more than 64 windows (slot_touched has one 64-bit word per CPU and table), the whole region
 * when it is smaller.
 */
static __u32 window_entries(__u32 slots)
{
	__u32 w = slots < 4096 ? slots : 4096;

	while (slots / w > 64)
		w <<= 1;
	return w;
}

/* Unmap the window of the slot walk, if one is mapped. */
static void unmap_window(Loader *self)
{
	if (self->win_map)
		munmap(self->win_map, self->win_len);
	self->win_map = NULL;
	self->win = NULL;
	if (self->tags_map)
		munmap(self->tags_map, self->tags_len);
	self->tags_map = NULL;
	self->win_tags = NULL;
}

/*
 * mmap window `w` of CPU `cpu`'s region of the walk's slot array (BPF_F_MMAPABLE, kernel 5.5+;
 * the kernel honours the offset). Only one window is mapped at a time, so the slots cost the
 * agent's RSS at most a window, whatever their size. Returns 0 or -errno.
 */
static int map_window(Loader *self, int cpu, int w)
{
	struct bpf_map *maps[FLOW_MAPS] = { self->skel->maps.slots_a, self->skel->maps.slots_b };
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t first = (size_t)cpu * self->slots + (size_t)w * self->window;
	size_t lo = first * self->slot_size;
	size_t hi = (first + self->window) * self->slot_size;
	size_t off = lo / page * page, end = (hi + page - 1) / page * page;
	void *mem = mmap(NULL, end - off, PROT_READ | PROT_WRITE, MAP_SHARED,
			 bpf_map__fd(maps[self->walk_index]), (off_t)off);

	if (mem == MAP_FAILED)
		return -errno;
	self->win_map = mem;
	self->win_len = end - off;
	self->win = (char *)mem + (lo - off);
	self->win_pos = 0;
	self->pf_pos = 0;
	self->win_cpu = cpu;
	self->win_w = w;
	self->windows_scanned++;
	return 0;
}

/*
 * mmap the tag bytes of the walk's mapped window (tags_a/tags_b, BPF_F_MMAPABLE: a byte per
 * slot at the slot's own index, 8 bytes per CPU below 8 slots; one page for a 4,096-slot
 * window, two for 8,192), so that the walk reads only the slots whose tag is set and zeroes
 * the tags once the window's slots are empty (release_window_tags). Returns 0 or -errno; on
 * an error win_tags stays NULL and the walk reads every slot of the window, as before tags.
 *
 * Why a zero tag is an empty slot here (the walk skips it unread): the program writes a slot
 * only behind a set tag: it takes a free slot (tag 0) and sets the slot's tag in the same run
 * (slot_probe(): slot stores, then the tag word's), or adds to a slot whose tag is set already.
 * The walk runs after set_active() + synchronize(): every program that wrote this table has
 * returned, its stores seen (the grace period orders them before this read). A tag is zeroed
 * only here, after its window's slots were emptied, or stays set when that fails. So a slot
 * that holds packets has a set tag, and skipping the zero ones loses none (a set tag over an
 * empty slot, where a clear failed, is read and found empty). Without a grace period
 * (membarrier refused: the 5 ms wait, with its warning) a straggler can lose packets in a
 * slot either way.
 */
static int map_window_tags(Loader *self)
{
	struct bpf_map *maps[FLOW_MAPS] = { self->skel->maps.tags_a, self->skel->maps.tags_b };
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t lo = (size_t)self->win_cpu * self->tag_words * 8 + (size_t)self->win_w * self->window;
	size_t hi = lo + self->window;
	size_t off = lo / page * page, end = (hi + page - 1) / page * page;
	void *mem = mmap(NULL, end - off, PROT_READ | PROT_WRITE, MAP_SHARED,
			 bpf_map__fd(maps[self->walk_index]), (off_t)off);

	if (mem == MAP_FAILED)
		return -errno;
	self->tags_map = mem;
	self->tags_len = end - off;
	self->win_tags = (__u8 *)mem + (lo - off);
	return 0;
}

/*
 * The window's walk is over and all its slots are empty: zero their tags, so the program takes
 * those slots without reading them (only then: see map_window_tags()), and unmap the window.
 * Returns 0, or -errno when the tags could not be mapped: they stay set then, and the program
 * reads a slot behind a matching tag and takes it when empty, and skips the others (their
 * flows go to the next probe or the hash, still counted).
 */
static int release_window_tags(Loader *self)
{
	int err = 0;

	if (!self->win_tags)	/* the walk read every slot: try to map the tags again */
		err = map_window_tags(self);
	if (!err)
		memset(self->win_tags, 0, self->window);
	unmap_window(self);
	return err;
}

/* The first slot of the mapped window from `pos` on that may hold a flow: the first set tag,
 * 8 tags (one word) at a time, or `pos` itself when the tags are not mapped (every slot is
 * read). A window of 8 slots or more starts on a word: its tags are at a multiple of 8. */
static __u32 next_tagged(const Loader *self, __u32 pos)
{
	const __u8 *tags = self->win_tags;
	const __u64 low7 = 0x7f7f7f7f7f7f7f7fULL;

	if (!tags)
		return pos;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	while (self->window >= 8 && pos < self->window) {
		__u32 base = pos & ~7U;
		__u64 w, set;

		memcpy(&w, tags + base, 8);
		w &= ~0ULL << ((pos - base) * 8);	/* the tags before pos: already read */
		set = (((w & low7) + low7) | w) & ~low7;	/* the top bit of each set tag */
		if (set)
			return base + (__u32)__builtin_ctzll(set) / 8;
		pos = base + 8;
	}
#endif
	while (pos < self->window && !tags[pos])
		pos++;
	return pos;
}

/* Slots ahead of the walk whose lines are prefetched (by their tags): reading only the taken
 * slots skips most lines, which also keeps the hardware prefetcher from streaming them in, so
 * each read would wait for memory (~100 ns); ahead by this many slots, ~50 lines are in flight
 * at 100,000 flows in 524,288 slots, a few at 14,000. */
#define PREFETCH_AHEAD 256

/* Prefetch (for writing: the walk zeroes them) the lines of the tagged slots of the mapped
 * window below `upto` not prefetched yet. */
static void prefetch_tagged(Loader *self, __u32 upto)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__	/* byte i of the word is tag i: as next_tagged */
	const __u64 low7 = 0x7f7f7f7f7f7f7f7fULL;

	if (!self->win_tags || self->window < 8)
		return;
	if (upto > self->window)
		upto = self->window;
	for (; self->pf_pos < upto; self->pf_pos += 8) {
		__u64 w, set;

		memcpy(&w, self->win_tags + self->pf_pos, 8);
		set = (((w & low7) + low7) | w) & ~low7;
		for (; set; set &= set - 1) {
			__u32 i = self->pf_pos + (__u32)__builtin_ctzll(set) / 8;

			__builtin_prefetch(self->win + (size_t)i * self->slot_size, 1);
		}
	}
#else
	(void)self;
	(void)upto;
#endif
}

/* Map the walk's next touched window: 1, 0 when there is none left, or -errno. */
static int next_window(Loader *self)
{
	while (!self->walk_bits) {
		if (++self->walk_cpu >= self->slot_ncpu)
			return 0;
		self->walk_bits = self->touched[self->walk_cpu];
	}
	int w = __builtin_ctzll(self->walk_bits);
	int err = map_window(self, self->walk_cpu, w);

	if (err)
		return err;
	if (map_window_tags(self)) {	/* no tags: the walk reads every slot of the window */
		self->win_tags = NULL;
		self->tag_map_errors++;
	}
	self->walk_bits &= self->walk_bits - 1;
	return 1;
}

/* verifier_stats: have the verifier write its statistics (instructions processed, each
 * function's stack depth) of every program into self->stats. Only BPF_LOG_STATS: the
 * per-instruction log of a program this size would not fit any buffer. */
static int capture_stats(Loader *self)
{
	struct bpf_program *p;
	int i = 0;

	self->stats = calloc(MAX_PROGS, STATS_CAP);
	if (!self->stats) {
		PyErr_NoMemory();
		return -1;
	}
	bpf_object__for_each_program(p, self->skel->obj) {
		if (i == MAX_PROGS) {
			PyErr_SetString(PyExc_RuntimeError, "verifier_stats: more programs than "
					"MAX_PROGS in the object");
			return -1;
		}
		bpf_program__set_log_buf(p, self->stats[i++], STATS_CAP);
		bpf_program__set_log_level(p, BPF_LOG_STATS_);
	}
	return 0;
}

/* A failed load with verifier_stats: libbpf does not log a buffer it does not own, so add
 * what the verifier wrote there (its reason) to the error message. */
static void append_stats(Loader *self)
{
	struct bpf_program *p;
	int i = 0;

	if (!self->stats)
		return;
	bpf_object__for_each_program(p, self->skel->obj) {
		int n;

		if (i == MAX_PROGS || libbpf_log_len >= LOG_CAP - 1)
			break;
		if (!self->stats[i][0]) {
			i++;
			continue;
		}
		n = snprintf(libbpf_log + libbpf_log_len, LOG_CAP - libbpf_log_len, "%s: %s\n",
			     bpf_program__name(p), self->stats[i++]);
		if (n > 0)
			libbpf_log_len += (size_t)n < LOG_CAP - libbpf_log_len ? (size_t)n
									: LOG_CAP - 1 - libbpf_log_len;
	}
}

static int Loader_init(Loader *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = { "maxflows", "sampling", "percpu", "overflow_ring_bytes",
				  "precise_clock", "slots", "prealloc", "fill_threshold",
				  "frag_table", "frag_timeout", "decap", "keep_outer", "l2_fields",
				  "mpls_labels", "chunk_rows", "probes", "verifier_stats", NULL };
	unsigned int maxflows = 65536, sampling = 1, ring_bytes = 0, ring_size = 4096, slots = 0;
	unsigned int fill_threshold = 0, frag_table = 0, frag_timeout = 30, decap = 0;
	unsigned int l2_fields = 0, mpls_labels = 0, chunk_rows = 16384, probes = 8;
	int percpu = 1, precise_clock = 0, prealloc = 1, keep_outer = 0, verifier_stats = 0, err;
	enum bpf_map_type type;
	__u64 seed = 0;

	if (!PyArg_ParseTupleAndKeywords(args, kw, "|IIpIpIpIIIIpIIIIp", kwlist, &maxflows,
					 &sampling, &percpu, &ring_bytes, &precise_clock, &slots,
					 &prealloc, &fill_threshold, &frag_table, &frag_timeout, &decap,
					 &keep_outer, &l2_fields, &mpls_labels, &chunk_rows, &probes,
					 &verifier_stats))
		return -1;
	if (maxflows < 1 || sampling < 1 || ring_bytes > (1u << 30) ||
	    (slots & (slots - 1)) || slots > (1u << 24) || frag_table > (1u << 24) ||
	    frag_timeout < 1 || frag_timeout > 86400 ||
	    decap & ~(unsigned int)(TUNNEL_GRE | TUNNEL_VXLAN | TUNNEL_GENEVE | TUNNEL_IPIP) ||
	    l2_fields & ~(unsigned int)(L2_MAC | L2_VLAN | L2_TUNNEL_ID) || mpls_labels > 10 ||
	    chunk_rows < MIN_CHUNK || chunk_rows > (1u << 24) || probes < 1 || probes > 8) {
		PyErr_SetString(PyExc_ValueError,
				"maxflows and sampling must be >= 1, overflow_ring_bytes <= 1 GiB, "
				"slots 0 or a power of two <= 2^24, frag_table <= 2^24, "
				"frag_timeout 1..86400 s, decap TUNNEL_* bits, l2_fields L2_* bits, "
				"mpls_labels 0..10, chunk_rows 64..2^24, probes 1..8");
		return -1;
	}
	if (slots && getrandom(&seed, sizeof(seed), 0) != sizeof(seed)) {
		raise_errno(errno, "getrandom (slot seed)");
		return -1;
	}
	while (ring_size < ring_bytes)	/* a power of two, at least a page */
		ring_size <<= 1;
	loader_release(self);
	libbpf_log_len = 0;
	self->skel = flow_bpf__open();	/* open */
	if (!self->skel) {
		raise_errno(errno, "open BPF object");
		return -1;
	}
	self->skel->rodata->sampling = sampling;	/* rodata knobs */
	self->skel->rodata->percpu = (__u8)percpu;
	self->skel->rodata->use_overflow = ring_bytes > 0;
	self->skel->rodata->precise_clock = (__u8)precise_clock;
	self->slot_ncpu = libbpf_num_possible_cpus();
	if (self->slot_ncpu < 1) {
		raise_errno(self->slot_ncpu, "count the possible CPUs");
		loader_release(self);
		return -1;
	}
	if ((__u64)slots * (__u64)self->slot_ncpu > UINT32_MAX) {
		/* the arrays' max_entries is 32-bit: it would wrap and the load fail as EINVAL */
		PyErr_Format(PyExc_ValueError, "slots %u x %d possible CPUs is more than an "
			     "array map holds (2^32 - 1 entries)", slots, self->slot_ncpu);
		loader_release(self);
		return -1;
	}
	self->skel->rodata->slot_mask = slots ? slots - 1 : 0;
	self->skel->rodata->slot_seed = seed;
	self->probes = probes;
	self->window = slots ? window_entries(slots) : 1;
	self->skel->rodata->slot_probes = probes;
	self->skel->rodata->slot_window_shift = (__u32)__builtin_ctz(self->window);
	self->tag_words = slots >= 8 ? slots / 8 : 1;
	self->skel->rodata->tag_words = self->tag_words;
	self->skel->rodata->fill_threshold = fill_threshold;
	/* frag_table 0: no tracking (fragments = "ports0"), the map shrinks to one entry */
	self->skel->rodata->frag_track = frag_table > 0;
	self->skel->rodata->frag_timeout_ns = (__u64)frag_timeout * 1000000000ULL;
	self->skel->rodata->decap = (__u8)decap;
	self->skel->rodata->keep_outer = decap && keep_outer;
	/* [flow] optional fields: without any, the tables hash the base key and rows are compact */
	self->skel->rodata->l2_fields = (__u8)l2_fields;
	self->skel->rodata->mpls_labels = (__u8)mpls_labels;
	self->key_size = flow_key_size(l2_fields, mpls_labels);
	self->skel->rodata->key_words = self->key_size > FLOW_KEY_BASE_SIZE ?
						(self->key_size + 7) / 8 : 0;
	self->rec_size = self->key_size > FLOW_KEY_BASE_SIZE ? sizeof(struct flow_record)
							      : FLOW_RECORD_BASE_SIZE;
	bpf_map__set_max_entries(self->skel->maps.frag_ports, frag_table ? frag_table : 1);
	bpf_map__set_max_entries(self->skel->maps.slots_a, slots ? slots * self->slot_ncpu : 1);
	bpf_map__set_max_entries(self->skel->maps.slots_b, slots ? slots * self->slot_ncpu : 1);
	self->slot_line = flow_slot_is_line(self->key_size, precise_clock);
	self->skel->rodata->slot_line = (__u8)self->slot_line;
	self->slot_size = flow_slot_size(self->key_size, precise_clock);
	bpf_map__set_value_size(self->skel->maps.slots_a, self->slot_size);
	bpf_map__set_value_size(self->skel->maps.slots_b, self->slot_size);
	bpf_map__set_max_entries(self->skel->maps.tags_a, slots ? self->tag_words * self->slot_ncpu : 1);
	bpf_map__set_max_entries(self->skel->maps.tags_b, slots ? self->tag_words * self->slot_ncpu : 1);
	bpf_map__set_max_entries(self->skel->maps.overflow, ring_size);
	type = percpu ? BPF_MAP_TYPE_PERCPU_HASH : BPF_MAP_TYPE_HASH;
	struct bpf_map *maps[FLOW_MAPS] = { self->skel->maps.flows_a, self->skel->maps.flows_b };
	for (int i = 0; i < FLOW_MAPS; i++) {
		bpf_map__set_type(maps[i], type);
		bpf_map__set_max_entries(maps[i], maxflows);
		bpf_map__set_key_size(maps[i], self->key_size);
		/* no prealloc: memory per flow present (bpf_mem_alloc), inserts may fail with
		 * ENOMEM, which the program sends through the overflow ring or counts */
		if (!prealloc)
			bpf_map__set_map_flags(maps[i], bpf_map__map_flags(maps[i]) |
							BPF_F_NO_PREALLOC);
	}
	if (verifier_stats && capture_stats(self)) {
		loader_release(self);
		return -1;
	}
	err = flow_bpf__load(self->skel);	/* verify and load */
	if (err) {
		append_stats(self);	/* with verifier_stats, the verifier's reason is there */
		raise_errno(err, "load BPF programs (verifier log below)");
		loader_release(self);
		return -1;
	}
	for (int i = 0; i < FLOW_MAPS; i++)
		self->flows_fd[i] = bpf_map__fd(maps[i]);
	self->slots = slots;
	self->touched = calloc((size_t)self->slot_ncpu, sizeof(__u64));
	self->hash_marks = calloc((size_t)self->slot_ncpu, sizeof(__u64));
	self->active = -1;
	self->synced = 0;
	self->walk_clean = 0;
	self->walk_flipped = 0;
	for (int i = 0; i < FLOW_MAPS; i++)
		self->force_next[i] = 0;
	self->hash_skips = self->hash_walks = self->mark_clear_errors = 0;
	self->slots_read = self->tag_map_errors = 0;
	if (!self->touched || !self->hash_marks) {
		loader_release(self);
		PyErr_NoMemory();
		return -1;
	}
	if (ring_bytes) {
		self->rb = ring_buffer__new(bpf_map__fd(self->skel->maps.overflow),
					    on_overflow_event, self, NULL);
		if (!self->rb) {
			raise_errno(errno, "open the overflow ring buffer");
			loader_release(self);
			return -1;
		}
	}
	self->sig_rb = ring_buffer__new(bpf_map__fd(self->skel->maps.fill_signal), on_signal,
					self, NULL);
	if (!self->sig_rb) {
		raise_errno(errno, "open the signal ring buffer");
		loader_release(self);
		return -1;
	}
	self->ncpu = percpu ? libbpf_num_possible_cpus() : 1;
	if (self->ncpu < 1) {
		loader_release(self);
		PyErr_SetString(PyExc_OSError, "cannot count the possible CPUs");
		return -1;
	}
	self->chunk = chunk_rows;
	self->keys = calloc(self->chunk, self->key_size);
	self->vals = calloc((size_t)self->chunk * self->ncpu, sizeof(struct flow_metrics));
	if (!self->keys || !self->vals) {
		loader_release(self);
		PyErr_NoMemory();
		return -1;
	}
	return 0;
}

static int check_open(Loader *self)
{
	if (self->skel)
		return 0;
	PyErr_SetString(PyExc_ValueError, "loader is closed");
	return -1;
}

static struct bpf_program *program(Loader *self, const char *name)
{
	struct bpf_program *p = bpf_object__find_program_by_name(self->skel->obj, name);

	if (!p)
		PyErr_Format(PyExc_ValueError, "no BPF program named %s", name);
	return p;
}

/* link_create(prog, ifindex, attach_type, flags) -> link fd; closing the fd detaches. */
static PyObject *Loader_link_create(Loader *self, PyObject *args)
{
	const char *name;
	int ifindex, fd;
	unsigned int attach_type, flags = 0;
	struct bpf_program *p;

	if (!PyArg_ParseTuple(args, "siI|I", &name, &ifindex, &attach_type, &flags) ||
	    check_open(self) || !(p = program(self, name)))
		return NULL;
	LIBBPF_OPTS(bpf_link_create_opts, opts, .flags = flags);
	fd = bpf_link_create(bpf_program__fd(p), ifindex, attach_type, &opts);
	if (fd < 0)
		return raise_errno(fd, "bpf_link_create");
	return PyLong_FromLong(fd);
}

/* tc_attach(prog, ifindex, egress, handle, priority) -> True if it created the clsact qdisc.
 * BPF_TC_F_REPLACE: a stale filter with our handle/priority (left by a crash) is replaced. */
static PyObject *Loader_tc_attach(Loader *self, PyObject *args)
{
	const char *name;
	int ifindex, egress, err, created;
	unsigned int handle, priority;
	struct bpf_program *p;

	if (!PyArg_ParseTuple(args, "sipII", &name, &ifindex, &egress, &handle, &priority) ||
	    check_open(self) || !(p = program(self, name)))
		return NULL;
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
		    .attach_point = egress ? BPF_TC_EGRESS : BPF_TC_INGRESS);
	err = bpf_tc_hook_create(&hook);
	created = err == 0;
	libbpf_log_len = 0;	/* "Exclusivity flag on" is expected when clsact exists */
	if (err && err != -EEXIST)
		return raise_errno(err, "create clsact qdisc");
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority,
		    .prog_fd = bpf_program__fd(p), .flags = BPF_TC_F_REPLACE);
	err = bpf_tc_attach(&hook, &opts);
	if (err)
		return raise_errno(err, "attach tc filter");
	return PyBool_FromLong(created);
}

/* tc_detach(ifindex, egress, handle, priority) -> False when the filter was already gone. */
static PyObject *Loader_tc_detach(Loader *self, PyObject *args)
{
	int ifindex, egress, err;
	unsigned int handle, priority;

	if (!PyArg_ParseTuple(args, "ipII", &ifindex, &egress, &handle, &priority))
		return NULL;
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
		    .attach_point = egress ? BPF_TC_EGRESS : BPF_TC_INGRESS);
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority);
	err = bpf_tc_detach(&hook, &opts);
	libbpf_log_len = 0;
	if (err == -ENOENT || err == -ENODEV || err == -EINVAL)
		Py_RETURN_FALSE;
	if (err)
		return raise_errno(err, "detach tc filter");
	Py_RETURN_TRUE;
}

/* tc_destroy_clsact(ifindex): remove the clsact qdisc (and every filter on it). */
static PyObject *Loader_tc_destroy_clsact(Loader *self, PyObject *args)
{
	int ifindex, err;

	if (!PyArg_ParseTuple(args, "i", &ifindex))
		return NULL;
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
		    .attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS);
	err = bpf_tc_hook_destroy(&hook);
	libbpf_log_len = 0;
	if (err && err != -ENOENT && err != -ENODEV && err != -EINVAL)
		return raise_errno(err, "remove clsact qdisc");
	return PyBool_FromLong(err == 0);
}

/* set_active(index): the flow table (0 or 1) the programs write to from now on. */
static PyObject *Loader_set_active(Loader *self, PyObject *args)
{
	__u32 zero = 0, index;
	int err;

	if (!PyArg_ParseTuple(args, "I", &index) || check_open(self))
		return NULL;
	if (index >= FLOW_MAPS)
		return PyErr_Format(PyExc_ValueError, "flow table index %u out of range", index);
	self->synced = 0;	/* before the flip: a failed one leaves the state unknown */
	self->walk_clean = 0;	/* a flip during a drain: programs may write its table */
	self->walk_flipped = 1;
	err = bpf_map_update_elem(bpf_map__fd(self->skel->maps.flow_active), &zero, &index, 0);
	if (err) {
		self->active = -1;
		return raise_errno(err, "select flow table");
	}
	self->active = (int)index;
	Py_RETURN_NONE;
}

/*
 * synchronize() -> True once every BPF program that was running has returned; False when the
 * kernel cannot say (nohz_full, or no membarrier). MEMBARRIER_CMD_GLOBAL is synchronize_rcu(),
 * and the programs run inside RCU read-side sections (softirq / bottom halves off), so after
 * set_active() + synchronize() no program still writes to the old table.
 */
static PyObject *Loader_synchronize(Loader *self, PyObject *unused)
{
	long err;

	Py_BEGIN_ALLOW_THREADS
	err = syscall(__NR_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0);
	Py_END_ALLOW_THREADS
	self->synced = err == 0 && self->active >= 0;
	return PyBool_FromLong(err == 0);
}

/* Sum the per-CPU values of n drained entries into rows at out; returns the rows written. */
static __u32 sum_records(Loader *self, __u32 n, char *out)
{
	const char *keys = self->keys;
	struct flow_metrics *vals = self->vals;
	__u32 kept = 0;

	for (__u32 i = 0; i < n; i++) {
		struct flow_metrics sum = {};

		for (int c = 0; c < self->ncpu; c++) {
			const struct flow_metrics *v = &vals[(size_t)i * self->ncpu + c];

			if (!v->packets)	/* a CPU that never saw the flow */
				continue;
			sum.packets += v->packets;
			sum.bytes += v->bytes;
			if (v->first_ns && (!sum.first_ns || v->first_ns < sum.first_ns))
				sum.first_ns = v->first_ns;
			if (v->last_ns > sum.last_ns)
				sum.last_ns = v->last_ns;
			sum.tcp_flags |= v->tcp_flags;
		}
		if (sum.packets)
			put_record(self, out + (size_t)kept++ * out_row_size(self),
				   keys + (size_t)i * self->key_size, &sum);
	}
	return kept;
}

/*
 * Take up to `room` entries of the walk's hash table into keys/vals (deleted from the table).
 * Returns the entries taken; *err is 0 while the table may hold more, -ENOENT at its end, or
 * the errno that stopped the walk. A batch call ends at a bucket boundary: when the next
 * bucket does not fit in what is left of the chunk, the chunk ends and the next one starts
 * there (the batch token is a bucket index, valid across calls).
 */
static __u32 drain_hash(Loader *self, __u32 room, int *err)
{
	int fd = self->flows_fd[self->walk_index];
	__u32 n = 0, out_batch = 0;

	*err = 0;
	while (n < room) {
		__u32 count = room - n, asked = count;

		*err = bpf_map_lookup_and_delete_batch(fd, self->walk_first ? NULL : &self->walk_batch,
						       &out_batch,
						       (char *)self->keys + (size_t)n * self->key_size,
						       (struct flow_metrics *)self->vals +
							       (size_t)n * self->ncpu,
						       &count, NULL);
		if (*err == -EFAULT)	/* the kernel did not write count back: unknown */
			count = 0;
		n += count;
		if (*err == -ENOSPC && n) {	/* the next bucket needs a fresh chunk */
			*err = 0;
			break;
		}
		if (*err)
			break;
		self->walk_first = 0;
		self->walk_batch = out_batch;
		if (count < asked)	/* the next bucket did not fit: the chunk is done */
			break;
	}
	return n;
}

/* A line slot's 32-bit time (ns >> SLOT_TIME_SHIFT, low 32 bits) as CLOCK_MONOTONIC ns: the
 * latest such time not after `now` (the slot was written less than 73 minutes before). A time
 * up to LINE_AHEAD_UNITS (about 4 s) ahead of `now` is a program that wrote the slot after the
 * drain read its clock (the 5 ms grace when membarrier is refused, plus a tick): `now`, not 73
 * minutes early; any other time is in the past, restored exactly up to 73 minutes back. Never
 * before boot (0), so a time from before the clock's start cannot wrap to centuries ahead. */
#define LINE_AHEAD_UNITS (1U << 22)
static __u64 line_time(__u32 t, __u64 now)
{
	__u64 units = now >> SLOT_TIME_SHIFT;
	__u32 ahead = t - (__u32)units, back = (__u32)units - t;

	if (ahead && ahead < LINE_AHEAD_UNITS)
		return now;
	if (back > units)
		return 0;
	return (units - back) << SLOT_TIME_SHIFT;
}

/* Write line slot s as a row at dst (put_record): 0 when the slot is free. */
static int put_line_slot(const Loader *self, char *dst, const struct flow_slot_line *s)
{
	struct flow_metrics m = { 0 };

	if (!s->packets)
		return 0;
	m.packets = s->packets;
	m.bytes = s->bytes;
	m.first_ns = line_time(s->first, self->slot_now);
	m.last_ns = line_time(s->last, self->slot_now);
	m.tcp_flags = s->tcp_flags;
	put_record(self, dst, s->key, &m);
	return 1;
}

/*
 * Append up to `room` taken slots of the walk's slot array to out and zero them, window by
 * window: only the windows slot_touched marked are mapped (one at a time, unmapped when read),
 * so the scan costs what the flows cost and an idle table costs nothing. Within a window only
 * the slots whose tag is set are read (map_window_tags() says why that is exact): a window's
 * tags are 1/64 of its line slots' bytes, so a window with few flows costs its mapping and
 * its tags, not a read of every slot (32 MB per CPU at 524,288 line slots). No syscall per
 * slot: the window's tags are cleared once its slots are empty (release_window_tags).
 * Exact without atomics because no program writes to this array between synchronize() and
 * the next set_active(). One row per taken slot: two CPUs may hold the same flow, or one flow
 * may also be in the hash; the cache adds them. *done: the walk is over (every touched window
 * read, or an mmap failed: *err then, and the touched words stay for the next drain; so they
 * do when a window's tags could not be cleared).
 */
static __u32 drain_slots(Loader *self, __u32 room, char *out, int *done, int *err)
{
	__u32 kept = 0;
	struct timespec ts;

	/* after the flip and the grace period: every line slot's time is older than this */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	self->slot_now = (__u64)ts.tv_sec * 1000000000ULL + (__u64)ts.tv_nsec;
	*done = 0;
	while (kept < room) {
		if (!self->win) {
			int more = next_window(self);

			if (more <= 0) {
				*done = 1;
				*err = more;
				break;
			}
		}
		for (self->win_pos = next_tagged(self, self->win_pos);
		     self->win_pos < self->window && kept < room;
		     self->win_pos = next_tagged(self, self->win_pos + 1)) {
			struct flow_slot *slot = (struct flow_slot *)(self->win + (size_t)self->win_pos *
								      self->slot_size);

			prefetch_tagged(self, self->win_pos + PREFETCH_AHEAD);
			self->slots_read++;

			if (self->slot_line) {
				if (!put_line_slot(self, out + (size_t)kept * out_row_size(self),
						   (const struct flow_slot_line *)slot))
					continue;
				kept++;
			} else {
				if (!slot->m.packets)
					continue;
				put_record(self, out + (size_t)kept++ * out_row_size(self),
					   &slot->key, &slot->m);
			}
			memset(slot, 0, self->slot_size);
		}
		if (self->win_pos >= self->window) {
			int terr = release_window_tags(self);

			if (terr && !self->tag_err)
				self->tag_err = terr;
		}
	}
	if (!*done && !self->win && !self->walk_bits) {	/* room ended with the last window */
		int c = self->walk_cpu + 1;

		while (c < self->slot_ncpu && !self->touched[c])
			c++;
		*done = c >= self->slot_ncpu;
	}
	/* a failed tag clear (slot_info()'s tag_errno, not *err: the rows are all out) keeps the
	 * touched words, so the next drain of this table clears those windows' tags again */
	/* a flip during the walk: programs may have marked windows it did not read (their
	 * marks were read at drain_begin), so the marks stay for the next drain; so they do
	 * when the drain began without a grace period since the flip (walk_clean, as for the
	 * hash marks): a straggler may write a slot of a window after it was read, and only
	 * its window's mark gets that slot read again. The ingest's drains begin clean where
	 * synchronize() works, so this keeps marks only where it fails (nohz_full) */
	if (*done && !*err && !self->tag_err && self->touched_any &&
	    !self->walk_flipped && self->walk_clean) {	/* all empty again */
		memset(self->touched, 0, (size_t)self->slot_ncpu * sizeof(__u64));
		bpf_map_update_elem(bpf_map__fd(self->skel->maps.slot_touched), &self->walk_index,
				    self->touched, BPF_ANY);	/* clear the marks */
		self->touched_any = 0;
	}
	return kept;
}

/*
 * Whether drain_begin() must walk hash table `index`: a CPU marked it (hash_touched: set by
 * the program in the run of every insert, before it, see hash_insert() in flow.bpf.c), or the
 * marks cannot be read. Otherwise no entry can be in it: every entry was inserted in a run that
 * marked the table, and marks are cleared only after a whole walk that no program could race
 * (hash_walk_done()); a walk that stopped part way (entries left behind) keeps them. So the
 * walk (every bucket, ~0.4 ms at 524,288 entries even when empty) is skipped.
 */
static int hash_marked(Loader *self, __u32 index)
{
	int fd = bpf_map__fd(self->skel->maps.hash_touched);

	if (bpf_map_lookup_elem(fd, &index, self->hash_marks))
		return 1;
	for (int c = 0; c < self->slot_ncpu; c++)
		if (self->hash_marks[c])
			return 1;
	self->hash_skips++;
	return 0;
}

/*
 * The walk of the drained hash ended: `err` 0 (its end) or the -errno that stopped it. A
 * stopped walk leaves entries behind: the marks stay, so the next drain of the table walks
 * it. A whole walk clears the table's marks, but only when no program could write the table
 * during it (walk_clean): when the walk began, the table was not the active one and a
 * synchronize() had returned since the flip, and no set_active() came since. Otherwise a
 * program could insert behind the walk (its CPU's mark already set, so it marks nothing new)
 * and the clear would hide that entry from every later drain: the marks stay and the next
 * drain walks again. If the clear fails the marks stay too (counted: mark_clear_errors).
 * Where membarrier is refused (nohz_full: the ingest waits 5 ms instead) synchronize()
 * fails, no walk is clean and the marks are never cleared: every drain walks the hash
 * (hash_walks_skipped stays 0). synchronize() returns without a real grace period only on
 * PREEMPT_RT with one CPU online (membarrier's GLOBAL command skips synchronize_rcu() with
 * one CPU online; elsewhere tc/XDP run with bottom halves off, so one CPU is still safe):
 * there a straggler can insert behind a clean walk, so the ingest also forces a walk now
 * and then and at stop (drain_begin(force=True)). A walk that stops part way forces the
 * table's next walk (force_next).
 */
static void hash_walk_done(Loader *self, int err)
{
	__u32 index = self->walk_index;

	/* a walk that stopped part way may leave entries in a hash no CPU marked (a forced
	 * walk): the next drain of the table walks it whatever the marks say */
	self->force_next[index] = err != 0;
	if (err || !self->walk_clean || self->active < 0 || (__u32)self->active == index)
		return;
	memset(self->hash_marks, 0, (size_t)self->slot_ncpu * sizeof(__u64));
	if (bpf_map_update_elem(bpf_map__fd(self->skel->maps.hash_touched), &index,
				self->hash_marks, BPF_ANY))
		self->mark_clear_errors++;
}

/* The drained table's slot_touched words into self->touched; all windows if unreadable. */
static void read_touched(Loader *self)
{
	int fd = bpf_map__fd(self->skel->maps.slot_touched);

	if (bpf_map_lookup_elem(fd, &self->walk_index, self->touched))
		memset(self->touched, 0xff, (size_t)self->slot_ncpu * sizeof(__u64));
	self->touched_any = 0;
	for (int c = 0; c < self->slot_ncpu; c++) {
		self->touched_any |= self->touched[c] != 0;
		if (self->slots / self->window < 64)	/* windows past the region: none */
			self->touched[c] &= (1ULL << (self->slots / self->window)) - 1;
	}
}

/* slot_info() -> dict: the per-CPU slots' geometry, the windows the drains scanned,
 * tag_errno: the errno of the first tag clear the current (or last) drain failed, else 0,
 * slots_read: slots the walks read (by their tags), tag_map_errors: windows read whole for
 * want of their tags, hash_walks / hash_walks_skipped: drains that walked the hash / whose
 * hash no CPU had inserted into (hash_marked()), mark_clear_errors: failed mark clears. All
 * counts are since load. */
static PyObject *Loader_slot_info(Loader *self, PyObject *unused)
{
	if (check_open(self))
		return NULL;
	return Py_BuildValue("{sIsisIsIsIsIsKsisKsKsKsKsK}", "slots", self->slots,
			     "cpus", self->slot_ncpu,
			     "probes", self->probes, "slot_bytes", self->slot_size,
			     "window", self->slots ? self->window : 0,
			     "windows", self->slots ? self->slots / self->window : 0,
			     "windows_scanned", self->windows_scanned,
			     "tag_errno", -self->tag_err,
			     "slots_read", self->slots_read,
			     "tag_map_errors", self->tag_map_errors,
			     "hash_walks", self->hash_walks,
			     "hash_walks_skipped", self->hash_skips,
			     "mark_clear_errors", self->mark_clear_errors);
}

/* drain_begin(index, force=False): start emptying flow table `index` (and its slots) with
 * drain_next(); force: walk the hash even when no CPU marked it (hash_walk_done() says
 * when the marks can miss an entry). */
static PyObject *Loader_drain_begin(Loader *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = { "index", "force", NULL };
	__u32 index;
	int force = 0;

	if (!PyArg_ParseTupleAndKeywords(args, kw, "I|p", kwlist, &index, &force) ||
	    check_open(self))
		return NULL;
	if (index >= FLOW_MAPS)
		return PyErr_Format(PyExc_ValueError, "flow table index %u out of range", index);
	if (self->walk_phase == WALK_HASH)	/* the last hash walk was left part way */
		self->force_next[self->walk_index] = 1;
	force |= self->force_next[index];
	self->walk_index = index;
	/* no program writes the table during this walk unless a set_active() comes */
	self->walk_clean = self->synced && self->active >= 0 && (__u32)self->active != index;
	self->walk_flipped = 0;
	self->walk_phase = force || hash_marked(self, index) ? WALK_HASH : WALK_SLOTS;
	self->hash_walks += self->walk_phase == WALK_HASH;
	self->walk_first = 1;
	self->walk_batch = 0;
	unmap_window(self);
	self->walk_cpu = -1;
	self->walk_bits = 0;
	self->tag_err = 0;
	if (self->slots)
		read_touched(self);
	Py_RETURN_NONE;
}

/*
 * Check a layout (struct layout_head + ops, from decode.record_layout()) and point the call's
 * state at it; raises ValueError and returns -1 when an op would read or write out of bounds.
 */
static int use_layout(Loader *self, const Py_buffer *layout)
{
	const struct layout_head *head = layout->buf;
	const struct layout_op *ops = (const struct layout_op *)(head + 1);

	if ((size_t)layout->len < sizeof(*head) ||
	    (size_t)layout->len != sizeof(*head) + (size_t)head->nops * sizeof(*ops) ||
	    !head->row_size) {
		PyErr_SetString(PyExc_ValueError, "layout: a header and whole ops expected");
		return -1;
	}
	for (__u32 i = 0; i < head->nops; i++) {
		const struct layout_op *op = &ops[i];
		int wide = op->kind == OP_TIME || op->kind == OP_TUNNEL;
		int intw = (op->dst_width & (op->dst_width - 1)) == 0 && op->dst_width <= 8 &&
			   (op->src_width & (op->src_width - 1)) == 0 && op->src_width <= 8;

		if (op->kind >= OP_MAX || !op->dst_width || !op->src_width ||
		    (size_t)op->dst + op->dst_width > head->row_size ||
		    (size_t)op->src + op->src_width > sizeof(struct flow_record) ||
		    (op->kind == OP_COPY && op->src_width != op->dst_width) ||
		    (op->kind == OP_INT && !intw) ||
		    (wide && (op->dst_width != 8 || op->src_width != 8))) {
			PyErr_Format(PyExc_ValueError, "layout: op %u (kind %u, %u+%u <- %u+%u) is "
				     "out of bounds or malformed", i, op->kind, op->dst,
				     op->dst_width, op->src, op->src_width);
			return -1;
		}
	}
	self->ops = ops;
	self->nops = head->nops;
	self->out_size = head->row_size;
	return 0;
}

/*
 * drain_next(buffer, layout=None, wall_offset=0) -> (rows, errno, more): the next chunk of the
 * drain drain_begin() started, written into `buffer` (writable, C-contiguous): without a
 * layout as flow_record rows of record_size, with one (decode.record_layout(): rows of the
 * FlowBatch's record dtype) straight into those columns, times + wall_offset ns; at most
 * min(chunk_rows, len(buffer) / row size) rows, all deleted from the kernel, so the caller must
 * hand every one of them on. errno != 0: the hash walk stopped there (the rest of the table
 * follows at a later drain); the slots are still drained. more: call it again.
 */
static PyObject *Loader_drain_next(Loader *self, PyObject *args)
{
	Py_buffer buf, layout = { 0 };
	long long wall_offset = 0;
	__u32 room, n, kept = 0;
	size_t row;
	int err = 0;

	if (!PyArg_ParseTuple(args, "w*|z*L", &buf, &layout, &wall_offset))
		return NULL;
	self->ops = NULL;
	if (check_open(self) || self->walk_phase == WALK_DONE ||
	    (layout.buf && use_layout(self, &layout))) {
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_ValueError, "no drain in progress (drain_begin first)");
		goto fail;
	}
	self->wall_offset = wall_offset;
	row = out_row_size(self);
	if (!PyBuffer_IsContiguous(&buf, 'C') || buf.len / row < 1) {
		PyErr_Format(PyExc_ValueError, "buffer must be C-contiguous and hold a %zu-byte "
			     "row at least", row);
		goto fail;
	}
	room = buf.len / row < self->chunk ? (__u32)(buf.len / row) : self->chunk;
	Py_BEGIN_ALLOW_THREADS
	if (self->walk_phase == WALK_HASH) {
		n = drain_hash(self, room, &err);
		if (err || !n) {	/* the end (-ENOENT), or the walk stopped at an error */
			self->walk_phase = WALK_SLOTS;
			hash_walk_done(self, err == -ENOENT ? 0 : err);
		}
		if (err == -ENOENT)
			err = 0;
		kept = sum_records(self, n, buf.buf);
	}
	if (self->walk_phase == WALK_SLOTS) {	/* independent of the hash: always emptied */
		int done = 1, slot_err = 0;

		if (self->slots && kept < room)
			kept += drain_slots(self, room - kept, (char *)buf.buf + (size_t)kept * row,
					    &done, &slot_err);
		else if (self->slots)
			done = 0;
		if (done)
			self->walk_phase = WALK_DONE;
		if (slot_err && !err)
			err = slot_err;
	}
	Py_END_ALLOW_THREADS
	self->ops = NULL;
	PyBuffer_Release(&buf);
	if (layout.buf)
		PyBuffer_Release(&layout);
	return Py_BuildValue("(IiO)", kept, err < 0 ? -err : err,
			     self->walk_phase == WALK_DONE ? Py_False : Py_True);
fail:
	self->ops = NULL;
	PyBuffer_Release(&buf);
	if (layout.buf)
		PyBuffer_Release(&layout);
	return NULL;
}

/* consume() -> (bytes, errno): flow_record rows, one per packet the overflow ring carried since
 * the last call (b"" when the ring is off). Rows consumed before an error are returned too. */
static PyObject *Loader_consume(Loader *self, PyObject *unused)
{
	PyObject *out;
	int err = 0;

	if (check_open(self))
		return NULL;
	if (!self->rb)
		return Py_BuildValue("(y#i)", "", (Py_ssize_t)0, 0);
	Py_BEGIN_ALLOW_THREADS
	err = ring_buffer__consume(self->rb);
	Py_END_ALLOW_THREADS
	out = Py_BuildValue("(y#i)", self->ring_out ? (const char *)self->ring_out : "",
			    (Py_ssize_t)(self->ring_len * self->rec_size),
			    err < 0 ? -err : 0);
	self->ring_len = 0;
	return out;
}

/* signal_fd() -> an epoll fd that is readable when the program asked for an early drain. */
static PyObject *Loader_signal_fd(Loader *self, PyObject *unused)
{
	if (check_open(self))
		return NULL;
	return PyLong_FromLong(ring_buffer__epoll_fd(self->sig_rb));
}

/* take_signals() -> how many early-drain requests the program made since the last call. */
static PyObject *Loader_take_signals(Loader *self, PyObject *unused)
{
	int err;

	if (check_open(self))
		return NULL;
	self->signals = 0;
	err = ring_buffer__consume(self->sig_rb);
	if (err < 0)
		return raise_errno(err, "read the signal ring buffer");
	return PyLong_FromUnsignedLong(self->signals);
}

/* reset_fill(index): table `index` was drained: its fill count restarts at 0. */
static PyObject *Loader_reset_fill(Loader *self, PyObject *args)
{
	struct flow_fill zero = { 0 };
	__u32 index;
	int err;

	if (!PyArg_ParseTuple(args, "I", &index) || check_open(self))
		return NULL;
	if (index >= FLOW_MAPS)
		return PyErr_Format(PyExc_ValueError, "flow table index %u out of range", index);
	err = bpf_map_update_elem(bpf_map__fd(self->skel->maps.flow_fill), &index, &zero, 0);
	if (err)
		return raise_errno(err, "reset the table fill");
	Py_RETURN_NONE;
}

/* counters() -> tuple of CNT_MAX ints, summed over CPUs, cumulative since load. */
static PyObject *Loader_counters(Loader *self, PyObject *unused)
{
	int ncpu = libbpf_num_possible_cpus(), err;
	struct flow_counters *per_cpu;
	__u64 sum[CNT_MAX] = { 0 };
	__u32 zero = 0;
	PyObject *t;

	if (check_open(self))
		return NULL;
	per_cpu = calloc(ncpu > 0 ? ncpu : 1, sizeof(*per_cpu));
	if (!per_cpu)
		return PyErr_NoMemory();
	err = bpf_map_lookup_elem(bpf_map__fd(self->skel->maps.flow_stats), &zero, per_cpu);
	for (int c = 0; !err && c < ncpu; c++)
		for (int k = 0; k < CNT_MAX; k++)
			sum[k] += per_cpu[c].v[k];
	free(per_cpu);
	if (err)
		return raise_errno(err, "read counters");
	t = PyTuple_New(CNT_MAX);
	for (int k = 0; t && k < CNT_MAX; k++)
		PyTuple_SET_ITEM(t, k, PyLong_FromUnsignedLongLong(sum[k]));
	return t;
}

/* prog_ids() -> {name: kernel program id}: what `bpftool prog show` lists as ours. */
static PyObject *Loader_prog_ids(Loader *self, PyObject *unused)
{
	struct bpf_program *p;
	PyObject *d;

	if (check_open(self) || !(d = PyDict_New()))
		return NULL;
	bpf_object__for_each_program(p, self->skel->obj) {
		struct bpf_prog_info info = { 0 };
		__u32 len = sizeof(info);
		PyObject *id;

		if (bpf_obj_get_info_by_fd(bpf_program__fd(p), &info, &len))
			continue;
		id = PyLong_FromUnsignedLong(info.id);
		PyDict_SetItemString(d, bpf_program__name(p), id);
		Py_XDECREF(id);
	}
	return d;
}

/* verifier_stats() -> {name: the verifier's statistics}, with Loader(verifier_stats=True). */
static PyObject *Loader_verifier_stats(Loader *self, PyObject *unused)
{
	struct bpf_program *p;
	PyObject *d;
	int i = 0;

	if (check_open(self))
		return NULL;
	if (!self->stats) {
		PyErr_SetString(PyExc_RuntimeError, "loaded without verifier_stats=True");
		return NULL;
	}
	if (!(d = PyDict_New()))
		return NULL;
	bpf_object__for_each_program(p, self->skel->obj) {
		PyObject *text;

		if (i == MAX_PROGS)
			break;
		text = PyUnicode_DecodeUTF8(self->stats[i], strnlen(self->stats[i], STATS_CAP),
					    "replace");
		i++;
		if (!text || PyDict_SetItemString(d, bpf_program__name(p), text)) {
			Py_XDECREF(text);
			Py_DECREF(d);
			return NULL;
		}
		Py_DECREF(text);
	}
	return d;
}

static PyObject *Loader_close(Loader *self, PyObject *unused)
{
	loader_release(self);
	Py_RETURN_NONE;
}

/* line_time(t, now) -> ns: the drain's restore of a line slot's 32-bit time, for tests */
static PyObject *module_line_time(PyObject *unused, PyObject *args)
{
	unsigned int t;
	unsigned long long now;

	if (!PyArg_ParseTuple(args, "IK", &t, &now))
		return NULL;
	return PyLong_FromUnsignedLongLong(line_time((__u32)t, (__u64)now));
}

static PyMethodDef module_methods[] = {
	{ "line_time", module_line_time, METH_VARARGS,
	  "line_time(t, now) -> CLOCK_MONOTONIC ns of a line slot's 32-bit time t, restored by a "
	  "drain whose clock read now (ns); exposed for tests" },
	{ NULL }
};

static PyMethodDef Loader_methods[] = {
	{ "link_create", (PyCFunction)Loader_link_create, METH_VARARGS,
	  "link_create(prog, ifindex, attach_type, flags=0) -> link fd (close it to detach)" },
	{ "tc_attach", (PyCFunction)Loader_tc_attach, METH_VARARGS,
	  "tc_attach(prog, ifindex, egress, handle, priority) -> True if clsact was created" },
	{ "tc_detach", (PyCFunction)Loader_tc_detach, METH_VARARGS,
	  "tc_detach(ifindex, egress, handle, priority) -> False if it was already gone" },
	{ "tc_destroy_clsact", (PyCFunction)Loader_tc_destroy_clsact, METH_VARARGS,
	  "tc_destroy_clsact(ifindex) -> True if a clsact qdisc was removed" },
	{ "set_active", (PyCFunction)Loader_set_active, METH_VARARGS,
	  "set_active(index): flow table the programs write to" },
	{ "synchronize", (PyCFunction)Loader_synchronize, METH_NOARGS,
	  "synchronize() -> True when every running BPF program has returned (RCU grace period)" },
	{ "drain_begin", (PyCFunction)(void (*)(void))Loader_drain_begin,
	  METH_VARARGS | METH_KEYWORDS,
	  "drain_begin(index, force=False): start emptying flow table index (and its slots); "
	  "force: walk its hash even when no CPU marked it" },
	{ "slot_info", (PyCFunction)Loader_slot_info, METH_NOARGS,
	  "slot_info() -> {slots, cpus, probes, slot_bytes, window, windows (per CPU), "
	  "windows_scanned, "
	  "tag_errno (the drain's first failed tag clear, else 0), slots_read (slots the walks "
	  "read), tag_map_errors (windows read whole: their tags not mapped), hash_walks, "
	  "hash_walks_skipped (drains that skipped the walk of a hash no CPU inserted into), "
	  "mark_clear_errors (failed hash mark clears)}" },
	{ "drain_next", (PyCFunction)Loader_drain_next, METH_VARARGS,
	  "drain_next(buffer, layout=None, wall_offset=0) -> (rows written into buffer, errno, "
	  "more): the next chunk, as flow_record rows or in a record layout" },
	{ "consume", (PyCFunction)Loader_consume, METH_NOARGS,
	  "consume() -> (flow_record rows from the overflow ring, one per packet; errno)" },
	{ "signal_fd", (PyCFunction)Loader_signal_fd, METH_NOARGS,
	  "signal_fd() -> epoll fd, readable when the program asks for an early drain" },
	{ "take_signals", (PyCFunction)Loader_take_signals, METH_NOARGS,
	  "take_signals() -> early-drain requests since the last call" },
	{ "reset_fill", (PyCFunction)Loader_reset_fill, METH_VARARGS,
	  "reset_fill(index): table index was drained, its fill restarts at 0" },
	{ "counters", (PyCFunction)Loader_counters, METH_NOARGS,
	  "counters() -> cumulative counters (enum flow_counter order)" },
	{ "prog_ids", (PyCFunction)Loader_prog_ids, METH_NOARGS, "prog_ids() -> {name: id}" },
	{ "verifier_stats", (PyCFunction)Loader_verifier_stats, METH_NOARGS,
	  "verifier_stats() -> {name: the verifier's statistics of the program (processed "
	  "instructions, stack depth of each function)}, with Loader(verifier_stats=True)" },
	{ "close", (PyCFunction)Loader_close, METH_NOARGS, "destroy the object (detaches links)" },
	{ NULL }
};

static PyTypeObject LoaderType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "netflow_agent.plugins.ingest_ebpf._loader.Loader",
	.tp_doc = "Loader(maxflows=65536, sampling=1, percpu=True, overflow_ring_bytes=0, "
		  "precise_clock=False, slots=0, prealloc=True, fill_threshold=0, frag_table=0, "
		  "frag_timeout=30, decap=0, keep_outer=False, l2_fields=0, mpls_labels=0, "
		  "chunk_rows=16384, probes=8, verifier_stats=False)",
	.tp_basicsize = sizeof(Loader),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Loader_init,
	.tp_dealloc = (destructor)Loader_dealloc,
	.tp_methods = Loader_methods,
};

static struct PyModuleDef loader_module = {
	PyModuleDef_HEAD_INIT, .m_name = "netflow_agent.plugins.ingest_ebpf._loader",
	.m_doc = "libbpf loader for the eBPF flow ingest", .m_size = -1,
	.m_methods = module_methods,
};

#define ADD_INT(m, name, value) \
	if (PyModule_AddIntConstant(m, name, (long)(value))) goto fail

PyMODINIT_FUNC PyInit__loader(void)
{
	PyObject *m;

	if (PyType_Ready(&LoaderType) < 0)
		return NULL;
	m = PyModule_Create(&loader_module);
	if (!m)
		return NULL;
	libbpf_set_print(log_to_buffer);
	Py_INCREF(&LoaderType);
	if (PyModule_AddObject(m, "Loader", (PyObject *)&LoaderType)) {
		Py_DECREF(&LoaderType);
		goto fail;
	}
	/* layout constants: decode.py's struct.Struct is checked against these */
	ADD_INT(m, "RECORD_SIZE", sizeof(struct flow_record));
	ADD_INT(m, "KEY_SIZE", sizeof(struct flow_key));
	ADD_INT(m, "KEY_BASE_SIZE", FLOW_KEY_BASE_SIZE);
	ADD_INT(m, "RECORD_BASE_SIZE", FLOW_RECORD_BASE_SIZE);
	ADD_INT(m, "L2_MAC", L2_MAC);
	ADD_INT(m, "L2_VLAN", L2_VLAN);
	ADD_INT(m, "L2_TUNNEL_ID", L2_TUNNEL_ID);
	ADD_INT(m, "OFF_SRC_MAC", offsetof(struct flow_record, key.ext.src_mac));
	ADD_INT(m, "OFF_DST_MAC", offsetof(struct flow_record, key.ext.dst_mac));
	ADD_INT(m, "OFF_ETH_TYPE", offsetof(struct flow_record, key.ext.eth_type));
	ADD_INT(m, "OFF_VLAN_ID", offsetof(struct flow_record, key.ext.vlan_id));
	ADD_INT(m, "OFF_INNER_VLAN_ID", offsetof(struct flow_record, key.ext.inner_vlan_id));
	ADD_INT(m, "OFF_VLAN_PRIO", offsetof(struct flow_record, key.ext.vlan_prio));
	ADD_INT(m, "OFF_INNER_VLAN_PRIO", offsetof(struct flow_record, key.ext.inner_vlan_prio));
	ADD_INT(m, "OFF_MPLS", offsetof(struct flow_record, key.ext.mpls));
	ADD_INT(m, "OFF_TUNNEL_TYPE", offsetof(struct flow_record, key.ext.tunnel_type));
	ADD_INT(m, "OFF_TUNNEL_ID", offsetof(struct flow_record, key.ext.tunnel_id));
	ADD_INT(m, "METRICS_SIZE", sizeof(struct flow_metrics));
	ADD_INT(m, "OFF_SADDR", offsetof(struct flow_record, key.saddr));
	ADD_INT(m, "OFF_DADDR", offsetof(struct flow_record, key.daddr));
	ADD_INT(m, "OFF_IFINDEX", offsetof(struct flow_record, key.ifindex));
	ADD_INT(m, "OFF_SPORT", offsetof(struct flow_record, key.sport));
	ADD_INT(m, "OFF_DPORT", offsetof(struct flow_record, key.dport));
	ADD_INT(m, "OFF_IP_VERSION", offsetof(struct flow_record, key.ip_version));
	ADD_INT(m, "OFF_PROTO", offsetof(struct flow_record, key.proto));
	ADD_INT(m, "OFF_TOS", offsetof(struct flow_record, key.tos));
	ADD_INT(m, "OFF_DIRECTION", offsetof(struct flow_record, key.direction));
	ADD_INT(m, "OFF_PACKETS", offsetof(struct flow_record, m.packets));
	ADD_INT(m, "OFF_BYTES", offsetof(struct flow_record, m.bytes));
	ADD_INT(m, "OFF_FIRST_NS", offsetof(struct flow_record, m.first_ns));
	ADD_INT(m, "OFF_LAST_NS", offsetof(struct flow_record, m.last_ns));
	ADD_INT(m, "OFF_TCP_FLAGS", offsetof(struct flow_record, m.tcp_flags));
	ADD_INT(m, "FLOW_MAPS", FLOW_MAPS);
	ADD_INT(m, "MIN_CHUNK_ROWS", MIN_CHUNK);
	ADD_INT(m, "CNT_MAX", CNT_MAX);
	ADD_INT(m, "CNT_PACKETS", CNT_PACKETS);
	ADD_INT(m, "CNT_SAMPLED_OUT", CNT_SAMPLED_OUT);
	ADD_INT(m, "CNT_NON_IP", CNT_NON_IP);
	ADD_INT(m, "CNT_TRUNC", CNT_TRUNC);
	ADD_INT(m, "CNT_TRUNC_BYTES", CNT_TRUNC_BYTES);
	ADD_INT(m, "CNT_FRAG", CNT_FRAG);
	ADD_INT(m, "CNT_FULL_PACKETS", CNT_FULL_PACKETS);
	ADD_INT(m, "CNT_FULL_BYTES", CNT_FULL_BYTES);
	ADD_INT(m, "CNT_UPDATE_ERR", CNT_UPDATE_ERR);
	ADD_INT(m, "CNT_RING_PACKETS", CNT_RING_PACKETS);
	ADD_INT(m, "CNT_SLOT_PACKETS", CNT_SLOT_PACKETS);
	ADD_INT(m, "CNT_UPDATE_ERR_BYTES", CNT_UPDATE_ERR_BYTES);
	ADD_INT(m, "CNT_HASH_NEW", CNT_HASH_NEW);
	ADD_INT(m, "CNT_FRAG_TRACKED", CNT_FRAG_TRACKED);
	ADD_INT(m, "CNT_FRAG_UNMATCHED", CNT_FRAG_UNMATCHED);
	ADD_INT(m, "CNT_DECAPSULATED", CNT_DECAPSULATED);
	ADD_INT(m, "CNT_DECAP_FAILED", CNT_DECAP_FAILED);
	ADD_INT(m, "TUNNEL_GRE", TUNNEL_GRE);
	ADD_INT(m, "TUNNEL_VXLAN", TUNNEL_VXLAN);
	ADD_INT(m, "TUNNEL_GENEVE", TUNNEL_GENEVE);
	ADD_INT(m, "TUNNEL_IPIP", TUNNEL_IPIP);
	ADD_INT(m, "OVERFLOW_EVENT_SIZE", sizeof(struct overflow_event));
	ADD_INT(m, "OP_COPY", OP_COPY);
	ADD_INT(m, "OP_INT", OP_INT);
	ADD_INT(m, "OP_TIME", OP_TIME);
	ADD_INT(m, "OP_TUNNEL", OP_TUNNEL);
	return m;
fail:
	Py_DECREF(m);
	return NULL;
}
