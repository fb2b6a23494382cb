/* SPDX-License-Identifier: MIT */
/*
 * fuzz_uhmm.c - libFuzzer target (make fuzz): the input is a sequence of
 * operations on a few fixed ranges, run against the reference devices
 * (dmirror 0: device private, dmirror 2: device coherent) and the public
 * API, with a shadow copy of every page's expected contents.
 *
 * Layout (set up once; libFuzzer runs every input in this process):
 *   [guard][R0: 16 pages][guard][R1][guard][R2][guard][S: 16 pages][guard]
 * R0-R2 are private anonymous, S is MAP_SHARED anonymous, guards are
 * PROT_NONE.  Each input starts from a known state (all read-write, filled
 * with a pattern or all holes), runs up to MAX_OPS operations of 4 bytes
 * each, and ends by bringing every page back (release, exclusive release)
 * and checking that the pools are empty and that the CPU sees the shadow.
 *
 * Checked after every step: the return code is 0 or one of the errnos the
 * documentation gives for that call (exact errno for bad arguments); data
 * returned by a device equals the shadow; snapshots only show states that
 * are possible for the page; after a migration the pages are where the
 * return code says.  CHECK (and the end of each input) cross-checks the
 * pools: pool in_use == pages the snapshots show in that device's memory.
 * Input byte 0 bit 0 additionally checks every page through device 0 after
 * every step.
 *
 * Known library issues (see the report / docs/bad-input.md) are tolerated
 * unless FUZZ_UHMM_STRICT is set in the environment:
 *   K1 a device-coherent page in a read-only mapping cannot be migrated
 *      back (migrate_to_sys and release return 0 but leave it on the device);
 *   K2 a page migrated to device-private memory from a read-only mapping is
 *      writable by the device (uhmm_dmirror_write returns 0, not -EPERM).
 * Device atomics on a device-coherent page always end in -EBUSY after about
 * a second of retries, so ATOMIC skips coherent pages.
 *
 * Failures print the operations of the input so far and abort().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uhmm.h>
#include <uhmm_dmirror.h>

#define PS UHMM_PAGE_SIZE
#define NR 4                    /* ranges */
#define RP 16                   /* pages per range */
#define SHR 3                   /* the shared range */
#define MAX_OPS 48
#define RW (PROT_READ | PROT_WRITE)
#define LOW_UNMAPPED (4 * PS)   /* below mmap_min_addr: never mapped */
#define ADDR_LIMIT (1ULL << 47)

/* snapshot bytes */
#define S_NONE 0x00
#define S_R 0x01
#define S_W 0x02
#define S_ZERO_R 0x11
#define S_PRIV_LOCAL 0x22
#define S_COH_LOCAL_R 0x41
#define S_COH_LOCAL_W 0x42
#define S_COH_REMOTE_R 0x51
#define S_COH_REMOTE_W 0x52

typedef int (*cmd_fn)(struct uhmm_dmirror *, struct uhmm_dmirror_cmd *);

enum { K_READ, K_WRITE, K_TO_DEV, K_TO_SYS, K_SNAP, K_EXCL, K_CHECK_EXCL, K_NKINDS };
static const cmd_fn kinds[K_NKINDS] = {
	uhmm_dmirror_read, uhmm_dmirror_write, uhmm_dmirror_migrate_to_dev,
	uhmm_dmirror_migrate_to_sys, uhmm_dmirror_snapshot, uhmm_dmirror_exclusive,
	uhmm_dmirror_check_exclusive,
};
static const char *const kind_names[K_NKINDS] = {
	"read", "write", "migrate_to_dev", "migrate_to_sys", "snapshot", "exclusive",
	"check_exclusive",
};

static struct {
	bool ready, strict;
	char *region;
	size_t region_len;
	char *base[NR];
	bool ro[NR][RP];
	uint8_t *shadow;                  /* NR * RP pages */
	uint8_t *buf;                     /* RP pages + 1 */
	struct uhmm_dmirror *dm[2];       /* device 0 (private), device 2 (coherent) */
	struct uhmm_interval_notifier not;
	uint64_t inval[2][8];
	char log[MAX_OPS + 8][96];        /* operations of the current input */
	int nlog;
} g;

static const int fuzz_owner;
static const int other_owner;

static const int dev_of[2] = { 0, 2 };

/* ------------------------------------------------------------------------ */
/* reporting                                                                 */
/* ------------------------------------------------------------------------ */

__attribute__((format(printf, 1, 2))) static void logop(const char *fmt, ...)
{
	if (g.nlog >= (int)(sizeof(g.log) / sizeof(g.log[0])))
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(g.log[g.nlog++], sizeof(g.log[0]), fmt, ap);
	va_end(ap);
}

__attribute__((format(printf, 1, 2), noreturn)) static void fail(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "\nfuzz_uhmm: operations of this input:\n");
	for (int i = 0; i < g.nlog; i++)
		fprintf(stderr, "  %2d: %s\n", i, g.log[i]);
	fprintf(stderr, "fuzz_uhmm: INVARIANT BROKEN: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	abort();
}

#define EXPECT_RC(what, got, want) do {                                       \
	long g_ = (long)(got), w_ = (long)(want);                             \
	if (g_ != w_)                                                         \
		fail("%s: returned %ld, expected %ld (line %d)", (what), g_, w_, \
		     __LINE__);                                               \
} while (0)

/* ------------------------------------------------------------------------ */
/* pages and shadow                                                          */
/* ------------------------------------------------------------------------ */

static char *pg(int r, int p)
{
	return g.base[r] + (size_t)p * PS;
}

static uint64_t pa(int r, int p)
{
	return (uint64_t)(uintptr_t)pg(r, p);
}

static uint8_t *sh(int r, int p)
{
	return g.shadow + ((size_t)r * RP + (size_t)p) * PS;
}

static char *guard_before(int r)
{
	return g.base[r] - PS;
}

static void pattern(uint8_t *dst, uint32_t seed, int r, int p)
{
	uint64_t *w = (uint64_t *)dst;
	uint64_t x = ((uint64_t)seed << 32) ^ ((uint64_t)(r * RP + p) << 16) ^ 0x5DEECE66DULL;

	for (size_t i = 0; i < PS / 8; i++) {
		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		w[i] = x ^ (x >> 29);
	}
}

static void cmp_page(const void *have, int r, int p, const char *what)
{
	if (memcmp(have, sh(r, p), PS) == 0)
		return;
	const uint8_t *h = have, *s = sh(r, p);
	size_t off = 0;
	while (h[off] == s[off])
		off++;
	fail("%s: range %d page %d differs at byte %zu: 0x%02x, expected 0x%02x", what, r, p,
	     off, h[off], s[off]);
}

static void check_cpu(int r, int p, int n)
{
	for (int i = 0; i < n; i++)
		cmp_page(pg(r, p + i), r, p + i, "CPU view");
}

static void check_buf(const uint8_t *buf, int r, int p, int n, const char *what)
{
	for (int i = 0; i < n; i++)
		cmp_page(buf + (size_t)i * PS, r, p + i, what);
}

static bool any_ro(int r, int p, int n)
{
	for (int i = 0; i < n; i++)
		if (g.ro[r][p + i])
			return true;
	return false;
}

/* ------------------------------------------------------------------------ */
/* device helpers                                                            */
/* ------------------------------------------------------------------------ */

static int run(cmd_fn fn, struct uhmm_dmirror *dm, uint64_t addr, void *ptr, uint64_t n,
	       struct uhmm_dmirror_cmd *out)
{
	struct uhmm_dmirror_cmd cmd = {
		.addr = addr, .ptr = (uint64_t)(uintptr_t)ptr, .npages = n,
		.cpages = 0xDEAD, .faults = 0xDEAD,
	};
	int rc = fn(dm, &cmd);
	if (out)
		*out = cmd;
	return rc;
}

static uint64_t in_use(int dmi)
{
	struct uhmm_devmem_stats st;
	EXPECT_RC("uhmm_dmirror_devmem_stats", uhmm_dmirror_devmem_stats(dev_of[dmi], &st), 0);
	if (st.in_use != st.allocated - st.freed)
		fail("device %d: in_use %llu != allocated %llu - freed %llu", dev_of[dmi],
		     (unsigned long long)st.in_use, (unsigned long long)st.allocated,
		     (unsigned long long)st.freed);
	return st.in_use;
}

/* Is snapshot byte b possible for page (r, p) seen by device dmi? */
static bool snap_ok(int dmi, int r, int p, uint8_t b)
{
	bool ro = g.ro[r][p];
	if (b == S_NONE || b == S_R || b == S_ZERO_R || (b == S_W && !ro))
		return true;
	if (r == SHR)
		return false;   /* shared memory never leaves the CPU */
	if (dmi == 0)
		return b == S_PRIV_LOCAL || b == S_COH_REMOTE_R || (b == S_COH_REMOTE_W && !ro);
	return b == S_COH_LOCAL_R || (b == S_COH_LOCAL_W && !ro);
}

static bool is_local(int dmi, uint8_t b)
{
	return dmi == 0 ? b == S_PRIV_LOCAL : (b == S_COH_LOCAL_R || b == S_COH_LOCAL_W);
}

static void snap(int dmi, int r, int p, int n, uint8_t *out)
{
	struct uhmm_dmirror_cmd cmd;
	memset(out, 0xAA, (size_t)n);
	EXPECT_RC("snapshot", run(uhmm_dmirror_snapshot, g.dm[dmi], pa(r, p), out, (uint64_t)n,
				  &cmd), 0);
	if (cmd.cpages != (uint64_t)n)
		fail("snapshot: cpages %llu, expected %d", (unsigned long long)cmd.cpages, n);
	for (int i = 0; i < n; i++)
		if (!snap_ok(dmi, r, p + i, out[i]))
			fail("snapshot (device %d) of range %d page %d%s: impossible byte 0x%02x",
			     dev_of[dmi], r, p + i, g.ro[r][p + i] ? " (read-only)" : "", out[i]);
}

/* Pages of [p, p + n) that are in device-coherent memory. */
static void coherent_map(int r, int p, int n, bool *coh)
{
	uint8_t s[RP];
	snap(1, r, p, n, s);
	for (int i = 0; i < n; i++)
		coh[i] = is_local(1, s[i]);
}

/*
 * Pools against page states: device 0's pool holds exactly the pages that
 * device 0's snapshot calls local, device 2's those device 2 calls local,
 * and the two views agree with each other.
 */
static void check_pools(void)
{
	uint64_t local[2] = { 0, 0 };
	for (int r = 0; r < NR; r++) {
		uint8_t s0[RP], s2[RP];
		snap(0, r, 0, RP, s0);
		snap(1, r, 0, RP, s2);
		for (int p = 0; p < RP; p++) {
			local[0] += is_local(0, s0[p]);
			local[1] += is_local(1, s2[p]);
			if (is_local(0, s0[p]) && s2[p] != S_NONE)
				fail("range %d page %d: device 0 has it, device 2 sees 0x%02x", r, p,
				     s2[p]);
			if (is_local(1, s2[p]) && (s0[p] & 0xF0) != 0x50)
				fail("range %d page %d: device 2 has it, device 0 sees 0x%02x", r, p,
				     s0[p]);
		}
	}
	for (int d = 0; d < 2; d++)
		if (in_use(d) != local[d])
			fail("device %d: pool in_use %llu, but %llu pages are in its memory",
			     dev_of[d], (unsigned long long)in_use(d), (unsigned long long)local[d]);
}

/* Every page through device 0's eyes (no migration but exclusive revocation). */
static void check_dev_view(void)
{
	struct uhmm_dmirror_cmd cmd;
	for (int r = 0; r < NR; r++) {
		memset(g.buf, 0xEE, RP * PS);
		EXPECT_RC("device-view read", run(uhmm_dmirror_read, g.dm[0], pa(r, 0), g.buf, RP,
						  &cmd), 0);
		check_buf(g.buf, r, 0, RP, "device-view read");
	}
}

static void check_invalidations(void)
{
	for (int d = 0; d < 2; d++) {
		uint64_t c[8];
		EXPECT_RC("uhmm_dmirror_invalidations", uhmm_dmirror_invalidations(g.dm[d], c), 0);
		for (int e = 0; e < 8; e++) {
			if (c[e] < g.inval[d][e])
				fail("device %d: invalidation counter %d went back", dev_of[d], e);
			g.inval[d][e] = c[e];
		}
	}
}

/* ------------------------------------------------------------------------ */
/* setup and per-input reset                                                 */
/* ------------------------------------------------------------------------ */

static bool not_invalidate(struct uhmm_interval_notifier *n, const struct uhmm_notifier_range *r,
			   unsigned long cur_seq)
{
	(void)r;
	uhmm_interval_set_seq(n, cur_seq);
	return true;
}

static const struct uhmm_interval_notifier_ops not_ops = { .invalidate = not_invalidate };

static void setup(void)
{
	g.strict = getenv("FUZZ_UHMM_STRICT") != NULL;
	g.region_len = (size_t)(NR * (RP + 1) + 1) * PS;
	g.region = mmap(NULL, g.region_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			-1, 0);
	if (g.region == MAP_FAILED) {
		perror("fuzz_uhmm: mmap");
		exit(1);
	}
	for (int r = 0; r < NR; r++) {
		g.base[r] = g.region + (size_t)(1 + r * (RP + 1)) * PS;
		int fl = (r == SHR ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS | MAP_FIXED;
		if (mmap(g.base[r], RP * PS, RW, fl, -1, 0) != g.base[r]) {
			perror("fuzz_uhmm: mmap range");
			exit(1);
		}
	}
	g.shadow = malloc((size_t)NR * RP * PS);
	g.buf = malloc((size_t)(RP + 1) * PS);
	if (!g.shadow || !g.buf)
		exit(1);
	for (int d = 0; d < 2; d++) {
		int rc = uhmm_dmirror_open((unsigned int)dev_of[d], &g.dm[d]);
		if (rc) {
			fprintf(stderr, "fuzz_uhmm: uhmm_dmirror_open(%d): %s\n", dev_of[d],
				strerror(-rc));
			exit(1);
		}
	}
	if (uhmm_interval_notifier_insert(&g.not, (uint64_t)(uintptr_t)g.region, g.region_len,
					  &not_ops)) {
		fprintf(stderr, "fuzz_uhmm: notifier insert failed\n");
		exit(1);
	}
	fprintf(stderr, "fuzz_uhmm: ranges at %p, %s mode, features 0x%llx\n", (void *)g.region,
		g.strict ? "strict" : "tolerant (K1, K2)", (unsigned long long)uhmm_features());
	g.ready = true;
}

static void reset(bool holes)
{
	g.nlog = 0;
	for (int r = 0; r < NR; r++) {
		EXPECT_RC("reset mprotect", mprotect(g.base[r], RP * PS, RW), 0);
		memset(g.ro[r], 0, sizeof(g.ro[r]));
		if (holes) {
			int adv = r == SHR ? MADV_REMOVE : MADV_DONTNEED;
			EXPECT_RC("reset madvise", madvise(g.base[r], RP * PS, adv), 0);
			memset(sh(r, 0), 0, RP * PS);
		} else {
			for (int p = 0; p < RP; p++)
				pattern(sh(r, p), 0, r, p);
			memcpy(g.base[r], sh(r, 0), RP * PS);
		}
	}
}

/* Bring everything back; pools must be empty and the CPU must see the shadow. */
static void finish(void)
{
	logop("finish");
	check_pools();
	for (int d = 0; d < 2; d++)
		EXPECT_RC("set_flags(0)", uhmm_dmirror_set_flags(g.dm[d], 0), 0);
	EXPECT_RC("exclusive_release(all)", uhmm_device_exclusive_release(0, 0, &fuzz_owner), 0);
	for (int r = 0; r < NR; r++) {
		EXPECT_RC("mprotect RW", mprotect(g.base[r], RP * PS, RW), 0);
		memset(g.ro[r], 0, sizeof(g.ro[r]));
	}
	for (int d = 0; d < 2; d++) {
		EXPECT_RC("release", uhmm_dmirror_release(g.dm[d]), 0);
		if (in_use(d) != 0)
			fail("device %d: %llu pages in use after release of a read-write state",
			     dev_of[d], (unsigned long long)in_use(d));
	}
	check_pools();
	for (int r = 0; r < NR; r++)
		check_cpu(r, 0, RP);
	check_invalidations();
}

/* ------------------------------------------------------------------------ */
/* operations                                                                */
/* ------------------------------------------------------------------------ */

struct op {
	uint8_t code, a, b, c;
	int r, p, n, dmi;
};

static void op_cpu_write(const struct op *o)
{
	logop("cpu_write r%d p%d n%d seed %d%s", o->r, o->p, o->n, o->c,
	      (o->b & 0x10) ? " (one word)" : "");
	for (int i = 0; i < o->n; i++) {
		int p = o->p + i;
		if (g.ro[o->r][p])
			continue;
		if (o->b & 0x10) {
			uint64_t v = 0x0101010101010101ULL * o->c + (uint64_t)p, off = (o->c * 7u) % 512;
			memcpy(sh(o->r, p) + off * 8, &v, 8);
			memcpy(pg(o->r, p) + off * 8, &v, 8);
		} else {
			pattern(sh(o->r, p), 1u + o->c, o->r, p);
			memcpy(pg(o->r, p), sh(o->r, p), PS);
		}
	}
}

static void op_dev_read(const struct op *o)
{
	struct uhmm_dmirror_cmd cmd;
	logop("dev%d read r%d p%d n%d", dev_of[o->dmi], o->r, o->p, o->n);
	memset(g.buf, 0xEE, (size_t)o->n * PS);
	EXPECT_RC("read", run(uhmm_dmirror_read, g.dm[o->dmi], pa(o->r, o->p), g.buf,
			      (uint64_t)o->n, &cmd), 0);
	if (cmd.cpages != (uint64_t)o->n)
		fail("read: cpages %llu, expected %d", (unsigned long long)cmd.cpages, o->n);
	check_buf(g.buf, o->r, o->p, o->n, "device read");
}

/*
 * A device write that failed may have written a prefix of the range (pages
 * already mirrored writable): each page is the old or the new data, and the
 * pages from limit on are the old data.
 */
static void settle_partial_write(const struct op *o, int limit)
{
	for (int i = 0; i < o->n; i++) {
		const uint8_t *nw = g.buf + (size_t)i * PS;
		if (i < limit && memcmp(pg(o->r, o->p + i), nw, PS) == 0)
			memcpy(sh(o->r, o->p + i), nw, PS);
		else
			cmp_page(pg(o->r, o->p + i), o->r, o->p + i, "after a failed device write");
	}
}

static void op_dev_write(const struct op *o)
{
	struct uhmm_dmirror_cmd cmd;
	uint8_t s[RP] = { 0 };
	int limit = o->n;   /* first page the device must not be able to write */

	logop("dev%d write r%d p%d n%d seed %d", dev_of[o->dmi], o->r, o->p, o->n, o->c);
	if (any_ro(o->r, o->p, o->n))
		snap(o->dmi, o->r, o->p, o->n, s);
	for (int i = 0; i < o->n; i++) {
		/* K2: device 0 may write a read-only page it holds. */
		bool k2 = !g.strict && o->dmi == 0 && s[i] == S_PRIV_LOCAL;
		if (g.ro[o->r][o->p + i] && !k2) {
			limit = i;
			break;
		}
	}
	for (int i = 0; i < o->n; i++)
		pattern(g.buf + (size_t)i * PS, 1000u + o->c, o->r, o->p + i);
	int rc = run(uhmm_dmirror_write, g.dm[o->dmi], pa(o->r, o->p), g.buf, (uint64_t)o->n,
		     &cmd);
	if (limit == o->n && !any_ro(o->r, o->p, o->n)) {
		EXPECT_RC("write", rc, 0);
	} else if (limit < o->n) {
		EXPECT_RC("write to a read-only page", rc, -EPERM);
		settle_partial_write(o, limit);
		return;
	} else if (rc != 0) {
		EXPECT_RC("write (read-only pages, all held by device 0)", rc, -EPERM);
		settle_partial_write(o, limit);
		return;
	}
	if (cmd.cpages != (uint64_t)o->n)
		fail("write: cpages %llu, expected %d", (unsigned long long)cmd.cpages, o->n);
	memcpy(sh(o->r, o->p), g.buf, (size_t)o->n * PS);
}

static void op_to_dev(const struct op *o)
{
	struct uhmm_dmirror_cmd cmd;
	uint8_t s[RP];
	void *ptr = (o->c & 2) ? g.buf : NULL;

	logop("dev%d migrate_to_dev r%d p%d n%d%s", dev_of[o->dmi], o->r, o->p, o->n,
	      ptr ? "" : " (no ptr)");
	memset(g.buf, 0xEE, (size_t)o->n * PS);
	int rc = run(uhmm_dmirror_migrate_to_dev, g.dm[o->dmi], pa(o->r, o->p), ptr,
		     (uint64_t)o->n, &cmd);
	if (o->r == SHR)
		EXPECT_RC("migrate_to_dev of shared memory", rc, -ENOENT);
	if (rc != 0 && rc != -ENOENT)
		fail("migrate_to_dev: returned %d, expected 0 or -ENOENT", rc);
	snap(o->dmi, o->r, o->p, o->n, s);
	uint64_t local = rc == 0 ? (uint64_t)o->n : cmd.cpages;
	if (local > (uint64_t)o->n || (rc != 0 && local == (uint64_t)o->n))
		fail("migrate_to_dev: rc %d with cpages %llu of %d", rc,
		     (unsigned long long)cmd.cpages, o->n);
	if (cmd.cpages != local)
		fail("migrate_to_dev: cpages %llu, expected %llu", (unsigned long long)cmd.cpages,
		     (unsigned long long)local);
	for (uint64_t i = 0; i < local; i++)
		if (!is_local(o->dmi, s[i]))
			fail("migrate_to_dev reported page %llu migrated, snapshot 0x%02x",
			     (unsigned long long)i, s[i]);
	if (rc != 0 && is_local(o->dmi, s[local]))
		fail("migrate_to_dev stopped at page %llu, which is in device memory",
		     (unsigned long long)local);
	if (rc == 0 && ptr)
		check_buf(g.buf, o->r, o->p, o->n, "migrate_to_dev read-back");
}

static void op_to_sys(const struct op *o)
{
	struct uhmm_dmirror_cmd cmd;
	uint8_t s[RP];
	uint64_t before = 0, stuck = 0;

	logop("dev%d migrate_to_sys r%d p%d n%d", dev_of[o->dmi], o->r, o->p, o->n);
	snap(o->dmi, o->r, o->p, o->n, s);
	for (int i = 0; i < o->n; i++) {
		before += is_local(o->dmi, s[i]);
		/* K1: a coherent page in a read-only mapping stays. */
		stuck += !g.strict && o->dmi == 1 && s[i] == S_COH_LOCAL_R && g.ro[o->r][o->p + i];
	}
	EXPECT_RC("migrate_to_sys", run(uhmm_dmirror_migrate_to_sys, g.dm[o->dmi],
					pa(o->r, o->p), NULL, (uint64_t)o->n, &cmd), 0);
	if (cmd.cpages != before - stuck)
		fail("migrate_to_sys: cpages %llu, %llu pages were in device memory",
		     (unsigned long long)cmd.cpages, (unsigned long long)(before - stuck));
	snap(o->dmi, o->r, o->p, o->n, s);
	for (int i = 0; i < o->n; i++) {
		bool k1 = !g.strict && o->dmi == 1 && s[i] == S_COH_LOCAL_R && g.ro[o->r][o->p + i];
		if (is_local(o->dmi, s[i]) && !k1)
			fail("migrate_to_sys: page %d still in device memory (0x%02x)", i, s[i]);
	}
}

static void op_snapshot(const struct op *o)
{
	uint8_t s[RP];
	logop("dev%d snapshot r%d p%d n%d", dev_of[o->dmi], o->r, o->p, o->n);
	snap(o->dmi, o->r, o->p, o->n, s);
}

/* What making [p, p + n) exclusive must report first, from the page states. */
static int expected_exclusive_err(int r, int p, int n)
{
	bool coh[RP];
	if (r == SHR)
		return -EOPNOTSUPP;
	coherent_map(r, p, n, coh);
	for (int i = 0; i < n; i++) {
		if (g.ro[r][p + i])
			return -EPERM;
		if (coh[i])
			return -EBUSY;
	}
	return 0;
}

static void op_exclusive(const struct op *o)
{
	struct uhmm_dmirror_cmd cmd;
	void *ptr = (o->c & 2) ? g.buf : NULL;
	int want = expected_exclusive_err(o->r, o->p, o->n);

	logop("dev%d exclusive r%d p%d n%d%s", dev_of[o->dmi], o->r, o->p, o->n,
	      ptr ? "" : " (no ptr)");
	memset(g.buf, 0xEE, (size_t)o->n * PS);
	EXPECT_RC("exclusive", run(uhmm_dmirror_exclusive, g.dm[o->dmi], pa(o->r, o->p), ptr,
				   (uint64_t)o->n, &cmd), want);
	if (want)
		return;
	if (cmd.cpages != (uint64_t)o->n)
		fail("exclusive: cpages %llu, expected %d", (unsigned long long)cmd.cpages, o->n);
	if (ptr)
		check_buf(g.buf, o->r, o->p, o->n, "exclusive read-back");
	EXPECT_RC("check_exclusive after exclusive",
		  run(uhmm_dmirror_check_exclusive, g.dm[o->dmi], pa(o->r, o->p), NULL,
		      (uint64_t)o->n, NULL), -EPERM);
}

static void op_check_exclusive(const struct op *o)
{
	logop("dev%d check_exclusive r%d p%d n%d", dev_of[o->dmi], o->r, o->p, o->n);
	int rc = run(uhmm_dmirror_check_exclusive, g.dm[o->dmi], pa(o->r, o->p), NULL,
		     (uint64_t)o->n, NULL);
	if (rc != 0 && rc != -EPERM)
		fail("check_exclusive: returned %d", rc);
}

static void op_atomic(const struct op *o)
{
	unsigned word = (o->c >> 1) % (PS / 8);
	uint64_t addr = pa(o->r, o->p) + word * 8, val = 0x0102030405ULL * o->b + 1, old = 0;
	bool coh = false;

	if (o->r != SHR)
		coherent_map(o->r, o->p, 1, &coh);
	logop("dev%d atomic_add r%d p%d word %u%s", dev_of[o->dmi], o->r, o->p, word,
	      coh ? " (coherent page: skipped)" : "");
	if (coh)
		return;   /* always -EBUSY, after ~1 s of retries */
	int want = o->r == SHR ? -EOPNOTSUPP : g.ro[o->r][o->p] ? -EPERM : 0;
	EXPECT_RC("atomic_add", uhmm_dmirror_atomic_add(g.dm[o->dmi], addr, val, &old), want);
	if (want)
		return;
	uint64_t sv;
	memcpy(&sv, sh(o->r, o->p) + word * 8, 8);
	if (old != sv)
		fail("atomic_add: old value 0x%llx, expected 0x%llx", (unsigned long long)old,
		     (unsigned long long)sv);
	sv += val;
	memcpy(sh(o->r, o->p) + word * 8, &sv, 8);
}

static void op_mprotect(const struct op *o)
{
	bool ro = o->c & 1;
	logop("mprotect r%d p%d n%d %s", o->r, o->p, o->n, ro ? "RO" : "RW");
	EXPECT_RC("mprotect", mprotect(pg(o->r, o->p), (size_t)o->n * PS, ro ? PROT_READ : RW), 0);
	for (int i = 0; i < o->n; i++)
		g.ro[o->r][o->p + i] = ro;
}

static void op_madvise(const struct op *o)
{
	bool remove = o->r == SHR && (o->c & 1) && !any_ro(o->r, o->p, o->n);
	logop("madvise r%d p%d n%d %s", o->r, o->p, o->n, remove ? "REMOVE" : "DONTNEED");
	EXPECT_RC("madvise", madvise(pg(o->r, o->p), (size_t)o->n * PS,
				     remove ? MADV_REMOVE : MADV_DONTNEED), 0);
	if (o->r != SHR || remove)   /* shared memory keeps its data on DONTNEED */
		memset(sh(o->r, o->p), 0, (size_t)o->n * PS);
}

static void op_release(const struct op *o)
{
	uint64_t stuck = 0;
	logop("dev%d release", dev_of[o->dmi]);
	EXPECT_RC("release", uhmm_dmirror_release(g.dm[o->dmi]), 0);
	for (int r = 0; r < NR; r++) {
		uint8_t s[RP];
		snap(o->dmi, r, 0, RP, s);
		for (int p = 0; p < RP; p++) {
			if (!is_local(o->dmi, s[p]))
				continue;
			if (g.strict || o->dmi == 0 || !g.ro[r][p])
				fail("release: range %d page %d still in device %d memory (0x%02x)",
				     r, p, dev_of[o->dmi], s[p]);
			stuck++;   /* K1 */
		}
	}
	if (in_use(o->dmi) != stuck)
		fail("release: device %d pool in_use %llu, expected %llu", dev_of[o->dmi],
		     (unsigned long long)in_use(o->dmi), (unsigned long long)stuck);
}

static void op_set_flags(const struct op *o)
{
	uint64_t fl = (o->c & 2) ? 0 : UHMM_DMIRROR_FLAG_FAIL_ALLOC;
	logop("dev%d set_flags 0x%llx", dev_of[o->dmi], (unsigned long long)fl);
	EXPECT_RC("set_flags", uhmm_dmirror_set_flags(g.dm[o->dmi], fl), 0);
}

/* One bad (addr, npages, ptr) for one dmirror command: the documented errno. */
static void op_bad_dmirror(const struct op *o)
{
	int kind = o->b % (K_NKINDS + 1), cls = o->c % 12;
	struct uhmm_dmirror *dm = g.dm[o->dmi];
	struct uhmm_dmirror_cmd cmd;
	uint64_t a = pa(o->r, o->p);
	uint8_t s[RP];

	if (kind == K_NKINDS) {   /* atomic_add */
		static const uint64_t off[] = { 1, 2, 3, 4, 5, 6, 7 };
		uint64_t old = 0x1234;
		logop("bad atomic_add class %d", cls % 5);
		switch (cls % 5) {
		case 0:
			EXPECT_RC("atomic_add misaligned", uhmm_dmirror_atomic_add(dm,
				  a + off[o->c % 7], 1, &old), -EINVAL);
			break;
		case 1:
			EXPECT_RC("atomic_add above 2^47", uhmm_dmirror_atomic_add(dm, ADDR_LIMIT,
				  1, &old), -EINVAL);
			break;
		case 2:
			EXPECT_RC("atomic_add NULL dm", uhmm_dmirror_atomic_add(NULL, a, 1, &old),
				  -EINVAL);
			break;
		case 3:
			EXPECT_RC("atomic_add guard", uhmm_dmirror_atomic_add(dm,
				  (uintptr_t)guard_before(o->r), 1, &old), -EFAULT);
			break;
		default:
			EXPECT_RC("atomic_add unmapped", uhmm_dmirror_atomic_add(dm, LOW_UNMAPPED,
				  1, &old), -EFAULT);
			break;
		}
		if (old != 0x1234)
			fail("failed atomic_add wrote *old");
		return;
	}
	cmd_fn fn = kinds[kind];
	const char *name = kind_names[kind];
	logop("bad dev%d %s class %d r%d p%d", dev_of[o->dmi], name, cls, o->r, o->p);
	memset(g.buf, 0xEE, 2 * PS);
	switch (cls) {
	case 0:
		EXPECT_RC(name, run(fn, dm, a + 1 + (o->c * 13u) % (PS - 1), g.buf, 1, NULL),
			  -EINVAL);
		break;
	case 1:
		EXPECT_RC(name, run(fn, dm, a, g.buf, 0, NULL), -EINVAL);
		break;
	case 2:
		EXPECT_RC(name, run(fn, dm, a, g.buf, UINT64_MAX / PS, NULL), -EINVAL);
		break;
	case 3:
		EXPECT_RC(name, run(fn, dm, a, g.buf, (UINT64_MAX >> 12) + 1, NULL), -EINVAL);
		break;
	case 4:
		EXPECT_RC(name, run(fn, dm, ADDR_LIMIT, g.buf, 1, NULL), -EINVAL);
		break;
	case 5:
		EXPECT_RC(name, run(fn, NULL, a, g.buf, 1, NULL), -EINVAL);
		break;
	case 6:
		EXPECT_RC(name, fn(dm, NULL), -EINVAL);
		break;
	case 7:
	case 8: {
		/* a PROT_NONE guard page, or a never-mapped page */
		uint64_t bad = cls == 7 ? (uintptr_t)guard_before(o->r) : LOW_UNMAPPED;
		static const int want[K_NKINDS] = { -EFAULT, -EFAULT, -EINVAL, -EINVAL, 0,
						    -EFAULT, 0 };
		EXPECT_RC(name, run(fn, dm, bad, g.buf, 1, &cmd), want[kind]);
		if (kind == K_SNAP && g.buf[0] != UHMM_DMIRROR_PROT_ERROR)
			fail("snapshot of a %s page: 0x%02x", cls == 7 ? "PROT_NONE" : "unmapped",
			     g.buf[0]);
		if (kind == K_READ && g.buf[0] != 0xEE)
			fail("failed read wrote the caller's buffer");
		break;
	}
	case 9: {
		/* the last page of the range and the guard page after it */
		int p = RP - 1;
		uint64_t at = pa(o->r, p);
		int rc = run(fn, dm, at, g.buf, 2, &cmd);
		struct op w = { .r = o->r, .p = p, .n = 1 };
		switch (kind) {
		case K_READ:
			EXPECT_RC(name, rc, -EFAULT);
			if (g.buf[0] != 0xEE)
				fail("failed read wrote the caller's buffer");
			break;
		case K_WRITE:
			/* a read-only last page: -EPERM, unless device 0 holds it (K2) */
			if (rc != -EFAULT && !(g.ro[o->r][p] && rc == -EPERM))
				fail("write across the range end: %d", rc);
			settle_partial_write(&w, 1);
			break;
		case K_TO_DEV:
		case K_TO_SYS:
			snap(o->dmi, o->r, p, 1, s);
			EXPECT_RC(name, rc, -EINVAL);
			break;
		case K_SNAP:
			EXPECT_RC(name, rc, 0);
			if (!snap_ok(o->dmi, o->r, p, g.buf[0]) ||
			    g.buf[1] != UHMM_DMIRROR_PROT_ERROR)
				fail("snapshot across the range end: 0x%02x 0x%02x", g.buf[0],
				     g.buf[1]);
			break;
		case K_EXCL:
			if (rc != -EFAULT && rc != -EPERM && rc != -EOPNOTSUPP && rc != -EBUSY)
				fail("exclusive across the range end: %d", rc);
			break;
		default:
			if (rc != 0 && rc != -EPERM)
				fail("check_exclusive across the range end: %d", rc);
			break;
		}
		break;
	}
	case 10:
		if (kind == K_READ || kind == K_WRITE || kind == K_SNAP)
			EXPECT_RC(name, run(fn, dm, a, NULL, 1, NULL), -EINVAL);
		break;
	default:
		/* a caller buffer that is not mapped (read/write copy through the kernel) */
		if (kind == K_READ || kind == K_WRITE)
			EXPECT_RC(name, run(fn, dm, a, guard_before(o->r), 1, NULL), -EFAULT);
		break;
	}
}

static int dummy_to_ram(struct uhmm_devmem *mem, const struct uhmm_fault *vmf)
{
	(void)mem;
	(void)vmf;
	return -EIO;
}

static const struct uhmm_devmem_ops priv_ops = { .migrate_to_ram = dummy_to_ram };
static const struct uhmm_devmem_ops no_ops = { .page_free = NULL };

/* Bad arguments to the rest of the public API. */
static void op_api_bad(const struct op *o)
{
	int cls = o->c % 12;
	uint64_t a = pa(o->r, o->p), pfns[2] = { 0, 0 }, src[2], dst[2], page = 0;
	struct uhmm_range rg = {
		.notifier = &g.not, .start = a, .end = a + PS, .hmm_pfns = pfns,
		.default_flags = UHMM_PFN_REQ_FAULT,
	};
	struct uhmm_migrate m = {
		.start = a, .end = a + PS, .src = src, .dst = dst, .pgmap_owner = &fuzz_owner,
		.flags = UHMM_MIGRATE_SELECT_SYSTEM,
	};
	struct uhmm_interval_notifier n;
	struct uhmm_devmem *mem = NULL;
	struct uhmm_devmem_stats st;
	static const uint64_t bogus[] = { 0, 1ULL << 40, UHMM_PFN_PFN_MASK, UINT64_MAX };
	uint64_t bf = bogus[o->b % 4];

	logop("api_bad class %d r%d p%d", cls, o->r, o->p);
	switch (cls) {
	case 0:
		EXPECT_RC("range_fault(NULL)", uhmm_range_fault(NULL), -EINVAL);
		rg.notifier = NULL;
		EXPECT_RC("range_fault no notifier", uhmm_range_fault(&rg), -EINVAL);
		rg.notifier = &g.not;
		rg.hmm_pfns = NULL;
		EXPECT_RC("range_fault no pfns", uhmm_range_fault(&rg), -EINVAL);
		rg.hmm_pfns = pfns;
		rg.start = a + 8;
		EXPECT_RC("range_fault unaligned", uhmm_range_fault(&rg), -EINVAL);
		rg.start = a + PS;
		EXPECT_RC("range_fault empty", uhmm_range_fault(&rg), -EINVAL);
		break;
	case 1:
		/* requested PROT_NONE / unmapped pages: -EFAULT; unrequested: ERROR */
		for (int i = 0; i < 2; i++) {
			rg.start = i ? LOW_UNMAPPED : (uintptr_t)guard_before(o->r);
			rg.end = rg.start + PS;
			rg.default_flags = UHMM_PFN_REQ_FAULT;
			int rc;
			do {
				rg.notifier_seq = uhmm_interval_read_begin(&g.not);
			} while ((rc = uhmm_range_fault(&rg)) == -EBUSY);
			EXPECT_RC("range_fault on a bad page", rc, -EFAULT);
			rg.default_flags = 0;
			do {
				rg.notifier_seq = uhmm_interval_read_begin(&g.not);
			} while ((rc = uhmm_range_fault(&rg)) == -EBUSY);
			EXPECT_RC("range_fault without request on a bad page", rc, 0);
			if (!(pfns[0] & UHMM_PFN_ERROR) || (pfns[0] & UHMM_PFN_VALID))
				fail("range_fault: bad page reads 0x%llx", (unsigned long long)pfns[0]);
		}
		break;
	case 2:
		memset(&n, 0, sizeof(n));
		EXPECT_RC("notifier_insert(NULL)", uhmm_interval_notifier_insert(NULL, a, PS,
			  &not_ops), -EINVAL);
		EXPECT_RC("notifier_insert no ops", uhmm_interval_notifier_insert(&n, a, PS, NULL),
			  -EINVAL);
		EXPECT_RC("notifier_insert len 0", uhmm_interval_notifier_insert(&n, a, 0,
			  &not_ops), -EINVAL);
		EXPECT_RC("notifier_insert overflow", uhmm_interval_notifier_insert(&n,
			  UINT64_MAX & ~(PS - 1), 2 * PS, &not_ops), -EINVAL);
		EXPECT_RC("notifier_remove never inserted", uhmm_interval_notifier_remove(&n),
			  -EINVAL);
		EXPECT_RC("notifier_remove(NULL)", uhmm_interval_notifier_remove(NULL), -EINVAL);
		EXPECT_RC("notifier_insert", uhmm_interval_notifier_insert(&n, a, PS, &not_ops), 0);
		EXPECT_RC("notifier_insert twice", uhmm_interval_notifier_insert(&n, a, PS,
			  &not_ops), -EINVAL);
		EXPECT_RC("notifier_remove", uhmm_interval_notifier_remove(&n), 0);
		EXPECT_RC("notifier_remove twice", uhmm_interval_notifier_remove(&n), -EINVAL);
		if (uhmm_interval_read_begin(NULL) != 0 || !uhmm_interval_read_retry(NULL, 0) ||
		    !uhmm_interval_check_retry(NULL, 0))
			fail("NULL notifier: read_begin/read_retry/check_retry");
		uhmm_interval_set_seq(NULL, 1);
		break;
	case 3:
		EXPECT_RC("migrate_vma_setup(NULL)", uhmm_migrate_vma_setup(NULL), -EINVAL);
		m.src = NULL;
		EXPECT_RC("migrate_vma_setup no src", uhmm_migrate_vma_setup(&m), -EINVAL);
		m.src = src;
		m.dst = NULL;
		EXPECT_RC("migrate_vma_setup no dst", uhmm_migrate_vma_setup(&m), -EINVAL);
		m.dst = dst;
		m.flags = 0;
		EXPECT_RC("migrate_vma_setup no flags", uhmm_migrate_vma_setup(&m), -EINVAL);
		m.flags = UHMM_MIGRATE_SELECT_SYSTEM;
		m.start = a + 8;
		EXPECT_RC("migrate_vma_setup unaligned", uhmm_migrate_vma_setup(&m), -EINVAL);
		m.start = a + PS;
		EXPECT_RC("migrate_vma_setup empty", uhmm_migrate_vma_setup(&m), -EINVAL);
		m.start = LOW_UNMAPPED;
		m.end = LOW_UNMAPPED + PS;
		EXPECT_RC("migrate_vma_setup unmapped", uhmm_migrate_vma_setup(&m), -EFAULT);
		/* the never-set-up descriptor: pages/finalize do nothing */
		m.uhmm__priv = NULL;
		uhmm_migrate_vma_pages(&m);
		uhmm_migrate_vma_finalize(&m);
		uhmm_migrate_vma_pages(NULL);
		uhmm_migrate_vma_finalize(NULL);
		break;
	case 4: {
		uint64_t pages[2];
		int errs[2];
		EXPECT_RC("make_device_exclusive unaligned", uhmm_make_device_exclusive(a + 8, 1,
			  &fuzz_owner, pages, errs), -EINVAL);
		EXPECT_RC("make_device_exclusive npages 0", uhmm_make_device_exclusive(a, 0,
			  &fuzz_owner, pages, errs), -EINVAL);
		EXPECT_RC("make_device_exclusive no pages", uhmm_make_device_exclusive(a, 1,
			  &fuzz_owner, NULL, errs), -EINVAL);
		EXPECT_RC("make_device_exclusive overflow", uhmm_make_device_exclusive(a,
			  UINT64_MAX / PS, &fuzz_owner, pages, errs), -EINVAL);
		EXPECT_RC("make_device_exclusive unmapped", uhmm_make_device_exclusive(
			  LOW_UNMAPPED, 2, &fuzz_owner, pages, errs), -EFAULT);
		EXPECT_RC("make_device_exclusive guard", uhmm_make_device_exclusive(
			  (uintptr_t)guard_before(o->r), 1, &fuzz_owner, pages, errs), 0);
		if (pages[0] != 0 || errs[0] != -EFAULT)
			fail("make_device_exclusive of a PROT_NONE page: page %llu err %d",
			     (unsigned long long)pages[0], errs[0]);
		EXPECT_RC("exclusive_release unaligned", uhmm_device_exclusive_release(a + 8, 1,
			  &fuzz_owner), -EINVAL);
		EXPECT_RC("exclusive_release overflow", uhmm_device_exclusive_release(a,
			  UINT64_MAX / PS, &fuzz_owner), -EINVAL);
		if (uhmm_device_exclusive_held(a + 8, &fuzz_owner, pages))
			fail("exclusive_held on an unaligned address");
		break;
	}
	case 5:
		EXPECT_RC("devmem_create NULL owner", uhmm_devmem_create(UHMM_DEVMEM_PRIVATE, NULL,
			  &priv_ops, NULL, 4, &mem), -EINVAL);
		EXPECT_RC("devmem_create bad type", uhmm_devmem_create((enum uhmm_devmem_type)
			  (3 + o->b), &fuzz_owner, &priv_ops, NULL, 4, &mem), -EINVAL);
		EXPECT_RC("devmem_create NULL out", uhmm_devmem_create(UHMM_DEVMEM_COHERENT,
			  &fuzz_owner, &no_ops, NULL, 4, NULL), -EINVAL);
		EXPECT_RC("devmem_create NULL ops", uhmm_devmem_create(UHMM_DEVMEM_COHERENT,
			  &fuzz_owner, NULL, NULL, 4, &mem), -EINVAL);
		EXPECT_RC("devmem_create private without migrate_to_ram", uhmm_devmem_create(
			  UHMM_DEVMEM_PRIVATE, &fuzz_owner, &no_ops, NULL, 4, &mem), -EINVAL);
		EXPECT_RC("devmem_create 0 pages", uhmm_devmem_create(UHMM_DEVMEM_COHERENT,
			  &fuzz_owner, &no_ops, NULL, 0, &mem), -EINVAL);
		EXPECT_RC("devmem_create too big", uhmm_devmem_create(UHMM_DEVMEM_COHERENT,
			  &fuzz_owner, &no_ops, NULL, UINT64_MAX, &mem), -ENOMEM);
		if (mem)
			fail("failed devmem_create set *out");
		EXPECT_RC("devmem_destroy(NULL)", uhmm_devmem_destroy(NULL), -EINVAL);
		EXPECT_RC("devmem_alloc(NULL)", uhmm_devmem_alloc(NULL, &page), -EINVAL);
		EXPECT_RC("devmem_stats(NULL)", uhmm_devmem_stats(NULL, &st), -EINVAL);
		EXPECT_RC("devmem_chunk(NULL)", uhmm_devmem_chunk(NULL, 0, &page, &page), -EINVAL);
		EXPECT_RC("sys_page_alloc(NULL)", uhmm_sys_page_alloc(NULL), -EINVAL);
		if (uhmm_devmem_type(NULL) != 0 || uhmm_devmem_owner(NULL) ||
		    uhmm_devmem_driver_data(NULL))
			fail("accessors of a NULL pool");
		break;
	case 6:
		EXPECT_RC("devmem_page_get(bogus)", uhmm_devmem_page_get(bf), -EINVAL);
		EXPECT_RC("devmem_page_put(bogus)", uhmm_devmem_page_put(bf), -EINVAL);
		EXPECT_RC("page_set_zone_data(bogus)", uhmm_page_set_zone_data(bf, &page), -EINVAL);
		EXPECT_RC("page_copy(bogus)", uhmm_page_copy(bf, bogus[(o->b + 1) % 4]), -EINVAL);
		if (uhmm_page_devmem(bf) || uhmm_page_zone_data(bf) || uhmm_page_addr(bf) ||
		    uhmm_pfn_to_virt(bf & UHMM_PFN_PFN_MASK ? bf & UHMM_PFN_PFN_MASK : 0) ||
		    uhmm_pfn_to_virt(UHMM_PFN_ERROR | 5))
			fail("accessors of a bogus page number 0x%llx", (unsigned long long)bf);
		break;
	case 7: {
		/* a pool of our own: full, busy, double free */
		uint64_t p1 = 0, p2 = 0;
		EXPECT_RC("devmem_create", uhmm_devmem_create(UHMM_DEVMEM_COHERENT, &fuzz_owner,
			  &no_ops, NULL, 1, &mem), 0);
		EXPECT_RC("devmem_alloc(NULL page)", uhmm_devmem_alloc(mem, NULL), -EINVAL);
		EXPECT_RC("devmem_stats(NULL st)", uhmm_devmem_stats(mem, NULL), -EINVAL);
		EXPECT_RC("devmem_alloc", uhmm_devmem_alloc(mem, &p1), 0);
		EXPECT_RC("devmem_alloc full", uhmm_devmem_alloc(mem, &p2), -ENOMEM);
		EXPECT_RC("devmem_destroy busy", uhmm_devmem_destroy(mem), -EBUSY);
		EXPECT_RC("page_copy onto itself", uhmm_page_copy(p1, p1), -EINVAL);
		EXPECT_RC("devmem_page_put", uhmm_devmem_page_put(p1), 0);
		EXPECT_RC("devmem_page_put twice", uhmm_devmem_page_put(p1), -EINVAL);
		EXPECT_RC("devmem_page_get freed", uhmm_devmem_page_get(p1), -EINVAL);
		EXPECT_RC("devmem_chunk past the end", uhmm_devmem_chunk(mem, 1, &p1, &p2),
			  -ENOENT);
		EXPECT_RC("devmem_stats", uhmm_devmem_stats(mem, &st), 0);
		if (st.in_use != 0 || st.allocated != 1 || st.freed != 1 || st.alloc_failures != 1)
			fail("own pool stats: in_use %llu allocated %llu freed %llu failures %llu",
			     (unsigned long long)st.in_use, (unsigned long long)st.allocated,
			     (unsigned long long)st.freed, (unsigned long long)st.alloc_failures);
		EXPECT_RC("devmem_destroy", uhmm_devmem_destroy(mem), 0);
		break;
	}
	case 8:
		EXPECT_RC("migrate_device_range(NULL)", uhmm_migrate_device_range(NULL, 1, 1),
			  -EINVAL);
		EXPECT_RC("migrate_device_range 0 pages", uhmm_migrate_device_range(src, 1, 0),
			  -EINVAL);
		EXPECT_RC("migrate_device_range overflow", uhmm_migrate_device_range(src,
			  UINT64_MAX, 2), -EINVAL);
		EXPECT_RC("migrate_device_range past the arena", uhmm_migrate_device_range(src,
			  1ULL << 40, 1), -EINVAL);
		uhmm_migrate_device_pages(NULL, NULL, 1);
		uhmm_migrate_device_finalize(NULL, NULL, 1);
		break;
	case 9: {
		uint64_t v = 0x77;
		EXPECT_RC("device_read unmapped", uhmm_device_read(&v, LOW_UNMAPPED, 8), -EFAULT);
		EXPECT_RC("device_write unmapped", uhmm_device_write(LOW_UNMAPPED, &v, 8), -EFAULT);
		EXPECT_RC("device_read guard", uhmm_device_read(&v, (uintptr_t)guard_before(o->r),
			  8), -EFAULT);
		EXPECT_RC("device_read 0 bytes", uhmm_device_read(&v, LOW_UNMAPPED, 0), 0);
		if (v != 0x77)
			fail("failed device_read wrote the buffer");
		break;
	}
	case 10: {
		struct uhmm_dmirror *dm = (struct uhmm_dmirror *)&page;
		uint64_t c[8];
		EXPECT_RC("dmirror_open(4)", uhmm_dmirror_open(UHMM_DMIRROR_NDEVICES, &dm), -EINVAL);
		EXPECT_RC("dmirror_open(NULL)", uhmm_dmirror_open(0, NULL), -EINVAL);
		if (dm != (struct uhmm_dmirror *)&page)
			fail("failed dmirror_open set *out");
		EXPECT_RC("dmirror_devmem_stats(4)", uhmm_dmirror_devmem_stats(
			  UHMM_DMIRROR_NDEVICES, &st), -EINVAL);
		EXPECT_RC("dmirror_devmem_stats(NULL)", uhmm_dmirror_devmem_stats(0, NULL), -EINVAL);
		EXPECT_RC("dmirror_invalidations(NULL)", uhmm_dmirror_invalidations(NULL, c),
			  -EINVAL);
		EXPECT_RC("dmirror_invalidations(counts NULL)", uhmm_dmirror_invalidations(
			  g.dm[o->dmi], NULL), -EINVAL);
		EXPECT_RC("dmirror_set_flags unknown", uhmm_dmirror_set_flags(g.dm[o->dmi],
			  2ULL << (o->b % 63)), -EINVAL);
		EXPECT_RC("dmirror_set_flags(NULL)", uhmm_dmirror_set_flags(NULL, 0), -EINVAL);
		EXPECT_RC("dmirror_release(NULL)", uhmm_dmirror_release(NULL), -EINVAL);
		uhmm_dmirror_close(NULL);
		break;
	}
	default:
		if (uhmm_inject_fired("no-such-point") != -1 || uhmm_inject_fired(NULL) != -1)
			fail("inject_fired of an unknown point");
		uhmm_stats_get(NULL);
		break;
	}
}

/* uhmm_make_device_exclusive() with an owner of our own: frames hold the data. */
static void op_api_exclusive(const struct op *o)
{
	uint64_t pages[RP], fr;
	int errs[RP];
	bool coh[RP] = { false };

	logop("api_exclusive r%d p%d n%d%s%s", o->r, o->p, o->n, (o->c & 1) ? " +atomic" : "",
	      (o->c & 2) ? " +release" : "");
	if (o->r != SHR)
		coherent_map(o->r, o->p, o->n, coh);
	long ret = uhmm_make_device_exclusive(pa(o->r, o->p), (uint64_t)o->n, &fuzz_owner, pages,
					      errs);
	long want = 0;
	for (int i = 0; i < o->n; i++) {
		int p = o->p + i;
		int err = o->r == SHR ? -EOPNOTSUPP : g.ro[o->r][p] ? -EPERM : coh[i] ? -EBUSY : 0;
		if (errs[i] != err || (err == 0) != (pages[i] != 0))
			fail("make_device_exclusive page %d: err %d page %llu, expected err %d", i,
			     errs[i], (unsigned long long)pages[i], err);
		if (err)
			continue;
		want++;
		uint8_t *v = uhmm_pfn_to_virt(pages[i]);
		if (!v)
			fail("make_device_exclusive: no pointer for frame %llu",
			     (unsigned long long)pages[i]);
		cmp_page(v, o->r, p, "exclusive frame");
		if (!uhmm_device_exclusive_held(pa(o->r, p), &fuzz_owner, &fr) || fr != pages[i])
			fail("exclusive_held: page %d not held by its owner", i);
		if (uhmm_device_exclusive_held(pa(o->r, p), &other_owner, &fr))
			fail("exclusive_held: page %d held by another owner", i);
		if (o->c & 1) {   /* a device atomic on the frame */
			uint64_t w = __atomic_add_fetch((uint64_t *)(void *)v, o->b + 1u,
							__ATOMIC_SEQ_CST);
			memcpy(sh(o->r, p), &w, 8);
		}
	}
	EXPECT_RC("make_device_exclusive", ret, want);
	if (!(o->c & 2))
		return;
	EXPECT_RC("exclusive_release", uhmm_device_exclusive_release(pa(o->r, o->p),
		  (uint64_t)o->n, &fuzz_owner), 0);
	for (int i = 0; i < o->n; i++)
		if (uhmm_device_exclusive_held(pa(o->r, o->p + i), &fuzz_owner, &fr))
			fail("exclusive_release: page %d still held", i);
}

static void op_range_fault(const struct op *o)
{
	bool wr = o->c & 1;
	uint64_t pfns[RP];
	struct uhmm_range rg = {
		.notifier = &g.not, .start = pa(o->r, o->p),
		.end = pa(o->r, o->p) + (uint64_t)o->n * PS, .hmm_pfns = pfns,
		.default_flags = UHMM_PFN_REQ_FAULT | (wr ? UHMM_PFN_REQ_WRITE : 0),
	};
	int rc, tries = 0;

	logop("range_fault r%d p%d n%d%s", o->r, o->p, o->n, wr ? " write" : "");
	do {
		rg.notifier_seq = uhmm_interval_read_begin(&g.not);
		rc = uhmm_range_fault(&rg);
	} while (rc == -EBUSY && ++tries < 64);
	EXPECT_RC("range_fault", rc, wr && any_ro(o->r, o->p, o->n) ? -EPERM : 0);
	if (rc)
		return;
	for (int i = 0; i < o->n; i++) {
		uint64_t f = pfns[i];
		if (!(f & UHMM_PFN_VALID) || (f & UHMM_PFN_ERROR) || (wr && !(f & UHMM_PFN_WRITE)))
			fail("range_fault page %d: 0x%llx", i, (unsigned long long)f);
		if (f & UHMM_PFN_DEVICE) {
			struct uhmm_devmem *mem = uhmm_page_devmem(f & UHMM_PFN_PFN_MASK);
			if (!mem || uhmm_devmem_type(mem) != UHMM_DEVMEM_COHERENT)
				fail("range_fault page %d: a device page that is not coherent", i);
		} else if ((f & UHMM_PFN_PFN_MASK) != pa(o->r, o->p + i) >> UHMM_PAGE_SHIFT) {
			fail("range_fault page %d: pfn 0x%llx", i, (unsigned long long)f);
		}
	}
	check_cpu(o->r, o->p, o->n);
}

static void op_check(const struct op *o)
{
	(void)o;
	logop("check");
	check_pools();
	check_dev_view();
	check_invalidations();
}

static void (*const ops[])(const struct op *) = {
	op_cpu_write, op_dev_read, op_dev_write, op_to_dev, op_to_sys, op_snapshot,
	op_exclusive, op_check_exclusive, op_atomic, op_mprotect, op_madvise, op_release,
	op_set_flags, op_bad_dmirror, op_api_bad, op_api_exclusive, op_range_fault, op_check,
	op_to_dev, op_cpu_write,
};
#define NOPS (sizeof(ops) / sizeof(ops[0]))

static void cpu_read_op(const struct op *o)
{
	logop("cpu_read r%d p%d n%d", o->r, o->p, o->n);
	check_cpu(o->r, o->p, o->n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!g.ready)
		setup();
	if (size < 1)
		return 0;
	uint8_t flags = data[0];
	reset(flags & 2);
	data++;
	size--;
	for (int k = 0; k < MAX_OPS && size > 0; k++) {
		uint8_t b[4] = { 0, 0, 0, 0 };
		size_t take = size < 4 ? size : 4;
		memcpy(b, data, take);
		data += take;
		size -= take;
		struct op o = { .code = b[0], .a = b[1], .b = b[2], .c = b[3] };
		o.r = (o.a >> 4) % NR;
		o.p = o.a & (RP - 1);
		o.n = 1 + (o.b & (RP - 1));
		if (o.p + o.n > RP)
			o.n = RP - o.p;
		o.dmi = o.c & 1;
		if (o.code % (NOPS + 1) == NOPS)
			cpu_read_op(&o);
		else
			ops[o.code % (NOPS + 1)](&o);
		if (flags & 1)
			check_dev_view();
	}
	finish();
	return 0;
}
