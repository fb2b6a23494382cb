/* SPDX-License-Identifier: MIT */
/*
 * bench_farmem.c - the far-memory figures of "make bench" (uhmm_farmem.h over
 * UCX, farmem/), each next to a floor that UCX and the kernel give in the
 * same run, with the same size and transport, through the client transport
 * (farmem/xport.c, linked in) against the same uhmm-memd:
 *
 *   farmem_migrate_gbps  uhmm_farmem_place() of 256 MiB      / ucp_put_nbx of the
 *                                                              same 256 MiB, 2 MiB runs
 *   farmem_fault_p50     random single-page CPU faults (us)  / userfaultfd round trip
 *                                                              + one 4 KiB read round trip
 *   farmem_seq_gbps      sequential fault-in of 256 MiB      / read bandwidth (AM reads or
 *                        (read-ahead)                          RMA gets, the faster)
 *
 * farmem_migrate_gbps_thp and farmem_seq_gbps_thp are the same two on a
 * buffer with MADV_HUGEPAGE (whole THPs out and back; the default buffer
 * is 4 KiB pages where THP is "madvise").  Next to each bandwidth floor a
 * line gives the kernel's own page work for that size of page, measured in
 * the same run (pages freed for a placement, created for a fault-in), and
 * the best ratio it leaves on one CPU and overlapped on a second one.
 *
 * The transport is UCX_TLS (default sm,tcp: shared memory for active
 * messages, TCP for the connection and RMA; UCX 1.13's sm alone cannot make
 * a client/server connection).  The same three figures on UCX_TLS=tcp are
 * the *_tcp metrics (BENCH_FARMEM_TCP=0 leaves them out), and
 * farmem_fault_inline_p50 is the fault latency with
 * UHMM_FARMEM_INLINE_FAULTS.  Placement: the server is another process (in
 * production another machine), so neither it nor the client is pinned:
 * pinning both to one CPU (BENCH_PLACEMENT=same) would measure the
 * scheduler, a spinning waiter holding the CPU the server needs.
 * Usage: bench_farmem [DIR]   (writes DIR/bench_farmem.jsonl and notes)
 */
#include "bench.h"

#ifdef UHMM_FARMEM_NO_UCX
int main(int argc, char **argv)
{
	static const char *const m[] = {
		"farmem_migrate_gbps", "farmem_fault_p50", "farmem_seq_gbps",
		"farmem_migrate_gbps_tcp", "farmem_fault_p50_tcp", "farmem_seq_gbps_tcp",
		"farmem_fault_inline_p50", "farmem_migrate_gbps_thp", "farmem_seq_gbps_thp",
	};
	static const char *const u[] = { "GB/s", "us", "GB/s", "GB/s", "us", "GB/s", "us", "GB/s",
					 "GB/s" };

	if (bench_open(argc, argv, "bench_farmem"))
		return 1;
	bench_note("far memory not built: UCX not installed (apt-get install libucx-dev ucx-utils)");
	for (size_t i = 0; i < BENCH_ARRAY_SIZE(m); i++)
		bench_emit(m[i], NAN, u[i], NAN);
	return bench_close();
}
#else

#include "testutil.h"
#include "xport.h"

#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <uhmm.h>
#include <uhmm_farmem.h>

#define FB_BYTES	BENCH_MIG_BYTES		/* 256 MiB */
#define FB_RUN		(2UL << 20)		/* put/read size: one 2 MiB slab */
#define FB_REPS		3
#define FB_LAT_PAGES	16384UL			/* 64 MiB placed for the fault latency */
#define FB_LAT_SAMPLES	8000UL
#define FB_RT_SAMPLES	5000UL

static const char *g_tls = "sm,tcp";	/* UCX_TLS of the current group */
static const char *g_sfx = "";		/* metric suffix: "", "_tcp" or "_thp" */
static bool g_thp;			/* the group's buffer is MADV_HUGEPAGE */
#define FB_HUGE (2UL << 20)
static char g_tok[256];
static struct tu_server g_srv;

static const char *fb_err(int r)
{
	return strerror(r < 0 ? -r : r);
}

/*
 * Emit metric base with the group's suffix: v, or NAN when bad pages came
 * back with wrong data (a note says so, for what).
 */
static void fb_emit(const char *base, double v, const char *unit, double floor_v, size_t bad,
		    const char *what)
{
	char m[64];

	if (bad)
		bench_note("%s: %zu pages with wrong data", what, bad);
	snprintf(m, sizeof(m), "%s%s", base, g_sfx);
	bench_emit(m, bad ? NAN : v, unit, floor_v);
}

/* Place len bytes at buf on the server; 0, or -errno with a note. */
static int fb_place(struct uhmm_farmem *fm, char *buf, size_t len)
{
	int r = uhmm_farmem_place(fm, buf, len);

	if (r)
		bench_note("place: %s", fb_err(r));
	return r;
}

/* The group's transport and server; 0 or -errno (with a note). */
static int fb_start(const char *size)
{
	int r;

	setenv("UCX_TLS", g_tls, 1);
	if (!getenv("UCX_NET_DEVICES"))
		setenv("UCX_NET_DEVICES", "lo", 1);
	bench_set_cpu(-1);	/* see the top: nothing pinned */
	srand((unsigned)getpid());
	r = tu_token_file(g_tok, sizeof(g_tok), "bench-farmem-token");
	if (r) {
		bench_note("token file: %s", fb_err(r));
		return r;
	}
	r = tu_server_start(&g_srv, size, g_tok, NULL);
	if (r) {
		bench_note("cannot start %s: %s", tu_memd_path(), fb_err(r));
		return r;
	}
	printf("  server %s, UCX_TLS=%s\n", g_srv.addr, g_tls);
	return 0;
}

static void fb_stop(void)
{
	tu_server_stop(&g_srv, SIGTERM);
}

/*
 * fb_start(size) and the FB_BYTES buffer of a bandwidth group, every page
 * tagged; NULL (the server stopped again) when either fails.
 */
static char *fb_start_tagged(const char *size)
{
	char *buf;

	if (fb_start(size))
		return NULL;
	buf = bench_map(FB_BYTES + (g_thp ? FB_HUGE : 0));
	if (!buf) {
		fb_stop();
		return NULL;
	}
	if (g_thp) {
		/* 2 MiB aligned, THP-backed where the kernel gives THPs */
		buf = (char *)(((uintptr_t)buf + FB_HUGE - 1) & ~(uintptr_t)(FB_HUGE - 1));
		if (madvise(buf, FB_BYTES, MADV_HUGEPAGE))
			bench_note("MADV_HUGEPAGE: %s", strerror(errno));
	}
	bench_fill_tags(buf, FB_BYTES);
	return buf;
}

/* ---- the transport alone (floors) --------------------------------------- */

struct fb_conn {
	struct fmx *x;
	struct fmx_srv *s;
	struct fmx_region reg[FB_BYTES / FB_RUN];
	size_t nreg;
};

static int fb_connect(struct fb_conn *c, enum fmx_path path, size_t bytes)
{
	uint8_t tok[FM_TOKEN_MAX];
	uint32_t toklen = 0;
	int r;

	memset(c, 0, sizeof(*c));
	if ((r = fm_read_token_file(g_tok, tok, &toklen)) || (r = fmx_create(&c->x))) {
		bench_note("transport: %s", fb_err(r));
		return r;
	}
	fmx_lock(c->x);
	r = fmx_connect(c->x, g_srv.addr, tok, toklen, path, 5000, &c->s);
	for (size_t i = 0; !r && i < bytes / FB_RUN; i++) {
		r = fmx_alloc(c->s, FB_RUN / BENCH_PAGE, &c->reg[i]);
		c->nreg += !r;
	}
	fmx_unlock(c->x);
	if (r)
		bench_note("transport connect/alloc: %s", fb_err(r));
	return r;
}

static void fb_disconnect(struct fb_conn *c)
{
	if (!c->x)
		return;
	fmx_lock(c->x);
	for (size_t i = 0; c->s && i < c->nreg; i++)
		fmx_free(c->s, &c->reg[i]);
	if (c->s)
		fmx_disconnect(c->s);
	fmx_unlock(c->x);
	fmx_destroy(c->x);
	c->x = NULL;
}

/* bytes from/to buf, one transfer per 2 MiB run, all issued, then one wait;
 * returns GB/s or NAN. */
static double fb_stream(struct fb_conn *c, bool put, char *buf, size_t bytes)
{
	uint64_t t0 = bench_now_ns();
	int r = 0;

	fmx_lock(c->x);
	for (size_t i = 0; !r && i < bytes / FB_RUN; i++)
		r = put ? fmx_put(c->s, &c->reg[i], 0, buf + i * FB_RUN, FB_RUN)
			: fmx_get(c->s, &c->reg[i], 0, buf + i * FB_RUN, FB_RUN);
	int w = fmx_wait(c->x);
	fmx_unlock(c->x);
	uint64_t t1 = bench_now_ns();
	if (r || w) {
		bench_note("%s stream: %s", put ? "put" : "read", fb_err(r ? r : w));
		return NAN;
	}
	return bench_gbps(bytes, t1 - t0);
}

static double fb_stream_median(struct fb_conn *c, bool put, char *buf, size_t bytes)
{
	double v[FB_REPS];
	size_t n = 0;

	for (int i = 0; i < FB_REPS && bench_group_left_s() > 5; i++) {
		v[n] = fb_stream(c, put, buf, bytes);
		if (isfinite(v[n]))
			n++;
	}
	return bench_median(v, n);
}

/* p50 (us) of one 4 KiB read, completion included. */
static double fb_read_rt_p50(struct fb_conn *c, char *page)
{
	static double s[FB_RT_SAMPLES];
	size_t n = 0;

	fmx_lock(c->x);
	for (size_t i = 0; i < FB_RT_SAMPLES + 200; i++) {
		uint64_t t0 = bench_now_ns();
		int r = fmx_get(c->s, &c->reg[0], (i % 512) * BENCH_PAGE, page, BENCH_PAGE);
		int w = fmx_wait(c->x);
		uint64_t t1 = bench_now_ns();

		if (r || w) {
			bench_note("4 KiB read: %s", fb_err(r ? r : w));
			break;
		}
		if (i >= 200)
			s[n++] = (double)(t1 - t0) / 1e3;
	}
	fmx_unlock(c->x);
	bench_sort(s, n);
	return bench_pct_sorted(s, n, 50);
}

/* ---- the kernel's own page work (what bounds 4 KiB transfers) ------------ */

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23	/* Linux 5.14; older headers lack it */
#endif

#define FB_SCRATCH (FB_BYTES + FB_HUGE)

/*
 * 256 MiB of a fresh mapping of FB_SCRATCH bytes at *map, 2 MiB aligned,
 * THP-backed iff g_thp; NULL on failure.
 */
static char *fb_scratch_map(char **map)
{
	*map = bench_map(FB_SCRATCH);
	if (!*map)
		return NULL;
	char *b = (char *)(((uintptr_t)*map + FB_HUGE - 1) & ~(uintptr_t)(FB_HUGE - 1));
	madvise(b, FB_BYTES, g_thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return b;
}

/*
 * GB/s at which the kernel creates the pages of 256 MiB, the way a fault-in
 * does: 4 KiB pages by UFFDIO_COPY from a warm 2 MiB buffer (allocated and
 * charged one by one, filled with the data), THPs (g_thp) by
 * MADV_POPULATE_WRITE (a zeroed huge page, which the read then fills).
 * Median of FB_REPS fresh ranges, 2 MiB per call; NAN if it cannot run.
 */
static double fb_create_gbps(void)
{
	double v[FB_REPS];
	size_t n = 0;
	char *src = bench_map(FB_RUN);
	int fd = -1;

	if (!src)
		return NAN;
	memset(src, 0x5a, FB_RUN);
	if (!g_thp) {
		struct uffdio_api api = { .api = UFFD_API };

		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
		if (fd < 0 || ioctl(fd, UFFDIO_API, &api)) {
			bench_note("page creation floor: userfaultfd: %s", strerror(errno));
			goto out;
		}
	}
	for (int r = 0; r < FB_REPS; r++) {
		char *map, *b = fb_scratch_map(&map);
		bool ok = b != NULL;

		if (ok && fd >= 0) {
			struct uffdio_register rg = {
				.range = { .start = (uint64_t)(uintptr_t)b, .len = FB_BYTES },
				.mode = UFFDIO_REGISTER_MODE_MISSING,
			};
			ok = ioctl(fd, UFFDIO_REGISTER, &rg) == 0;
		}
		uint64_t t0 = bench_now_ns();
		for (size_t o = 0; ok && o < FB_BYTES; o += FB_RUN) {
			if (fd >= 0) {
				struct uffdio_copy c = {
					.dst = (uint64_t)(uintptr_t)(b + o),
					.src = (uint64_t)(uintptr_t)src, .len = FB_RUN,
				};
				ok = ioctl(fd, UFFDIO_COPY, &c) == 0 && c.copy == (int64_t)FB_RUN;
			} else {
				ok = madvise(b + o, FB_RUN, MADV_POPULATE_WRITE) == 0;
			}
		}
		uint64_t t1 = bench_now_ns();
		if (ok)
			v[n++] = bench_gbps(FB_BYTES, t1 - t0);
		else
			bench_note("page creation floor: %s", strerror(errno));
		if (b)
			munmap(map, FB_SCRATCH);
		if (!ok)
			break;
	}
out:
	if (fd >= 0)
		close(fd);
	munmap(src, FB_RUN);
	return bench_median(v, n);
}

/*
 * GB/s at which the kernel frees the pages of a populated 256 MiB range
 * (MADV_DONTNEED, 2 MiB per call): what a placement does with the pages
 * it took out of the CPU view once they are on the server.  Median of
 * FB_REPS; NAN if it cannot run.
 */
static double fb_release_gbps(void)
{
	double v[FB_REPS];
	size_t n = 0;

	for (int r = 0; r < FB_REPS; r++) {
		char *map, *b = fb_scratch_map(&map);

		if (!b || madvise(b, FB_BYTES, MADV_POPULATE_WRITE)) {
			bench_note("page release floor: %s", strerror(errno));
			if (b)
				munmap(map, FB_SCRATCH);
			break;
		}
		uint64_t t0 = bench_now_ns();
		for (size_t o = 0; o < FB_BYTES; o += FB_RUN)
			madvise(b + o, FB_RUN, MADV_DONTNEED);
		v[n++] = bench_gbps(FB_BYTES, bench_now_ns() - t0);
		munmap(map, FB_SCRATCH);
	}
	return bench_median(v, n);
}

/*
 * One line: the kernel's page work for this group (what, GB/s) against the
 * transport's floor.  A transfer that must do both on one CPU gets at most
 * 1 / (1 / floor + 1 / kernel); with the kernel's part overlapped on
 * another CPU, min(floor, kernel).  Printed as ratios to the floor, so that
 * the metric's own ratio reads against them.
 */
static void fb_print_bound(const char *what, double kernel, double floor_v)
{
	double serial = 1.0 / (1.0 / floor_v + 1.0 / kernel);

	printf("  kernel %s %.2f GB/s (%s pages): bound of the ratio %.2f on one CPU, "
	       "%.2f overlapped\n", what, kernel, g_thp ? "2 MiB" : "4 KiB", serial / floor_v,
	       (kernel < floor_v ? kernel : floor_v) / floor_v);
}

/* ---- userfaultfd round trip (floor) -------------------------------------- */

struct fb_uffd {
	int fd;
	char *src;
};

static void *fb_uffd_handler(void *arg)
{
	struct fb_uffd *u = arg;
	struct pollfd p = { .fd = u->fd, .events = POLLIN };
	struct uffd_msg msg;

	for (;;) {
		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			return NULL;
		if (read(u->fd, &msg, sizeof(msg)) != (ssize_t)sizeof(msg) ||
		    msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		struct uffdio_copy c = {
			.dst = msg.arg.pagefault.address & ~(BENCH_PAGE - 1),
			.src = (uint64_t)(uintptr_t)u->src, .len = BENCH_PAGE,
		};
		ioctl(u->fd, UFFDIO_COPY, &c);
	}
	return NULL;
}

/*
 * p50 (us) of a MISSING fault served by a handler thread with UFFDIO_COPY,
 * both on one CPU: the same-CPU round trip, the floor of a fault (unpinned,
 * the same loop gave 9 or 66 us from one run to the next: where the
 * scheduler puts the handler).
 */
static double fb_uffd_rt_p50(size_t npages)
{
	static struct fb_uffd u;
	static double s[FB_LAT_SAMPLES];
	struct uffdio_api api = { .api = UFFD_API };
	size_t n = 0, k, i;
	pthread_t t;
	char *reg;

	u.fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (u.fd < 0 || ioctl(u.fd, UFFDIO_API, &api)) {
		bench_note("userfaultfd: %s", strerror(errno));
		return NAN;
	}
	u.src = bench_map(BENCH_PAGE);
	reg = bench_map(npages * BENCH_PAGE);
	if (!u.src || !reg)
		return NAN;
	memset(u.src, 1, BENCH_PAGE);
	struct uffdio_register rg = {
		.range = { .start = (uint64_t)(uintptr_t)reg, .len = npages * BENCH_PAGE },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	bench_set_cpu(0);	/* the handler inherits it */
	if (ioctl(u.fd, UFFDIO_REGISTER, &rg) || pthread_create(&t, NULL, fb_uffd_handler, &u)) {
		bench_note("userfaultfd register: %s", strerror(errno));
		bench_set_cpu(-1);
		return NAN;
	}
	/* the same strided order as the far-memory faults */
	for (k = 0, i = 0; k < FB_LAT_SAMPLES + 200 && k < npages; k++, i = (i + 101) % npages) {
		uint64_t t0 = bench_now_ns();

		(void)*(volatile char *)(reg + i * BENCH_PAGE);
		uint64_t t1 = bench_now_ns();
		if (k >= 200)
			s[n++] = (double)(t1 - t0) / 1e3;
	}
	bench_set_cpu(-1);
	bench_sort(s, n);
	return bench_pct_sorted(s, n, 50);
}

/* ---- far memory ---------------------------------------------------------- */

static struct uhmm_farmem *fb_open(unsigned flags, size_t pages)
{
	struct uhmm_farmem_opts o = { .token_file = g_tok, .max_pages = pages + 4096,
				      .flags = flags };
	struct uhmm_farmem *fm = NULL;
	int r = uhmm_init();

	if (!r)
		r = uhmm_farmem_open(g_srv.addr, &o, &fm);
	if (r) {
		bench_note("uhmm_farmem_open: %s", fb_err(r));
		return NULL;
	}
	return fm;
}

static size_t fb_bad_tags(const char *buf, size_t npages)
{
	size_t bad = 0;

	for (size_t i = 0; i < npages; i++)
		bad += *(const volatile uint64_t *)(buf + i * BENCH_PAGE) != bench_tag(i);
	return bad;
}

static void group_migrate(void)
{
	char *buf;
	double put, v[FB_REPS];
	size_t n = 0, np = FB_BYTES / BENCH_PAGE;
	struct fb_conn c;

	buf = fb_start_tagged("700M");
	if (!buf)
		return;
	/* floor: ucp_put_nbx of 256 MiB in 2 MiB runs, one flush */
	if (fb_connect(&c, FMX_PATH_AUTO, FB_BYTES) == 0)
		put = fb_stream_median(&c, true, buf, FB_BYTES);
	else
		put = NAN;
	fb_disconnect(&c);
	fb_print_bound("page release (MADV_DONTNEED)", fb_release_gbps(), put);
	struct uhmm_farmem *fm = fb_open(0, np);
	if (!fm)
		goto out;
	for (int i = 0; i < FB_REPS && bench_group_left_s() > 8; i++) {
		uint64_t t0 = bench_now_ns();
		int r = fb_place(fm, buf, FB_BYTES);
		uint64_t t1 = bench_now_ns();

		if (r)
			break;
		v[n++] = bench_gbps(FB_BYTES, t1 - t0);
		if ((r = uhmm_farmem_fetch(fm, buf, FB_BYTES))) {
			bench_note("fetch: %s", fb_err(r));
			break;
		}
	}
	fb_emit("farmem_migrate_gbps", bench_median(v, n), "GB/s", put, fb_bad_tags(buf, np),
		"place/fetch");
	uhmm_farmem_close(fm);
out:
	fb_stop();
}

/* One access per page, strided (each page once, never the next one), so
 * that each access is one single-page fault; returns the p50 in us. */
static double fb_fault_p50(struct uhmm_farmem *fm, char *buf, size_t npages, size_t *bad)
{
	static double s[FB_LAT_SAMPLES];
	size_t n = 0, k, i;

	bench_fill_tags(buf, npages * BENCH_PAGE);
	if (fb_place(fm, buf, npages * BENCH_PAGE))
		return NAN;
	for (k = 0, i = 0; k < FB_LAT_SAMPLES + 200 && k < npages; k++, i = (i + 101) % npages) {
		uint64_t t0 = bench_now_ns();
		uint64_t v = *(volatile uint64_t *)(buf + i * BENCH_PAGE);
		uint64_t t1 = bench_now_ns();

		*bad += v != bench_tag(i);
		if (k >= 200)
			s[n++] = (double)(t1 - t0) / 1e3;
	}
	struct uhmm_farmem_stats st;
	uhmm_farmem_stats(fm, &st);
	printf("  migrate_to_ram inside the driver: p50 %.2f us, p99 %.2f us\n",
	       st.fault_p50_ns / 1e3, st.fault_p99_ns / 1e3);
	if (st.fault_pages > st.faults + st.faults / 20)
		bench_note("random faults brought %llu pages for %llu faults (read-ahead)",
			   (unsigned long long)st.fault_pages, (unsigned long long)st.faults);
	uhmm_farmem_fetch(fm, buf, npages * BENCH_PAGE);
	*bad += fb_bad_tags(buf, npages);
	bench_sort(s, n);
	return bench_pct_sorted(s, n, 50);
}

static void group_fault(void)
{
	char *buf, *page;
	size_t bad = 0, np = FB_LAT_PAGES;
	struct fb_conn c;
	double uf, rt = NAN, v, vi = NAN;

	if (fb_start("256M"))
		return;
	page = bench_map(BENCH_PAGE);
	buf = bench_map(np * BENCH_PAGE);
	if (!page || !buf)
		goto out;
	uf = fb_uffd_rt_p50(np);
	if (fb_connect(&c, FMX_PATH_AUTO, FB_RUN) == 0)
		rt = fb_read_rt_p50(&c, page);
	fb_disconnect(&c);
	printf("  floor: userfaultfd round trip p50 %.2f us + 4 KiB read p50 %.2f us\n", uf, rt);
	struct uhmm_farmem *fm = fb_open(0, np);
	if (!fm)
		goto out;
	v = fb_fault_p50(fm, buf, np, &bad);
	uhmm_farmem_close(fm);
	if (!*g_sfx && (fm = fb_open(UHMM_FARMEM_INLINE_FAULTS, np))) {
		vi = fb_fault_p50(fm, buf, np, &bad);
		uhmm_farmem_close(fm);
	}
	fb_emit("farmem_fault_p50", v, "us", uf + rt, bad, "random faults");
	if (!*g_sfx)
		bench_emit("farmem_fault_inline_p50", bad ? NAN : vi, "us", uf + rt);
out:
	fb_stop();
}

static void group_seq(void)
{
	char *buf;
	size_t np = FB_BYTES / BENCH_PAGE, n = 0, bad = 0;
	double v[FB_REPS], am = NAN, rma = NAN, fl;
	struct fb_conn c;
	uint64_t faults = 0;

	buf = fb_start_tagged("700M");
	if (!buf)
		return;
	/* floor: reads of 256 MiB in 2 MiB pieces, by active message and by RMA get */
	if (fb_connect(&c, FMX_PATH_AUTO, FB_BYTES) == 0 &&
	    isfinite(fb_stream(&c, true, buf, FB_BYTES)))
		am = fb_stream_median(&c, false, buf, FB_BYTES);
	fb_disconnect(&c);
	if (fb_connect(&c, FMX_PATH_RMA, FB_BYTES) == 0 &&
	    isfinite(fb_stream(&c, true, buf, FB_BYTES)))
		rma = fb_stream_median(&c, false, buf, FB_BYTES);
	fb_disconnect(&c);
	printf("  floor: read 256 MiB by active messages %.2f GB/s, by RMA get %.2f GB/s\n",
	       am, rma);
	fl = isfinite(am) && (!isfinite(rma) || am >= rma) ? am : rma;
	fb_print_bound(g_thp ? "page creation (MADV_POPULATE_WRITE)" : "page creation (UFFDIO_COPY)",
		       fb_create_gbps(), fl);
	bench_fill_tags(buf, FB_BYTES);
	struct uhmm_farmem *fm = fb_open(0, np);
	if (!fm)
		goto out;
	for (int i = 0; i < FB_REPS && bench_group_left_s() > 8; i++) {
		struct uhmm_farmem_stats st0, st1;

		if (fb_place(fm, buf, FB_BYTES))
			break;
		uhmm_farmem_stats(fm, &st0);
		uint64_t t0 = bench_now_ns();
		bad += fb_bad_tags(buf, np);
		uint64_t t1 = bench_now_ns();
		uhmm_farmem_stats(fm, &st1);
		faults = st1.faults - st0.faults;
		v[n++] = bench_gbps(FB_BYTES, t1 - t0);
	}
	printf("  %llu faults per 256 MiB pass\n", (unsigned long long)faults);
	fb_emit("farmem_seq_gbps", bench_median(v, n), "GB/s", fl, bad, "sequential fault-in");
	uhmm_farmem_close(fm);
out:
	fb_stop();
}

/* A group again over TCP alone, its metrics named ..._tcp. */
static void fb_over_tcp(void (*group)(void))
{
	g_tls = "tcp";
	g_sfx = "_tcp";
	group();
}

/* A group again on a THP-backed buffer, its metrics named ..._thp. */
static void fb_over_thp(void (*group)(void))
{
	g_thp = true;
	g_sfx = "_thp";
	group();
}

static void group_migrate_thp(void)
{
	fb_over_thp(group_migrate);
}

static void group_seq_thp(void)
{
	fb_over_thp(group_seq);
}

static void group_migrate_tcp(void)
{
	fb_over_tcp(group_migrate);
}

static void group_fault_tcp(void)
{
	fb_over_tcp(group_fault);
}

static void group_seq_tcp(void)
{
	fb_over_tcp(group_seq);
}

int main(int argc, char **argv)
{
	static const struct bench_metric m_mig[] = { { "farmem_migrate_gbps", "GB/s" } };
	static const struct bench_metric m_fault[] = {
		{ "farmem_fault_p50", "us" }, { "farmem_fault_inline_p50", "us" },
	};
	static const struct bench_metric m_seq[] = { { "farmem_seq_gbps", "GB/s" } };
	static const struct bench_metric m_mig_h[] = { { "farmem_migrate_gbps_thp", "GB/s" } };
	static const struct bench_metric m_seq_h[] = { { "farmem_seq_gbps_thp", "GB/s" } };
	static const struct bench_metric m_mig_t[] = { { "farmem_migrate_gbps_tcp", "GB/s" } };
	static const struct bench_metric m_fault_t[] = { { "farmem_fault_p50_tcp", "us" } };
	static const struct bench_metric m_seq_t[] = { { "farmem_seq_gbps_tcp", "GB/s" } };
	const char *tls = getenv("UCX_TLS"), *tcp = getenv("BENCH_FARMEM_TCP");

	if (bench_open(argc, argv, "bench_farmem"))
		return 1;
	if (tls && *tls)
		g_tls = tls;
	bench_group("far memory: place 256 MiB vs ucp_put", group_migrate, m_mig,
		    BENCH_ARRAY_SIZE(m_mig), 60);
	bench_group("far memory: random CPU faults vs userfaultfd + 4 KiB read", group_fault,
		    m_fault, BENCH_ARRAY_SIZE(m_fault), 45);
	bench_group("far memory: sequential fault-in vs read bandwidth", group_seq, m_seq,
		    BENCH_ARRAY_SIZE(m_seq), 60);
	bench_group("far memory, THP-backed buffer: place 256 MiB vs ucp_put", group_migrate_thp,
		    m_mig_h, BENCH_ARRAY_SIZE(m_mig_h), 60);
	bench_group("far memory, THP-backed buffer: sequential fault-in vs read bandwidth",
		    group_seq_thp, m_seq_h, BENCH_ARRAY_SIZE(m_seq_h), 60);
	if (!tcp || strcmp(tcp, "0")) {
		bench_group("far memory over TCP: place 256 MiB vs ucp_put", group_migrate_tcp,
			    m_mig_t, BENCH_ARRAY_SIZE(m_mig_t), 60);
		bench_group("far memory over TCP: random CPU faults", group_fault_tcp, m_fault_t,
			    BENCH_ARRAY_SIZE(m_fault_t), 45);
		bench_group("far memory over TCP: sequential fault-in", group_seq_tcp, m_seq_t,
			    BENCH_ARRAY_SIZE(m_seq_t), 60);
	}
	return bench_close();
}
#endif
