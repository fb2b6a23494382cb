/* SPDX-License-Identifier: MIT */
/*
 * bench_uhmm.c - the uhmm figures of "make bench", each measured through the
 * public API only (uhmm.h): the reference device (dmirror) for faults,
 * exclusive access and migration, and the interval notifier + range-fault API
 * directly for snapshots and invalidations.  Each group runs in its own child
 * process (fresh runtime; a crash costs that group only, see bench.h).
 * Floors of the first metrics come from bench_floor.c; the last two metrics
 * carry their own floor (1 notifier; flat scaling = 1.0).
 * Usage: bench_uhmm [DIR]   (writes DIR/bench_uhmm.jsonl and .dat files)
 */
#include "bench.h"

#include <pthread.h>
#include <stdbool.h>
#include <uhmm.h>
#include <uhmm_dmirror.h>

typedef int (*ub_cmd_fn)(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd);

static const char *ub_err(int r)
{
	return strerror(r < 0 ? -r : r);
}

static size_t ub_min(size_t a, size_t b)
{
	return a < b ? a : b;
}

/* Runtime and one mirror of device dev; NULL (with a note) on error. */
static struct uhmm_dmirror *ub_start(unsigned int dev)
{
	struct uhmm_dmirror *dm = NULL;
	int r = uhmm_init();

	if (r) {
		bench_note("uhmm_init: %s", ub_err(r));
		return NULL;
	}
	r = uhmm_dmirror_open(dev, &dm);
	if (r) {
		bench_note("uhmm_dmirror_open(%u): %s", dev, ub_err(r));
		return NULL;
	}
	return dm;
}

/*
 * One dmirror command over npages at addr, bounce as cmd->ptr (the device
 * returns migrated data there, as lib/test_hmm.c does).  *ns gets its time.
 * Returns 0, the command's -errno, or -EAGAIN if fewer pages were handled.
 */
static int ub_cmd(ub_cmd_fn fn, const char *what, struct uhmm_dmirror *dm, void *addr,
		  void *bounce, size_t npages, uint64_t *ns)
{
	struct uhmm_dmirror_cmd cmd = {
		.addr = (uint64_t)(uintptr_t)addr, .ptr = (uint64_t)(uintptr_t)bounce,
		.npages = npages,
	};
	uint64_t t0 = bench_now_ns();
	int r = fn(dm, &cmd);

	if (ns)
		*ns = bench_now_ns() - t0;
	if (r) {
		bench_note("%s of %zu pages: %s", what, npages, ub_err(r));
		return r;
	}
	if (cmd.cpages != npages) {
		bench_note("%s: %llu of %zu pages handled", what, (unsigned long long)cmd.cpages,
			   npages);
		return -EAGAIN;
	}
	return 0;
}

/*
 * A short migration round trip before pinning, so that any thread uhmm
 * starts lazily exists and has the helpers' CPU (see bench_place_helpers()).
 */
static int ub_warm_and_pin(struct uhmm_dmirror *dm)
{
	size_t n = 16;
	char *buf = bench_map(n * BENCH_PAGE), *bounce = bench_map(n * BENCH_PAGE);
	int r = -ENOMEM;

	if (buf && bounce) {
		bench_fill_tags(buf, n * BENCH_PAGE);
		r = ub_cmd(uhmm_dmirror_migrate_to_dev, "warm-up migrate_to_dev", dm, buf, bounce,
			   n, NULL);
		if (!r)
			r = ub_cmd(uhmm_dmirror_migrate_to_sys, "warm-up migrate_to_sys", dm, buf,
				   bounce, n, NULL);
	}
	if (buf)
		munmap(buf, n * BENCH_PAGE);
	if (bounce)
		munmap(bounce, n * BENCH_PAGE);
	printf("  measuring thread on CPU %d\n", bench_pin_self());
	return r;
}

/* Pages of buf whose tag is wrong. */
static size_t ub_check_tags(const char *buf, size_t npages)
{
	size_t i, bad = 0;

	for (i = 0; i < npages; i++)
		bad += *(const volatile uint64_t *)(buf + i * BENCH_PAGE) != bench_tag(i);
	return bad;
}

/* ---- fault latency: private fault-back, exclusive revoke ------------------- */

enum ub_lat_kind { UB_LAT_FAULT, UB_LAT_EXCL };

/* Time one CPU access per page of [first, first + n); returns data mismatches. */
static size_t ub_gcd(size_t a, size_t b)
{
	while (b) {
		size_t t = a % b;

		a = b;
		b = t;
	}
	return a;
}

/*
 * One access per page of [first, first + n), in a strided order (each
 * page once, never the page after the last one), so that each access is
 * one fault: a driver that prefetches after sequential faults (the
 * reference device does) would otherwise turn most accesses into hits.
 */
static size_t ub_lat_access(enum ub_lat_kind kind, char *buf, size_t first, size_t n,
			    double *samples)
{
	size_t k, bad = 0, stride = 101;

	while (n > 2 && ub_gcd(stride, n) != 1)
		stride += 2;
	for (k = 0; k < n; k++) {
		size_t i = first + (k * stride) % n;
		volatile char *p = buf + i * BENCH_PAGE;
		uint64_t t0, t1;

		if (kind == UB_LAT_FAULT) {
			char c;

			t0 = bench_now_ns();
			c = p[0];
			t1 = bench_now_ns();
			bad += c != (char)(bench_tag(i) & 0xff);
		} else {
			t0 = bench_now_ns();
			p[8] = 1;
			t1 = bench_now_ns();
			bad += *(volatile uint64_t *)p != bench_tag(i);
		}
		if (first + k >= BENCH_LAT_WARMUP)
			samples[first + k - BENCH_LAT_WARMUP] = (double)(t1 - t0) / 1000.0;
	}
	return bad;
}

/*
 * CPU faults of the kind counted since s0, waiting up to 100 ms for the
 * count to reach n (a service thread may count a fault after waking it).
 */
static uint64_t ub_fault_count(enum ub_lat_kind kind, const struct uhmm_stats *s0, size_t n)
{
	struct uhmm_stats s1;
	uint64_t faults = 0;
	int tries;

	for (tries = 0; tries < 100; tries++) {
		uhmm_stats_get(&s1);
		faults = kind == UB_LAT_FAULT ? s1.cpu_faults_private - s0->cpu_faults_private :
			 s1.cpu_faults_exclusive - s0->cpu_faults_exclusive;
		if (faults >= n)
			break;
		usleep(1000);
	}
	return faults;
}

/* Which figure ub_latency measures: names and the device's memory. */
static const char *ub_lat_p50 = "fault_to_ram_p50", *ub_lat_p99 = "fault_to_ram_p99";

/* The latency groups' buffer is a self-service range (uhmm_self_service). */
static bool ub_self_service;

static void ub_latency(enum ub_lat_kind kind)
{
	size_t n = BENCH_LAT_WARMUP + BENCH_LAT_SAMPLES, done = 0, bad = 0;
	const char *what = kind == UB_LAT_FAULT ? "migrate_to_dev" : "exclusive";
	ub_cmd_fn fn = kind == UB_LAT_FAULT ? uhmm_dmirror_migrate_to_dev : uhmm_dmirror_exclusive;
	double *samples = calloc(BENCH_LAT_SAMPLES, sizeof(double));
	char *buf = bench_map(n * BENCH_PAGE), *bounce = bench_map(BENCH_LAT_BATCH * BENCH_PAGE);
	struct uhmm_dmirror *dm = NULL;
	struct uhmm_stats s0;
	uint64_t faults;

	if (!samples || !buf || !bounce || !(dm = ub_start(0)))
		goto out;
	if (ub_self_service) {
		int rc = uhmm_self_service((uintptr_t)buf, n * BENCH_PAGE);
		if (rc) {
			bench_note("uhmm_self_service: %s", ub_err(rc));
			goto out;
		}
	}
	bench_fill_tags(buf, n * BENCH_PAGE);
	memset(bounce, 0, BENCH_LAT_BATCH * BENCH_PAGE);
	uhmm_stats_get(&s0);
	while (done < n) {
		size_t b = done ? ub_min(BENCH_LAT_BATCH, n - done) : BENCH_LAT_WARMUP;

		if (ub_cmd(fn, what, dm, buf + done * BENCH_PAGE, bounce, b, NULL))
			goto out;
		bad += ub_lat_access(kind, buf, done, b, samples);
		if (!done)	/* the warm-up batch started whatever uhmm starts */
			printf("  measuring thread on CPU %d\n", bench_pin_self());
		done += b;
	}
	faults = ub_fault_count(kind, &s0, n);
	printf("  %zu accesses, %llu %s CPU faults counted by uhmm\n", n,
	       (unsigned long long)faults, kind == UB_LAT_FAULT ? "private" : "exclusive");
	if (faults < n)
		bench_note("%s latency: only %llu of %zu accesses were uhmm faults", what,
			   (unsigned long long)faults, n);
	if (bad) {
		bench_note("%s latency: %zu pages read back wrong data", what, bad);
		goto out;
	}
	bench_sort(samples, BENCH_LAT_SAMPLES);
	bench_emit(ub_lat_p50, bench_pct_sorted(samples, BENCH_LAT_SAMPLES, 50), "us", NAN);
	if (ub_lat_p99)
		bench_emit(ub_lat_p99, bench_pct_sorted(samples, BENCH_LAT_SAMPLES, 99), "us", NAN);
	if (strcmp(ub_lat_p50, "fault_to_ram_p50") && strcmp(ub_lat_p50, "exclusive_revoke_p50"))
		goto out;  /* the CDF files are the default figures' */
	bench_write_cdf(kind == UB_LAT_FAULT ? "bench_lat_fault_uhmm.dat" :
			"bench_lat_excl_uhmm.dat", kind == UB_LAT_FAULT ?
			"uhmm: CPU read of a device-private page (device 0)" :
			"uhmm: CPU write to a device-exclusive page (device 0)",
			samples, BENCH_LAT_SAMPLES);
out:
	if (dm)
		uhmm_dmirror_close(dm);
	if (buf)
		munmap(buf, n * BENCH_PAGE);
	if (bounce)
		munmap(bounce, BENCH_LAT_BATCH * BENCH_PAGE);
	free(samples);
}

static void group_fault_latency(void)
{
	ub_latency(UB_LAT_FAULT);
}

static void group_exclusive_latency(void)
{
	ub_lat_p50 = "exclusive_revoke_p50";
	ub_lat_p99 = "exclusive_revoke_p99";
	ub_latency(UB_LAT_EXCL);
}

/*
 * The same figures as a program sees them: helper threads unpinned
 * (BENCH_PLACEMENT=free for this group), against the same-CPU floor.
 */
static void ub_free_placement(void)
{
	setenv("BENCH_PLACEMENT", "free", 1);
	bench_place_helpers();
}

static void group_fault_latency_free(void)
{
	ub_free_placement();
	ub_lat_p50 = "fault_to_ram_free_p50";
	ub_lat_p99 = NULL;
	ub_latency(UB_LAT_FAULT);
}

static void group_exclusive_latency_free(void)
{
	ub_free_placement();
	ub_lat_p50 = "exclusive_revoke_free_p50";
	ub_lat_p99 = NULL;
	ub_latency(UB_LAT_EXCL);
}

/*
 * Self-service faults: the faulting thread serves its fault in its SIGBUS
 * handler; helpers unpinned, as a program runs (the mode needs no
 * placement: no thread is woken).  Floor: the bare SIGBUS round trip.
 */
static void group_self_fault(void)
{
	ub_free_placement();
	ub_self_service = true;
	ub_lat_p50 = "self_fault_p50";
	ub_lat_p99 = NULL;
	ub_latency(UB_LAT_FAULT);
}

/* Device 0 with its own memory (a driver-owned pool, copies by memcpy). */
static void ub_owned_memory(void)
{
	setenv("UHMM_DMIRROR_MEMORY", "owned", 1);
}

static void group_owned_fault_latency(void)
{
	ub_owned_memory();
	ub_lat_p50 = "owned_fault_to_ram_p50";
	ub_lat_p99 = NULL;
	ub_latency(UB_LAT_FAULT);
}

/* ---- migration throughput --------------------------------------------------- */

struct ub_mig {
	double gb_dev;		/* median GB/s of migrate_to_dev */
	double gb_sys;		/* median GB/s of migrate_to_sys */
	double page_ns;		/* median ns per page of the round trip */
};

/*
 * Up to reps round trips of bytes through migrate_to_dev / migrate_to_sys
 * on dm, after one untimed round if warm; medians in *res.  Stops early,
 * keeping the rounds done, when the group's time would not cover another
 * round (at least one is always done).  0 or -errno.
 */
static int ub_migrate_measure(struct uhmm_dmirror *dm, size_t bytes, int reps, bool warm,
			      struct ub_mig *res)
{
	size_t npages = bytes / BENCH_PAGE, bad;
	char *buf = bench_map(bytes), *bounce = bench_map(bytes);
	double *d = calloc(3 * (size_t)reps, sizeof(double));
	int r = -ENOMEM, i, done = 0;

	if (!buf || !bounce || !d) {
		bench_note("migration of %zu MiB: cannot map 2 x the size", bytes >> 20);
		goto out;
	}
	bench_fill_tags(buf, bytes);
	memset(bounce, 0, bytes);
	for (i = warm ? -1 : 0; i < reps; i++) {
		uint64_t tdev, tsys;

		/* No read-back buffer: the migration alone (the data is checked below). */
		r = ub_cmd(uhmm_dmirror_migrate_to_dev, "migrate_to_dev", dm, buf, NULL, npages,
			   &tdev);
		if (!r)
			r = ub_cmd(uhmm_dmirror_migrate_to_sys, "migrate_to_sys", dm, buf, bounce,
				   npages, &tsys);
		if (r)
			goto out;
		if (i < 0)
			continue;
		d[i] = bench_gbps(bytes, tdev);
		d[reps + i] = bench_gbps(bytes, tsys);
		d[2 * reps + i] = (double)(tdev + tsys) / (double)npages;
		done++;
		if (i + 1 < reps && bench_group_left_s() < 2.0 * (double)(tdev + tsys) / 1e9 + 5) {
			bench_note("migration of %zu MiB: %d of %d rounds (time budget)",
				   bytes >> 20, done, reps);
			break;
		}
	}
	bad = ub_check_tags(buf, npages);
	if (bad) {
		bench_note("migration of %zu MiB: %zu pages came back wrong", bytes >> 20, bad);
		r = -EIO;
		goto out;
	}
	memmove(d + done, d + reps, (size_t)done * sizeof(double));
	memmove(d + 2 * done, d + 2 * reps, (size_t)done * sizeof(double));
	res->gb_dev = bench_median(d, (size_t)done);
	res->gb_sys = bench_median(d + done, (size_t)done);
	res->page_ns = bench_median(d + 2 * done, (size_t)done);
out:
	if (buf)
		munmap(buf, bytes);
	if (bounce)
		munmap(bounce, bytes);
	free(d);
	return r;
}

static void group_migrate(void)
{
	struct uhmm_dmirror *dm = ub_start(0);
	struct ub_mig main_res = { NAN, NAN, NAN };
	FILE *f;
	size_t i;

	if (!dm)
		return;
	ub_warm_and_pin(dm);
	if (!ub_migrate_measure(dm, BENCH_MIG_BYTES, BENCH_MIG_REPS, true, &main_res)) {
		bench_emit("migrate_to_dev_gbps", main_res.gb_dev, "GB/s", NAN);
		bench_emit("migrate_to_sys_gbps", main_res.gb_sys, "GB/s", NAN);
	}
	f = bench_data_open("bench_throughput_uhmm.dat", "w",
			    "uhmm: dmirror device 0 migration, whole range per command");
	if (f)
		fprintf(f, "# size_mib migrate_to_dev_gbps migrate_to_sys_gbps\n");
	for (i = 0; f && i < BENCH_NCURVE; i++) {
		unsigned long mib = bench_curve_mib[i];
		struct ub_mig res = main_res;

		if (mib != (BENCH_MIG_BYTES >> 20) &&
		    ub_migrate_measure(dm, mib << 20, BENCH_CURVE_REPS, true, &res))
			continue;
		fprintf(f, "%lu %.4f %.4f\n", mib, res.gb_dev, res.gb_sys);
		fflush(f);
	}
	if (f)
		fclose(f);
	uhmm_dmirror_close(dm);
}

static void group_owned_migrate(void)
{
	ub_owned_memory();
	struct uhmm_dmirror *dm = ub_start(0);
	struct ub_mig res = { NAN, NAN, NAN };

	if (!dm)
		return;
	ub_warm_and_pin(dm);
	if (!ub_migrate_measure(dm, BENCH_MIG_BYTES, BENCH_MIG_REPS, true, &res)) {
		bench_emit("owned_migrate_to_dev_gbps", res.gb_dev, "GB/s", NAN);
		bench_emit("owned_migrate_to_sys_gbps", res.gb_sys, "GB/s", NAN);
	}
	uhmm_dmirror_close(dm);
}

/*
 * thp_migrate_gbps: 256 MiB of THP-backed memory (2 MiB aligned,
 * MADV_HUGEPAGE) to device 0 (host-frame pool) and back, round trips per
 * second as bytes moved one way over the mean of the two directions: each
 * 2 MiB is one compound entry, one huge device page and one page-table
 * move each way.  Against the memcpy floor.
 */
static void group_thp_migrate(void)
{
	struct uhmm_dmirror *dm = ub_start(0);
	size_t bytes = BENCH_MIG_BYTES, npages = bytes / BENCH_PAGE, bad;
	size_t huge = 2UL << 20;
	double d[BENCH_MIG_REPS];
	int done = 0;
	char *map, *buf;

	if (!dm)
		return;
	ub_warm_and_pin(dm);
	map = bench_map(bytes + huge);
	if (!map) {
		bench_note("thp migration: cannot map %zu MiB", bytes >> 20);
		uhmm_dmirror_close(dm);
		return;
	}
	buf = (char *)(((uintptr_t)map + huge - 1) & ~(uintptr_t)(huge - 1));
	if (madvise(buf, bytes, MADV_HUGEPAGE))
		bench_note("thp migration: MADV_HUGEPAGE: %s", strerror(errno));
	bench_fill_tags(buf, bytes);
	for (int i = -1; i < BENCH_MIG_REPS; i++) {
		uint64_t tdev, tsys;

		if (ub_cmd(uhmm_dmirror_migrate_to_dev, "migrate_to_dev", dm, buf, NULL, npages,
			   &tdev) ||
		    ub_cmd(uhmm_dmirror_migrate_to_sys, "migrate_to_sys", dm, buf, NULL, npages,
			   &tsys))
			goto out;
		if (i < 0)
			continue;
		d[done++] = bench_gbps(bytes, (tdev + tsys) / 2);
		if (bench_group_left_s() < 2.0 * (double)(tdev + tsys) / 1e9 + 5)
			break;
	}
	bad = ub_check_tags(buf, npages);
	if (bad)
		bench_note("thp migration: %zu pages came back wrong", bad);
	else
		bench_emit("thp_migrate_gbps", bench_median(d, (size_t)done), "GB/s", NAN);
out:
	munmap(map, bytes + huge);
	uhmm_dmirror_close(dm);
}

/*
 * Random single-page CPU faults on device 0's own memory with the slow-copy
 * flag (+50 us per copy, asleep like a DMA): faults per second from 2
 * threads on different pages over 1 thread.  Serialized faults give 1.0.
 */
#define UB_CONC_PAGES 2048
struct ub_conc {
	char *buf;
	size_t first, n;
	uint64_t sum;
};

static void *ub_conc_main(void *arg)
{
	struct ub_conc *c = arg;
	/* a stride that visits every page once, never two neighbours in a row */
	for (size_t k = 0; k < c->n; k++) {
		size_t i = c->first + (k * 97) % c->n;
		c->sum += *(volatile uint64_t *)(c->buf + i * BENCH_PAGE);
	}
	return NULL;
}

static double ub_conc_rate(struct uhmm_dmirror *dm, char *buf, int nthreads)
{
	struct ub_conc c[2];
	pthread_t t[2];
	if (ub_cmd(uhmm_dmirror_migrate_to_dev, "migrate_to_dev", dm, buf, NULL, UB_CONC_PAGES,
		   NULL))
		return NAN;
	uint64_t t0 = bench_now_ns();
	for (int i = 0; i < nthreads; i++) {
		c[i] = (struct ub_conc){ buf, (size_t)i * UB_CONC_PAGES / 2, UB_CONC_PAGES / 2, 0 };
		pthread_create(&t[i], NULL, ub_conc_main, &c[i]);
	}
	for (int i = 0; i < nthreads; i++)
		pthread_join(t[i], NULL);
	double secs = (double)(bench_now_ns() - t0) / 1e9;
	if (nthreads == 1) {  /* the other half, for the same number of faults */
		c[0].first = UB_CONC_PAGES / 2;
		t0 = bench_now_ns();
		ub_conc_main(&c[0]);
		secs += (double)(bench_now_ns() - t0) / 1e9;
	}
	return ub_check_tags(buf, UB_CONC_PAGES) == 0 ? UB_CONC_PAGES / secs : NAN;
}

static void group_concurrent_faults(void)
{
	ub_owned_memory();
	struct uhmm_dmirror *dm = ub_start(0);
	char *buf = bench_map(UB_CONC_PAGES * BENCH_PAGE);
	if (!dm || !buf)
		return;
	bench_fill_tags(buf, UB_CONC_PAGES * BENCH_PAGE);
	uhmm_dmirror_set_flags(dm, UHMM_DMIRROR_FLAG_SLOW_COPY);
	double r1[3], r2[3];
	for (int k = 0; k < 3; k++) {
		r1[k] = ub_conc_rate(dm, buf, 1);
		r2[k] = ub_conc_rate(dm, buf, 2);
	}
	double one = bench_median(r1, 3), two = bench_median(r2, 3);
	printf("  slow copies: %.0f faults/s from 1 thread, %.0f from 2\n", one, two);
	bench_emit("concurrent_fault_speedup", two / one, "x", 1.0);
	uhmm_dmirror_close(dm);
	munmap(buf, UB_CONC_PAGES * BENCH_PAGE);
}

/* CPU streaming reads through device-private memory: one u64 per page. */
static const char *ub_seq_metric = "fault_to_ram_seq_gbps";

static void group_seq(void)
{
	size_t npages = BENCH_MIG_BYTES / BENCH_PAGE, i, bad = 0;
	char *buf = bench_map(BENCH_MIG_BYTES), *bounce = bench_map(BENCH_MIG_BYTES);
	struct uhmm_dmirror *dm = ub_start(0);
	double v[BENCH_SEQ_REPS];
	uint64_t expect = 0;
	int rep;

	if (!buf || !bounce || !dm)
		goto out;
	ub_warm_and_pin(dm);
	bench_fill_tags(buf, BENCH_MIG_BYTES);
	memset(bounce, 0, BENCH_MIG_BYTES);
	for (i = 0; i < npages; i++)
		expect += bench_tag(i);
	for (rep = 0; rep < BENCH_SEQ_REPS; rep++) {
		uint64_t sum = 0, t0;

		if (ub_cmd(uhmm_dmirror_migrate_to_dev, "migrate_to_dev", dm, buf, bounce, npages,
			   NULL))
			goto out;
		t0 = bench_now_ns();
		for (i = 0; i < npages; i++)
			sum += *(volatile uint64_t *)(buf + i * BENCH_PAGE);
		v[rep] = bench_gbps(BENCH_MIG_BYTES, bench_now_ns() - t0);
		bad += sum != expect;
	}
	if (bad) {
		bench_note("fault_to_ram_seq: %zu of %d passes read wrong data", bad,
			   BENCH_SEQ_REPS);
		goto out;
	}
	bench_emit(ub_seq_metric, bench_median(v, BENCH_SEQ_REPS), "GB/s", NAN);
out:
	if (dm)
		uhmm_dmirror_close(dm);
	if (buf)
		munmap(buf, BENCH_MIG_BYTES);
	if (bounce)
		munmap(bounce, BENCH_MIG_BYTES);
}

/* migrate_to_dev on the coherent device 2 (timed), migrate_to_sys (not). */
static void group_coherent(void)
{
	size_t npages = BENCH_MIG_BYTES / BENCH_PAGE;
	char *buf = bench_map(BENCH_MIG_BYTES), *bounce = bench_map(BENCH_MIG_BYTES);
	struct uhmm_dmirror *dm = ub_start(2);
	double v[BENCH_MIG_REPS];
	int rep;

	if (!buf || !bounce || !dm)
		goto out;
	ub_warm_and_pin(dm);
	bench_fill_tags(buf, BENCH_MIG_BYTES);
	memset(bounce, 0, BENCH_MIG_BYTES);
	for (rep = -1; rep < BENCH_MIG_REPS; rep++) {
		uint64_t t;

		if (ub_cmd(uhmm_dmirror_migrate_to_dev, "coherent migrate_to_dev", dm, buf, NULL,
			   npages, &t) ||
		    ub_cmd(uhmm_dmirror_migrate_to_sys, "coherent migrate_to_sys", dm, buf, bounce,
			   npages, NULL))
			goto out;
		if (rep >= 0)
			v[rep] = bench_gbps(BENCH_MIG_BYTES, t);
	}
	if (ub_check_tags(buf, npages)) {
		bench_note("coherent migration: data came back wrong");
		goto out;
	}
	bench_emit("coherent_migrate_gbps", bench_median(v, BENCH_MIG_REPS), "GB/s", NAN);
out:
	if (dm)
		uhmm_dmirror_close(dm);
	if (buf)
		munmap(buf, BENCH_MIG_BYTES);
	if (bounce)
		munmap(bounce, BENCH_MIG_BYTES);
}

/* ---- interval notifiers and range fault ----------------------------------- */

/* A driver's notifier: the lock protects the sequence and hits. */
struct ub_nt {
	struct uhmm_interval_notifier n;
	unsigned long hits;
};

static pthread_mutex_t ub_lock = PTHREAD_MUTEX_INITIALIZER;

static bool ub_nt_invalidate(struct uhmm_interval_notifier *n,
			     const struct uhmm_notifier_range *range, unsigned long cur_seq)
{
	struct ub_nt *t = BENCH_CONTAINER_OF(n, struct ub_nt, n);

	(void)range;
	pthread_mutex_lock(&ub_lock);
	uhmm_interval_set_seq(n, cur_seq);
	t->hits++;
	pthread_mutex_unlock(&ub_lock);
	return true;
}

static const struct uhmm_interval_notifier_ops ub_nt_ops = { .invalidate = ub_nt_invalidate };

static unsigned long ub_hits(struct ub_nt *t)
{
	unsigned long h;

	pthread_mutex_lock(&ub_lock);
	h = t->hits;
	pthread_mutex_unlock(&ub_lock);
	return h;
}

/* read_begin, range_fault, read_retry until a stable snapshot; its time in *ns. */
static int ub_snapshot(struct ub_nt *t, struct uhmm_range *range, uint64_t *ns)
{
	int tries;

	for (tries = 0; tries < 100; tries++) {
		uint64_t t0 = bench_now_ns();
		bool retry;
		int r;

		range->notifier_seq = uhmm_interval_read_begin(&t->n);
		r = uhmm_range_fault(range);
		if (r == -EBUSY)
			continue;
		if (r)
			return r;
		pthread_mutex_lock(&ub_lock);
		retry = uhmm_interval_read_retry(&t->n, range->notifier_seq);
		pthread_mutex_unlock(&ub_lock);
		*ns = bench_now_ns() - t0;
		if (!retry)
			return 0;
	}
	return -EBUSY;
}

/* Entries that are not VALID|WRITE system pages at their own address. */
static size_t ub_check_pfns(const uint64_t *pfns, uint64_t start, size_t npages)
{
	size_t i, bad = 0;

	for (i = 0; i < npages; i++) {
		uint64_t e = pfns[i];

		bad += !(e & UHMM_PFN_VALID) || !(e & UHMM_PFN_WRITE) ||
		       (e & (UHMM_PFN_ERROR | UHMM_PFN_DEVICE)) ||
		       (e & UHMM_PFN_PFN_MASK) != (start >> UHMM_PAGE_SHIFT) + i;
	}
	return bad;
}

static void group_range_fault(void)
{
	size_t npages = BENCH_RF_BYTES / BENCH_PAGE, bad;
	char *buf = bench_map(BENCH_RF_BYTES);
	uint64_t *pfns = calloc(npages, sizeof(uint64_t));
	struct ub_nt t = { 0 };
	struct uhmm_range range;
	double v[BENCH_RF_REPS];
	bool inserted = false;
	int r, rep;

	if (!buf || !pfns)
		goto out;
	bench_fill_tags(buf, BENCH_RF_BYTES);
	r = uhmm_interval_notifier_insert(&t.n, (uint64_t)(uintptr_t)buf, BENCH_RF_BYTES,
					  &ub_nt_ops);
	if (r) {
		bench_note("uhmm_interval_notifier_insert: %s", ub_err(r));
		goto out;
	}
	inserted = true;
	memset(&range, 0, sizeof(range));
	range.notifier = &t.n;
	range.start = (uint64_t)(uintptr_t)buf;
	range.end = range.start + BENCH_RF_BYTES;
	range.hmm_pfns = pfns;
	range.default_flags = UHMM_PFN_REQ_FAULT;	/* resident pages: a pure snapshot */
	for (rep = -1; rep < BENCH_RF_REPS; rep++) {
		uint64_t ns;

		r = ub_snapshot(&t, &range, &ns);
		if (r) {
			bench_note("uhmm_range_fault over 1 GiB: %s", ub_err(r));
			goto out;
		}
		if (rep < 0) {
			bad = ub_check_pfns(pfns, range.start, npages);
			if (bad) {
				bench_note("uhmm_range_fault: %zu of %zu entries not VALID|WRITE "
					   "at their own pfn (first: 0x%llx)", bad, npages,
					   (unsigned long long)pfns[0]);
				goto out;
			}
			printf("  measuring thread on CPU %d\n", bench_pin_self());
			continue;
		}
		v[rep] = (double)npages / ((double)ns / 1e9) / 1e6;
	}
	bench_emit("range_fault_mpages_s", bench_median(v, BENCH_RF_REPS), "Mpages/s", NAN);
out:
	if (inserted)
		uhmm_interval_notifier_remove(&t.n);
	if (buf)
		munmap(buf, BENCH_RF_BYTES);
	free(pfns);
}

/* Median ns per mprotect() call toggling page RO/RW; NAN if no invalidation came. */
static double ub_mprotect_ns(char *page, struct ub_nt *t, bool raw)
{
	double v[BENCH_NT_BATCHES];
	unsigned long h0 = ub_hits(t);
	int b, c;

	for (b = 0; b < BENCH_NT_BATCHES; b++) {
		uint64_t t0 = bench_now_ns();

		for (c = 0; c < BENCH_NT_CALLS / 2; c++) {
			int e1, e2;

			if (raw) {
				e1 = (int)syscall(SYS_mprotect, page, BENCH_PAGE, PROT_READ);
				e2 = (int)syscall(SYS_mprotect, page, BENCH_PAGE,
						  PROT_READ | PROT_WRITE);
			} else {
				e1 = mprotect(page, BENCH_PAGE, PROT_READ);
				e2 = mprotect(page, BENCH_PAGE, PROT_READ | PROT_WRITE);
			}
			if (e1 || e2) {
				bench_note("mprotect: %s", strerror(errno));
				return NAN;
			}
		}
		v[b] = (double)(bench_now_ns() - t0) / (BENCH_NT_CALLS / 2 * 2);
	}
	if (!raw && ub_hits(t) - h0 < (unsigned long)BENCH_NT_BATCHES * (BENCH_NT_CALLS / 2 * 2)) {
		bench_note("mprotect: %lu invalidations for %d calls: not intercepted",
			   ub_hits(t) - h0, BENCH_NT_BATCHES * (BENCH_NT_CALLS / 2 * 2));
		return NAN;
	}
	return bench_median(v, BENCH_NT_BATCHES);
}

/* 100k one-page notifiers over a reserved PROT_NONE area; 0 or -errno. */
static int ub_insert_many(struct ub_nt *many, char *area, size_t n)
{
	uint64_t t0 = bench_now_ns();
	size_t i;
	int r;

	for (i = 0; i < n; i++) {
		r = uhmm_interval_notifier_insert(&many[i].n,
						  (uint64_t)(uintptr_t)(area + i * BENCH_PAGE),
						  BENCH_PAGE, &ub_nt_ops);
		if (r) {
			bench_note("notifier insert %zu of %zu: %s", i, n, ub_err(r));
			while (i--)
				uhmm_interval_notifier_remove(&many[i].n);
			return r;
		}
	}
	printf("  %zu notifiers inserted, %.0f ns each\n", n,
	       (double)(bench_now_ns() - t0) / (double)n);
	return 0;
}

static void group_notifier(void)
{
	size_t n = BENCH_NOTIFIERS, i;
	struct ub_nt *many = calloc(n, sizeof(*many));
	struct ub_nt t = { 0 };
	char *area = mmap(NULL, n * BENCH_PAGE, PROT_NONE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	char *tgt = bench_map(3 * BENCH_PAGE), *page;
	double one, lots, raw;
	bool inserted = false;
	uint64_t t0;
	int r;

	if (!many || area == MAP_FAILED || !tgt)
		goto out;
	page = tgt + BENCH_PAGE;
	memset(tgt, 1, 3 * BENCH_PAGE);
	r = uhmm_interval_notifier_insert(&t.n, (uint64_t)(uintptr_t)page, BENCH_PAGE, &ub_nt_ops);
	if (r) {
		bench_note("uhmm_interval_notifier_insert: %s", ub_err(r));
		goto out;
	}
	inserted = true;
	bench_pin_self();
	raw = ub_mprotect_ns(page, &t, true);
	one = ub_mprotect_ns(page, &t, false);
	if (!isfinite(one) || ub_insert_many(many, area, n))
		goto out;
	lots = ub_mprotect_ns(page, &t, false);
	printf("  mprotect: %.0f ns raw syscall, %.0f ns with 1 notifier, %.0f ns with %zu more\n",
	       raw, one, lots, n);
	bench_note("notifier_invalidate_ns_100k: a raw mprotect syscall (no uhmm) costs %.0f ns",
		   raw);
	bench_emit("notifier_invalidate_ns_100k", lots, "ns", one);
	t0 = bench_now_ns();
	for (i = 0; i < n; i++)
		uhmm_interval_notifier_remove(&many[i].n);
	printf("  %zu notifiers removed, %.0f ns each\n", n,
	       (double)(bench_now_ns() - t0) / (double)n);
out:
	if (inserted)
		uhmm_interval_notifier_remove(&t.n);
	if (area != MAP_FAILED)
		munmap(area, n * BENCH_PAGE);
	if (tgt)
		munmap(tgt, 3 * BENCH_PAGE);
	free(many);
}

/* ---- scaling ---------------------------------------------------------------- */

/* Append one point to the throughput curve. */
static void ub_curve_append(unsigned long mib, const struct ub_mig *res)
{
	FILE *f = bench_data_open("bench_throughput_uhmm.dat", "a", NULL);

	if (!f)
		return;
	fprintf(f, "%lu %.4f %.4f\n", mib, res->gb_dev, res->gb_sys);
	fclose(f);
}

/*
 * Whether the large size fits: memory for the data, the return buffer and a
 * device copy; and time, within half of what the group has left, for
 * populating it (2 s per GiB) and one round trip at 3 x the small size's
 * page cost.  Further rounds stop early when time runs short.
 */
static bool ub_scale_fits(unsigned long mib, double small_page_ns, const char **why)
{
	uint64_t bytes = (uint64_t)mib << 20;
	double secs = 3.0 * (double)(bytes / BENCH_PAGE) * small_page_ns / 1e9 +
		      2.0 * (double)mib / 1024.0;

	if (3 * bytes + (1ULL << 30) > bench_mem_available()) {
		*why = "not enough free memory";
		return false;
	}
	if (secs > 0.5 * bench_group_left_s()) {
		*why = "would not finish in the time budget";
		return false;
	}
	return true;
}

static void group_scaling(void)
{
	struct uhmm_dmirror *dm = ub_start(0);
	struct ub_mig small, big;
	const char *why = "";
	size_t i;

	if (!dm)
		return;
	ub_warm_and_pin(dm);
	if (ub_migrate_measure(dm, BENCH_SCALE_SMALL, BENCH_SCALE_SMALL_REPS, true, &small))
		goto out;
	for (i = 0; i < BENCH_NSCALE; i++) {
		unsigned long mib = bench_scale_mib[i];

		if (!ub_scale_fits(mib, small.page_ns, &why)) {
			bench_note("migrate_scaling: %lu MiB skipped: %s", mib, why);
			continue;
		}
		if (ub_migrate_measure(dm, (size_t)mib << 20, BENCH_SCALE_BIG_REPS, false, &big)) {
			bench_note("migrate_scaling: %lu MiB failed, trying a smaller size", mib);
			continue;
		}
		printf("  per page: %.0f ns at %lu MiB, %.0f ns at %lu MiB\n", small.page_ns,
		       BENCH_SCALE_SMALL >> 20, big.page_ns, mib);
		if (mib != bench_scale_mib[0])
			bench_note("migrate_scaling measured at %lu MiB, not %lu MiB", mib,
				   bench_scale_mib[0]);
		ub_curve_append(mib, &big);
		bench_emit("migrate_scaling", big.page_ns / small.page_ns, "x", 1.0);
		break;
	}
out:
	uhmm_dmirror_close(dm);
}

static void group_seq_free(void)
{
	ub_free_placement();
	ub_seq_metric = "fault_to_ram_seq_free_gbps";
	group_seq();
}

/* ---- main ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
	static const struct bench_metric m_fault[] = {
		{ "fault_to_ram_p50", "us" }, { "fault_to_ram_p99", "us" },
	};
	static const struct bench_metric m_excl[] = {
		{ "exclusive_revoke_p50", "us" }, { "exclusive_revoke_p99", "us" },
	};
	static const struct bench_metric m_mig[] = {
		{ "migrate_to_dev_gbps", "GB/s" }, { "migrate_to_sys_gbps", "GB/s" },
	};
	static const struct bench_metric m_seq[] = { { "fault_to_ram_seq_gbps", "GB/s" } };
	static const struct bench_metric m_coh[] = { { "coherent_migrate_gbps", "GB/s" } };
	static const struct bench_metric m_rf[] = { { "range_fault_mpages_s", "Mpages/s" } };
	static const struct bench_metric m_nt[] = { { "notifier_invalidate_ns_100k", "ns" } };
	static const struct bench_metric m_sc[] = { { "migrate_scaling", "x" } };
	static const struct bench_metric m_ffree[] = { { "fault_to_ram_free_p50", "us" } };
	static const struct bench_metric m_self[] = { { "self_fault_p50", "us" } };
	static const struct bench_metric m_efree[] = { { "exclusive_revoke_free_p50", "us" } };
	static const struct bench_metric m_sfree[] = { { "fault_to_ram_seq_free_gbps", "GB/s" } };
	static const struct bench_metric m_ofault[] = { { "owned_fault_to_ram_p50", "us" } };
	static const struct bench_metric m_omig[] = {
		{ "owned_migrate_to_dev_gbps", "GB/s" }, { "owned_migrate_to_sys_gbps", "GB/s" },
	};
	static const struct bench_metric m_conc[] = { { "concurrent_fault_speedup", "x" } };
	static const struct bench_metric m_thp[] = { { "thp_migrate_gbps", "GB/s" } };

	if (bench_open(argc, argv, "bench_uhmm"))
		return 1;
	/*
	 * The reference device's private memory is its own by default; the
	 * figures that predate that measure the host-frame pool, as before.
	 */
	setenv("UHMM_DMIRROR_MEMORY", "host", 1);
	bench_group("CPU fault on device-private pages (device 0)", group_fault_latency,
		    m_fault, BENCH_ARRAY_SIZE(m_fault), 40);
	bench_group("CPU write to device-exclusive pages (device 0)", group_exclusive_latency,
		    m_excl, BENCH_ARRAY_SIZE(m_excl), 40);
	bench_group("migration throughput, device 0 (256 MiB + curve)", group_migrate,
		    m_mig, BENCH_ARRAY_SIZE(m_mig), 60);
	bench_group("THP migration, device 0 (256 MiB, huge device pages)", group_thp_migrate,
		    m_thp, BENCH_ARRAY_SIZE(m_thp), 40);
	bench_group("streaming CPU reads of device-private memory", group_seq,
		    m_seq, BENCH_ARRAY_SIZE(m_seq), 50);
	bench_group("migration to coherent device 2", group_coherent,
		    m_coh, BENCH_ARRAY_SIZE(m_coh), 40);
	bench_group("uhmm_range_fault snapshot of 1 GiB", group_range_fault,
		    m_rf, BENCH_ARRAY_SIZE(m_rf), 40);
	bench_group("invalidation cost with 100k notifiers", group_notifier,
		    m_nt, BENCH_ARRAY_SIZE(m_nt), 40);
	bench_group("migration cost per page, large vs 4 MiB", group_scaling,
		    m_sc, BENCH_ARRAY_SIZE(m_sc), 120);
	bench_group("CPU fault on device-private pages, helpers unpinned", group_fault_latency_free,
		    m_ffree, BENCH_ARRAY_SIZE(m_ffree), 40);
	bench_group("CPU fault on device-private pages, self-service (SIGBUS in the thread)",
		    group_self_fault, m_self, BENCH_ARRAY_SIZE(m_self), 40);
	bench_group("CPU write to device-exclusive pages, helpers unpinned",
		    group_exclusive_latency_free, m_efree, BENCH_ARRAY_SIZE(m_efree), 40);
	bench_group("streaming CPU reads of device-private memory, helpers unpinned",
		    group_seq_free, m_sfree, BENCH_ARRAY_SIZE(m_sfree), 50);
	bench_group("CPU fault on driver-owned memory (device 0, own buffer)",
		    group_owned_fault_latency, m_ofault, BENCH_ARRAY_SIZE(m_ofault), 40);
	bench_group("migration throughput, driver-owned memory (256 MiB)", group_owned_migrate,
		    m_omig, BENCH_ARRAY_SIZE(m_omig), 60);
	bench_group("concurrent CPU faults, slow copies (2 threads vs 1)", group_concurrent_faults,
		    m_conc, BENCH_ARRAY_SIZE(m_conc), 60);
	return bench_close();
}
