/* SPDX-License-Identifier: MIT */
/*
 * bench_floor.c - the floors the uhmm figures are measured against, with the
 * kernel primitives alone (no uhmm call; it maps, unmaps and advises with
 * raw syscalls so that libuhmm's interposers, linked in by the Makefile, stay
 * out of the way):
 *   - a userfaultfd MISSING fault served by UFFDIO_COPY from a handler thread
 *     (floor of fault_to_ram_p50/p99),
 *   - the same served by UFFDIO_MOVE of a prepared page (exclusive_revoke_*),
 *   - single-thread memcpy between pre-faulted buffers (migration and
 *     streaming throughputs), for each size of the throughput curve,
 *   - PAGEMAP_SCAN over 1 GiB of resident pages, or a read of
 *     /proc/self/pagemap if that ioctl fails (range_fault_mpages_s).
 * Usage: bench_floor [DIR]   (writes DIR/bench_floor.jsonl and .dat files)
 */
#include "bench.h"

#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>

/* ---- kernel interfaces newer than the build headers (Linux 6.1) --------- */

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1ULL << 16)
#endif
#ifndef UFFDIO_MOVE
struct uffdio_move {
	uint64_t dst;
	uint64_t src;
	uint64_t len;
	uint64_t mode;
	int64_t move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct uffdio_move)
#endif

struct floor_page_region {
	uint64_t start;
	uint64_t end;
	uint64_t categories;
};

struct floor_pm_scan_arg {
	uint64_t size;
	uint64_t flags;
	uint64_t start;
	uint64_t end;
	uint64_t walk_end;
	uint64_t vec;
	uint64_t vec_len;
	uint64_t max_pages;
	uint64_t category_inverted;
	uint64_t category_mask;
	uint64_t category_anyof_mask;
	uint64_t return_mask;
};

#define FLOOR_PAGEMAP_SCAN _IOWR('f', 16, struct floor_pm_scan_arg)
#define FLOOR_PAGE_IS_FILE	(1ULL << 2)
#define FLOOR_PAGE_IS_PRESENT	(1ULL << 3)
#define FLOOR_PAGE_IS_SWAPPED	(1ULL << 4)
#define FLOOR_PAGE_IS_PFNZERO	(1ULL << 5)
#define FLOOR_PAGE_IS_HUGE	(1ULL << 6)

static void *raw_map(size_t len)
{
	long p = syscall(SYS_mmap, NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == -1 ? NULL : (void *)(uintptr_t)p;
}

static void raw_munmap(void *p, size_t len)
{
	if (p)
		syscall(SYS_munmap, p, len);
}

static void raw_madvise(void *p, size_t len, int advice)
{
	syscall(SYS_madvise, p, len, advice);
}

/* ---- userfaultfd handler ------------------------------------------------- */

enum floor_mode { FLOOR_COPY, FLOOR_MOVE };

struct floor_handler {
	int uffd;
	int stopfd;
	enum floor_mode mode;
	char *copy_src;		/* COPY: the page copied in */
	char *move_src;		/* MOVE: page k serves the k-th fault */
	size_t move_next;
	size_t move_n;
	unsigned long served;
	unsigned long errors;
	int first_errno;
};

/* A userfaultfd with the given features; *avail gets what the kernel offers. */
static int floor_uffd_open(uint64_t features, uint64_t *avail)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0 && errno == EPERM)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0)
		return -errno;
	if (ioctl(fd, UFFDIO_API, &api)) {
		int err = -errno;

		close(fd);
		return err;
	}
	if (avail)
		*avail = api.features;
	return fd;
}

static void floor_record_error(struct floor_handler *h, int err)
{
	if (!h->errors++)
		h->first_errno = err;
}

static void floor_copy(struct floor_handler *h, uint64_t addr)
{
	struct uffdio_copy c = {
		.dst = addr, .src = (uint64_t)(uintptr_t)h->copy_src, .len = BENCH_PAGE,
	};

	if (ioctl(h->uffd, UFFDIO_COPY, &c) && errno != EEXIST)
		floor_record_error(h, errno);
}

static void floor_move(struct floor_handler *h, uint64_t addr)
{
	struct uffdio_move m = { .dst = addr, .len = BENCH_PAGE };

	if (h->move_next >= h->move_n) {
		floor_record_error(h, ENOSPC);
		floor_copy(h, addr);
		return;
	}
	m.src = (uint64_t)(uintptr_t)(h->move_src + h->move_next++ * BENCH_PAGE);
	if (ioctl(h->uffd, UFFDIO_MOVE, &m) && errno != EEXIST) {
		floor_record_error(h, errno);
		floor_copy(h, addr);	/* unblock the faulting thread */
	}
}

static void *floor_handler_main(void *arg)
{
	struct floor_handler *h = arg;
	struct pollfd pfd[2] = {
		{ .fd = h->uffd, .events = POLLIN }, { .fd = h->stopfd, .events = POLLIN },
	};
	struct uffd_msg msg;

	for (;;) {
		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			floor_record_error(h, errno);
			break;
		}
		if (pfd[1].revents)
			break;
		if (read(h->uffd, &msg, sizeof(msg)) != (ssize_t)sizeof(msg))
			continue;
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		if (h->mode == FLOOR_MOVE)
			floor_move(h, msg.arg.pagefault.address & ~(BENCH_PAGE - 1));
		else
			floor_copy(h, msg.arg.pagefault.address & ~(BENCH_PAGE - 1));
		h->served++;
	}
	return NULL;
}

/* ---- fault latency floors ------------------------------------------------ */

struct floor_lat {
	enum floor_mode mode;
	char *region;		/* registered MISSING, n pages */
	char *src;		/* MOVE sources, n pages */
	char *copy_page;
	size_t n;
	int uffd;
	int stopfd;
};

static int floor_lat_setup(struct floor_lat *L)
{
	uint64_t avail = 0, want = 0;
	struct uffdio_register reg;
	int fd;

	fd = floor_uffd_open(0, &avail);
	if (fd < 0) {
		bench_note("userfaultfd: %s", strerror(-fd));
		return fd;
	}
	close(fd);
	if (L->mode == FLOOR_MOVE) {
		if (!(avail & UFFD_FEATURE_MOVE)) {
			bench_note("UFFDIO_MOVE: the kernel does not offer UFFD_FEATURE_MOVE");
			return -EOPNOTSUPP;
		}
		want = UFFD_FEATURE_MOVE;
	}
	L->uffd = floor_uffd_open(want, NULL);
	if (L->uffd < 0)
		return L->uffd;
	L->region = raw_map(L->n * BENCH_PAGE);
	L->copy_page = raw_map(BENCH_PAGE);
	if (!L->region || !L->copy_page)
		return -ENOMEM;
	memset(L->copy_page, 0x5a, BENCH_PAGE);
	raw_madvise(L->region, L->n * BENCH_PAGE, MADV_NOHUGEPAGE);
	if (L->mode == FLOOR_MOVE) {
		L->src = raw_map(L->n * BENCH_PAGE);
		if (!L->src)
			return -ENOMEM;
		raw_madvise(L->src, L->n * BENCH_PAGE, MADV_NOHUGEPAGE);
		bench_fill_tags(L->src, L->n * BENCH_PAGE);
	}
	reg.range.start = (uint64_t)(uintptr_t)L->region;
	reg.range.len = L->n * BENCH_PAGE;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	if (ioctl(L->uffd, UFFDIO_REGISTER, &reg)) {
		bench_note("UFFDIO_REGISTER: %s", strerror(errno));
		return -errno;
	}
	L->stopfd = eventfd(0, EFD_CLOEXEC);
	return L->stopfd < 0 ? -errno : 0;
}

static void floor_lat_teardown(struct floor_lat *L)
{
	if (L->uffd >= 0)
		close(L->uffd);
	if (L->stopfd >= 0)
		close(L->stopfd);
	raw_munmap(L->region, L->n * BENCH_PAGE);
	raw_munmap(L->src, L->n * BENCH_PAGE);
	raw_munmap(L->copy_page, BENCH_PAGE);
}

/* Time one access per page; returns the number of data mismatches. */
static size_t floor_lat_loop(struct floor_lat *L, double *samples)
{
	size_t i, bad = 0;

	for (i = 0; i < L->n; i++) {
		volatile char *p = L->region + i * BENCH_PAGE;
		uint64_t t0, t1;

		if (L->mode == FLOOR_COPY) {
			char c;

			t0 = bench_now_ns();
			c = p[0];
			t1 = bench_now_ns();
			bad += c != 0x5a;
		} else {
			t0 = bench_now_ns();
			p[8] = 1;
			t1 = bench_now_ns();
			bad += *(volatile uint64_t *)p != bench_tag(i);
		}
		if (i >= BENCH_LAT_WARMUP)
			samples[i - BENCH_LAT_WARMUP] = (double)(t1 - t0) / 1000.0;
	}
	return bad;
}

static double floor_memcpy4k_us(void);

static void floor_latency(enum floor_mode mode, const char *p50, const char *p99,
			  const char *datafile)
{
	struct floor_lat L = { .mode = mode, .n = BENCH_LAT_WARMUP + BENCH_LAT_SAMPLES,
			       .uffd = -1, .stopfd = -1 };
	struct floor_handler h = { 0 };
	double *samples = calloc(BENCH_LAT_SAMPLES, sizeof(double));
	uint64_t one = 1;
	pthread_t thr;
	size_t bad;
	int cpu;

	if (!samples || floor_lat_setup(&L))
		goto out;
	h.uffd = L.uffd;
	h.stopfd = L.stopfd;
	h.mode = mode;
	h.copy_src = L.copy_page;
	h.move_src = L.src;
	h.move_n = L.n;
	if (pthread_create(&thr, NULL, floor_handler_main, &h)) {
		bench_note("pthread_create failed");
		goto out;
	}
	cpu = bench_pin_self();
	bad = floor_lat_loop(&L, samples);
	if (write(L.stopfd, &one, sizeof(one)) != sizeof(one))
		bench_note("eventfd write failed: %s", strerror(errno));
	pthread_join(thr, NULL);
	printf("  %zu faults served by the handler thread, measuring thread on CPU %d\n",
	       (size_t)h.served, cpu);
	if (h.errors || bad) {
		bench_note("%s floor: %lu handler errors (first: %s), %zu data mismatches",
			   mode == FLOOR_MOVE ? "UFFDIO_MOVE" : "UFFDIO_COPY", h.errors,
			   strerror(h.first_errno), bad);
		goto out;
	}
	bench_sort(samples, BENCH_LAT_SAMPLES);
	double v50 = bench_pct_sorted(samples, BENCH_LAT_SAMPLES, 50);
	bench_emit(p50, NAN, "us", v50);
	bench_emit(p99, NAN, "us", bench_pct_sorted(samples, BENCH_LAT_SAMPLES, 99));
	/*
	 * The same-CPU round trip is also the floor of the unpinned figures
	 * (issue: an unpinned program should pay what a pinned one pays), and,
	 * with one 4 KiB memcpy more, of a fault on driver-owned memory.
	 */
	if (!strcmp(bench_placement(), "same")) {
		if (mode == FLOOR_COPY) {
			bench_emit("fault_to_ram_free_p50", NAN, "us", v50);
			bench_emit("owned_fault_to_ram_p50", NAN, "us", v50 + floor_memcpy4k_us());
		} else {
			bench_emit("exclusive_revoke_free_p50", NAN, "us", v50);
		}
	}
	bench_write_cdf(datafile, mode == FLOOR_MOVE ?
			"floor: userfaultfd MISSING fault served by UFFDIO_MOVE (write)" :
			"floor: userfaultfd MISSING fault served by UFFDIO_COPY (read)",
			samples, BENCH_LAT_SAMPLES);
out:
	floor_lat_teardown(&L);
	free(samples);
}

/* ---- the self-service floor: a SIGBUS fault served in its own thread ------ */

/*
 * UFFD_FEATURE_SIGBUS: a fault on a missing page of the region is a SIGBUS
 * in the faulting thread, whose handler fills the page (UFFDIO_COPY) and
 * returns; the access runs again.  What uhmm_self_service() can cost at
 * least: no thread is woken.  Floor of self_fault_p50.
 */
static int g_sb_uffd = -1;
static const char *g_sb_page;
static unsigned long g_sb_errors;

static void floor_sigbus(int sig, siginfo_t *si, void *uc)
{
	struct uffdio_copy c = {
		.dst = (uint64_t)(uintptr_t)si->si_addr & ~(uint64_t)(BENCH_PAGE - 1),
		.src = (uint64_t)(uintptr_t)g_sb_page, .len = BENCH_PAGE,
	};
	(void)sig, (void)uc;
	if (ioctl(g_sb_uffd, UFFDIO_COPY, &c) && errno != EEXIST) {
		g_sb_errors++;
		signal(SIGBUS, SIG_DFL);  /* not ours: die of it */
	}
}

static void group_fault_sigbus(void)
{
	size_t n = BENCH_LAT_WARMUP + BENCH_LAT_SAMPLES, bad = 0;
	double *samples = calloc(BENCH_LAT_SAMPLES, sizeof(double));
	char *region = raw_map(n * BENCH_PAGE), *page = raw_map(BENCH_PAGE);
	struct sigaction sa = { .sa_sigaction = floor_sigbus, .sa_flags = SA_SIGINFO };
	struct uffdio_register reg;

	if (!samples || !region || !page)
		goto out;
	g_sb_uffd = floor_uffd_open(UFFD_FEATURE_SIGBUS, NULL);
	if (g_sb_uffd < 0) {
		bench_note("self-service floor: UFFD_FEATURE_SIGBUS: %s", strerror(-g_sb_uffd));
		goto out;
	}
	memset(page, 0x5a, BENCH_PAGE);
	g_sb_page = page;
	raw_madvise(region, n * BENCH_PAGE, MADV_NOHUGEPAGE);
	reg.range.start = (uint64_t)(uintptr_t)region;
	reg.range.len = n * BENCH_PAGE;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	if (ioctl(g_sb_uffd, UFFDIO_REGISTER, &reg)) {
		bench_note("self-service floor: UFFDIO_REGISTER: %s", strerror(errno));
		goto out;
	}
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
	int cpu = bench_pin_self();
	for (size_t i = 0; i < n; i++) {
		volatile char *p = region + i * BENCH_PAGE;
		uint64_t t0 = bench_now_ns();
		char c = p[0];
		uint64_t t1 = bench_now_ns();

		bad += c != 0x5a;
		if (i >= BENCH_LAT_WARMUP)
			samples[i - BENCH_LAT_WARMUP] = (double)(t1 - t0) / 1000.0;
	}
	signal(SIGBUS, SIG_DFL);
	printf("  %zu faults served in their own thread's SIGBUS handler, CPU %d\n", n, cpu);
	if (bad || g_sb_errors) {
		bench_note("self-service floor: %zu data mismatches, %lu ioctl errors", bad,
			   g_sb_errors);
		goto out;
	}
	bench_sort(samples, BENCH_LAT_SAMPLES);
	bench_emit("self_fault_p50", NAN, "us", bench_pct_sorted(samples, BENCH_LAT_SAMPLES, 50));
out:
	if (g_sb_uffd >= 0)
		close(g_sb_uffd);
	raw_munmap(region, n * BENCH_PAGE);
	raw_munmap(page, BENCH_PAGE);
	free(samples);
}

static void group_fault_copy(void)
{
	floor_latency(FLOOR_COPY, "fault_to_ram_p50", "fault_to_ram_p99",
		      "bench_lat_fault_floor.dat");
}

static void group_fault_move(void)
{
	floor_latency(FLOOR_MOVE, "exclusive_revoke_p50", "exclusive_revoke_p99",
		      "bench_lat_excl_floor.dat");
}

/* ---- memcpy floor ------------------------------------------------------- */

/* Median time of one 4 KiB memcpy between cold-ish pages, in us. */
static double floor_memcpy4k_us(void)
{
	enum { N = 2048 };
	char *src = raw_map(N * BENCH_PAGE), *dst = raw_map(N * BENCH_PAGE);
	double v[N], med = NAN;
	if (src && dst) {
		memset(src, 0x5a, N * BENCH_PAGE);
		memset(dst, 0, N * BENCH_PAGE);
		for (int i = 0; i < N; i++) {
			uint64_t t0 = bench_now_ns();
			memcpy(dst + (size_t)i * BENCH_PAGE, src + (size_t)i * BENCH_PAGE, BENCH_PAGE);
			__asm__ volatile("" : : "r"(dst) : "memory");
			v[i] = (double)(bench_now_ns() - t0) / 1000.0;
		}
		med = bench_median(v, N);
	}
	raw_munmap(src, N * BENCH_PAGE);
	raw_munmap(dst, N * BENCH_PAGE);
	return med;
}

/* Median single-thread memcpy throughput (GB/s) over reps; NAN on failure. */
static double floor_memcpy_gbps(size_t bytes, int reps)
{
	char *src = raw_map(bytes), *dst = raw_map(bytes);
	double *v = calloc((size_t)reps, sizeof(double));
	double med = NAN;
	int r;

	if (!src || !dst || !v) {
		bench_note("memcpy floor: cannot map 2 x %zu MiB", bytes >> 20);
		goto out;
	}
	memset(src, 0x5a, bytes);
	memset(dst, 0, bytes);
	memcpy(dst, src, bytes);	/* warm-up */
	for (r = 0; r < reps; r++) {
		uint64_t t0 = bench_now_ns();

		memcpy(dst, src, bytes);
		__asm__ volatile("" : : "r"(dst) : "memory");
		v[r] = bench_gbps(bytes, bench_now_ns() - t0);
	}
	med = bench_median(v, (size_t)reps);
out:
	raw_munmap(src, bytes);
	raw_munmap(dst, bytes);
	free(v);
	return med;
}

static void group_memcpy(void)
{
	static const char *const metrics[] = {
		"migrate_to_dev_gbps", "migrate_to_sys_gbps", "fault_to_ram_seq_gbps",
		"coherent_migrate_gbps", "owned_migrate_to_dev_gbps", "owned_migrate_to_sys_gbps",
		"fault_to_ram_seq_free_gbps", "thp_migrate_gbps",
	};
	FILE *f;
	double g;
	size_t i;

	bench_pin_self();
	g = floor_memcpy_gbps(BENCH_MIG_BYTES, BENCH_MIG_REPS);
	for (i = 0; i < BENCH_ARRAY_SIZE(metrics); i++)
		bench_emit(metrics[i], NAN, "GB/s", g);
	f = bench_data_open("bench_throughput_floor.dat", "w",
			    "floor: single-thread memcpy, pre-faulted buffers");
	if (!f)
		return;
	fprintf(f, "# size_mib memcpy_gbps\n");
	for (i = 0; i < BENCH_NCURVE; i++) {
		unsigned long mib = bench_curve_mib[i];
		double c = mib == (BENCH_MIG_BYTES >> 20) ? g :
			   floor_memcpy_gbps(mib << 20, BENCH_CURVE_REPS);

		fprintf(f, "%lu %.4f\n", mib, c);
	}
	fclose(f);
}

/* ---- page table scan floor ------------------------------------------------ */

/* One PAGEMAP_SCAN walk of [start, end); present pages, or -errno. */
static long floor_scan_once(int fd, uint64_t start, uint64_t end, struct floor_page_region *vec,
			    size_t nvec)
{
	struct floor_pm_scan_arg arg;
	uint64_t cur = start;
	long present = 0;

	while (cur < end) {
		long n, i;

		memset(&arg, 0, sizeof(arg));
		arg.size = sizeof(arg);
		arg.start = cur;
		arg.end = end;
		arg.vec = (uint64_t)(uintptr_t)vec;
		arg.vec_len = nvec;
		arg.return_mask = FLOOR_PAGE_IS_PRESENT | FLOOR_PAGE_IS_SWAPPED |
				  FLOOR_PAGE_IS_FILE | FLOOR_PAGE_IS_PFNZERO | FLOOR_PAGE_IS_HUGE;
		n = ioctl(fd, FLOOR_PAGEMAP_SCAN, &arg);
		if (n < 0)
			return -errno;
		for (i = 0; i < n; i++)
			if (vec[i].categories & FLOOR_PAGE_IS_PRESENT)
				present += (long)((vec[i].end - vec[i].start) / BENCH_PAGE);
		if (arg.walk_end <= cur)
			return -EIO;
		cur = arg.walk_end;
	}
	return present;
}

/* One read of the pagemap entries of [start, end); present pages, or -errno. */
static long floor_pagemap_read_once(int fd, uint64_t start, uint64_t end, uint64_t *ent)
{
	size_t n = (end - start) / BENCH_PAGE, i;
	off_t off = (off_t)(start / BENCH_PAGE * sizeof(uint64_t));
	long present = 0;

	if (pread(fd, ent, n * sizeof(uint64_t), off) != (ssize_t)(n * sizeof(uint64_t)))
		return -EIO;
	for (i = 0; i < n; i++)
		present += (long)(ent[i] >> 63);
	return present;
}

/* Median Mpages/s of one method over the region; NAN if it fails. */
static double floor_scan_rate(int fd, char *buf, size_t npages, int scan,
			      struct floor_page_region *vec, size_t nvec, uint64_t *ent)
{
	uint64_t start = (uint64_t)(uintptr_t)buf, end = start + npages * BENCH_PAGE;
	double v[BENCH_RF_REPS];
	int r;

	for (r = -1; r < BENCH_RF_REPS; r++) {
		uint64_t t0 = bench_now_ns();
		long got = scan ? floor_scan_once(fd, start, end, vec, nvec) :
				  floor_pagemap_read_once(fd, start, end, ent);
		uint64_t dt = bench_now_ns() - t0;

		if (got != (long)npages) {
			bench_note("%s: %ld of %zu pages reported present%s%s",
				   scan ? "PAGEMAP_SCAN" : "pagemap read", got, npages,
				   got < 0 ? ": " : "", got < 0 ? strerror((int)-got) : "");
			return NAN;
		}
		if (r >= 0)
			v[r] = (double)npages / ((double)dt / 1e9) / 1e6;
	}
	return bench_median(v, BENCH_RF_REPS);
}

static void group_scan(void)
{
	size_t npages = BENCH_RF_BYTES / BENCH_PAGE, nvec = 1024;
	struct floor_page_region *vec = calloc(nvec, sizeof(*vec));
	uint64_t *ent = calloc(npages, sizeof(uint64_t));
	char *buf = raw_map(BENCH_RF_BYTES);
	double scan = NAN, rd = NAN;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (!vec || !ent || !buf || fd < 0) {
		bench_note("range scan floor: setup failed: %s", strerror(errno));
		goto out;
	}
	bench_fill_tags(buf, BENCH_RF_BYTES);
	bench_pin_self();
	scan = floor_scan_rate(fd, buf, npages, 1, vec, nvec, ent);
	rd = floor_scan_rate(fd, buf, npages, 0, vec, nvec, ent);
	printf("  PAGEMAP_SCAN %.1f Mpages/s, /proc/self/pagemap read %.1f Mpages/s\n", scan, rd);
	if (!isfinite(scan))
		bench_note("range_fault_mpages_s floor: PAGEMAP_SCAN failed, using a pagemap read");
	bench_emit("range_fault_mpages_s", NAN, "Mpages/s", isfinite(scan) ? scan : rd);
out:
	if (fd >= 0)
		close(fd);
	raw_munmap(buf, BENCH_RF_BYTES);
	free(vec);
	free(ent);
}

/* ---- main ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
	static const struct bench_metric m_copy[] = {
		{ "fault_to_ram_p50", "us" }, { "fault_to_ram_p99", "us" },
	};
	static const struct bench_metric m_move[] = {
		{ "exclusive_revoke_p50", "us" }, { "exclusive_revoke_p99", "us" },
	};
	static const struct bench_metric m_copyfloor[] = {
		{ "migrate_to_dev_gbps", "GB/s" }, { "migrate_to_sys_gbps", "GB/s" },
		{ "fault_to_ram_seq_gbps", "GB/s" }, { "coherent_migrate_gbps", "GB/s" },
	};
	static const struct bench_metric m_scan[] = { { "range_fault_mpages_s", "Mpages/s" } };
	static const struct bench_metric m_sigbus[] = { { "self_fault_p50", "us" } };

	if (bench_open(argc, argv, "bench_floor"))
		return 1;
	bench_group("userfaultfd MISSING fault + UFFDIO_COPY (floor of fault_to_ram)",
		    group_fault_copy, m_copy, BENCH_ARRAY_SIZE(m_copy), 30);
	bench_group("userfaultfd MISSING fault + UFFDIO_MOVE (floor of exclusive_revoke)",
		    group_fault_move, m_move, BENCH_ARRAY_SIZE(m_move), 30);
	bench_group("single-thread memcpy (floor of the throughputs)",
		    group_memcpy, m_copyfloor, BENCH_ARRAY_SIZE(m_copyfloor), 60);
	bench_group("PAGEMAP_SCAN of 1 GiB resident (floor of range_fault)",
		    group_scan, m_scan, BENCH_ARRAY_SIZE(m_scan), 30);
	bench_group("userfaultfd SIGBUS fault + UFFDIO_COPY in the handler (floor of self_fault)",
		    group_fault_sigbus, m_sigbus, BENCH_ARRAY_SIZE(m_sigbus), 30);
	return bench_close();
}
