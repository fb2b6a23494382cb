/* SPDX-License-Identifier: MIT */
/*
 * farmem.c - owns the far-memory device: a uhmm driver-owned device-private
 * pool (only the public API of uhmm.h) whose pages live on uhmm-memd
 * servers, the map from pool index to server memory (slabs), replication,
 * the read-ahead of CPU faults, and the application API of uhmm_farmem.h.
 *
 * Pool index -> server.  The pool's index space is cut into slabs of
 * SLAB_PAGES pages (2 MiB).  Slab s lives on servers (s + r) % nservers for
 * r < replicas (skipping servers that failed), allocated from them the
 * first time a page of the slab is written, freed when its last page is
 * freed (lazily, at the next place/fetch/stats/close) and at close.
 *
 * Copies.  copy(TO_DEV) puts each run (split at slab bounds) to every live
 * replica; copy(TO_RAM) reads it from the first live replica and, if that
 * server fails during the read, again from the next one.  Both complete
 * before copy() returns (fence 0): the one UCX worker is progressed by the
 * thread that waits, under the transport lock, so a deferred fence would
 * only move the same wait elsewhere (docs/farmem.md).  A copy with no live
 * replica fails: uhmm leaves those pages where they are, migrate_to_ram
 * returns -EIO and the faulting thread gets SIGBUS, with one log line.
 *
 * Read-ahead: a fault takes back 1 page, doubling to a whole 2 MiB block
 * while faults stream forward (fault_window); a stream that reaches a huge
 * device page (a THP placed whole) takes it back as one THP (huge_block).
 * prefetch() queues ranges to one prefetch thread; repair() re-replicates
 * slabs after a server failure.
 *
 * Locks: fm->x's transport lock (fmx_lock) protects the slab table, the
 * server table, slabs_repaired and the transfers; pf_lock (a leaf) the
 * prefetch queue; counters are atomics.  No uhmm call is made with either
 * held.  Order: none nests in the other.
 */
#define _GNU_SOURCE
#include "xport.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uhmm.h>
#include <uhmm_farmem.h>
#include <sys/mman.h>

#define PAGE          UHMM_PAGE_SIZE
#define SLAB_PAGES    512ULL
#define CHUNK_PAGES   512ULL     /* fetch/evict: one migration per 2 MiB */
/* place: one migration per 16 MiB, so that uhmm hands copy() 8 runs of 2 MiB
 * in one call and one flush covers them (a 2 MiB put and its flush: 1.1 ms
 * over TCP RMA; the floor's pipelined puts run 5-8x faster) */
#define PLACE_PAGES   4096ULL
#define PREFETCH_MAX  512ULL     /* read-ahead window limit, pages (2 MiB) */
#define ZERO_BYTES    (256U << 10)
#define MAX_REPLICAS  2
#define NBUCKETS      (64 * 8)

struct slab_rep {
	int srv;                  /* index in fm->srv, -1 = none */
	struct fmx_region reg;
};

struct slab {
	uint8_t nrep;
	bool logged;              /* a lost-data line was printed for it */
	struct slab_rep rep[MAX_REPLICAS];
	_Atomic uint64_t live;    /* pages of the slab in use (written) */
};

struct srvinfo {
	struct fmx_srv *s;
	char name[64];
	bool reported;            /* its failure was logged */
	uint64_t slabs;
	_Atomic uint64_t bytes_out, bytes_in;
};

struct pf_req {
	struct pf_req *next;
	void *addr;
	size_t len;
};

struct uhmm_farmem {
	struct fmx *x;
	unsigned int nsrv, replicas;
	struct srvinfo srv[UHMM_FARMEM_MAX_SERVERS];
	struct uhmm_devmem *pool;
	uint64_t max_pages, nslabs;
	struct slab *slabs;       /* protected by the transport lock */
	_Atomic uint64_t *written; /* one bit per pool index: holds data on the servers */
	_Atomic uint64_t gc_pending;
	_Atomic int chunk_index_ok;  /* 0 unknown, 1 chunk walk == uhmm's index, 2 not */
	_Atomic uint64_t next_fault, window;
	bool quiet, closed;
	_Atomic uint64_t pages_out, pages_in, bytes_out, bytes_in;
	_Atomic uint64_t faults, fault_pages, fault_errors, fault_max;
	uint64_t slabs_repaired;  /* protected by the transport lock */
	/* asynchronous prefetch: one thread, started on first use */
	pthread_mutex_t pf_lock;  /* protects the queue and the flags below */
	pthread_cond_t pf_cond;
	struct pf_req *pf_head, **pf_tail;
	bool pf_started, pf_stop;
	pthread_t pf_thread;
	_Atomic uint64_t pf_pending;  /* ranges queued or being brought back */
	_Atomic uint64_t hist[NBUCKETS];
};

static _Alignas(4096) const uint8_t g_zero[ZERO_BYTES];

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- latency histogram: 8 sub-buckets per power of two ------------------- */

static unsigned bucket_of(uint64_t ns)
{
	if (ns < 8)
		return (unsigned)ns;
	unsigned lg = 63 - (unsigned)__builtin_clzll(ns);
	unsigned sub = (unsigned)((ns >> (lg - 3)) & 7);
	unsigned b = lg * 8 + sub;
	return b < NBUCKETS ? b : NBUCKETS - 1;
}

static uint64_t bucket_value(unsigned b)
{
	if (b < 8)
		return b;
	unsigned lg = b / 8, sub = b % 8;
	return (8ULL + sub) << (lg - 3);
}

static uint64_t percentile(struct uhmm_farmem *fm, double q)
{
	uint64_t total = 0, h[NBUCKETS];
	for (unsigned i = 0; i < NBUCKETS; i++)
		total += h[i] = atomic_load_explicit(&fm->hist[i], memory_order_relaxed);
	if (!total)
		return 0;
	uint64_t want = (uint64_t)(q * (double)total), acc = 0;
	if (want >= total)
		want = total - 1;
	for (unsigned i = 0; i < NBUCKETS; i++) {
		acc += h[i];
		if (acc > want)
			return bucket_value(i);
	}
	return 0;
}

/* ---- slabs (transport lock held) ------------------------------------------ */

static bool srv_ok(struct uhmm_farmem *fm, int i)
{
	return i >= 0 && fm->srv[i].s && fmx_alive(fm->srv[i].s);
}

/* Log a server failure once. */
static void note_failures(struct uhmm_farmem *fm)
{
	for (unsigned i = 0; i < fm->nsrv; i++) {
		struct srvinfo *si = &fm->srv[i];
		if (si->reported || !si->s || fmx_alive(si->s))
			continue;
		si->reported = true;
		unsigned alive = 0;
		for (unsigned j = 0; j < fm->nsrv; j++)
			alive += srv_ok(fm, (int)j);
		if (!fm->quiet)
			fprintf(stderr, "uhmm_farmem: server %s failed (%s): %s (%u of %u servers left)\n",
				si->name, fmx_dead_reason(si->s),
				fm->replicas > 1 ? "running degraded" : "its pages are lost",
				alive, fm->nsrv);
	}
}

static int slab_alloc(struct uhmm_farmem *fm, uint64_t sidx)
{
	struct slab *sl = &fm->slabs[sidx];
	if (sl->nrep) {
		for (unsigned r = 0; r < sl->nrep; r++)
			if (srv_ok(fm, sl->rep[r].srv))
				return 0;
		return -EIO;  /* allocated, but every replica is gone */
	}
	int rc = -EIO;
	for (unsigned k = 0; k < fm->nsrv && sl->nrep < fm->replicas; k++) {
		int i = (int)((sidx + k) % fm->nsrv);
		if (!srv_ok(fm, i))
			continue;
		struct slab_rep *sr = &sl->rep[sl->nrep];
		int arc = fmx_alloc(fm->srv[i].s, SLAB_PAGES, &sr->reg);
		if (arc) {
			rc = arc == -ENOMEM ? -ENOSPC : -EIO;
			continue;
		}
		sr->srv = i;
		sl->nrep++;
		fm->srv[i].slabs++;
	}
	note_failures(fm);
	return sl->nrep ? 0 : rc;
}

static void slab_release(struct uhmm_farmem *fm, uint64_t sidx)
{
	struct slab *sl = &fm->slabs[sidx];
	for (unsigned r = 0; r < sl->nrep; r++) {
		struct slab_rep *sr = &sl->rep[r];
		if (sr->srv >= 0 && fm->srv[sr->srv].s) {
			fmx_free(fm->srv[sr->srv].s, &sr->reg);
			fm->srv[sr->srv].slabs--;
		}
	}
	sl->nrep = 0;
	sl->logged = false;
}

/* Free the server memory of slabs with no live page left. */
static void slab_gc(struct uhmm_farmem *fm)
{
	if (!atomic_exchange(&fm->gc_pending, 0))
		return;
	for (uint64_t s = 0; s < fm->nslabs; s++)
		if (fm->slabs[s].nrep && atomic_load(&fm->slabs[s].live) == 0)
			slab_release(fm, s);
}

/* ---- the driver callbacks ----------------------------------------------- */

struct piece {
	uint64_t sidx, off;       /* slab, byte offset inside it */
	uint8_t *host;
	uint64_t len;
	unsigned rep;             /* TO_RAM: the replica being read */
	bool clear;
};

static int put_piece(struct uhmm_farmem *fm, struct piece *p, unsigned *issued)
{
	struct slab *sl = &fm->slabs[p->sidx];
	*issued = 0;
	for (unsigned r = 0; r < sl->nrep; r++) {
		int i = sl->rep[r].srv;
		if (!srv_ok(fm, i))
			continue;
		int rc = 0;
		if (p->clear) {
			for (uint64_t o = 0; o < p->len && !rc; o += ZERO_BYTES) {
				uint64_t n = p->len - o < ZERO_BYTES ? p->len - o : ZERO_BYTES;
				rc = fmx_put(fm->srv[i].s, &sl->rep[r].reg, p->off + o, g_zero, n);
			}
		} else {
			rc = fmx_put(fm->srv[i].s, &sl->rep[r].reg, p->off, p->host, p->len);
		}
		if (rc == 0) {
			(*issued)++;
			atomic_fetch_add(&fm->srv[i].bytes_out, p->len);
			atomic_fetch_add(&fm->bytes_out, p->len);
		}
	}
	return *issued ? 0 : -EIO;
}

/* Start reading p from replica p->rep or a later one; -EIO if none is left. */
static int get_piece(struct uhmm_farmem *fm, struct piece *p)
{
	struct slab *sl = &fm->slabs[p->sidx];
	for (; p->rep < sl->nrep; p->rep++) {
		int i = sl->rep[p->rep].srv;
		if (!srv_ok(fm, i))
			continue;
		if (fmx_get(fm->srv[i].s, &sl->rep[p->rep].reg, p->off, p->host, p->len) == 0)
			return 0;
	}
	return -EIO;
}

static void check_chunk_index(struct uhmm_farmem *fm, uint64_t page, uint64_t want);

static int fm_copy(struct uhmm_devmem *mem, enum uhmm_copy_dir dir,
		   const struct uhmm_copy_run *runs, uint64_t nruns, uint64_t *fence)
{
	struct uhmm_farmem *fm = uhmm_devmem_driver_data(mem);
	*fence = 0;
	if (fm->closed && dir == UHMM_COPY_TO_DEV)
		return -ESHUTDOWN;
	/* split runs at slab bounds */
	uint64_t np = 0;
	for (uint64_t k = 0; k < nruns; k++) {
		uint64_t a = runs[k].dev_index, b = a + runs[k].npages;
		np += (b - 1) / SLAB_PAGES - a / SLAB_PAGES + 1;
	}
	struct piece stackp[16], *ps = np <= 16 ? stackp : malloc(np * sizeof(*ps));
	if (!ps)
		return -ENOMEM;
	np = 0;
	for (uint64_t k = 0; k < nruns; k++) {
		uint64_t idx = runs[k].dev_index, left = runs[k].npages;
		uint8_t *host = (uint8_t *)(uintptr_t)runs[k].host;
		bool clear = dir == UHMM_COPY_TO_DEV && (runs[k].flags & UHMM_COPY_RUN_CLEAR);
		while (left) {
			uint64_t in = SLAB_PAGES - idx % SLAB_PAGES;
			uint64_t n = in < left ? in : left;
			ps[np++] = (struct piece){ .sidx = idx / SLAB_PAGES,
						   .off = (idx % SLAB_PAGES) * PAGE,
						   .host = clear ? NULL : host, .len = n * PAGE,
						   .clear = clear };
			idx += n;
			left -= n;
			if (host)
				host += n * PAGE;
		}
	}
	if (dir == UHMM_COPY_TO_DEV && nruns && fm->pool)
		check_chunk_index(fm, runs[0].page, runs[0].dev_index);
	int rc = 0;
	uint64_t pages = 0;
	fmx_lock(fm->x);
	for (uint64_t k = 0; k < np && !rc; k++) {
		if (ps[k].sidx >= fm->nslabs) {
			rc = -EINVAL;
			break;
		}
		pages += ps[k].len / PAGE;
		if (dir == UHMM_COPY_TO_DEV) {
			unsigned issued;
			rc = slab_alloc(fm, ps[k].sidx);
			if (!rc)
				rc = put_piece(fm, &ps[k], &issued);
		} else {
			if (!fm->slabs[ps[k].sidx].nrep)
				rc = -EIO;  /* never written: must not happen */
			else
				rc = get_piece(fm, &ps[k]);
		}
	}
	if (!rc) {
		/* complete; a failed server's reads are redone from the next replica */
		for (;;) {
			int wrc = fmx_wait(fm->x);
			note_failures(fm);
			if (!wrc)
				break;
			bool again = false;
			for (uint64_t k = 0; k < np && !rc; k++) {
				struct slab *sl = &fm->slabs[ps[k].sidx];
				if (dir == UHMM_COPY_TO_DEV) {
					bool any = false;
					for (unsigned r = 0; r < sl->nrep; r++)
						any |= srv_ok(fm, sl->rep[r].srv);
					if (!any)
						rc = -EIO;
				} else if (!srv_ok(fm, sl->rep[ps[k].rep].srv)) {
					ps[k].rep++;
					rc = get_piece(fm, &ps[k]);
					again = true;
				}
			}
			if (rc || !again)
				break;
		}
	} else {
		fmx_wait(fm->x);  /* what was started must be done before we return */
		note_failures(fm);
	}
	if (!rc && dir == UHMM_COPY_TO_DEV)
		for (uint64_t k = 0; k < np; k++) {
			uint64_t i0 = ps[k].sidx * SLAB_PAGES + ps[k].off / PAGE;
			uint64_t added = 0;
			for (uint64_t i = i0; i < i0 + ps[k].len / PAGE; i++) {
				uint64_t bit = 1ULL << (i & 63);
				if (!(atomic_fetch_or(&fm->written[i >> 6], bit) & bit))
					added++;
			}
			atomic_fetch_add(&fm->slabs[ps[k].sidx].live, added);
		}
	if (!rc && dir == UHMM_COPY_TO_RAM)
		for (uint64_t k = 0; k < np; k++) {
			int i = fm->slabs[ps[k].sidx].rep[ps[k].rep].srv;
			atomic_fetch_add(&fm->srv[i].bytes_in, ps[k].len);
			atomic_fetch_add(&fm->bytes_in, ps[k].len);
		}
	fmx_unlock(fm->x);
	if (ps != stackp)
		free(ps);
	if (!rc) {
		if (dir == UHMM_COPY_TO_DEV)
			atomic_fetch_add(&fm->pages_out, pages);
		else
			atomic_fetch_add(&fm->pages_in, pages);
	}
	return rc;
}

/*
 * The pool index of a page being freed.  uhmm_devmem_page_index() answers
 * for live pages only, and in page_free the last reference is gone; the
 * fallback walks the pool's chunks (index = pages of the chunks before +
 * offset in the chunk), which copy() checked against uhmm's own index
 * (fm->chunk_index_ok).  A thread-local cache makes it O(1) in a stream.
 */
static int64_t free_index(struct uhmm_farmem *fm, struct uhmm_devmem *mem, uint64_t page)
{
	int64_t idx = uhmm_devmem_page_index(page);
	if (idx >= 0 || atomic_load(&fm->chunk_index_ok) != 1)
		return idx;
	static __thread const struct uhmm_devmem *c_mem;
	static __thread uint64_t c_first, c_count, c_base;
	if (c_mem == mem && page >= c_first && page < c_first + c_count)
		return (int64_t)(c_base + page - c_first);
	uint64_t first, count, base = 0;
	for (uint64_t c = 0; uhmm_devmem_chunk(mem, c, &first, &count) == 0; c++) {
		if (page >= first && page < first + count) {
			c_mem = mem;
			c_first = first;
			c_count = count;
			c_base = base;
			return (int64_t)(base + page - first);
		}
		base += count;
	}
	return -EINVAL;
}

/* Whether the chunk walk gives uhmm's index for a live page: 1 yes, 2 no. */
static void check_chunk_index(struct uhmm_farmem *fm, uint64_t page, uint64_t want)
{
	if (atomic_load(&fm->chunk_index_ok))
		return;
	uint64_t first, count, base = 0;
	int ok = 2;
	for (uint64_t c = 0; uhmm_devmem_chunk(fm->pool, c, &first, &count) == 0; c++) {
		if (page >= first && page < first + count) {
			ok = base + page - first == want ? 1 : 2;
			break;
		}
		base += count;
	}
	atomic_store(&fm->chunk_index_ok, ok);
}

static void fm_page_free(struct uhmm_devmem *mem, uint64_t page)
{
	struct uhmm_farmem *fm = uhmm_devmem_driver_data(mem);
	int64_t idx = free_index(fm, mem, page);
	if (idx < 0 || (uint64_t)idx / SLAB_PAGES >= fm->nslabs)
		return;
	/* only a page whose data went out counts (a failed copy's page did not) */
	uint64_t bit = 1ULL << ((uint64_t)idx & 63);
	if (!(atomic_fetch_and(&fm->written[(uint64_t)idx >> 6], ~bit) & bit))
		return;
	struct slab *sl = &fm->slabs[(uint64_t)idx / SLAB_PAGES];
	if (atomic_fetch_sub(&sl->live, 1) == 1)
		atomic_store(&fm->gc_pending, 1);
}

/*
 * Whether the page at addr is part of an unsplit huge device page that
 * holds its whole 2 MiB block in order (a THP that was placed
 * whole: place migrates THPs as compound entries).
 */
static bool huge_block(uint64_t addr, uint64_t page)
{
	uint64_t blk = addr & ~(SLAB_PAGES * PAGE - 1), k = (addr - blk) / PAGE;
	return page >= k && uhmm_page_order(page - k) == UHMM_HUGE_ORDER &&
	       uhmm_page_addr(page - k) == blk;
}

/*
 * Pages a fault at addr takes back: 1, doubling up to PREFETCH_MAX (a whole
 * 2 MiB block) while the faults stream forward, never past the 2 MiB block.
 * A fault counts as streaming when it lands inside the window after the
 * last one ([next_fault, next_fault + last window)): pages of the window
 * that were already in RAM are skipped by the migration, so the next fault
 * of a forward scan may come a little after next_fault.
 */
static uint64_t fault_window(struct uhmm_farmem *fm, uint64_t addr)
{
	uint64_t w = 1;
	uint64_t next = atomic_load_explicit(&fm->next_fault, memory_order_relaxed);
	uint64_t last = atomic_load_explicit(&fm->window, memory_order_relaxed);
	if (next && addr >= next && addr < next + (last ? last : 1) * PAGE) {
		w = last * 2;
		w = w > PREFETCH_MAX ? PREFETCH_MAX : w ? w : 1;
	}
	uint64_t block_left = (((addr >> 21) + 1) << 21) - addr;
	uint64_t span = w;
	if (w * PAGE > block_left)
		w = block_left / PAGE;
	/* the stream goes on in the next block with the window it had */
	atomic_store_explicit(&fm->window, span, memory_order_relaxed);
	atomic_store_explicit(&fm->next_fault, addr + w * PAGE, memory_order_relaxed);
	return w;
}

/*
 * One migration to RAM of [start, start + n pages) for a fault; returns
 * whether the fault page came back and adds the pages moved to
 * fault_pages. The count goes in before finalize: finalize maps the
 * fault page, and the faulting thread may run on (and read the stats) the
 * moment it is mapped, before this thread returns.
 */
static int back_to_ram(struct uhmm_farmem *fm, uint64_t start, uint64_t n, uint64_t fault_page)
{
	uint64_t src[PREFETCH_MAX], dst[PREFETCH_MAX];
	struct uhmm_migrate m = {
		.start = start, .end = start + n * PAGE, .src = src, .dst = dst,
		.pgmap_owner = fm, .flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE |
					    (n == SLAB_PAGES ? UHMM_MIGRATE_SELECT_COMPOUND : 0),
		.fault_page = fault_page,
	};
	int rc = uhmm_migrate_vma_setup(&m);
	if (rc)
		return rc;
	long got = m.cpages ? uhmm_migrate_copy(fm->pool, src, dst, m.npages) : 0;
	bool first_ok = !(src[0] & UHMM_MIGRATE_PFN_MIGRATE) || dst[0];
	uhmm_migrate_vma_pages(&m);
	if (got > 0)
		atomic_fetch_add(&fm->fault_pages, (uint64_t)got);
	uhmm_migrate_vma_finalize(&m);
	if (!first_ok)
		return got < 0 ? (int)got : -EIO;
	return 0;
}

static void log_lost(struct uhmm_farmem *fm, uint64_t addr, uint64_t page)
{
	int64_t idx = uhmm_devmem_page_index(page);
	fmx_lock(fm->x);
	const char *names = "?", *why = "";
	char buf[200] = "";
	bool first = true;
	if (idx >= 0 && (uint64_t)idx / SLAB_PAGES < fm->nslabs) {
		struct slab *sl = &fm->slabs[(uint64_t)idx / SLAB_PAGES];
		if (sl->logged) {
			fmx_unlock(fm->x);
			return;
		}
		sl->logged = true;
		size_t o = 0;
		for (unsigned r = 0; r < sl->nrep; r++) {
			int i = sl->rep[r].srv;
			o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%s", r ? "," : "",
					      fm->srv[i].name);
			if (first && fm->srv[i].s) {
				why = fmx_dead_reason(fm->srv[i].s);
				first = false;
			}
			if (o >= sizeof(buf))
				break;
		}
		names = buf;
	}
	fmx_unlock(fm->x);
	fprintf(stderr, "uhmm_farmem: SIGBUS at 0x%llx: pages [0x%llx, 0x%llx) have no live replica "
		"(server %s: %s)\n", (unsigned long long)addr, (unsigned long long)addr,
		(unsigned long long)(addr + PAGE), names, why[0] ? why : "failed");
}

static int fm_migrate_to_ram(struct uhmm_devmem *mem, const struct uhmm_fault *vmf)
{
	struct uhmm_farmem *fm = uhmm_devmem_driver_data(mem);
	uint64_t t0 = now_ns();
	/* counted first, with the pages before finalize (see back_to_ram):
	 * a thread that got its page sees its fault in the stats; only its
	 * latency, taken after finalize, may land in the histogram later */
	atomic_fetch_add(&fm->faults, 1);
	uint64_t w = fault_window(fm, vmf->addr), at = vmf->addr;
	if (w > 1 && huge_block(vmf->addr, vmf->page)) {
		/* a stream reaching a whole huge page: its 2 MiB as one THP */
		at &= ~(SLAB_PAGES * PAGE - 1);
		w = SLAB_PAGES;
		atomic_store_explicit(&fm->next_fault, at + w * PAGE, memory_order_relaxed);
	}
	int rc = back_to_ram(fm, at, w, vmf->page);
	if (rc == -EIO && w > 1)  /* a lost page in the window: the fault page alone */
		rc = back_to_ram(fm, vmf->addr, 1, vmf->page);
	uint64_t dt = now_ns() - t0;
	atomic_fetch_add_explicit(&fm->hist[bucket_of(dt)], 1, memory_order_relaxed);
	uint64_t mx = atomic_load(&fm->fault_max);
	while (dt > mx && !atomic_compare_exchange_weak(&fm->fault_max, &mx, dt))
		;
	if (rc) {
		atomic_fetch_add(&fm->fault_errors, 1);
		if (rc == -EIO && !fm->quiet)
			log_lost(fm, vmf->addr, vmf->page);
	}
	return rc;
}

static const struct uhmm_devmem_ops fm_ops = {
	.page_free = fm_page_free,
	.migrate_to_ram = fm_migrate_to_ram,
};

static const struct uhmm_devmem_copy_ops fm_copy_ops = {
	.copy = fm_copy,
	.wait = NULL,  /* copy() completes before it returns (see the top) */
};

/* ---- application API -------------------------------------------------------- */

static void fm_teardown(struct uhmm_farmem *fm)
{
	fmx_lock(fm->x);
	for (uint64_t s = 0; s < fm->nslabs; s++)
		if (fm->slabs[s].nrep)
			slab_release(fm, s);
	for (unsigned i = 0; i < fm->nsrv; i++)
		if (fm->srv[i].s) {
			fmx_disconnect(fm->srv[i].s);
			fm->srv[i].s = NULL;
		}
	fmx_unlock(fm->x);
}

/*
 * UCX's memory hooks (libucm), in their default "bistro" mode, patch the
 * code of the process's munmap when libucs loads, and the patched entry
 * calls libc's: uhmm's interposers, which notify devices before an unmap
 * (invariant I2), then never run, in any program that links far memory
 * (measured: a notifier on an unmapped range saw 0 invalidations).  With
 * the hooks off (UCX_MEM_EVENTS=no: far memory registers its own buffers
 * and needs no memory events) uhmm's run.  (Relocation mode keeps them
 * too, but the far-memory tests hung with it.)  The
 * environment must say so before the program starts (UCX reads it as it
 * loads, before any code of ours), so open checks that an munmap still
 * reaches uhmm and refuses otherwise, saying what to set.
 */
static int fm_unmap_seen;

static bool fm_probe_invalidate(struct uhmm_interval_notifier *n,
				const struct uhmm_notifier_range *r, unsigned long seq)
{
	(void)r;
	__atomic_fetch_add(&fm_unmap_seen, 1, __ATOMIC_RELAXED);
	uhmm_interval_set_seq(n, seq);
	return true;
}

static int fm_check_interposition(bool quiet)
{
	static const struct uhmm_interval_notifier_ops ops = { .invalidate = fm_probe_invalidate };
	struct uhmm_interval_notifier n = { 0 };
	void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -ENOMEM;
	int rc = uhmm_interval_notifier_insert(&n, (uintptr_t)p, PAGE, &ops);
	if (rc) {
		munmap(p, PAGE);
		return rc;
	}
	int before = __atomic_load_n(&fm_unmap_seen, __ATOMIC_RELAXED);
	munmap(p, PAGE);
	bool seen = __atomic_load_n(&fm_unmap_seen, __ATOMIC_RELAXED) != before;
	uhmm_interval_notifier_remove(&n);
	if (seen)
		return 0;
	if (!quiet)
		fprintf(stderr, "uhmm_farmem: UCX's memory hooks bypass uhmm's munmap (devices would "
			"not be told of unmaps): start the program with UCX_MEM_EVENTS=no\n");
	return -ENOTSUP;
}

int uhmm_farmem_open(const char *servers, const struct uhmm_farmem_opts *opts,
		     struct uhmm_farmem **out)
{
	static const struct uhmm_farmem_opts defaults;
	if (!servers || !out || !*servers)
		return -EINVAL;
	*out = NULL;
	if (!opts)
		opts = &defaults;
	unsigned replicas = opts->replicas ? opts->replicas : 1;
	bool quiet = opts->flags & UHMM_FARMEM_QUIET;
	if (replicas > MAX_REPLICAS ||
	    (opts->flags & ~(UHMM_FARMEM_QUIET | UHMM_FARMEM_INLINE_FAULTS)) ||
	    opts->path > UHMM_FARMEM_PATH_AM) {
		if (!quiet)
			fprintf(stderr, "uhmm_farmem: bad options (replicas 1 or 2)\n");
		return -EINVAL;
	}
	int irc = fm_check_interposition(quiet);
	if (irc)
		return irc;
	uint8_t tok[FM_TOKEN_MAX];
	uint32_t toklen = 0;
	if (opts->token_file) {
		int rc = fm_read_token_file(opts->token_file, tok, &toklen);
		if (rc) {
			if (!quiet)
				fprintf(stderr, "uhmm_farmem: cannot read the token file '%s': %s\n",
					opts->token_file, strerror(rc == -ENODATA ? EINVAL : -rc));
			return rc == -ENOENT || rc == -EACCES ? rc : -EINVAL;
		}
	} else if (opts->token) {
		size_t n = strlen(opts->token);
		if (n > FM_TOKEN_MAX)
			return -EINVAL;
		memcpy(tok, opts->token, n);
		toklen = (uint32_t)n;
	}
	/* split the list */
	char names[UHMM_FARMEM_MAX_SERVERS][64];
	unsigned n = 0;
	for (const char *p = servers; *p;) {
		const char *e = strchr(p, ',');
		size_t l = e ? (size_t)(e - p) : strlen(p);
		if (l == 0 || l >= sizeof(names[0]) || n == UHMM_FARMEM_MAX_SERVERS) {
			if (!quiet)
				fprintf(stderr, "uhmm_farmem: bad server list '%s'\n", servers);
			return -EINVAL;
		}
		memcpy(names[n], p, l);
		names[n++][l] = 0;
		p = e ? e + 1 : p + l;
	}
	if (replicas > n) {
		if (!quiet)
			fprintf(stderr, "uhmm_farmem: replicas=%u needs at least %u servers (%u given)\n",
				replicas, replicas, n);
		return -EINVAL;
	}
	int rc = uhmm_init();
	if (rc)
		return rc;
	struct uhmm_farmem *fm = calloc(1, sizeof(*fm));
	if (!fm)
		return -ENOMEM;
	fm->replicas = replicas;
	fm->quiet = quiet;
	pthread_mutex_init(&fm->pf_lock, NULL);
	pthread_cond_init(&fm->pf_cond, NULL);
	fm->pf_tail = &fm->pf_head;
	fm->max_pages = opts->max_pages ? opts->max_pages : (1ULL << 20);
	fm->max_pages = (fm->max_pages + SLAB_PAGES - 1) / SLAB_PAGES * SLAB_PAGES;
	fm->nslabs = fm->max_pages / SLAB_PAGES;
	fm->slabs = calloc(fm->nslabs, sizeof(*fm->slabs));
	fm->written = calloc((fm->max_pages + 63) / 64, sizeof(uint64_t));
	if (!fm->slabs || !fm->written) {
		free(fm->slabs);
		free(fm->written);
		free(fm);
		return -ENOMEM;
	}
	if ((rc = fmx_create(&fm->x))) {
		free(fm->slabs);
		free(fm->written);
		free(fm);
		return rc;
	}
	enum fmx_path path = opts->path == UHMM_FARMEM_PATH_RMA ? FMX_PATH_RMA
			   : opts->path == UHMM_FARMEM_PATH_AM ? FMX_PATH_AM : FMX_PATH_AUTO;
	fmx_lock(fm->x);
	for (unsigned i = 0; i < n && !rc; i++) {
		snprintf(fm->srv[i].name, sizeof(fm->srv[i].name), "%s", names[i]);
		rc = fmx_connect(fm->x, names[i], tok, toklen, path,
				 opts->connect_timeout_ms ? opts->connect_timeout_ms : 5000,
				 &fm->srv[i].s);
		if (!rc)
			fm->nsrv = i + 1;
	}
	fmx_unlock(fm->x);
	if (!rc)
		rc = uhmm_devmem_create_owned(UHMM_DEVMEM_PRIVATE, fm, &fm_ops, &fm_copy_ops,
					      opts->flags & UHMM_FARMEM_INLINE_FAULTS ? 0 :
					      UHMM_DEVMEM_DEFER_FAULTS, fm, fm->max_pages,
					      &fm->pool);
	if (rc) {
		fm_teardown(fm);
		fmx_destroy(fm->x);
		free(fm->slabs);
		free(fm->written);
		free(fm);
		return rc;
	}
	fm->nsrv = n;
	*out = fm;
	return 0;
}

static int check_range(struct uhmm_farmem *fm, void *addr, size_t len)
{
	uint64_t a = (uint64_t)(uintptr_t)addr;
	if (!fm || fm->closed || !addr || !len || (a & (PAGE - 1)) || (len & (PAGE - 1)) ||
	    a + len < a)
		return -EINVAL;
	return 0;
}

/* place(): the 2 MiB chunks k of [start, end) with k % nthr == part
 * (chunks end at THP bounds). */
struct place_job {
	struct uhmm_farmem *fm;
	uint64_t start, end;
	unsigned part, nthr;
	int err;
};

static void *place_part(void *arg)
{
	struct place_job *j = arg;
	struct uhmm_farmem *fm = j->fm;
	uint64_t *src = malloc(2 * PLACE_PAGES * sizeof(uint64_t)), *dst = src + PLACE_PAGES;
	if (!src) {
		j->err = -ENOMEM;
		return NULL;
	}
	const uint64_t csz = PLACE_PAGES * PAGE;
	uint64_t base = j->start & ~(csz - 1);
	int err = 0;
	for (uint64_t k = j->part;; k += j->nthr) {
		uint64_t a = base + k * csz, e = a + csz;
		if (a >= j->end)
			break;
		a = a < j->start ? j->start : a;
		e = e > j->end ? j->end : e;
		struct uhmm_migrate m = {
			.start = a, .end = e, .src = src, .dst = dst, .pgmap_owner = fm,
			.flags = UHMM_MIGRATE_SELECT_SYSTEM | UHMM_MIGRATE_SELECT_COMPOUND,
		};
		int rc = uhmm_migrate_vma_setup(&m);
		if (rc) {
			err = rc;
			break;
		}
		long got = m.cpages ? uhmm_migrate_copy(fm->pool, src, dst, m.npages) : 0;
		uhmm_migrate_vma_pages(&m);
		uint64_t want = 0, moved = 0;
		for (uint64_t i = 0; i < m.npages; i++) {
			if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) && !dst[i])
				continue;
			want++;
			moved += dst[i] && (src[i] & UHMM_MIGRATE_PFN_MIGRATE);
		}
		uhmm_migrate_vma_finalize(&m);
		if (got < 0 || moved < want) {
			if (got == -ENOMEM || got == -ENOSPC)
				err = -ENOSPC;
			else if (!err)
				err = got < 0 ? (int)got : -EIO;
			if (got == -ENOMEM || got == -ENOSPC)
				break;
		}
	}
	free(src);
	j->err = err == -ENOMEM ? -ENOSPC : err;
	return NULL;
}

/*
 * One thread: two placing at once (alternate chunks, measured) was 2x
 * slower here, every UFFDIO_MOVE then flushing the TLB of the other CPU
 * running this process (an IPI per call).
 */
int uhmm_farmem_place(struct uhmm_farmem *fm, void *addr, size_t len)
{
	int rc = check_range(fm, addr, len);
	if (rc)
		return rc;
	fmx_lock(fm->x);
	slab_gc(fm);
	fmx_unlock(fm->x);
	uint64_t start = (uint64_t)(uintptr_t)addr;
	struct place_job j = { fm, start, start + len, 0, 1, 0 };
	place_part(&j);
	return j.err;
}

static int bring_back(struct uhmm_farmem *fm, void *addr, size_t len)
{
	int rc = check_range(fm, addr, len);
	if (rc)
		return rc;
	uint64_t start = (uint64_t)(uintptr_t)addr, end = start + len;
	uint64_t *src = malloc(2 * CHUNK_PAGES * sizeof(uint64_t)), *dst = src + CHUNK_PAGES;
	if (!src)
		return -ENOMEM;
	int err = 0;
	for (uint64_t a = start; a < end;) {
		/* 2 MiB aligned chunks: a huge device page comes back whole, a THP */
		uint64_t e = (a & ~(CHUNK_PAGES * PAGE - 1)) + CHUNK_PAGES * PAGE;
		e = e > end ? end : e;
		struct uhmm_migrate m = {
			.start = a, .end = e, .src = src, .dst = dst, .pgmap_owner = fm,
			.flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE | UHMM_MIGRATE_SELECT_COMPOUND,
		};
		rc = uhmm_migrate_vma_setup(&m);
		if (rc) {
			err = rc;
			break;
		}
		long got = m.cpages ? uhmm_migrate_copy(fm->pool, src, dst, m.npages) : 0;
		uhmm_migrate_vma_pages(&m);
		for (uint64_t i = 0; i < m.npages; i++)
			if ((src[i] & UHMM_MIGRATE_PFN_MIGRATE) && !dst[i] && !err)
				err = -EIO;
		uhmm_migrate_vma_finalize(&m);
		if (got < 0 && !err)
			err = (int)got;
		a = e;
	}
	free(src);
	fmx_lock(fm->x);
	slab_gc(fm);
	fmx_unlock(fm->x);
	return err;
}

int uhmm_farmem_fetch(struct uhmm_farmem *fm, void *addr, size_t len)
{
	return bring_back(fm, addr, len);
}

static void *pf_main(void *arg)
{
	struct uhmm_farmem *fm = arg;
	pthread_mutex_lock(&fm->pf_lock);
	for (;;) {
		while (!fm->pf_head && !fm->pf_stop)
			pthread_cond_wait(&fm->pf_cond, &fm->pf_lock);
		struct pf_req *r = fm->pf_head;
		if (!r)
			break;  /* stopping, queue drained */
		fm->pf_head = r->next;
		if (!fm->pf_head)
			fm->pf_tail = &fm->pf_head;
		bool stop = fm->pf_stop;
		pthread_mutex_unlock(&fm->pf_lock);
		if (!stop)
			bring_back(fm, r->addr, r->len);  /* a hint: errors are not reported */
		free(r);
		atomic_fetch_sub(&fm->pf_pending, 1);
		pthread_mutex_lock(&fm->pf_lock);
	}
	pthread_mutex_unlock(&fm->pf_lock);
	return NULL;
}

/* Queue [addr, addr + len) to the prefetch thread (started on first use);
 * -EAGAIN if it cannot start or is stopping. */
static int pf_queue(struct uhmm_farmem *fm, void *addr, size_t len)
{
	struct pf_req *r = malloc(sizeof(*r));
	if (!r)
		return -EAGAIN;
	*r = (struct pf_req){ .addr = addr, .len = len };
	pthread_mutex_lock(&fm->pf_lock);
	if (!fm->pf_started && !fm->pf_stop) {
		sigset_t all, old;
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);  /* signals go to the application */
		fm->pf_started = pthread_create(&fm->pf_thread, NULL, pf_main, fm) == 0;
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	if (!fm->pf_started || fm->pf_stop) {
		pthread_mutex_unlock(&fm->pf_lock);
		free(r);
		return -EAGAIN;
	}
	atomic_fetch_add(&fm->pf_pending, 1);
	*fm->pf_tail = r;
	fm->pf_tail = &r->next;
	pthread_cond_signal(&fm->pf_cond);
	pthread_mutex_unlock(&fm->pf_lock);
	return 0;
}

/* Queued to the prefetch thread; fetch() if that cannot be. */
int uhmm_farmem_prefetch(struct uhmm_farmem *fm, void *addr, size_t len)
{
	int rc = check_range(fm, addr, len);
	if (rc)
		return rc;
	if (pf_queue(fm, addr, len) == 0)
		return 0;
	return bring_back(fm, addr, len);
}

/* Stop the prefetch thread; queued ranges are dropped (close brings all back). */
static void pf_stop(struct uhmm_farmem *fm)
{
	pthread_mutex_lock(&fm->pf_lock);
	fm->pf_stop = true;
	bool join = fm->pf_started;
	fm->pf_started = false;
	pthread_cond_signal(&fm->pf_cond);
	pthread_mutex_unlock(&fm->pf_lock);
	if (join)
		pthread_join(fm->pf_thread, NULL);
}

int uhmm_farmem_stats(struct uhmm_farmem *fm, struct uhmm_farmem_stats *st)
{
	if (!fm || !st)
		return -EINVAL;
	memset(st, 0, sizeof(*st));
	struct uhmm_devmem_stats ds;
	if (fm->pool && uhmm_devmem_stats(fm->pool, &ds) == 0)
		st->pages_remote = ds.in_use;
	st->nservers = fm->nsrv;
	st->replicas = fm->replicas;
	st->pages_out = atomic_load(&fm->pages_out);
	st->pages_in = atomic_load(&fm->pages_in);
	st->bytes_out = atomic_load(&fm->bytes_out);
	st->bytes_in = atomic_load(&fm->bytes_in);
	st->faults = atomic_load(&fm->faults);
	st->prefetch_pending = atomic_load(&fm->pf_pending);
	st->fault_pages = atomic_load(&fm->fault_pages);
	st->fault_errors = atomic_load(&fm->fault_errors);
	st->fault_p50_ns = percentile(fm, 0.50);
	st->fault_p99_ns = percentile(fm, 0.99);
	st->fault_max_ns = atomic_load(&fm->fault_max);
	fmx_lock(fm->x);
	slab_gc(fm);
	unsigned alive = 0;
	for (unsigned i = 0; i < fm->nsrv; i++) {
		struct uhmm_farmem_server_stats *ss = &st->server[i];
		snprintf(ss->name, sizeof(ss->name), "%s", fm->srv[i].name);
		ss->alive = srv_ok(fm, (int)i);
		alive += ss->alive;
		ss->slabs = fm->srv[i].slabs;
		ss->bytes_out = atomic_load(&fm->srv[i].bytes_out);
		ss->bytes_in = atomic_load(&fm->srv[i].bytes_in);
	}
	for (uint64_t s = 0; s < fm->nslabs; s++) {
		struct slab *sl = &fm->slabs[s];
		uint64_t live = atomic_load(&sl->live);
		unsigned ok = 0;
		for (unsigned r = 0; r < sl->nrep; r++)
			if (srv_ok(fm, sl->rep[r].srv)) {
				st->server[sl->rep[r].srv].pages_remote += live;
				ok++;
			}
		if (sl->nrep && live && ok < fm->replicas) {
			st->degraded = 1;
			if (ok)
				st->pages_degraded += live;
			else
				st->pages_lost += live;
		}
	}
	/* new pages too would get fewer replicas than asked */
	if (alive < fm->replicas)
		st->degraded = 1;
	st->slabs_repaired = fm->slabs_repaired;
	fmx_unlock(fm->x);
	return 0;
}

/* One slab's new replica on server i: read from a survivor, write there
 * (transport lock held; buf is SLAB_PAGES pages). */
static int repair_slab(struct uhmm_farmem *fm, struct slab *sl, int i, uint8_t *buf)
{
	struct slab_rep *to = &sl->rep[sl->nrep];
	int rc = fmx_alloc(fm->srv[i].s, SLAB_PAGES, &to->reg);
	if (rc)
		return rc == -ENOMEM ? -ENOSPC : -EIO;
	rc = -EIO;
	for (unsigned r = 0; r < sl->nrep && rc; r++) {
		int j = sl->rep[r].srv;
		if (!srv_ok(fm, j))
			continue;
		if (fmx_get(fm->srv[j].s, &sl->rep[r].reg, 0, buf, SLAB_PAGES * PAGE) == 0 &&
		    fmx_wait(fm->x) == 0 && srv_ok(fm, j))
			rc = 0;
	}
	if (!rc && (fmx_put(fm->srv[i].s, &to->reg, 0, buf, SLAB_PAGES * PAGE) ||
		    fmx_wait(fm->x) || !srv_ok(fm, i)))
		rc = -EIO;
	if (rc) {
		fmx_free(fm->srv[i].s, &to->reg);
		return rc;
	}
	to->srv = i;
	sl->nrep++;
	fm->srv[i].slabs++;
	atomic_fetch_add(&fm->srv[i].bytes_out, SLAB_PAGES * PAGE);
	atomic_fetch_add(&fm->bytes_out, SLAB_PAGES * PAGE);
	return 0;
}

int uhmm_farmem_repair(struct uhmm_farmem *fm)
{
	if (!fm)
		return -EINVAL;
	uint8_t *buf = malloc(SLAB_PAGES * PAGE);
	if (!buf)
		return -ENOMEM;
	int done = 0, err = 0;
	fmx_lock(fm->x);
	slab_gc(fm);
	for (uint64_t s = 0; s < fm->nslabs; s++) {
		struct slab *sl = &fm->slabs[s];
		if (!sl->nrep || !atomic_load(&sl->live))
			continue;
		unsigned ok = 0;
		for (unsigned r = 0; r < sl->nrep; r++)
			ok += srv_ok(fm, sl->rep[r].srv);
		/* lost (nothing to copy from: it keeps its dead replicas, so that
		 * it is never re-allocated and read as zeros) or whole */
		if (!ok || ok >= fm->replicas)
			continue;
		/* drop the dead replicas */
		ok = 0;
		for (unsigned r = 0; r < sl->nrep; r++) {
			struct slab_rep *sr = &sl->rep[r];
			if (srv_ok(fm, sr->srv)) {
				sl->rep[ok++] = *sr;
			} else {
				if (sr->srv >= 0 && fm->srv[sr->srv].s) {
					fmx_free(fm->srv[sr->srv].s, &sr->reg);
					fm->srv[sr->srv].slabs--;
				}
			}
		}
		sl->nrep = (uint8_t)ok;
		int rc = -ENOSPC;
		for (unsigned k = 1; k < fm->nsrv && sl->nrep < fm->replicas; k++) {
			int i = (int)((s + k) % fm->nsrv);
			bool holds = false;
			for (unsigned r = 0; r < sl->nrep; r++)
				holds |= sl->rep[r].srv == i;
			if (holds || !srv_ok(fm, i))
				continue;
			rc = repair_slab(fm, sl, i, buf);
			note_failures(fm);
		}
		if (rc)
			err = -ENOSPC;
		else
			done++;
	}
	fm->slabs_repaired += (uint64_t)done;
	fmx_unlock(fm->x);
	free(buf);
	return err ? err : done;
}

/* Every page of the pool back to RAM (eviction by device page); returns how
 * many could not come back. */
static uint64_t evict_all(struct uhmm_farmem *fm)
{
	uint64_t first, count, src[CHUNK_PAGES], dst[CHUNK_PAGES], left = 0;
	for (uint64_t c = 0; uhmm_devmem_chunk(fm->pool, c, &first, &count) == 0; c++) {
		for (uint64_t off = 0; off < count; off += CHUNK_PAGES) {
			uint64_t n = count - off < CHUNK_PAGES ? count - off : CHUNK_PAGES;
			if (uhmm_migrate_device_range(src, first + off, n))
				continue;
			uint64_t want = 0;
			for (uint64_t i = 0; i < n; i++) {
				dst[i] = 0;
				want += (src[i] & UHMM_MIGRATE_PFN_MIGRATE) != 0;
			}
			if (want)
				uhmm_migrate_copy(fm->pool, src, dst, n);
			uhmm_migrate_device_pages(src, dst, n);
			for (uint64_t i = 0; i < n; i++)
				if ((src[i] & UHMM_MIGRATE_PFN_MIGRATE) && !dst[i])
					left++;
			uhmm_migrate_device_finalize(src, dst, n);
		}
	}
	return left;
}

int uhmm_farmem_close(struct uhmm_farmem *fm)
{
	if (!fm)
		return -EINVAL;
	pf_stop(fm);
	uint64_t left = 0;
	for (int pass = 0; pass < 3; pass++)
		if ((left = evict_all(fm)) == 0)
			break;
	struct uhmm_devmem_stats ds = { 0 };
	uhmm_devmem_stats(fm->pool, &ds);
	if (left || ds.in_use) {
		if (!fm->quiet)
			fprintf(stderr, "uhmm_farmem: close: %llu pages have no live replica and "
				"stay remote (accesses get SIGBUS)\n",
				(unsigned long long)(left ? left : ds.in_use));
		return -EBUSY;
	}
	int rc = uhmm_devmem_destroy(fm->pool);
	if (rc)
		return rc;
	fm->pool = NULL;
	fm_teardown(fm);
	fmx_destroy(fm->x);
	free(fm->slabs);
	free(fm->written);
	free(fm);
	return 0;
}

void uhmm_farmem_close_force(struct uhmm_farmem *fm)
{
	if (!fm)
		return;
	if (uhmm_farmem_close(fm) == 0)
		return;
	/* The pool keeps its lost pages; fm stays allocated (their faults get
	 * -EIO from the dead servers), the live servers are let go. */
	fm->closed = true;
	fm->quiet = true;
	fmx_lock(fm->x);
	for (unsigned i = 0; i < fm->nsrv; i++)
		if (fm->srv[i].s && fmx_alive(fm->srv[i].s)) {
			for (uint64_t s = 0; s < fm->nslabs; s++)
				for (unsigned r = 0; r < fm->slabs[s].nrep; r++)
					if (fm->slabs[s].rep[r].srv == (int)i)
						fmx_free(fm->srv[i].s, &fm->slabs[s].rep[r].reg);
		}
	fmx_unlock(fm->x);
}
