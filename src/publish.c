/* SPDX-License-Identifier: MIT */
/*
 * publish.c - the runtime as seen from outside the process: the shared-memory
 * file /dev/shm/uhmm.<pid> that tools/uhmm-stat reads (docs/observability.md).
 * Owns the file (created with the runtime, removed at exit, a fork child
 * makes its own), the live process counters once published (uhmm__statp
 * points into the file, so every STAT_ADD is visible at once), the fault
 * latency histogram, the pool snapshots and the per-type event counts, and
 * starts and ends the timeline (timeline.c).
 *
 * Pool snapshots are taken on events, never by a thread of ours: on every
 * migration or exclusive event and at most once a millisecond on faults and
 * invalidations, with trylocks only (g_pub_lock, then as->arena_lock, then
 * each pool->lock): the fault-service thread never waits here.
 */
#include "internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <signal.h>
#include <unistd.h>

/*
 * The file, version 1.  Readers find every section by the offsets in the
 * header (a newer runtime may add fields at the ends of sections); the
 * pools section is a seqlock (pub_seq odd while it is written).  All
 * fields are native-endian; every store is atomic.
 */
#define PUB_MAGIC "UHMMSTAT"
#define PUB_VERSION 1
#define PUB_BUCKETS 64   /* bucket b: fault latency in [2^(b-1), 2^b) ns; 0: 0 ns */
#define PUB_EVTYPES 8    /* by enum uhmm_event_type */
#define PUB_POOLS 32
#define PUB_STALE_NS (30ull * 1000000000ull)

struct pub_pool {
	uint64_t id;             /* the pool's address in the process: its name */
	uint64_t owner;          /* the owner pointer given to uhmm_devmem_create */
	uint64_t type;           /* 0 system pages, else enum uhmm_devmem_type */
	uint64_t capacity, reserved, allocated, freed, in_use, alloc_failures;
};

struct pub_hdr {
	char magic[8];
	uint32_t version, hdr_size;
	uint32_t pid, flags;     /* flags: PUB_EXITED once the process is exiting */
	uint64_t start_time;     /* /proc/self/stat field 22: detects a reused pid */
	uint64_t created_ns;     /* CLOCK_MONOTONIC */
	uint64_t heartbeat_ns;   /* CLOCK_MONOTONIC of the last pool snapshot */
	uint64_t pub_seq;        /* seqlock over npools and pools[] */
	uint32_t stats_off, stats_size;    /* struct uhmm_stats */
	uint32_t hist_off, hist_buckets;   /* uint64_t each */
	uint32_t events_off, events_n;     /* uint64_t each */
	uint32_t pools_off, pool_size;
	uint32_t pools_max, npools;
	uint64_t pools_skipped;  /* pools beyond pools_max at the last snapshot */
};
#define PUB_EXITED 1u

struct pub_file {
	struct pub_hdr h;
	struct uhmm_stats stats;
	uint64_t hist[PUB_BUCKETS];
	uint64_t events[PUB_EVTYPES];
	struct pub_pool pools[PUB_POOLS];
};
#define PUB_LEN (((sizeof(struct pub_file) + PG_SIZE - 1) / PG_SIZE) * PG_SIZE)

/* The mapping (NULL: not publishing) and what it belongs to; set at start. */
static struct pub_file *g_pub;
static struct uhmm__as *g_pub_as;
static pid_t g_pub_pid;
static char g_path[64];
/* Non-zero while publishing or tracing: uhmm__event calls uhmm__obs_event. */
int uhmm__obs_on;
/* One snapshot at a time (leaf; only ever trylocked on event paths). */
static pthread_mutex_t g_pub_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t g_last_snap_ns;    /* atomic */
static int g_snap_pending;         /* atomic: a snapshot was skipped, take the next */
static pthread_once_t g_pub_once = PTHREAD_ONCE_INIT;

/* Release stores: a reader that sees a field sees the stores before it (seqlock). */
#define ST(p, v) __atomic_store_n(&(p), (v), __ATOMIC_RELEASE)

/* Field 22 of /proc/self/stat (or /proc/PID/stat): start time in ticks. */
static uint64_t proc_start_time(void)
{
	char buf[1024];
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *p = strrchr(buf, ')');  /* comm may hold spaces and parentheses */
	if (!p)
		return 0;
	/* after ")" come " 3 4 ...": the 20th space is the one before field 22 */
	for (int f = 3; f <= 22 && p; f++)
		p = strchr(p + 1, ' ');
	return p ? strtoull(p + 1, NULL, 10) : 0;
}

static void log_once(const char *what, int err)
{
	static int logged;
	if (!__atomic_exchange_n(&logged, 1, __ATOMIC_RELAXED))
		uhmm__log("counters not published (%s: %s); uhmm-stat will not see this "
			  "process (UHMM_STAT=0 turns publishing off)", what, strerror(err));
}

static void snap_pool(struct pub_pool *r, struct uhmm_devmem *m)
{
	uint64_t reserved = (uint64_t)m->nchunks * CHUNK_FRAMES;
	ST(r->id, (uint64_t)(uintptr_t)m);
	ST(r->owner, (uint64_t)(uintptr_t)m->owner);
	ST(r->type, (uint64_t)m->type);
	ST(r->capacity, m->max_pages);
	ST(r->reserved, reserved < m->max_pages ? reserved : m->max_pages);
	ST(r->allocated, m->allocated);
	ST(r->freed, m->freed);
	ST(r->in_use, m->allocated - m->freed);
	ST(r->alloc_failures, __atomic_load_n(&m->alloc_failures, __ATOMIC_RELAXED));
}

/*
 * Copy every pool's counters into the file.  Only trylocks: when a lock is
 * busy the snapshot is left for the next event (g_snap_pending).
 */
static void snapshot_pools(struct pub_file *p, uint64_t now)
{
	struct uhmm__as *as = __atomic_load_n(&g_pub_as, __ATOMIC_ACQUIRE);
	if (!as || uhmm__trylock(&g_pub_lock))
		goto busy;
	if (uhmm__trylock(&as->arena_lock)) {
		uhmm__unlock(&g_pub_lock);
		goto busy;
	}
	uint64_t seq = __atomic_load_n(&p->h.pub_seq, __ATOMIC_RELAXED);
	__atomic_store_n(&p->h.pub_seq, seq + 1, __ATOMIC_RELAXED);
	uint32_t n = 0;
	uint64_t skipped = 0;
	bool done = true;
	struct uhmm_devmem *m = as->syspool;
	for (bool sys = true; m; m = sys ? as->pools : m->next, sys = false) {
		if (n == PUB_POOLS) {
			skipped++;
			continue;
		}
		if (uhmm__trylock(&m->lock)) {
			done = false;
			break;
		}
		if (!m->dead)
			snap_pool(&p->pools[n++], m);
		uhmm__unlock(&m->lock);
	}
	uhmm__unlock(&as->arena_lock);
	if (done) {
		ST(p->h.npools, n);
		ST(p->h.pools_skipped, skipped);
		ST(p->h.heartbeat_ns, now);
	}
	__atomic_store_n(&p->h.pub_seq, seq + 2, __ATOMIC_RELEASE);
	uhmm__unlock(&g_pub_lock);
	if (done) {
		__atomic_store_n(&g_last_snap_ns, now, __ATOMIC_RELAXED);
		__atomic_store_n(&g_snap_pending, 0, __ATOMIC_RELAXED);
		return;
	}
busy:
	__atomic_store_n(&g_snap_pending, 1, __ATOMIC_RELAXED);
}

static unsigned hist_bucket(uint64_t ns)
{
	unsigned b = ns ? 64 - (unsigned)__builtin_clzll(ns) : 0;
	return b < PUB_BUCKETS ? b : PUB_BUCKETS - 1;
}

/* Every event, when publishing or tracing (uhmm__obs_on). */
void uhmm__obs_event(uint32_t type, uint32_t arg, uint64_t addr, uint64_t len, uint64_t t0)
{
	uint64_t now = uhmm__now_ns();
	uint64_t dur = t0 && now > t0 ? now - t0 : 0;
	struct pub_file *p = __atomic_load_n(&g_pub, __ATOMIC_ACQUIRE);
	if (p) {
		if (type < PUB_EVTYPES)
			__atomic_fetch_add(&p->events[type], 1, __ATOMIC_RELAXED);
		if (type == UHMM_EV_CPU_FAULT)
			__atomic_fetch_add(&p->hist[hist_bucket(dur)], 1, __ATOMIC_RELAXED);
		bool rare = type != UHMM_EV_CPU_FAULT && type != UHMM_EV_INVALIDATE;
		if (rare || __atomic_load_n(&g_snap_pending, __ATOMIC_RELAXED) ||
		    now - __atomic_load_n(&g_last_snap_ns, __ATOMIC_RELAXED) >= 1000000)
			snapshot_pools(p, now);
	}
	uhmm__timeline_record(type, arg, addr, len, t0 ? t0 : now, dur);
}

/*
 * A fork child does not publish into its parent's file: the counters go
 * back to the process-private copy (with the values inherited), and the
 * child publishes a file of its own when it makes its runtime.
 */
static void pub_atfork_child(void)
{
	struct pub_file *p = g_pub;
	pthread_mutex_init(&g_pub_lock, NULL);
	g_pub_as = NULL;
	if (!p)
		return;
	const uint64_t *src = (const uint64_t *)&p->stats;
	uint64_t *dst = (uint64_t *)&uhmm__stats;
	for (size_t i = 0; i < sizeof(uhmm__stats) / sizeof(uint64_t); i++)
		__atomic_store_n(&dst[i], __atomic_load_n(&src[i], __ATOMIC_RELAXED),
				 __ATOMIC_RELAXED);
	__atomic_store_n(&uhmm__statp, &uhmm__stats, __ATOMIC_RELEASE);
	__atomic_store_n(&g_pub, NULL, __ATOMIC_RELEASE);
	syscall(SYS_munmap, p, PUB_LEN);
}

static void pub_install_atfork(void)
{
	pthread_atfork(NULL, NULL, pub_atfork_child);
}

/*
 * Files of processes that died without exiting (a crash, _exit, a killed
 * test case) are removed by the next runtime made by the same user, once
 * they have been quiet for PUB_STALE_NS (uhmm-stat reports them as stale
 * meanwhile).  Runtime creation only: never on a fault path.
 */
static void remove_stale_files(pid_t self)
{
	DIR *d = opendir("/dev/shm");
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		char *end;
		if (strncmp(de->d_name, "uhmm.", 5) != 0)
			continue;
		long pid = strtol(de->d_name + 5, &end, 10);
		if (*end || pid <= 0 || pid == self || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		int fd = openat(dirfd(d), de->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			continue;
		struct pub_hdr h;
		struct stat st;
		bool stale = fstat(fd, &st) == 0 && st.st_uid == geteuid() &&
			     pread(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h) &&
			     memcmp(h.magic, PUB_MAGIC, 8) == 0 && h.pid == (uint32_t)pid &&
			     uhmm__now_ns() - (h.heartbeat_ns > h.created_ns ? h.heartbeat_ns
						: h.created_ns) > PUB_STALE_NS;
		close(fd);
		if (stale)
			unlinkat(dirfd(d), de->d_name, 0);
	}
	closedir(d);
}

/* At runtime creation (lifecycle.c as_create). */
void uhmm__publish_start(struct uhmm__as *as)
{
	pthread_once(&g_pub_once, pub_install_atfork);
	uhmm__timeline_start();
	if (__atomic_load_n(&uhmm__obs_on, __ATOMIC_RELAXED) == 0 && uhmm__timeline_on())
		__atomic_store_n(&uhmm__obs_on, 1, __ATOMIC_RELEASE);
	const char *e = getenv("UHMM_STAT");
	if ((e && strcmp(e, "0") == 0) || g_pub)
		return;
	pid_t pid = getpid();
	remove_stale_files(pid);
	snprintf(g_path, sizeof(g_path), "/dev/shm/uhmm.%d", (int)pid);
	unlink(g_path);  /* a file left by an earlier process with this pid */
	int fd = open(g_path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		log_once(g_path, errno);
		return;
	}
	if (fchmod(fd, 0600) || ftruncate(fd, (off_t)PUB_LEN)) {
		log_once(g_path, errno);
		close(fd);
		unlink(g_path);
		return;
	}
	void *m = (void *)syscall(SYS_mmap, NULL, PUB_LEN, PROT_READ | PROT_WRITE,
				  MAP_SHARED | MAP_POPULATE, fd, 0);
	int err = errno;
	close(fd);
	if (m == MAP_FAILED) {
		log_once(g_path, err);
		unlink(g_path);
		return;
	}
	struct pub_file *p = m;
	struct pub_hdr *h = &p->h;
	ST(h->version, PUB_VERSION);
	ST(h->hdr_size, (uint32_t)sizeof(*h));
	ST(h->pid, (uint32_t)pid);
	ST(h->start_time, proc_start_time());
	ST(h->created_ns, uhmm__now_ns());
	ST(h->stats_off, (uint32_t)offsetof(struct pub_file, stats));
	ST(h->stats_size, (uint32_t)sizeof(p->stats));
	ST(h->hist_off, (uint32_t)offsetof(struct pub_file, hist));
	ST(h->hist_buckets, PUB_BUCKETS);
	ST(h->events_off, (uint32_t)offsetof(struct pub_file, events));
	ST(h->events_n, PUB_EVTYPES);
	ST(h->pools_off, (uint32_t)offsetof(struct pub_file, pools));
	ST(h->pool_size, (uint32_t)sizeof(struct pub_pool));
	ST(h->pools_max, PUB_POOLS);
	/* The counters so far move into the file, which holds them from now on. */
	const uint64_t *src = (const uint64_t *)&uhmm__stats;
	uint64_t *dst = (uint64_t *)&p->stats;
	for (size_t i = 0; i < sizeof(uhmm__stats) / sizeof(uint64_t); i++)
		__atomic_store_n(&dst[i], __atomic_load_n(&src[i], __ATOMIC_RELAXED),
				 __ATOMIC_RELAXED);
	__atomic_store_n(&uhmm__statp, &p->stats, __ATOMIC_RELEASE);
	g_pub_pid = pid;
	__atomic_store_n(&g_pub_as, as, __ATOMIC_RELEASE);
	snapshot_pools(p, uhmm__now_ns());
	/* The magic last: a reader that sees it sees a complete header. */
	for (int i = 0; i < 8; i++)
		ST(h->magic[i], PUB_MAGIC[i]);
	__atomic_store_n(&g_pub, p, __ATOMIC_RELEASE);
	__atomic_store_n(&uhmm__obs_on, 1, __ATOMIC_RELEASE);
}

/*
 * At exit (lifecycle.c as_exit, after the service thread stopped): the
 * timeline is written and the file removed.  The mapping stays: a counter
 * bumped later still has somewhere to go.
 */
void uhmm__publish_exit(void)
{
	uhmm__timeline_exit();
	struct pub_file *p = __atomic_load_n(&g_pub, __ATOMIC_ACQUIRE);
	if (!p || g_pub_pid != getpid())
		return;
	snapshot_pools(p, uhmm__now_ns());
	__atomic_fetch_or(&p->h.flags, PUB_EXITED, __ATOMIC_RELEASE);
	unlink(g_path);
}
