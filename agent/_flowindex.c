// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * _flowindex.c - the flow cache's key index in C (netflow_agent._flowindex).
 *
 * FlowIndex maps a fixed-width flow key (key_size bytes, the packed key of agent/model.py)
 * to a dense slot number 0..slot_count-1; the cache keeps its counters in NumPy columns
 * indexed by slot. Keys live contiguously in C memory: no Python object per flow.
 *
 * Layout and sizes (n = flows in the index, s = slot_count >= n):
 *   - buckets: open addressing with linear probing, a power of two of 4-byte buckets
 *     (0 = empty), at most LOAD_NUM/LOAD_DEN (70 %) full; doubled (rehashed from the
 *     stored hashes, no key is hashed again) when an insert would pass that. A bucket holds
 *     slot + 1 in its low slot_bits bits (as many as the slot storage's capacity needs) and
 *     in the bits above a tag: the same bits of the hash's upper 32 bits, so most
 *     non-matching entries are skipped without reading their key (at 200k slots 14 tag
 *     bits: one false match in 16,384). When the slot storage outgrows slot_bits, the tags
 *     lose their lowest bits in one pass over the buckets (no key is hashed again).
 *     Removal shifts the following entries back (no tombstones), so lookups never slow
 *     down with churn; a take or remove of every key at once (ascending) zeroes the
 *     buckets and the in-use bits instead, as clear() does. 4 B / 0.35..0.7 = 5.7..11.4 B per flow.
 *   - per slot: the key (key_size B), the low 32 bits of its hash (4 B, the home bucket
 *     for removal and rehashing) and a bit "in use": key_size + 4.1 B per slot, grown by
 *     half (realloc).
 *   So 44-byte keys cost 54-60 B per flow when the slot storage is full, up to ~84 B just
 *   after it grew, vs ~160 B for a Python dict entry with a bytes key and a slot int.
 *   - the keys, the hashes and the buckets are mappings of their own ("blocks", below):
 *     large ones are transparent huge pages where the kernel has them, so a growing table
 *     faults in 2 MiB at a time and its lookups miss the TLB less.
 *   - the hash is SipHash-1-3 keyed with 128 random bits drawn per process at import
 *     (getrandom), so keys crafted to collide on one machine do not collide on another
 *     and cannot turn probing linear; its low 32 bits pick the home bucket, its upper 32
 *     bits give the bucket's tag.
 *   - free slots are reused lowest first, keeping the used slots dense at the bottom of the
 *     NumPy columns: the lowest clear bit of the in-use bitmap, found through a second
 *     bitmap of its full words (one bit per 64 slots) from the lowest word that may have
 *     one; when the index becomes empty, numbering restarts at 0 (slot_count drops to 0).
 *   - at most 2**31 - 1 flows (32-bit hashes and slot numbers).
 *
 * Record arrays (the cache's merge of a drained FlowBatch): lookup_records() packs each
 * row's key from the record itself (a few field copies and byte swaps per row, a chunk at
 * a time) instead of taking a packed key array; the module's merge_records() then adds the
 * rows' counters into the cache's NumPy value columns by slot in one pass.
 *
 * take_records() copies slots' counters into record rows and resets those columns (a timed
 * scan's take, whose FlowIndex.take frees the keys; with keep, a drain's part, reset later
 * at the table's settle); finish_rows() then turns each taken row's big-endian
 * key fields to native order and writes its masks and end reason, in one pass.
 *
 * hash_select() answers the hash:N flow sampler (agent/sampler.py) for a batch of keys or
 * records at once: CRC-32 of each packed key's version, protocol, ports and addresses;
 * rewrite_keys() applies the aggregation rules (agent/keyrules.py) to a batch's key fields in
 * place (first matching netmask rule per address, the port map per port).
 *
 * Thread use: one thread at a time. lookup() releases the GIL while it hashes and probes a
 * large batch; a second call on the same object meanwhile raises RuntimeError.
 * Every call either completes or changes nothing (an allocation failure halfway through a
 * lookup() removes the keys that call inserted before raising MemoryError).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#define LOAD_NUM 7 /* grow the buckets when more than 7/10 are in use */
#define LOAD_DEN 10
#define MIN_BUCKETS 16
#define MIN_SLOTS 64
#define MAX_FLOWS 0x7FFFFFFFu
#define CHUNK 32 /* rows hashed and prefetched ahead of probing */
#define NOGIL_ROWS 256 /* release the GIL for lookups of at least this many keys */
#define CLEAR_BUCKETS 16 /* a removal of every key clears the index at one key per 16 buckets */

typedef struct {
	PyObject_HEAD
	Py_ssize_t key_size;
	uint8_t *keys; /* slot_cap * key_size: the key of each slot (a block: keys_len bytes) */
	uint32_t *hashes; /* slot_cap: the hash of each slot's key (a block: hashes_len bytes) */
	size_t keys_len, hashes_len; /* bytes of the keys' and hashes' blocks (block_grow) */
	uint64_t *used; /* slot_cap bits: slot holds a key */
	uint64_t *full; /* a bit per word of used: all 64 slots of that word hold keys */
	size_t free_word; /* every word of used below this one is full */
	size_t slot_cap; /* slots allocated */
	size_t high; /* slot_count: every slot >= high is free */
	size_t count; /* keys in the index */
	uint32_t *buckets; /* 0 = empty; else tag bits | (slot + 1) (a block: buckets_len bytes) */
	size_t nbuckets; /* power of two */
	size_t buckets_len;
	uint32_t slot_mask; /* low bits of a bucket that hold slot + 1: 2**slot_bits - 1 */
	int busy; /* a lookup runs without the GIL */
} FlowIndex;

static uint64_t sip_k0, sip_k1; /* per-process hash key, drawn at import */

/* --- SipHash-1-3 (Aumasson & Bernstein; one compression, three finalization rounds) ------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                   \
	do {                                                                       \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);          \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                             \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                             \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);          \
	} while (0)

/* Words are read in host order: the hash only has to agree with itself in this process. */
static uint64_t siphash13(const uint8_t *in, size_t len)
{
	uint64_t v0 = 0x736f6d6570736575ULL ^ sip_k0;
	uint64_t v1 = 0x646f72616e646f6dULL ^ sip_k1;
	uint64_t v2 = 0x6c7967656e657261ULL ^ sip_k0;
	uint64_t v3 = 0x7465646279746573ULL ^ sip_k1;
	uint64_t m, b = ((uint64_t)len) << 56;
	const uint8_t *end = in + (len & ~(size_t)7);

	for (; in != end; in += 8) {
		memcpy(&m, in, 8);
		v3 ^= m;
		SIPROUND;
		v0 ^= m;
	}
	switch (len & 7) {
	case 7: b |= ((uint64_t)in[6]) << 48; /* fall through */
	case 6: b |= ((uint64_t)in[5]) << 40; /* fall through */
	case 5: b |= ((uint64_t)in[4]) << 32; /* fall through */
	case 4: b |= ((uint64_t)in[3]) << 24; /* fall through */
	case 3: b |= ((uint64_t)in[2]) << 16; /* fall through */
	case 2: b |= ((uint64_t)in[1]) << 8; /* fall through */
	case 1: b |= ((uint64_t)in[0]); /* fall through */
	default: break;
	}
	v3 ^= b;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

/* --- storage ------------------------------------------------------------------------------- */

/*
 * Blocks: the three arrays that grow with the flows (keys, hashes, buckets) are anonymous
 * mappings of their own. From a size on (huge_from) a block is advised MADV_HUGEPAGE, made
 * of whole 2 MiB ranges and starts on a 2 MiB boundary, and stays on one when it grows
 * (mremap to an aligned address: the kernel moves its huge pages whole). Its pages then
 * fault in as transparent huge pages, 2 MiB a fault instead of 512 faults of 4 KiB (~2.4 us
 * each on this project's VM, ~0.3 us per 4 KiB within a huge one), and lookups miss the TLB
 * less: inserting 1M flows costs 87 ns a key instead of 114, finding them 32 instead of 43
 * (bench/cache/bench_flowindex.py; docs/performance.md, "Huge pages for the flow index").
 * A huge page is resident once any byte of it is written, so a block that fills from the
 * bottom (keys, hashes) holds up to 2 MiB more than its 4 KiB pages would: those become
 * huge only from BLOCK_HUGE_FILLED (16 MiB, ~380k flows: at most an eighth more; at 200k
 * flows 2 MiB would be 8 B a flow, 14 %, for ~5 ms of CPU); the buckets, written whole
 * when made, from 2 MiB. Where THP is off ("never") or the advice is refused the pages
 * stay 4 KiB: the advice is best effort, only speed depends on it. Before, glibc made these
 * arrays mappings of their own from the agent's mmap threshold on (128 KiB, agent/heap.py),
 * except inside heap.reuse_parts()'s window, where blocks below PART_MMAP_THRESHOLD (4 MiB)
 * came from the heap; now they are mappings at every size, and what is new beyond that is
 * the advice and the alignment. Where the address space is limited (RLIMIT_AS) and an
 * aligned block does not fit, a block is unaligned: it needs no more than before.
 */
#define HUGE_BYTES ((size_t)2 << 20)
#define BLOCK_HUGE_WHOLE HUGE_BYTES /* a block written whole when made: the buckets */
#define BLOCK_HUGE_FILLED (8 * HUGE_BYTES) /* a block filled from the bottom: keys, hashes */

/* Bytes of a block for n: whole pages, and whole 2 MiB ranges from huge_from on (a range
 * the block only partly covered would fault in as 4 KiB pages up to its end, and stay so
 * once the block grew over the rest; untouched ranges cost address space, not memory). */
static size_t block_bytes(size_t n, size_t huge_from)
{
	static size_t page;

	if (!page) {
		long sz = sysconf(_SC_PAGESIZE);
		page = sz > 0 ? (size_t)sz : 4096;
	}
	if (n >= huge_from)
		return (n + HUGE_BYTES - 1) / HUGE_BYTES * HUGE_BYTES;
	return n ? (n + page - 1) / page * page : page;
}

/* `bytes` (a multiple of 2 MiB) of address space starting on a 2 MiB boundary: a mapping
 * of `bytes` + 2 MiB with the parts before and after the aligned range unmapped, `prot`
 * (PROT_NONE: a reservation, nothing committed). NULL when the kernel refuses, e.g. under
 * RLIMIT_AS (prlimit --as), which the extra 2 MiB (and, when growing, the old block still
 * mapped: twice the address space) can pass where the block alone would not. */
static char *map_aligned(size_t bytes, int prot)
{
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | (prot == PROT_NONE ? MAP_NORESERVE : 0);
	char *r = mmap(NULL, bytes + HUGE_BYTES, prot, flags, -1, 0);
	char *a;

	if (r == MAP_FAILED)
		return NULL;
	a = (char *)(((uintptr_t)r + HUGE_BYTES - 1) & ~(uintptr_t)(HUGE_BYTES - 1));
	if (a > r)
		munmap(r, (size_t)(a - r));
	munmap(a + bytes, (size_t)(r + HUGE_BYTES - a));
	return a;
}

/* Give back the reservation [a, a + bytes) after a mremap(MREMAP_FIXED) onto it failed. The
 * kernel unmaps the destination before some steps that can still fail (a memory charge), so
 * the range may be free by now and, since lookups grow the index without the GIL, even hold
 * another thread's new mapping: claim it whole first (MAP_FIXED_NOREPLACE) and unmap only
 * what was claimed. A range still mapped is left alone: that is also our own reservation
 * when the kernel refused before unmapping it (the map-count limit, checked first on 6.18),
 * which cannot be told from another thread's mapping here, so it stays reserved: address
 * space (PROT_NONE, no memory) and one mapping lost per such failure, which only happens at
 * vm.max_map_count, where the growth fails anyway (review of s33-eflood). */
static void release_reservation(char *a, size_t bytes)
{
#ifdef MAP_FIXED_NOREPLACE
	void *c = mmap(a, bytes, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);

	if (c != MAP_FAILED) /* a kernel before 4.17 takes the flag as a hint: c may differ */
		munmap(c, bytes);
#else
	(void)a;
	(void)bytes;
#endif
}

static void advise_huge(void *p, size_t bytes)
{
#ifdef MADV_HUGEPAGE
	(void)madvise(p, bytes, MADV_HUGEPAGE);
#else
	(void)p;
	(void)bytes;
#endif
}

/* A block of at least n bytes (whole pages; *len gets its size), contents zero, huge from
 * huge_from bytes on (see above); NULL when out of memory. Where an aligned mapping does
 * not fit the address space, an unaligned one (its whole 2 MiB ranges inside still get huge
 * pages). */
static void *block_new(size_t n, size_t huge_from, size_t *len)
{
	size_t bytes;
	void *p = NULL;

	if (n > SIZE_MAX / 2) /* no size this large is mapped: no rounding can wrap */
		return NULL;
	bytes = block_bytes(n, huge_from);
	if (n >= huge_from)
		p = map_aligned(bytes, PROT_READ | PROT_WRITE);
	if (!p && (p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) == MAP_FAILED)
		return NULL;
	if (n >= huge_from)
		advise_huge(p, bytes);
	*len = bytes;
	return p;
}

/* Block p (*len bytes, or NULL) grown to at least n bytes, its contents kept (it may move),
 * huge from huge_from bytes on; NULL when out of memory, p then untouched and still *len
 * bytes. A block never shrinks. A huge one grows in place when the addresses after it are
 * free, else moves onto a 2 MiB-aligned reservation (the kernel moves its huge pages
 * whole); where that reservation does not fit the address space (it needs the old block's
 * and the new one's at once), it moves where the kernel puts it, as a block below
 * huge_from does: mremap needs room for the growth only. */
static void *block_grow(void *p, size_t *len, size_t n, size_t huge_from)
{
	size_t bytes;
	char *a;
	void *q;

	if (!p)
		return block_new(n, huge_from, len);
	if (n > SIZE_MAX / 2)
		return NULL;
	bytes = block_bytes(n, huge_from);
	if (bytes <= *len)
		return p;
	q = MAP_FAILED;
	if (n >= huge_from && !((uintptr_t)p & (HUGE_BYTES - 1)))
		q = mremap(p, *len, bytes, 0); /* in place: stays aligned */
	if (q == MAP_FAILED && n >= huge_from && (a = map_aligned(bytes, PROT_NONE))) {
		/* onto the reservation, replacing it; aligned to aligned keeps huge pages whole */
		q = mremap(p, *len, bytes, MREMAP_MAYMOVE | MREMAP_FIXED, a);
		if (q == MAP_FAILED)
			release_reservation(a, bytes);
	}
	if (q == MAP_FAILED)
		q = mremap(p, *len, bytes, MREMAP_MAYMOVE);
	if (q == MAP_FAILED)
		return NULL;
	if (n >= huge_from)
		advise_huge(q, bytes); /* a block just past huge_from gets the advice here */
	*len = bytes;
	return q;
}

static void block_free(void *p, size_t len)
{
	if (p)
		munmap(p, len);
}

static int is_used(const FlowIndex *s, size_t slot)
{
	return (s->used[slot / 64] >> (slot % 64)) & 1;
}

static size_t words_for(size_t bits)
{
	return (bits + 63) / 64;
}

static void mark_used(FlowIndex *s, size_t slot)
{
	size_t w = slot / 64;

	s->used[w] |= (uint64_t)1 << (slot % 64);
	if (s->used[w] == UINT64_MAX)
		s->full[w / 64] |= (uint64_t)1 << (w % 64);
}

static void mark_free(FlowIndex *s, size_t slot)
{
	size_t w = slot / 64;

	s->full[w / 64] &= ~((uint64_t)1 << (w % 64));
	s->used[w] &= ~((uint64_t)1 << (slot % 64));
	if (w < s->free_word)
		s->free_word = w;
}

/* The lowest free slot; only when one lies below high (count < high). */
static size_t lowest_free(FlowIndex *s)
{
	size_t fw = s->free_word / 64, w;

	while (s->full[fw] == UINT64_MAX)
		fw++;
	w = fw * 64 + (size_t)__builtin_ctzll(~s->full[fw]);
	s->free_word = w;
	return w * 64 + (size_t)__builtin_ctzll(~s->used[w]);
}

/* Bits a bucket needs for slot + 1 of every slot below `cap` (at least 1). */
static unsigned slot_bits_for(size_t cap)
{
	unsigned bits = 1;

	while (bits < 32 && ((size_t)1 << bits) <= cap)
		bits++;
	return bits;
}

/* Widen the buckets' slot field to `bits`: the tags lose their lowest bits. */
static void widen_slot_field(FlowIndex *s, unsigned bits)
{
	uint32_t mask = bits >= 32 ? UINT32_MAX : ((uint32_t)1 << bits) - 1, old = s->slot_mask;

	if (mask <= old)
		return;
	for (size_t i = 0; i < s->nbuckets; i++)
		if (s->buckets[i])
			s->buckets[i] = (s->buckets[i] & ~mask) | (s->buckets[i] & old);
	s->slot_mask = mask;
}

/* Room for at least `need` slots; -1 (nothing lost) when memory runs out. No GIL needed. */
static int grow_slots(FlowIndex *s, size_t need)
{
	size_t cap = s->slot_cap ? s->slot_cap : MIN_SLOTS;
	size_t old_words = words_for(s->slot_cap), words, old_sum, sum;
	void *p;

	while (cap < need)
		cap += cap / 2; /* x1.5: at most a third of the slot storage is slack */
	if (cap > MAX_FLOWS)
		cap = MAX_FLOWS; /* slot + 1 fits 31 bits */
	if (cap <= s->slot_cap)
		return 0;
	words = words_for(cap);
	old_sum = words_for(old_words);
	sum = words_for(words);
	/* each realloc that succeeds keeps its larger block; slot_cap moves only at the end */
	if (!(p = block_grow(s->keys, &s->keys_len, cap * (size_t)s->key_size,
			     BLOCK_HUGE_FILLED)))
		return -1;
	s->keys = p;
	if (!(p = block_grow(s->hashes, &s->hashes_len, cap * sizeof(uint32_t),
			     BLOCK_HUGE_FILLED)))
		return -1;
	s->hashes = p;
	if (!(p = PyMem_RawRealloc(s->used, words * sizeof(uint64_t))))
		return -1;
	s->used = p;
	memset(s->used + old_words, 0, (words - old_words) * sizeof(uint64_t));
	if (!(p = PyMem_RawRealloc(s->full, sum * sizeof(uint64_t))))
		return -1;
	s->full = p;
	memset(s->full + old_sum, 0, (sum - old_sum) * sizeof(uint64_t));
	widen_slot_field(s, slot_bits_for(cap));
	s->slot_cap = cap;
	return 0;
}

/* Rehash into `n` buckets (a power of two) from the stored hashes; -1 when out of memory. */
static int resize_buckets(FlowIndex *s, size_t n)
{
	/* Written before it is read: a fresh block's pages would be mapped from the zero page at
	 * the first probe's read, then copied at its write (two faults and a TLB flush each). */
	size_t len, mask = n - 1;
	uint32_t *nb = block_new(n * sizeof(uint32_t), BLOCK_HUGE_WHOLE, &len);

	if (!nb)
		return -1;
	memset(nb, 0, n * sizeof(uint32_t));
	for (size_t i = 0; i < s->nbuckets; i++) {
		uint32_t b = s->buckets[i];
		size_t j;
		if (!b)
			continue;
		for (j = s->hashes[(b & s->slot_mask) - 1] & mask; nb[j]; j = (j + 1) & mask)
			;
		nb[j] = b;
	}
	block_free(s->buckets, s->buckets_len);
	s->buckets = nb;
	s->buckets_len = len;
	s->nbuckets = n;
	return 0;
}

static size_t buckets_for(size_t flows)
{
	size_t n = MIN_BUCKETS;

	while (n * LOAD_NUM < flows * LOAD_DEN)
		n *= 2;
	return n;
}

/* --- the index ------------------------------------------------------------------------------ */

/* Bucket that holds `key` (hash h), or the empty bucket where it would go. */
static size_t probe(const FlowIndex *s, const uint8_t *key, uint64_t h)
{
	size_t mask = s->nbuckets - 1, i = (uint32_t)h & mask, ks = (size_t)s->key_size;
	uint32_t tag = (uint32_t)(h >> 32), slot_mask = s->slot_mask;

	for (;; i = (i + 1) & mask) {
		uint32_t b = s->buckets[i];
		if (!b)
			return i;
		if (!((b ^ tag) & ~slot_mask)
		    && memcmp(s->keys + (size_t)((b & slot_mask) - 1) * ks, key, ks) == 0)
			return i;
	}
}

/* Put `key` in a new slot at empty bucket `i`; -1 when out of memory (nothing changed). */
static int64_t insert_at(FlowIndex *s, size_t i, const uint8_t *key, uint64_t h)
{
	size_t slot;

	if ((s->count + 1) * LOAD_DEN > s->nbuckets * LOAD_NUM) {
		if (resize_buckets(s, s->nbuckets * 2) < 0)
			return -1;
		i = probe(s, key, h);
	}
	if (s->count < s->high) {
		slot = lowest_free(s);
	} else {
		if (s->high == s->slot_cap && grow_slots(s, s->high + 1) < 0)
			return -1;
		slot = s->high++;
	}
	memcpy(s->keys + slot * (size_t)s->key_size, key, (size_t)s->key_size);
	s->hashes[slot] = (uint32_t)h;
	mark_used(s, slot);
	s->buckets[i] = ((uint32_t)(h >> 32) & ~s->slot_mask) | ((uint32_t)slot + 1);
	s->count++;
	return (int64_t)slot;
}

/* Take a used slot out (backward-shift deletion). Never allocates. */
static void remove_slot(FlowIndex *s, size_t slot)
{
	size_t mask = s->nbuckets - 1, i = s->hashes[slot] & mask, j;
	uint32_t slot_mask = s->slot_mask;

	while ((s->buckets[i] & slot_mask) != slot + 1)
		i = (i + 1) & mask;
	for (j = i;;) {
		size_t home;
		j = (j + 1) & mask;
		if (!s->buckets[j])
			break;
		home = s->hashes[(s->buckets[j] & slot_mask) - 1] & mask;
		/* the entry at j may fill the hole at i unless its home lies in (i, j] */
		if (i < j ? (home <= i || home > j) : (home <= i && home > j)) {
			s->buckets[i] = s->buckets[j];
			i = j;
		}
	}
	s->buckets[i] = 0;
	mark_free(s, slot);
	s->count--;
	if (s->count == 0) { /* restart numbering: every slot below high is free */
		s->high = 0;
		s->free_word = 0;
	}
}

/* One key field of a record row: `len` bytes at `src` of the row go to `dst` of the packed
 * key, byte-swapped when `swap` (a native integer column of a big-endian key field). */
struct keyop {
	uint32_t src, dst, len, swap;
};

struct batch {
	const uint8_t *keys; /* n * key_size packed keys; or, when rows is set: */
	const uint8_t *rows; /* n records of `stride` bytes, keys packed per chunk by `ops` */
	size_t stride;
	const struct keyop *ops;
	size_t nops;
	uint8_t *packed; /* CHUNK * key_size: a chunk's keys packed from its records */
	size_t n;
	int insert;
	size_t limit; /* 0 = none */
	int64_t *slots; /* out */
	uint8_t *is_new; /* out */
	size_t inserted;
	size_t failed_at; /* row whose insert ran out of memory, or n */
};

/* Copy `len` bytes, the common widths as fixed-size copies (a variable-size memcpy of a few
 * bytes is a call, or `rep movs`, per field). */
static inline void copy_field(uint8_t *dst, const uint8_t *src, uint32_t len)
{
	switch (len) {
	case 1: *dst = *src; break;
	case 2: memcpy(dst, src, 2); break;
	case 4: memcpy(dst, src, 4); break;
	case 8: memcpy(dst, src, 8); break;
	case 16: memcpy(dst, src, 16); break;
	case 32: memcpy(dst, src, 32); break;
	default: memcpy(dst, src, len); break;
	}
}

/* The packed key of one record row. */
static inline void pack_key(const uint8_t *row, const struct keyop *ops, size_t nops,
			    uint8_t *key)
{
	for (size_t i = 0; i < nops; i++) {
		const struct keyop *op = &ops[i];
		const uint8_t *src = row + op->src;
		uint8_t *dst = key + op->dst;
		if (!op->swap) {
			copy_field(dst, src, op->len);
		} else if (op->len == 2) {
			uint16_t v;
			memcpy(&v, src, 2);
			v = __builtin_bswap16(v);
			memcpy(dst, &v, 2);
		} else if (op->len == 4) {
			uint32_t v;
			memcpy(&v, src, 4);
			v = __builtin_bswap32(v);
			memcpy(dst, &v, 4);
		} else {
			uint64_t v;
			memcpy(&v, src, 8);
			v = __builtin_bswap64(v);
			memcpy(dst, &v, 8);
		}
	}
}

/* Prefetch the key of each home bucket whose tag matches (once the buckets are in the
 * cache, mostly): the key compare's miss then overlaps the chunk's other misses. */
static void prefetch_keys(const FlowIndex *s, const uint64_t *hashes, size_t m)
{
	size_t mask = s->nbuckets - 1, ks = (size_t)s->key_size;
	uint32_t slot_mask = s->slot_mask;

	for (size_t r = 0; r < m; r++) {
		uint32_t b = s->buckets[(uint32_t)hashes[r] & mask];
		if (b && !((b ^ (uint32_t)(hashes[r] >> 32)) & ~slot_mask)) {
			const uint8_t *key = s->keys + (size_t)((b & slot_mask) - 1) * ks;
			__builtin_prefetch(key);
			__builtin_prefetch(key + ks - 1);
		}
	}
}

/* The lookup loop; runs with or without the GIL. Rows go in chunks: hash a chunk and
 * prefetch its home buckets, then probe, so the cache misses of a chunk overlap. */
static void lookup_rows(FlowIndex *s, struct batch *bt)
{
	size_t ks = (size_t)s->key_size;
	uint64_t hashes[CHUNK];

	bt->failed_at = bt->n;
	for (size_t c = 0; c < bt->n; c += CHUNK) {
		size_t m = bt->n - c < CHUNK ? bt->n - c : CHUNK;
		const uint8_t *chunk = bt->keys + c * ks;
		if (bt->rows) {
			for (size_t r = 0; r < m; r++)
				pack_key(bt->rows + (c + r) * bt->stride, bt->ops, bt->nops,
					 bt->packed + r * ks);
			chunk = bt->packed;
		}
		for (size_t r = 0; r < m; r++) {
			hashes[r] = siphash13(chunk + r * ks, ks);
			__builtin_prefetch(&s->buckets[(uint32_t)hashes[r] & (s->nbuckets - 1)]);
		}
		if (bt->rows) /* a drain's keys sit anywhere in the slots: fetch them ahead too */
			prefetch_keys(s, hashes, m);
		for (size_t r = c; r < c + m; r++) {
			const uint8_t *key = chunk + (r - c) * ks;
			uint64_t h = hashes[r - c];
			size_t i = probe(s, key, h);
			int64_t slot = -1;

			bt->is_new[r] = 0;
			if (s->buckets[i]) {
				slot = (int64_t)(s->buckets[i] & s->slot_mask) - 1;
			} else if (bt->insert && (!bt->limit || s->count < bt->limit)
				   && s->count < MAX_FLOWS) {
				slot = insert_at(s, i, key, h);
				if (slot < 0) {
					bt->failed_at = r;
					return;
				}
				bt->is_new[r] = 1;
				bt->inserted++;
			}
			bt->slots[r] = slot;
		}
	}
}

/* --- argument helpers ------------------------------------------------------------------------ */

static int busy_error(FlowIndex *s)
{
	if (!s->busy)
		return 0;
	PyErr_SetString(PyExc_RuntimeError, "FlowIndex is in use by another thread");
	return -1;
}

/* A C-contiguous buffer of whole keys. */
static int get_keys(FlowIndex *s, PyObject *obj, Py_buffer *view)
{
	if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0)
		return -1;
	if (view->len % s->key_size) {
		PyErr_Format(PyExc_ValueError,
			     "keys: buffer of %zd bytes is not a whole number of %zd-byte keys",
			     view->len, s->key_size);
		PyBuffer_Release(view);
		return -1;
	}
	return 0;
}

/* int64 slot numbers (an int64/uint64 array, or raw bytes in host order), all in use. */
/* A C-contiguous buffer of native int64 slot numbers (or raw bytes holding them): the format
 * and the length checked, not the values; -1 with ValueError and nothing held otherwise. */
static int get_int64_slots(PyObject *obj, Py_buffer *view)
{
	const char *f;

	if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
		return -1;
	f = view->format ? view->format : "B";
	if (*f == '@' || *f == '=' || (*f == '<' && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__))
		f++;
	if (!(f[0] && !f[1] && ((view->itemsize == 8 && strchr("qQlL", f[0]))
				|| (view->itemsize == 1 && strchr("Bbc", f[0]))))) {
		PyErr_Format(PyExc_ValueError, "slots: need int64 slot numbers, got format '%s'",
			     view->format ? view->format : "B");
		goto fail;
	}
	if (view->len % 8) {
		PyErr_Format(PyExc_ValueError,
			     "slots: buffer of %zd bytes is not a whole number of int64 slots",
			     view->len);
		goto fail;
	}
	return 0;
fail:
	PyBuffer_Release(view);
	return -1;
}

/* Whether two buffers share a byte: a write into one would change what the other holds. */
static int overlaps(const Py_buffer *a, const Py_buffer *b)
{
	return a->len > 0 && b->len > 0
	       && (const char *)a->buf < (const char *)b->buf + b->len
	       && (const char *)b->buf < (const char *)a->buf + a->len;
}

static int get_slots(FlowIndex *s, PyObject *obj, Py_buffer *view)
{
	const int64_t *v;
	size_t n;

	if (get_int64_slots(obj, view) < 0)
		return -1;
	v = view->buf;
	n = (size_t)view->len / 8;
	for (size_t r = 0; r < n; r++) {
		if (v[r] < 0 || (uint64_t)v[r] >= s->high || !is_used(s, (size_t)v[r])) {
			PyErr_Format(PyExc_ValueError, "slots: slot %lld (row %zu) holds no key",
				     (long long)v[r], r);
			goto fail;
		}
	}
	return 0;
fail:
	PyBuffer_Release(view);
	return -1;
}

/* A memoryview of format `fmt` over a new bytes object of n items of `size` bytes. */
static PyObject *new_view(size_t n, size_t size, const char *fmt, void **data)
{
	PyObject *raw = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * size)), *mv, *cast;

	if (!raw)
		return NULL;
	*data = PyBytes_AS_STRING(raw);
	mv = PyMemoryView_FromObject(raw);
	Py_DECREF(raw);
	if (!mv)
		return NULL;
	cast = PyObject_CallMethod(mv, "cast", "s", fmt);
	Py_DECREF(mv);
	return cast;
}

/* --- methods --------------------------------------------------------------------------------- */

static int FlowIndex_init(FlowIndex *s, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"key_size", "capacity", NULL};
	Py_ssize_t key_size, capacity = 0;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|n:FlowIndex", kwlist, &key_size,
					 &capacity))
		return -1;
	if (key_size < 1 || key_size > 65535) {
		PyErr_Format(PyExc_ValueError, "key_size: %zd is not 1..65535", key_size);
		return -1;
	}
	if (capacity < 0 || (size_t)capacity > MAX_FLOWS) {
		PyErr_Format(PyExc_ValueError, "capacity: %zd is not 0..%u", capacity, MAX_FLOWS);
		return -1;
	}
	if (s->buckets) {
		PyErr_SetString(PyExc_RuntimeError, "FlowIndex is already initialized");
		return -1;
	}
	s->key_size = key_size;
	if (resize_buckets(s, buckets_for((size_t)capacity)) < 0
	    || grow_slots(s, capacity ? (size_t)capacity : MIN_SLOTS) < 0) {
		PyErr_NoMemory();
		return -1;
	}
	return 0;
}

static void FlowIndex_dealloc(FlowIndex *s)
{
	block_free(s->keys, s->keys_len);
	block_free(s->hashes, s->hashes_len);
	PyMem_RawFree(s->used);
	PyMem_RawFree(s->full);
	block_free(s->buckets, s->buckets_len);
	Py_TYPE(s)->tp_free((PyObject *)s);
}

static int ready(FlowIndex *s)
{
	if (s->buckets)
		return busy_error(s);
	PyErr_SetString(PyExc_RuntimeError, "FlowIndex.__init__ was not called");
	return -1;
}

/* Undo the inserts of a lookup that ran out of memory at row bt->failed_at. */
static void roll_back(FlowIndex *s, struct batch *bt)
{
	for (size_t r = bt->failed_at; r-- > 0;)
		if (bt->is_new[r])
			remove_slot(s, (size_t)bt->slots[r]);
}

PyDoc_STRVAR(lookup_doc,
	     "lookup(keys, insert=True, limit=0) -> (slots, new)\n\n"
	     "Find each key of `keys` (a C-contiguous buffer of n * key_size bytes).\n"
	     "slots: memoryview of n int64 slot numbers, -1 for a key that is absent and not\n"
	     "inserted: insert=False, or limit > 0 and the index already holds limit keys\n"
	     "(maxflows: new keys beyond it are refused, present ones still found).\n"
	     "new: memoryview of n uint8, 1 on the row that inserted its key (a key repeated in\n"
	     "the batch maps to one slot and is new on its first row only).");

/* Run a prepared batch (bt->n rows, keys or records) into (slots, new); NULL on error. */
static PyObject *run_batch(FlowIndex *s, struct batch *bt)
{
	PyObject *slots, *is_new, *result = NULL;

	slots = new_view(bt->n, 8, "q", (void **)&bt->slots);
	is_new = new_view(bt->n, 1, "B", (void **)&bt->is_new);
	if (!slots || !is_new)
		goto out;
	if (bt->n >= NOGIL_ROWS) {
		s->busy = 1;
		Py_BEGIN_ALLOW_THREADS
		lookup_rows(s, bt);
		Py_END_ALLOW_THREADS
		s->busy = 0;
	} else {
		lookup_rows(s, bt);
	}
	if (bt->failed_at < bt->n) {
		roll_back(s, bt);
		PyErr_NoMemory();
		goto out;
	}
	result = PyTuple_Pack(2, slots, is_new);
out:
	Py_XDECREF(slots);
	Py_XDECREF(is_new);
	return result;
}

static PyObject *FlowIndex_lookup(FlowIndex *s, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"keys", "insert", "limit", NULL};
	PyObject *keys_obj, *result;
	int insert = 1;
	Py_ssize_t limit = 0;
	Py_buffer view;
	struct batch bt = {0};

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|pn:lookup", kwlist, &keys_obj, &insert,
					 &limit))
		return NULL;
	if (ready(s) < 0)
		return NULL;
	if (limit < 0)
		return PyErr_Format(PyExc_ValueError, "limit: %zd is negative", limit);
	if (get_keys(s, keys_obj, &view) < 0)
		return NULL;
	bt.keys = view.buf;
	bt.n = (size_t)(view.len / s->key_size);
	bt.insert = insert;
	bt.limit = (size_t)limit;
	result = run_batch(s, &bt);
	PyBuffer_Release(&view);
	return result;
}

/* A C-contiguous buffer of whole records of `stride` bytes. */
static int get_records(PyObject *obj, Py_ssize_t stride, Py_buffer *view)
{
	if (stride < 1) {
		PyErr_Format(PyExc_ValueError, "stride: %zd is not positive", stride);
		return -1;
	}
	if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0)
		return -1;
	if (view->len % stride) {
		PyErr_Format(PyExc_ValueError,
			     "records: buffer of %zd bytes is not a whole number of %zd-byte rows",
			     view->len, stride);
		PyBuffer_Release(view);
		return -1;
	}
	return 0;
}

/* Key ops (uint32 quadruples src, dst, len, swap) that stay inside a row and a key. */
static int get_ops(FlowIndex *s, PyObject *obj, Py_ssize_t stride, Py_buffer *view)
{
	const struct keyop *ops;
	size_t n;

	if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0)
		return -1;
	ops = view->buf;
	n = (size_t)view->len / sizeof(struct keyop);
	if ((size_t)view->len % sizeof(struct keyop) || !n)
		goto bad;
	for (size_t i = 0; i < n; i++) {
		const struct keyop *op = &ops[i];
		if (!op->len || (uint64_t)op->src + op->len > (uint64_t)stride
		    || (uint64_t)op->dst + op->len > (uint64_t)s->key_size
		    || (op->swap && op->len != 2 && op->len != 4 && op->len != 8))
			goto bad;
	}
	return 0;
bad:
	PyErr_SetString(PyExc_ValueError, "ops: need uint32 (src, dst, len, swap) quadruples "
			"inside a row and a key (swap: len 2, 4 or 8)");
	PyBuffer_Release(view);
	return -1;
}

PyDoc_STRVAR(lookup_records_doc,
	     "lookup_records(records, stride, ops, insert=True, limit=0) -> (slots, new)\n\n"
	     "lookup() of the keys of `records` (a C-contiguous buffer of rows of `stride`\n"
	     "bytes, e.g. a NumPy record array), each packed from its row by `ops` (uint32\n"
	     "quadruples src, dst, len, swap: bytes src..src+len of the row go to dst of the\n"
	     "key, byte-swapped when swap) a few rows at a time: no key array is built.");

static PyObject *FlowIndex_lookup_records(FlowIndex *s, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"records", "stride", "ops", "insert", "limit", NULL};
	PyObject *rec_obj, *ops_obj, *result = NULL;
	int insert = 1;
	Py_ssize_t stride, limit = 0;
	Py_buffer rec, ops;
	struct batch bt = {0};

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnO|pn:lookup_records", kwlist, &rec_obj,
					 &stride, &ops_obj, &insert, &limit))
		return NULL;
	if (ready(s) < 0)
		return NULL;
	if (limit < 0)
		return PyErr_Format(PyExc_ValueError, "limit: %zd is negative", limit);
	if (get_records(rec_obj, stride, &rec) < 0)
		return NULL;
	if (get_ops(s, ops_obj, stride, &ops) < 0) {
		PyBuffer_Release(&rec);
		return NULL;
	}
	/* zeroed: key bytes no op writes stay zero in every row, never left uninitialised */
	bt.packed = PyMem_RawCalloc(CHUNK, (size_t)s->key_size);
	if (!bt.packed) {
		PyErr_NoMemory();
		goto out;
	}
	bt.rows = rec.buf;
	bt.stride = (size_t)stride;
	bt.ops = ops.buf;
	bt.nops = (size_t)ops.len / sizeof(struct keyop);
	bt.n = (size_t)(rec.len / stride);
	bt.insert = insert;
	bt.limit = (size_t)limit;
	result = run_batch(s, &bt);
out:
	PyMem_RawFree(bt.packed);
	PyBuffer_Release(&ops);
	PyBuffer_Release(&rec);
	return result;
}

/* Every key out at once: the buckets and the in-use bits zeroed in one sequential pass each,
 * numbering restarts at 0 (the slots' keys and hashes stay, unused, until reused). */
static void clear_all(FlowIndex *s)
{
	if (s->nbuckets)
		memset(s->buckets, 0, s->nbuckets * sizeof(uint32_t));
	if (s->slot_cap) {
		memset(s->used, 0, words_for(s->slot_cap) * sizeof(uint64_t));
		memset(s->full, 0, words_for(words_for(s->slot_cap)) * sizeof(uint64_t));
	}
	s->count = 0;
	s->high = 0;
	s->free_word = 0;
}

/* Whether v[0:n] names every slot that holds a key: strictly ascending (so no slot twice),
 * each one used, as many as the index holds (a timed scan that takes every flow, the
 * saved state's dump), and clearing pays: at least a key per CLEAR_BUCKETS buckets (the
 * buckets stay as large as the most keys ever held: zeroing ~2 MB of them, 0.5 ns a
 * bucket, for a few keys left would cost more than removing those). One sequential pass
 * over v, stopped at the first row that fails. */
static int names_every_key(const FlowIndex *s, const int64_t *v, size_t n)
{
	if (n == 0 || n != s->count || n * CLEAR_BUCKETS < s->nbuckets)
		return 0;
	for (size_t r = 0; r < n; r++)
		if ((uint64_t)v[r] >= s->high || (r && v[r] <= v[r - 1]) || !is_used(s, (size_t)v[r]))
			return 0;
	return 1;
}

/* Remove the keys of `n` slots (those that hold one); with `into`, copy each key there first
 * (row r at into + r * stride; `v` checked by get_slots). When the rows name every key
 * (names_every_key), the index is cleared at once after the copies (clear_all), as a drain
 * does, instead of removing key after key: each removal reads its bucket and the hashes of
 * the entries after it at random places (~65 ns a key at 1M keys). Else rows go in chunks:
 * prefetch a chunk's buckets first (each a cache miss at a random place of the bucket
 * array), then remove. (Prefetching the next entries' hashes as well, a chunk ahead, was
 * slower; so was a rolling prefetch of both, 8-32 rows ahead.) */
static void remove_rows(FlowIndex *s, const int64_t *v, size_t n, uint8_t *into,
			size_t stride)
{
	size_t mask = s->nbuckets - 1, ks = (size_t)s->key_size;

	if (names_every_key(s, v, n)) {
		for (size_t r = 0; into && r < n; r++)
			memcpy(into + r * stride, s->keys + (size_t)v[r] * ks, ks);
		clear_all(s);
		return;
	}

	for (size_t c = 0; c < n; c += CHUNK) {
		size_t m = n - c < CHUNK ? n - c : CHUNK;
		for (size_t r = c; r < c + m; r++)
			if ((uint64_t)v[r] < s->high)
				__builtin_prefetch(&s->buckets[s->hashes[v[r]] & mask]);
		for (size_t r = c; r < c + m; r++) {
			if (into) /* a slot repeated in the batch: its key stays until reused */
				memcpy(into + r * stride, s->keys + (size_t)v[r] * ks, ks);
			if ((uint64_t)v[r] < s->high && is_used(s, (size_t)v[r]))
				remove_slot(s, (size_t)v[r]);
		}
	}
}

PyDoc_STRVAR(remove_doc,
	     "remove(slots) -> None\n\n"
	     "Take the keys of `slots` (int64 slot numbers, e.g. from lookup() or occupied())\n"
	     "out of the index; their slots are handed out again, lowest first. A slot that\n"
	     "holds no key raises ValueError and nothing is removed; a slot repeated in the\n"
	     "batch is removed once.");

static PyObject *FlowIndex_remove(FlowIndex *s, PyObject *obj)
{
	Py_buffer view;
	const int64_t *v;

	if (ready(s) < 0 || get_slots(s, obj, &view) < 0)
		return NULL;
	v = view.buf;
	remove_rows(s, v, (size_t)view.len / 8, NULL, 0);
	PyBuffer_Release(&view);
	Py_RETURN_NONE;
}

PyDoc_STRVAR(take_doc,
	     "take(slots, into, stride=key_size, keep=False) -> None\n\n"
	     "keys(slots) written into `into` (a writable C-contiguous buffer), key r at byte\n"
	     "r * stride (a stride of a record's size: each key into its row of a record array),\n"
	     "and remove(slots), in one pass over the slots; with keep, the keys are only\n"
	     "copied (a drain that empties the index with clear() afterwards). A slot that\n"
	     "holds no key, or an `into` too small, raises ValueError and nothing changes.");

static PyObject *FlowIndex_take(FlowIndex *s, PyObject *args)
{
	PyObject *slots_obj, *into_obj;
	Py_buffer view, into;
	Py_ssize_t stride = -1;
	size_t n;
	int fits, overlap, keep = 0;

	if (!PyArg_ParseTuple(args, "OO|np:take", &slots_obj, &into_obj, &stride, &keep)
	    || ready(s) < 0)
		return NULL;
	if (stride < 0)
		stride = s->key_size;
	if (stride < s->key_size)
		return PyErr_Format(PyExc_ValueError, "stride: %zd is less than the key size %zd",
				    stride, s->key_size);
	if (get_slots(s, slots_obj, &view) < 0)
		return NULL;
	n = (size_t)view.len / 8;
	if (PyObject_GetBuffer(into_obj, &into, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
		PyBuffer_Release(&view);
		return NULL;
	}
	/* n keys fit when the first does and the other n - 1 strides fit in what is left
	 * (division, not a product: a huge stride must not wrap past the check) */
	fits = !n || ((size_t)into.len >= (size_t)s->key_size
		      && (n == 1 || (size_t)stride <= ((size_t)into.len - (size_t)s->key_size)
						     / (n - 1)));
	overlap = (const char *)into.buf < (const char *)view.buf + view.len
		  && (const char *)view.buf < (const char *)into.buf + into.len;
	if (overlap) {	/* the keys would overwrite slot numbers not yet read */
		PyErr_SetString(PyExc_ValueError, "into: overlaps slots");
		goto done;
	}
	if (!fits) {
		PyErr_Format(PyExc_ValueError, "into: %zd bytes for %zu keys of %zd bytes at a "
			     "stride of %zd", into.len, n, s->key_size, stride);
		goto done;
	}
	if (keep) {
		const int64_t *v = view.buf;
		size_t ks = (size_t)s->key_size;
		for (size_t r = 0; r < n; r++)
			memcpy((uint8_t *)into.buf + r * (size_t)stride, s->keys + (size_t)v[r] * ks, ks);
	} else {
		remove_rows(s, view.buf, n, into.buf, (size_t)stride);
	}
done:
	PyBuffer_Release(&into);
	PyBuffer_Release(&view);
	if (PyErr_Occurred())
		return NULL;
	Py_RETURN_NONE;
}

PyDoc_STRVAR(keys_doc,
	     "keys(slots) -> bytes\n\n"
	     "The keys of `slots` (int64 slot numbers that hold keys), n * key_size bytes.");

static PyObject *FlowIndex_keys(FlowIndex *s, PyObject *obj)
{
	Py_buffer view;
	const int64_t *v;
	PyObject *out;
	size_t n, ks = (size_t)s->key_size;
	uint8_t *dst;

	if (ready(s) < 0 || get_slots(s, obj, &view) < 0)
		return NULL;
	v = view.buf;
	n = (size_t)view.len / 8;
	out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * ks));
	if (out) {
		dst = (uint8_t *)PyBytes_AS_STRING(out);
		for (size_t r = 0; r < n; r++)
			memcpy(dst + r * ks, s->keys + (size_t)v[r] * ks, ks);
	}
	PyBuffer_Release(&view);
	return out;
}

PyDoc_STRVAR(occupied_doc,
	     "occupied(limit=0, start=0) -> memoryview of int64\n\n"
	     "The slots from `start` on that hold keys, ascending; with limit > 0, only the\n"
	     "lowest `limit` (a forced expiry takes the table out in steps).");

static PyObject *FlowIndex_occupied(FlowIndex *s, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"limit", "start", NULL};
	Py_ssize_t limit = 0, start = 0;
	int64_t *out;
	void *data;
	PyObject *view, *found;
	size_t k = 0, n, w0;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nn:occupied", kwlist, &limit, &start))
		return NULL;
	if (ready(s) < 0)
		return NULL;
	if (limit < 0 || start < 0)
		return PyErr_Format(PyExc_ValueError, "%s: %zd is negative",
				    limit < 0 ? "limit" : "start", limit < 0 ? limit : start);
	n = limit && (size_t)limit < s->count ? (size_t)limit : s->count;
	view = new_view(n, 8, "q", (void **)&out);
	if (!view)
		return NULL;
	w0 = (size_t)start / 64;
	for (size_t w = w0; k < n && w < (s->high + 63) / 64; w++) {
		uint64_t bits = s->used[w];
		if (w == w0) /* the slots below start */
			bits &= ~(uint64_t)0 << ((size_t)start % 64);
		for (; bits && k < n; bits &= bits - 1)
			out[k++] = (int64_t)(w * 64 + (size_t)__builtin_ctzll(bits));
	}
	if (k == n)
		return view;
	/* fewer slots from `start` on than asked for: a view of the k found */
	found = new_view(k, 8, "q", &data);
	if (found)
		memcpy(data, out, k * 8);
	Py_DECREF(view);
	return found;
}

PyDoc_STRVAR(clear_doc,
	     "clear() -> None\n\n"
	     "Every key out at once (as remove() of every slot, in one pass over the buckets\n"
	     "and the in-use bits, not one removal per key): the index is empty, numbering\n"
	     "restarts at 0; the memory stays allocated.");

static PyObject *FlowIndex_clear(FlowIndex *s, PyObject *Py_UNUSED(ignored))
{
	if (ready(s) < 0)
		return NULL;
	clear_all(s);
	Py_RETURN_NONE;
}

static size_t memory_bytes(const FlowIndex *s)
{
	size_t words = words_for(s->slot_cap);

	return sizeof(FlowIndex) + s->nbuckets * sizeof(uint32_t)
	       + s->slot_cap * ((size_t)s->key_size + sizeof(uint32_t))
	       + (words + words_for(words)) * sizeof(uint64_t);
}

PyDoc_STRVAR(memory_doc,
	     "memory_bytes() -> int\n\n"
	     "Bytes allocated: the buckets plus the per-slot key, hash and in-use storage\n"
	     "(capacity, not only what is in use).");

static PyObject *FlowIndex_memory_bytes(FlowIndex *s, PyObject *Py_UNUSED(ignored))
{
	return PyLong_FromSize_t(memory_bytes(s));
}

static PyObject *FlowIndex_sizeof(FlowIndex *s, PyObject *Py_UNUSED(ignored))
{
	return PyLong_FromSize_t(memory_bytes(s));
}

static Py_ssize_t FlowIndex_len(FlowIndex *s)
{
	return (Py_ssize_t)s->count;
}

static PyObject *get_slot_count(FlowIndex *s, void *Py_UNUSED(closure))
{
	return PyLong_FromSize_t(s->high);
}

static PyObject *get_key_size(FlowIndex *s, void *Py_UNUSED(closure))
{
	return PyLong_FromSsize_t(s->key_size);
}

static PyObject *get_bucket_count(FlowIndex *s, void *Py_UNUSED(closure))
{
	return PyLong_FromSize_t(s->nbuckets);
}

static PyMethodDef FlowIndex_methods[] = {
	{"lookup", (PyCFunction)(void (*)(void))FlowIndex_lookup, METH_VARARGS | METH_KEYWORDS,
	 lookup_doc},
	{"lookup_records", (PyCFunction)(void (*)(void))FlowIndex_lookup_records,
	 METH_VARARGS | METH_KEYWORDS, lookup_records_doc},
	{"remove", (PyCFunction)FlowIndex_remove, METH_O, remove_doc},
	{"keys", (PyCFunction)FlowIndex_keys, METH_O, keys_doc},
	{"take", (PyCFunction)FlowIndex_take, METH_VARARGS, take_doc},
	{"occupied", (PyCFunction)(void (*)(void))FlowIndex_occupied, METH_VARARGS | METH_KEYWORDS,
	 occupied_doc},
	{"clear", (PyCFunction)FlowIndex_clear, METH_NOARGS, clear_doc},
	{"memory_bytes", (PyCFunction)FlowIndex_memory_bytes, METH_NOARGS, memory_doc},
	{"__sizeof__", (PyCFunction)FlowIndex_sizeof, METH_NOARGS, memory_doc},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef FlowIndex_getset[] = {
	{"slot_count", (getter)get_slot_count, NULL,
	 "highest slot handed out + 1 (0 when empty): size value columns to it", NULL},
	{"key_size", (getter)get_key_size, NULL, "bytes per key", NULL},
	{"bucket_count", (getter)get_bucket_count, NULL,
	 "hash buckets (a power of two, at most 70 % in use)", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods FlowIndex_as_sequence = {
	.sq_length = (lenfunc)FlowIndex_len,
};

PyDoc_STRVAR(FlowIndex_doc,
	     "FlowIndex(key_size, capacity=0)\n\n"
	     "Hash index from fixed-width keys (key_size bytes) to dense slot numbers, keys kept\n"
	     "in C memory. capacity: keys to allocate room for at once (grows automatically).\n"
	     "len() is the number of keys; one thread at a time.");

static PyTypeObject FlowIndexType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "netflow_agent._flowindex.FlowIndex",
	.tp_basicsize = sizeof(FlowIndex),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = FlowIndex_doc,
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)FlowIndex_init,
	.tp_dealloc = (destructor)FlowIndex_dealloc,
	.tp_methods = FlowIndex_methods,
	.tp_getset = FlowIndex_getset,
	.tp_as_sequence = &FlowIndex_as_sequence,
};

PyDoc_STRVAR(siphash_doc,
	     "siphash(data) -> int\n\n"
	     "SipHash-1-3 of `data` under this process's random key, as FlowIndex hashes keys\n"
	     "(for tests: a different value in every process).");

static PyObject *module_siphash(PyObject *Py_UNUSED(m), PyObject *obj)
{
	Py_buffer view;
	uint64_t h;

	if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS) < 0)
		return NULL;
	h = siphash13(view.buf, (size_t)view.len);
	PyBuffer_Release(&view);
	return PyLong_FromUnsignedLongLong(h);
}

/* --- hash:N flow sampling -------------------------------------------------------------------- */

/* CRC-32 (IEEE 802.3, reflected 0xEDB88320: zlib's crc32), slice-by-8 tables filled at import. */
static uint32_t crc_tab[8][256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		crc_tab[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xFF];
}

static inline uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* zlib.crc32(p[:n], crc) */
static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n)
{
	crc = ~crc;
	for (; n >= 8; p += 8, n -= 8) {
		uint32_t one = le32(p) ^ crc, two = le32(p + 4);
		crc = crc_tab[7][one & 0xFF] ^ crc_tab[6][(one >> 8) & 0xFF]
		      ^ crc_tab[5][(one >> 16) & 0xFF] ^ crc_tab[4][one >> 24]
		      ^ crc_tab[3][two & 0xFF] ^ crc_tab[2][(two >> 8) & 0xFF]
		      ^ crc_tab[1][(two >> 16) & 0xFF] ^ crc_tab[0][two >> 24];
	}
	while (n--)
		crc = crc_tab[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
	return ~crc;
}

#define HASH_KEY_BYTES 44 /* the base key: version, protocol, ..., ports, addresses */
#define MAX_KEY_BYTES 65535 /* FlowIndex's largest key: ops reaching past it are refused */

PyDoc_STRVAR(hash_select_doc,
	     "hash_select(records, stride, ops, interval) -> memoryview of bool\n\n"
	     "Whether the hash:interval flow sampler (agent/sampler.py) keeps each row of\n"
	     "`records` (rows of `stride` bytes): its key packed by `ops` (as lookup_records;\n"
	     "a packed key array: stride = key size, one op (0, 0, key size, 0)), then\n"
	     "zlib.crc32(key[8:44], zlib.crc32(key[:2])) % interval == 0. The ops must fill\n"
	     "the key's first 44 bytes.");

static PyObject *module_hash_select(PyObject *Py_UNUSED(m), PyObject *args)
{
	PyObject *rec_obj, *ops_obj, *result = NULL;
	Py_ssize_t stride, interval;
	Py_buffer rec, opv = {0};
	const struct keyop *ops;
	size_t nops, n, width = 0;
	uint8_t *key = NULL, *out;

	if (!PyArg_ParseTuple(args, "OnOn:hash_select", &rec_obj, &stride, &ops_obj, &interval))
		return NULL;
	if (interval <= 0)
		return PyErr_Format(PyExc_ValueError, "interval: %zd is not positive", interval);
	if (get_records(rec_obj, stride, &rec) < 0)
		return NULL;
	if (PyObject_GetBuffer(ops_obj, &opv, PyBUF_C_CONTIGUOUS) < 0)
		goto out;
	ops = opv.buf;
	nops = (size_t)opv.len / sizeof(struct keyop);
	for (size_t i = 0; i < nops; i++) {
		const struct keyop *op = &ops[i];
		if (!op->len || (uint64_t)op->src + op->len > (uint64_t)stride
		    || (uint64_t)op->dst + op->len > MAX_KEY_BYTES
		    || (op->swap && op->len != 2 && op->len != 4 && op->len != 8)) {
			nops = 0;
			break;
		}
		if ((size_t)op->dst + op->len > width)
			width = (size_t)op->dst + op->len;
	}
	if ((size_t)opv.len % sizeof(struct keyop) || !nops || width < HASH_KEY_BYTES) {
		PyErr_SetString(PyExc_ValueError, "ops: need uint32 (src, dst, len, swap) "
				"quadruples inside a row that fill a key of 44 to 65535 bytes");
		goto out;
	}
	key = PyMem_Calloc(1, width);
	if (!key) {
		PyErr_NoMemory();
		goto out;
	}
	n = (size_t)(rec.len / stride);
	result = new_view(n, 1, "?", (void **)&out);
	if (!result)
		goto out;
	for (size_t r = 0; r < n; r++) {
		pack_key((const uint8_t *)rec.buf + r * (size_t)stride, ops, nops, key);
		out[r] = crc32_update(crc32_update(0, key, 2), key + 8, HASH_KEY_BYTES - 8)
			 % (uint64_t)interval == 0;
	}
out:
	PyMem_Free(key);
	if (opv.obj)
		PyBuffer_Release(&opv);
	PyBuffer_Release(&rec);
	return result;
}

/* --- aggregation rules ----------------------------------------------------------------------- */

/* One netmask rule of agent/keyrules.py, on a 16-byte address field (IPv4 in its first 4
 * bytes: mask and net zero and keep 0xFF over the 12 padding bytes). */
struct cut {
	uint8_t version, newlen, pad[6];
	uint8_t mask[16], net[16], keep[16];
};

enum { F_VERSION, F_PROTOCOL, F_SRC_PORT, F_DST_PORT, F_SRC_ADDR, F_DST_ADDR, F_SWAP, NFIELDS };
static const Py_ssize_t field_width[F_SWAP] = {1, 1, 2, 2, 16, 16};

struct rewrite {
	uint8_t *rows;
	size_t stride, n;
	Py_ssize_t field[F_SWAP];
	int swap; /* ports big-endian (packed keys) on this little-endian host, or the reverse */
	const struct cut *cuts;
	size_t ncuts;
	const uint16_t *ports; /* 65536 entries, or NULL: no port rules */
	const uint8_t *with_ports; /* 256 entries: the protocol has ports */
	uint16_t *masks; /* out */
};

/* Cut `addr` by the first rule of `version` that matches; the new prefix length (0: none). */
static uint8_t cut_address(uint8_t *addr, uint8_t version, const struct cut *cuts, size_t n)
{
	uint64_t a[2], m[2], v[2];

	memcpy(a, addr, 16);
	for (size_t i = 0; i < n; i++) {
		const struct cut *c = &cuts[i];
		if (c->version != version)
			continue;
		memcpy(m, c->mask, 16);
		memcpy(v, c->net, 16);
		if (((a[0] & m[0]) ^ v[0]) | ((a[1] & m[1]) ^ v[1]))
			continue;
		memcpy(m, c->keep, 16);
		a[0] &= m[0];
		a[1] &= m[1];
		memcpy(addr, a, 16);
		return c->newlen;
	}
	return 0;
}

static inline void map_port(uint8_t *at, const uint16_t *ports, int swap)
{
	uint16_t p;

	memcpy(&p, at, 2);
	p = swap ? __builtin_bswap16(ports[__builtin_bswap16(p)]) : ports[p];
	memcpy(at, &p, 2);
}

static void rewrite_rows(struct rewrite *w)
{
	for (size_t r = 0; r < w->n; r++) {
		uint8_t *row = w->rows + r * w->stride;
		uint8_t version = row[w->field[F_VERSION]], src = 0, dst = 0;

		if (w->ncuts) {
			src = cut_address(row + w->field[F_SRC_ADDR], version, w->cuts, w->ncuts);
			dst = cut_address(row + w->field[F_DST_ADDR], version, w->cuts, w->ncuts);
		}
		w->masks[r] = (uint16_t)(src << 8 | dst);
		if (w->ports && w->with_ports[row[w->field[F_PROTOCOL]]]) {
			map_port(row + w->field[F_SRC_PORT], w->ports, w->swap);
			map_port(row + w->field[F_DST_PORT], w->ports, w->swap);
		}
	}
}

PyDoc_STRVAR(rewrite_keys_doc,
	     "rewrite_keys(records, stride, fields, cuts, ports, with_ports, masks)\n\n"
	     "Apply aggregation rules (agent/keyrules.py) to every row of `records` (a writable\n"
	     "C-contiguous buffer of rows of `stride` bytes), in place: each 16-byte address is\n"
	     "cut by the first rule of `cuts` (packed struct cut: version, newlen, 6 pad bytes,\n"
	     "mask, net, keep; 16 bytes each) of the row's IP version that matches; each port\n"
	     "becomes ports[port] (65536 uint16; None: no port rules) when with_ports[protocol]\n"
	     "(256 bytes). `fields`: byte offsets of ip_version, protocol, src_port, dst_port,\n"
	     "src_addr, dst_addr in a row, then 1 if the ports are not in native order. masks\n"
	     "(a writable uint16 per row) gets src_len << 8 | dst_len (0: no rule matched).");

static int get_rewrite_fields(PyObject *fields, Py_ssize_t stride, struct rewrite *w)
{
	if (PyTuple_GET_SIZE(fields) != NFIELDS) {
		PyErr_Format(PyExc_ValueError, "fields: need %d items", NFIELDS);
		return -1;
	}
	for (int i = 0; i < NFIELDS; i++) {
		Py_ssize_t v = PyLong_AsSsize_t(PyTuple_GET_ITEM(fields, i));
		if (v == -1 && PyErr_Occurred())
			return -1;
		if (i == F_SWAP) {
			w->swap = v != 0;
		} else if (v < 0 || v > stride - field_width[i]) {
			PyErr_Format(PyExc_ValueError, "fields: item %d at %zd is outside a %zd-byte "
				     "row", i, v, stride);
			return -1;
		} else {
			w->field[i] = v;
		}
	}
	return 0;
}

static PyObject *module_rewrite_keys(PyObject *Py_UNUSED(m), PyObject *args)
{
	PyObject *rec_obj, *fields, *cuts_obj, *ports_obj, *with_obj, *masks_obj, *result = NULL;
	Py_ssize_t stride;
	Py_buffer rec = {0}, cv = {0}, pv = {0}, wv = {0}, mv = {0};
	struct rewrite w = {0};

	if (!PyArg_ParseTuple(args, "OnO!OOOO:rewrite_keys", &rec_obj, &stride, &PyTuple_Type,
			      &fields, &cuts_obj, &ports_obj, &with_obj, &masks_obj))
		return NULL;
	if (stride < 1)
		return PyErr_Format(PyExc_ValueError, "stride: %zd is not positive", stride);
	if (get_rewrite_fields(fields, stride, &w) < 0)
		return NULL;
	if (PyObject_GetBuffer(rec_obj, &rec, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
		return NULL;
	if (rec.len % stride) {
		PyErr_Format(PyExc_ValueError, "records: %zd bytes are not whole %zd-byte rows",
			     rec.len, stride);
		goto out;
	}
	if (PyObject_GetBuffer(cuts_obj, &cv, PyBUF_C_CONTIGUOUS) < 0)
		goto out;
	if (cv.len % (Py_ssize_t)sizeof(struct cut)) {
		PyErr_SetString(PyExc_ValueError, "cuts: not whole 56-byte rules");
		goto out;
	}
	if (ports_obj != Py_None) {
		if (PyObject_GetBuffer(ports_obj, &pv, PyBUF_C_CONTIGUOUS) < 0)
			goto out;
		if (pv.len != 65536 * 2 || pv.itemsize != 2) {
			PyErr_SetString(PyExc_ValueError, "ports: need 65536 uint16");
			goto out;
		}
		w.ports = pv.buf;
	}
	if (PyObject_GetBuffer(with_obj, &wv, PyBUF_C_CONTIGUOUS) < 0)
		goto out;
	if (PyObject_GetBuffer(masks_obj, &mv, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
		goto out;
	w.rows = rec.buf;
	w.stride = (size_t)stride;
	w.n = (size_t)(rec.len / stride);
	if (wv.len != 256 || mv.itemsize != 2 || (size_t)mv.len != w.n * 2) {
		PyErr_Format(PyExc_ValueError, "with_ports/masks: need 256 bytes and %zu uint16", w.n);
		goto out;
	}
	w.cuts = cv.buf;
	w.ncuts = (size_t)cv.len / sizeof(struct cut);
	w.with_ports = wv.buf;
	w.masks = mv.buf;
	rewrite_rows(&w);
	result = Py_NewRef(Py_None);
out:
	if (mv.obj)
		PyBuffer_Release(&mv);
	if (wv.obj)
		PyBuffer_Release(&wv);
	if (pv.obj)
		PyBuffer_Release(&pv);
	if (cv.obj)
		PyBuffer_Release(&cv);
	PyBuffer_Release(&rec);
	return result;
}

/* --- merging records into value columns ------------------------------------------------------ */

enum { COL_PACKETS, COL_OCTETS, COL_FIRST, COL_LAST, COL_FLAGS, COL_OUT_IF, NCOLS };
static const Py_ssize_t col_size[NCOLS] = {8, 8, 8, 8, 1, 4};
static const char *const col_name[NCOLS] = {"packets", "octets", "first", "last", "flags",
					    "out_if"};

struct merge {
	const uint8_t *rows;
	size_t stride, n;
	Py_ssize_t field[NCOLS]; /* byte offset of each value in a row */
	const int64_t *slots;
	const uint8_t *is_new;
	uint64_t *packets, *octets;
	int64_t *first, *last;
	uint8_t *flags;
	uint32_t *out_if;
	/* out: the rows merged (slot >= 0), the sums of their packets and octets (modulo
	 * 2**64) and the OR of their tcp flags: what the cache counts per batch, without
	 * another pass over the rows' strided fields in NumPy */
	uint64_t merged, packets_sum, octets_sum;
	uint8_t flags_or;
};

/* Point m's column pointers at the table's columns (checked by the caller). */
static void bind_columns(struct merge *m, const Py_buffer *col)
{
	m->packets = col[COL_PACKETS].buf;
	m->octets = col[COL_OCTETS].buf;
	m->first = col[COL_FIRST].buf;
	m->last = col[COL_LAST].buf;
	m->flags = col[COL_FLAGS].buf;
	m->out_if = col[COL_OUT_IF].buf;
}

/* Add every row into its slot (slot -1: skipped), in row order: a row that is new starts its
 * slot at its own first/last time; packets and octets are summed (modulo 2**64, as NumPy),
 * the earliest first and latest last kept, flags ORed, a non-zero out_if replaces the slot's.
 * The batch's totals over the merged rows go to m->merged, packets_sum, octets_sum and
 * flags_or. */
#define AHEAD 16 /* rows whose column entries are prefetched ahead of their merge */

static void merge_rows(struct merge *m)
{
	uint64_t merged = 0, packets_sum = 0, octets_sum = 0;
	uint8_t flags_or = 0;

	for (size_t r = 0; r < m->n; r++) {
		const uint8_t *row = m->rows + r * m->stride;
		int64_t slot = m->slots[r], start, end, next;
		uint64_t packets, octets;
		uint32_t out_if;
		uint8_t flags;

		if (r + AHEAD < m->n && (next = m->slots[r + AHEAD]) >= 0) {
			__builtin_prefetch(&m->packets[next], 1);
			__builtin_prefetch(&m->octets[next], 1);
			__builtin_prefetch(&m->first[next], 1);
			__builtin_prefetch(&m->last[next], 1);
			__builtin_prefetch(&m->flags[next], 1);
			__builtin_prefetch(&m->out_if[next], 1);
		}
		if (slot < 0)
			continue;
		memcpy(&packets, row + m->field[COL_PACKETS], 8);
		memcpy(&octets, row + m->field[COL_OCTETS], 8);
		memcpy(&start, row + m->field[COL_FIRST], 8);
		memcpy(&end, row + m->field[COL_LAST], 8);
		memcpy(&out_if, row + m->field[COL_OUT_IF], 4);
		flags = row[m->field[COL_FLAGS]];
		merged++;
		packets_sum += packets;
		octets_sum += octets;
		flags_or |= flags;
		if (m->is_new[r]) {
			m->first[slot] = start;
			m->last[slot] = end;
		}
		m->packets[slot] += packets;
		m->octets[slot] += octets;
		if (start < m->first[slot])
			m->first[slot] = start;
		if (end > m->last[slot])
			m->last[slot] = end;
		m->flags[slot] |= flags;
		if (out_if)
			m->out_if[slot] = out_if;
	}
	m->merged = merged;
	m->packets_sum = packets_sum;
	m->octets_sum = octets_sum;
	m->flags_or = flags_or;
}

/* A C-contiguous buffer of native-order integer items of `size` bytes, got with `flags`;
 * -1 on error. */
static int get_int_buffer(PyObject *obj, Py_ssize_t size, const char *name, Py_buffer *view,
			  int flags)
{
	if (PyObject_GetBuffer(obj, view, flags | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
		return -1;
	const char *fmt = view->format ? view->format : "B";
	char code = fmt[0] ? fmt[strlen(fmt) - 1] : 'B';
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	const char *foreign = ">!"; /* struct-module prefixes of the other byte order */
#else
	const char *foreign = "<";
#endif

	if (view->itemsize != size || !strchr("bBhHiIlLqQnN", code)
	    || (size > 1 && fmt[0] && strchr(foreign, fmt[0]))) {	/* integer columns */
		PyErr_Format(PyExc_ValueError, "%s: need native-order integer items of %zd bytes, got '%s' of %zd",
			     name, size, fmt, view->itemsize);
		PyBuffer_Release(view);
		return -1;
	}
	return 0;
}

/* A writable C-contiguous column of items of `size` bytes. */
static int get_column(PyObject *obj, Py_ssize_t size, const char *name, Py_buffer *view)
{
	return get_int_buffer(obj, size, name, view, PyBUF_WRITABLE);
}

PyDoc_STRVAR(merge_records_doc,
	     "merge_records(records, stride, fields, slots, new, packets, octets, first, last,\n"
	     "              flags, out_if) -> (merged, packets, octets, flags)\n\n"
	     "Add each row of `records` (rows of `stride` bytes) into slot slots[r] of the value\n"
	     "columns, in row order (a slot -1 is skipped): packets and octets (uint64) summed,\n"
	     "first/last (int64) the earliest start and latest end (a row with new[r] starts its\n"
	     "slot), flags (uint8) ORed, a non-zero out_if (uint32) replaces the slot's. `fields`:\n"
	     "byte offsets in a row of packets (u8), octets (u8), start (i8), end (i8), tcp flags\n"
	     "(u1) and out_if (u4), native order. slots/new: lookup()'s result for the rows.\n"
	     "Every slot must lie inside every column and `slots` share no byte with a column\n"
	     "(ValueError, nothing changed). Returns the totals of the rows merged (slot >= 0):\n"
	     "their count, the sums of their packets and octets (modulo 2**64) and the OR of\n"
	     "their tcp flags.");

static PyObject *module_merge_records(PyObject *Py_UNUSED(m), PyObject *args)
{
	PyObject *rec_obj, *fields, *slots_obj, *new_obj, *cols[NCOLS], *result = NULL;
	Py_ssize_t stride;
	Py_buffer rec, sl = {0}, nw = {0}, col[NCOLS] = {{0}};
	struct merge mg = {0};
	size_t rows = SIZE_MAX;
	int got = 0;

	if (!PyArg_ParseTuple(args, "OnO!OOOOOOOO:merge_records", &rec_obj, &stride,
			      &PyTuple_Type, &fields, &slots_obj, &new_obj, &cols[0], &cols[1],
			      &cols[2], &cols[3], &cols[4], &cols[5]))
		return NULL;
	if (PyTuple_GET_SIZE(fields) != NCOLS)
		return PyErr_Format(PyExc_ValueError, "fields: need %d offsets", NCOLS);
	if (get_records(rec_obj, stride, &rec) < 0)
		return NULL;
	mg.rows = rec.buf;
	mg.stride = (size_t)stride;
	mg.n = (size_t)(rec.len / stride);
	for (int i = 0; i < NCOLS; i++) {
		Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(fields, i));
		if (off == -1 && PyErr_Occurred())
			goto out;
		if (off < 0 || off > stride - col_size[i]) {	/* no overflow for huge offsets */
			PyErr_Format(PyExc_ValueError, "fields: %s at %zd is outside a %zd-byte row",
				     col_name[i], off, stride);
			goto out;
		}
		mg.field[i] = off;
	}
	if (get_int64_slots(slots_obj, &sl) < 0)
		goto out;
	if (PyObject_GetBuffer(new_obj, &nw, PyBUF_C_CONTIGUOUS) < 0)
		goto out;
	if ((size_t)sl.len != mg.n * 8 || (size_t)nw.len != mg.n) {
		PyErr_Format(PyExc_ValueError, "slots/new: need %zu int64 and %zu bool rows", mg.n,
			     mg.n);
		goto out;
	}
	for (got = 0; got < NCOLS; got++) {
		size_t len;
		if (get_column(cols[got], col_size[got], col_name[got], &col[got]) < 0)
			goto out;
		len = (size_t)(col[got].len / col_size[got]);
		rows = len < rows ? len : rows;
		if (overlaps(&sl, &col[got])) {	/* the merge would rewrite checked slots */
			PyErr_Format(PyExc_ValueError, "%s: overlaps slots", col_name[got]);
			got++;
			goto out;
		}
	}
	mg.slots = sl.buf;
	mg.is_new = nw.buf;
	for (size_t r = 0; r < mg.n; r++) {
		if (mg.slots[r] >= 0 && (uint64_t)mg.slots[r] >= rows) {
			PyErr_Format(PyExc_ValueError, "slots: slot %lld (row %zu) is outside the "
				     "columns (%zu rows)", (long long)mg.slots[r], r, rows);
			goto out;
		}
	}
	bind_columns(&mg, col);
	if (mg.n >= NOGIL_ROWS) {
		Py_BEGIN_ALLOW_THREADS
		merge_rows(&mg);
		Py_END_ALLOW_THREADS
	} else {
		merge_rows(&mg);
	}
	result = Py_BuildValue("(KKKB)", (unsigned long long)mg.merged,
			       (unsigned long long)mg.packets_sum, (unsigned long long)mg.octets_sum,
			       (unsigned char)mg.flags_or);
out:
	while (got-- > 0)
		PyBuffer_Release(&col[got]);
	if (nw.obj)
		PyBuffer_Release(&nw);
	if (sl.obj)
		PyBuffer_Release(&sl);
	PyBuffer_Release(&rec);
	return result;
}

/* Copy each slot's values into its row (row r <- slot slots[r]), then, unless `keep`, reset
 * the slots to a free slot's values (0 counters, FREE first/last): the counters of a take,
 * written straight into the rows of a record array instead of gathered into one new array
 * per column and copied into the rows' strided fields after. Two passes: a slot repeated in
 * `slots` is copied whole into each of its rows before any reset. With `keep` (a drain's
 * part, FlowTable.take_drained_records) the columns are reset all at once later. */
static void take_rows(struct merge *m, int keep)
{
	for (size_t r = 0; r < m->n; r++) {
		uint8_t *row = (uint8_t *)m->rows + r * m->stride;
		int64_t slot = m->slots[r], next;

		if (r + AHEAD < m->n) {
			next = m->slots[r + AHEAD];
			__builtin_prefetch(&m->packets[next]);
			__builtin_prefetch(&m->octets[next]);
			__builtin_prefetch(&m->first[next]);
			__builtin_prefetch(&m->last[next]);
		}
		memcpy(row + m->field[COL_PACKETS], &m->packets[slot], 8);
		memcpy(row + m->field[COL_OCTETS], &m->octets[slot], 8);
		memcpy(row + m->field[COL_FIRST], &m->first[slot], 8);
		memcpy(row + m->field[COL_LAST], &m->last[slot], 8);
		memcpy(row + m->field[COL_OUT_IF], &m->out_if[slot], 4);
		row[m->field[COL_FLAGS]] = m->flags[slot];
	}
	for (size_t r = 0; !keep && r < m->n; r++) {
		int64_t slot = m->slots[r];

		m->packets[slot] = 0;
		m->octets[slot] = 0;
		m->first[slot] = INT64_MAX;
		m->last[slot] = INT64_MAX;
		m->flags[slot] = 0;
		m->out_if[slot] = 0;
	}
}

PyDoc_STRVAR(take_records_doc,
	     "take_records(records, stride, fields, slots, packets, octets, first, last, flags,\n"
	     "             out_if, keep=False) -> None\n\n"
	     "Copy the values of slot slots[r] into row r of `records` (writable rows of `stride`\n"
	     "bytes, at least len(slots) of them; `fields` as merge_records': byte offsets of\n"
	     "packets, octets, start, end, tcp flags and out_if, native order), then reset every\n"
	     "slot of `slots` to a free slot's values: 0 counters, flags and out_if, first and\n"
	     "last 2**63 - 1; with keep, the slots keep their values (a drain's part: the\n"
	     "columns are reset all at once afterwards). Every slot must lie inside every\n"
	     "column, and `slots` share no byte with `records` or a column (ValueError, nothing\n"
	     "changed).");

static PyObject *module_take_records(PyObject *Py_UNUSED(m), PyObject *args)
{
	PyObject *rec_obj, *fields, *slots_obj, *cols[NCOLS], *result = NULL;
	Py_ssize_t stride;
	Py_buffer rec = {0}, sl = {0}, col[NCOLS] = {{0}};
	struct merge mg = {0};
	size_t rows = SIZE_MAX;
	int got = 0, keep = 0;

	if (!PyArg_ParseTuple(args, "OnO!OOOOOOO|p:take_records", &rec_obj, &stride,
			      &PyTuple_Type, &fields, &slots_obj, &cols[0], &cols[1], &cols[2],
			      &cols[3], &cols[4], &cols[5], &keep))
		return NULL;
	if (PyTuple_GET_SIZE(fields) != NCOLS)
		return PyErr_Format(PyExc_ValueError, "fields: need %d offsets", NCOLS);
	if (stride <= 0)
		return PyErr_Format(PyExc_ValueError, "stride must be positive");
	if (PyObject_GetBuffer(rec_obj, &rec, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
		return NULL;
	for (int i = 0; i < NCOLS; i++) {
		Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(fields, i));
		if (off == -1 && PyErr_Occurred())
			goto out;
		if (off < 0 || off > stride - col_size[i]) {
			PyErr_Format(PyExc_ValueError, "fields: %s at %zd is outside a %zd-byte row",
				     col_name[i], off, stride);
			goto out;
		}
		mg.field[i] = off;
	}
	if (get_int64_slots(slots_obj, &sl) < 0)
		goto out;
	mg.n = (size_t)sl.len / 8;
	if ((size_t)(rec.len / stride) < mg.n) {
		PyErr_Format(PyExc_ValueError, "slots: need int64 slots, at most one per row of "
			     "records (%zd rows)", rec.len / stride);
		goto out;
	}
	/* the slots are checked once, then read while rows and columns are written (without
	 * the GIL): a write into them would turn a checked slot into any number */
	if (overlaps(&sl, &rec)) {
		PyErr_SetString(PyExc_ValueError, "records: overlaps slots");
		goto out;
	}
	for (got = 0; got < NCOLS; got++) {
		size_t len;
		if (get_column(cols[got], col_size[got], col_name[got], &col[got]) < 0)
			goto out;
		len = (size_t)(col[got].len / col_size[got]);
		rows = len < rows ? len : rows;
		if (overlaps(&sl, &col[got])) {
			PyErr_Format(PyExc_ValueError, "%s: overlaps slots", col_name[got]);
			got++;
			goto out;
		}
	}
	mg.slots = sl.buf;
	for (size_t r = 0; r < mg.n; r++) {
		if (mg.slots[r] < 0 || (uint64_t)mg.slots[r] >= rows) {
			PyErr_Format(PyExc_ValueError, "slots: slot %lld (row %zu) is outside the "
				     "columns (%zu rows)", (long long)mg.slots[r], r, rows);
			goto out;
		}
	}
	mg.rows = rec.buf;
	mg.stride = (size_t)stride;
	bind_columns(&mg, col);
	if (mg.n >= NOGIL_ROWS) {
		Py_BEGIN_ALLOW_THREADS
		take_rows(&mg, keep);
		Py_END_ALLOW_THREADS
	} else {
		take_rows(&mg, keep);
	}
	result = Py_NewRef(Py_None);
out:
	while (got-- > 0)
		PyBuffer_Release(&col[got]);
	if (sl.obj)
		PyBuffer_Release(&sl);
	PyBuffer_Release(&rec);
	return result;
}

/* --- finishing taken rows ---------------------------------------------------------------- */

#define MAX_SWAPS 64 /* key fields a row may have swapped (the widest built-in schema has 19;
			    * the cache takes its NumPy path for a wider one: MAX_SWAPS) */

struct finish {
	uint8_t *rows;
	size_t stride, n, nswaps;
	Py_ssize_t swap_at[MAX_SWAPS], swap_len[MAX_SWAPS];
	const uint16_t *masks; /* src_mask << 8 | dst_mask per row */
	const uint8_t *reasons;
	Py_ssize_t src_mask, dst_mask, reason;
};

static void swap_field(uint8_t *p, Py_ssize_t len)
{
	if (len == 2) {
		uint16_t v;
		memcpy(&v, p, 2);
		v = __builtin_bswap16(v);
		memcpy(p, &v, 2);
	} else if (len == 4) {
		uint32_t v;
		memcpy(&v, p, 4);
		v = __builtin_bswap32(v);
		memcpy(p, &v, 4);
	} else {
		uint64_t v;
		memcpy(&v, p, 8);
		v = __builtin_bswap64(v);
		memcpy(p, &v, 8);
	}
}

/* Each row, in one pass: its big-endian key fields to native order, its two mask bytes from
 * the masks column, its end reason. */
static void finish_rows(const struct finish *f)
{
	for (size_t r = 0; r < f->n; r++) {
		uint8_t *row = f->rows + r * f->stride;
		for (size_t k = 0; k < f->nswaps; k++)
			swap_field(row + f->swap_at[k], f->swap_len[k]);
		row[f->src_mask] = (uint8_t)(f->masks[r] >> 8);
		row[f->dst_mask] = (uint8_t)(f->masks[r] & 0xFF);
		row[f->reason] = f->reasons[r];
	}
}

/* A row offset from `obj` for a field of `len` bytes in a `stride`-byte row; -1 on error. */
static Py_ssize_t row_offset(PyObject *obj, Py_ssize_t len, Py_ssize_t stride, const char *name)
{
	Py_ssize_t off = PyLong_AsSsize_t(obj);

	if (off == -1 && PyErr_Occurred())
		return -1;
	if (off < 0 || off > stride - len) {
		PyErr_Format(PyExc_ValueError, "%s: %zd bytes at %zd are outside a %zd-byte row", name,
			     len, off, stride);
		return -1;
	}
	return off;
}

/* The (offset, width) pairs of `swaps` into f; -1 on error. */
static int get_swaps(PyObject *swaps, Py_ssize_t stride, struct finish *f)
{
	Py_ssize_t n = PyTuple_GET_SIZE(swaps);

	if (n > MAX_SWAPS) {
		PyErr_Format(PyExc_ValueError, "swaps: at most %d fields", MAX_SWAPS);
		return -1;
	}
	for (Py_ssize_t k = 0; k < n; k++) {
		PyObject *pair = PyTuple_GET_ITEM(swaps, k);
		Py_ssize_t len;
		if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
			PyErr_SetString(PyExc_ValueError, "swaps: need (offset, width) pairs");
			return -1;
		}
		len = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 1));
		if (len == -1 && PyErr_Occurred())
			return -1;
		if (len != 2 && len != 4 && len != 8) {
			PyErr_Format(PyExc_ValueError, "swaps: width %zd is not 2, 4 or 8", len);
			return -1;
		}
		f->swap_len[k] = len;
		f->swap_at[k] = row_offset(PyTuple_GET_ITEM(pair, 0), len, stride, "swaps");
		if (f->swap_at[k] < 0)
			return -1;
	}
	f->nswaps = (size_t)n;
	return 0;
}

/* A read-only C-contiguous buffer of integer items of `size` bytes; -1 on error. */
static int get_items(PyObject *obj, Py_ssize_t size, const char *name, Py_buffer *view)
{
	return get_int_buffer(obj, size, name, view, 0);
}

PyDoc_STRVAR(finish_rows_doc,
	     "finish_rows(records, stride, swaps, masks, mask_fields, reasons, reason_field)\n"
	     "            -> None\n\n"
	     "For each row r < len(masks) of `records` (writable rows of `stride` bytes), in one\n"
	     "pass: byteswap the fields `swaps` ((offset, width) pairs, widths 2, 4 or 8: the\n"
	     "packed key's big-endian fields to native order), write masks[r] >> 8 and\n"
	     "masks[r] & 0xFF (uint16) at the byte offsets `mask_fields` (src, dst) and\n"
	     "reasons[r] (uint8, as many) at `reason_field`. Offsets outside a row, too few\n"
	     "rows, or masks or reasons sharing a byte with `records` raise ValueError, nothing\n"
	     "changed.");

static PyObject *module_finish_rows(PyObject *Py_UNUSED(m), PyObject *args)
{
	PyObject *rec_obj, *swaps, *masks_obj, *reasons_obj, *mask_src, *mask_dst, *reason_obj;
	PyObject *result = NULL;
	Py_ssize_t stride;
	Py_buffer rec = {0}, mv = {0}, rv = {0};
	struct finish f = {0};

	if (!PyArg_ParseTuple(args, "OnO!O(OO)OO:finish_rows", &rec_obj, &stride, &PyTuple_Type,
			      &swaps, &masks_obj, &mask_src, &mask_dst, &reasons_obj, &reason_obj))
		return NULL;
	if (stride <= 0)
		return PyErr_Format(PyExc_ValueError, "stride must be positive");
	if (get_swaps(swaps, stride, &f) < 0
	    || (f.src_mask = row_offset(mask_src, 1, stride, "mask_fields")) < 0
	    || (f.dst_mask = row_offset(mask_dst, 1, stride, "mask_fields")) < 0
	    || (f.reason = row_offset(reason_obj, 1, stride, "reason_field")) < 0)
		return NULL;
	if (PyObject_GetBuffer(rec_obj, &rec, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
		return NULL;
	if (get_items(masks_obj, 2, "masks", &mv) < 0 || get_items(reasons_obj, 1, "reasons", &rv) < 0)
		goto out;
	f.n = (size_t)(mv.len / 2);
	if ((size_t)rv.len != f.n || (size_t)(rec.len / stride) < f.n) {
		PyErr_Format(PyExc_ValueError, "need as many reasons as masks (%zu, got %zd) and "
			     "as many rows (got %zd)", f.n, rv.len, rec.len / stride);
		goto out;
	}
	if (overlaps(&mv, &rec) || overlaps(&rv, &rec)) {
		PyErr_SetString(PyExc_ValueError, "records: overlaps masks or reasons");
		goto out;
	}
	f.rows = rec.buf;
	f.stride = (size_t)stride;
	f.masks = mv.buf;
	f.reasons = rv.buf;
	if (f.n >= NOGIL_ROWS) {
		Py_BEGIN_ALLOW_THREADS
		finish_rows(&f);
		Py_END_ALLOW_THREADS
	} else {
		finish_rows(&f);
	}
	result = Py_NewRef(Py_None);
out:
	if (rv.obj)
		PyBuffer_Release(&rv);
	if (mv.obj)
		PyBuffer_Release(&mv);
	PyBuffer_Release(&rec);
	return result;
}

static PyMethodDef module_methods[] = {
	{"siphash", (PyCFunction)module_siphash, METH_O, siphash_doc},
	{"merge_records", (PyCFunction)module_merge_records, METH_VARARGS, merge_records_doc},
	{"hash_select", (PyCFunction)module_hash_select, METH_VARARGS, hash_select_doc},
	{"rewrite_keys", (PyCFunction)module_rewrite_keys, METH_VARARGS, rewrite_keys_doc},
	{"take_records", (PyCFunction)module_take_records, METH_VARARGS, take_records_doc},
	{"finish_rows", (PyCFunction)module_finish_rows, METH_VARARGS, finish_rows_doc},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef flowindex_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "_flowindex",
	.m_doc = "Fixed-width flow key -> slot number hash index in C (see _flowindex.c).",
	.m_size = -1,
	.m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__flowindex(void)
{
	uint64_t seed[2];
	PyObject *m;

	if (getrandom(seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
		return PyErr_SetFromErrno(PyExc_OSError);
	sip_k0 = seed[0];
	sip_k1 = seed[1];
	crc_init();
	if (PyType_Ready(&FlowIndexType) < 0)
		return NULL;
	m = PyModule_Create(&flowindex_module);
	if (!m)
		return NULL;
	if (PyModule_AddObjectRef(m, "FlowIndex", (PyObject *)&FlowIndexType) < 0
	    || PyModule_AddIntConstant(m, "MAX_FLOWS", MAX_FLOWS) < 0
	    || PyModule_AddIntConstant(m, "MAX_SWAPS", MAX_SWAPS) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
