/* SPDX-License-Identifier: MIT */
/*
 * uhmm_farmem.h - far memory over UCX: pages of ordinary malloc'd or mmap'd
 * memory moved to the RAM of uhmm-memd servers (on this machine or others)
 * and faulted back on CPU access, with uhmm's device-private semantics.
 * Link with `pkg-config --libs uhmm_farmem` (libuhmm_farmem, libuhmm, UCX).
 *
 * The far memory is a uhmm driver-owned device-private pool (uhmm.h,
 * "Driver-owned device memory"): migration to far memory puts each run of
 * pages to its server with ucp_put_nbx; a CPU access faults the page (and a
 * read-ahead window that grows to 2 MiB while faults stream forward) back; freeing a
 * page frees it on the server.  Pages are striped over the servers in 2 MiB
 * slabs; with replicas = 2 each slab is written to two servers and a server
 * that dies costs nothing but redundancy (reads go to the survivor; stats
 * report degraded).  A page with no live replica left is never read as
 * zeros: the access gets SIGBUS and one line on stderr names the server and
 * the range.
 *
 * Every function returns 0 or a negative errno (none aborts); every one may
 * be called from any thread.  One struct uhmm_farmem serves the whole
 * process (several may be open, each its own pool and connections).
 */
#ifndef UHMM_FARMEM_H
#define UHMM_FARMEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define UHMM_FARMEM_API __attribute__((visibility("default")))
#else
#define UHMM_FARMEM_API
#endif

struct uhmm_farmem;

/* How data moves (see docs/farmem.md for the measurements behind AUTO). */
enum uhmm_farmem_path {
	UHMM_FARMEM_PATH_AUTO = 0,   /* put by RMA, read by active message */
	UHMM_FARMEM_PATH_RMA,        /* put and get by RMA */
	UHMM_FARMEM_PATH_AM,         /* everything by active messages */
};

struct uhmm_farmem_opts {
	const char *token_file;  /* file whose first line is the token, or NULL */
	const char *token;       /* the token itself (token_file wins), or NULL */
	unsigned int replicas;   /* 1 (default when 0) or 2; <= number of servers */
	uint64_t max_pages;      /* pool size in pages; 0: 1 Mi pages (4 GiB) */
	int connect_timeout_ms;  /* 0: 5000 */
	enum uhmm_farmem_path path;
	unsigned int flags;      /* UHMM_FARMEM_* below */
};
/* Do not print the one-line error messages (errors are still returned). */
#define UHMM_FARMEM_QUIET (1U << 0)
/*
 * Serve CPU faults on uhmm's fault-service thread instead of its fault
 * workers: about 10 us less per fault (one thread hand-off fewer), but a
 * fault that waits for a slow or failing server (up to UCX's failure
 * detection) holds up every other CPU fault on uhmm memory of the process
 * meanwhile.  For one host or a fast fabric with one far-memory pool.
 */
#define UHMM_FARMEM_INLINE_FAULTS (1U << 1)

/*
 * Connect to every server of "host:port,host:port,..." and authenticate.
 * Returns 0; -EINVAL (bad list, replicas > servers or > 2, no token, bad
 * opts); -ECONNREFUSED (nothing listens there, or the server went away at
 * connect); -EACCES (token refused); -ETIMEDOUT; -EHOSTUNREACH (name does
 * not resolve); -ENODEV (UCX failed to start); -ENOMEM; a uhmm_init()
 * error; -ENOTSUP when UCX's memory hooks route munmap around uhmm's
 * interposer (UCX's default "bistro" hook mode patches munmap as UCX
 * loads): start the program with UCX_MEM_EVENTS=no (far memory
 * registers its buffers itself and needs no memory events).  One line on stderr names the server and the reason.
 */
UHMM_FARMEM_API int uhmm_farmem_open(const char *servers, const struct uhmm_farmem_opts *opts,
				     struct uhmm_farmem **out);

/*
 * Move [addr, addr + len) of private anonymous memory to far memory (holes
 * and zero pages are cleared on the server, no data moves).  addr and len
 * page aligned.  Returns 0 (every present page moved), -EINVAL (alignment,
 * overflow, NULL), -EFAULT (nothing mapped / hole in the mapping),
 * -ENOSPC (pool or servers full: pages that did not move stay in RAM),
 * -EIO (no server could take a part: it stays in RAM).  Pages already in
 * far memory are left where they are.  A THP (MADV_HUGEPAGE memory) moves
 * whole, and comes back whole to fetch() and to a stream of CPU faults
 * (one THP per 2 MiB); a random access takes its one 4 KiB page back.
 */
UHMM_FARMEM_API int uhmm_farmem_place(struct uhmm_farmem *fm, void *addr, size_t len);
/* Bring [addr, addr + len) back to RAM now.  -EIO: some page has no live
 * replica (it stays remote and an access to it gets SIGBUS). */
UHMM_FARMEM_API int uhmm_farmem_fetch(struct uhmm_farmem *fm, void *addr, size_t len);
/* fetch() as a hint: queues the range to a prefetch thread (started on
 * first use) and returns; the pages come back in the background, and an
 * access meanwhile faults as usual.  Errors of the background fetch are not
 * reported (stats().prefetch_pending counts the ranges not done yet).
 * Returns 0, -EINVAL (as fetch()), or fetch()'s result if no thread can
 * start. */
UHMM_FARMEM_API int uhmm_farmem_prefetch(struct uhmm_farmem *fm, void *addr, size_t len);

#define UHMM_FARMEM_MAX_SERVERS 16
struct uhmm_farmem_server_stats {
	char name[64];            /* "host:port" */
	int alive;                /* 0 once the server failed */
	uint64_t pages_remote;    /* pages of this process held there now */
	uint64_t slabs;           /* 2 MiB allocations held there */
	uint64_t bytes_out;       /* bytes put to it */
	uint64_t bytes_in;        /* bytes read from it */
};
struct uhmm_farmem_stats {
	unsigned int nservers;
	unsigned int replicas;
	int degraded;             /* a server failed and some pages have fewer live
				     replicas than asked (pages_degraded, pages_lost),
				     or new ones would (fewer live servers than
				     replicas); uhmm_farmem_repair() clears it */
	uint64_t pages_remote;    /* process pages in far memory now */
	uint64_t pages_out, pages_in;   /* migrated to / back from far memory, total */
	uint64_t bytes_out, bytes_in;   /* over the network, replicas counted */
	uint64_t faults;          /* CPU faults served (counted before the faulting
				     thread runs on, with fault_pages) */
	uint64_t fault_pages;     /* pages brought back by them (read-ahead included) */
	uint64_t fault_errors;    /* faults answered with SIGBUS */
	uint64_t fault_p50_ns, fault_p99_ns, fault_max_ns;  /* migrate_to_ram latency (a
				     fault's lands just after its thread ran on) */
	struct uhmm_farmem_server_stats server[UHMM_FARMEM_MAX_SERVERS];
	/* Degraded mode, in pages in far memory now: */
	uint64_t pages_degraded;  /* with fewer live replicas than asked (not lost) */
	uint64_t pages_lost;      /* with no live replica (their accesses get SIGBUS) */
	uint64_t slabs_repaired;  /* 2 MiB slabs copied to a new server by repair() */
	uint64_t prefetch_pending; /* prefetch() ranges queued or in progress */
};
UHMM_FARMEM_API int uhmm_farmem_stats(struct uhmm_farmem *fm, struct uhmm_farmem_stats *st);

/*
 * Re-replicate after a server failure: every slab with fewer live replicas
 * than asked gets a new one on a live server that does not hold it yet
 * (read from a survivor, written there; faults on the slab wait meanwhile).
 * Returns the slabs repaired (>= 0), -ENOSPC if some could not be (no
 * server left to take them: fewer live servers than replicas, or full; the
 * pool stays degraded), -EINVAL on NULL.  Pages with no live replica left
 * cannot be repaired (pages_lost).
 */
UHMM_FARMEM_API int uhmm_farmem_repair(struct uhmm_farmem *fm);

/*
 * Bring every page back, free the server memory and disconnect.  Returns 0;
 * -EBUSY if pages with no live replica could not come back (fm stays open:
 * the caller may unmap those ranges and close again, or force it with
 * uhmm_farmem_close_force); -EINVAL on NULL.
 */
UHMM_FARMEM_API int uhmm_farmem_close(struct uhmm_farmem *fm);
/* close() that gives up on pages that cannot come back: accesses to them
 * keep getting SIGBUS until the range is unmapped. */
UHMM_FARMEM_API void uhmm_farmem_close_force(struct uhmm_farmem *fm);

#ifdef __cplusplus
}
#endif
#endif /* UHMM_FARMEM_H */
