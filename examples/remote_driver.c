/* SPDX-License-Identifier: MIT */
/*
 * remote_driver.c - a driver outside the library whose device memory is
 * another process: a memory server forked at start, reached over a socket.
 * Built only against the installed header:
 *   cc remote_driver.c $(pkg-config --cflags --libs uhmm)
 * It moves 256 MiB of aligned_alloc'd memory into the server (a driver-owned
 * pool: uhmm knows the pages only by index, the driver copies them, one
 * message per run), shows the application's RssAnon drop, faults everything
 * back from the CPU, checks the data, then moves it out again and evicts it
 * by device address (uhmm_migrate_device_range) as a driver unloading does.
 * Exit status 0 only if the data is exact, RssAnon dropped by >= 95 % of
 * what moved and the pool is empty at the end.
 */
#define _GNU_SOURCE
#include <uhmm.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE UHMM_PAGE_SIZE
#define MIB (1UL << 20)
#define SIZE (256 * MIB)
#define NPAGES (SIZE / PAGE)
#define BATCH 512

enum { OP_PUT = 1, OP_CLEAR, OP_GET, OP_QUIT };
struct msg { uint32_t op; uint32_t npages; uint64_t index; };

static int sock = -1;
static pthread_mutex_t sock_lock = PTHREAD_MUTEX_INITIALIZER;  /* one request at a time */
static struct uhmm_devmem *pool;
static const int owner;

static int xfer(ssize_t (*io)(int, void *, size_t), void *p, size_t len)
{
	for (size_t done = 0; done < len;) {
		ssize_t n = io(sock, (char *)p + done, len - done);
		if (n <= 0)
			return -EIO;
		done += (size_t)n;
	}
	return 0;
}
static ssize_t rd(int fd, void *p, size_t n) { return read(fd, p, n); }
static ssize_t wr(int fd, void *p, size_t n) { return write(fd, p, n); }

/* The memory server: its own RAM, indexed like the pool. */
static void server(void)
{
	char *mem = malloc(SIZE);
	struct msg m;
	while (mem && xfer(rd, &m, sizeof(m)) == 0 && m.op != OP_QUIT) {
		if (m.index + m.npages > NPAGES)
			break;
		char *p = mem + m.index * PAGE;
		size_t len = (size_t)m.npages * PAGE;
		int rc = m.op == OP_PUT ? xfer(rd, p, len) : m.op == OP_GET ? xfer(wr, p, len) : 0;
		if (m.op == OP_CLEAR)
			memset(p, 0, len);
		if (rc)
			break;
	}
	_exit(0);
}

/* The driver's copy engine: one request per run. */
static int remote_copy(struct uhmm_devmem *mem, enum uhmm_copy_dir dir,
		       const struct uhmm_copy_run *runs, uint64_t nruns, uint64_t *fence)
{
	(void)mem;
	int rc = 0;
	pthread_mutex_lock(&sock_lock);
	for (uint64_t r = 0; r < nruns && !rc; r++) {
		struct msg m = { dir == UHMM_COPY_TO_RAM ? OP_GET :
				 (runs[r].flags & UHMM_COPY_RUN_CLEAR) ? OP_CLEAR : OP_PUT,
				 (uint32_t)runs[r].npages, runs[r].dev_index };
		void *host = (void *)(uintptr_t)runs[r].host;
		rc = xfer(wr, &m, sizeof(m));
		if (!rc && m.op != OP_CLEAR)
			rc = xfer(m.op == OP_GET ? rd : wr, host, runs[r].npages * PAGE);
	}
	pthread_mutex_unlock(&sock_lock);
	*fence = 0;  /* done on return */
	return rc;
}

/* A CPU access to a page in the server: bring back it and the next 63. */
static int to_ram(struct uhmm_devmem *mem, const struct uhmm_fault *vmf)
{
	uint64_t src[64], dst[64];
	struct uhmm_migrate m = { .start = vmf->addr, .end = vmf->addr + 64 * PAGE, .src = src,
				  .dst = dst, .pgmap_owner = &owner,
				  .flags = UHMM_MIGRATE_SELECT_DEVICE_PRIVATE,
				  .fault_page = vmf->page };
	int rc = uhmm_migrate_vma_setup(&m);
	if (rc == -EINVAL) {  /* the window crosses the end of the mapping */
		m.end = vmf->addr + PAGE;
		rc = uhmm_migrate_vma_setup(&m);
	}
	if (rc)
		return rc;
	long got = uhmm_migrate_copy(mem, src, dst, m.npages);
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	return got > 0 ? 0 : got < 0 ? (int)got : -ENOMEM;
}

static long rss_anon_kib(void)
{
	char line[256];
	long v = -1;
	FILE *f = fopen("/proc/self/status", "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "RssAnon: %ld kB", &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

static int migrate_out(char *buf)
{
	uint64_t src[BATCH], dst[BATCH];
	for (uint64_t off = 0; off < SIZE; off += BATCH * PAGE) {
		struct uhmm_migrate m = { .start = (uintptr_t)buf + off,
					  .end = (uintptr_t)buf + off + BATCH * PAGE, .src = src,
					  .dst = dst, .pgmap_owner = &owner,
					  .flags = UHMM_MIGRATE_SELECT_SYSTEM };
		int rc = uhmm_migrate_vma_setup(&m);
		if (rc)
			return rc;
		long got = uhmm_migrate_copy(pool, src, dst, m.npages);
		uhmm_migrate_vma_pages(&m);
		uhmm_migrate_vma_finalize(&m);
		if (got != BATCH)
			return got < 0 ? (int)got : -EIO;
	}
	return 0;
}

/* Evict by device address: every chunk of the pool back to system pages. */
static int evict_all(void)
{
	uint64_t first, count, src[BATCH], dst[BATCH];
	for (uint64_t c = 0; uhmm_devmem_chunk(pool, c, &first, &count) == 0; c++) {
		for (uint64_t off = 0; off < count; off += BATCH) {
			uint64_t n = count - off < BATCH ? count - off : BATCH;
			if (uhmm_migrate_device_range(src, first + off, n))
				return -EIO;
			memset(dst, 0, sizeof(dst));
			uhmm_migrate_copy(pool, src, dst, n);
			uhmm_migrate_device_pages(src, dst, n);
			uhmm_migrate_device_finalize(src, dst, n);
		}
	}
	return 0;
}

static uint64_t check(const uint64_t *buf)
{
	uint64_t bad = 0;
	for (uint64_t i = 0; i < SIZE / 8; i += 7)
		bad += buf[i] != i * 0x9E3779B97F4A7C15ULL;
	return bad;
}

int main(void)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		return perror("socketpair"), 1;
	pid_t pid = fork();  /* before uhmm starts: the server is a plain process */
	if (pid == 0) {
		close(sv[0]);
		sock = sv[1];
		server();
	}
	close(sv[1]);
	sock = sv[0];

	static const struct uhmm_devmem_ops ops = { .migrate_to_ram = to_ram };
	static const struct uhmm_devmem_copy_ops copy_ops = { .copy = remote_copy };
	int rc = uhmm_devmem_create_owned(UHMM_DEVMEM_PRIVATE, &owner, &ops, &copy_ops, 0, NULL,
					  NPAGES, &pool);
	if (rc)
		return fprintf(stderr, "uhmm_devmem_create_owned: %s\n", strerror(-rc)), 1;
	uint64_t *buf = aligned_alloc(PAGE, SIZE);
	if (!buf)
		return 1;
	for (uint64_t i = 0; i < SIZE / 8; i++)
		buf[i] = i * 0x9E3779B97F4A7C15ULL;
	long before = rss_anon_kib();
	if ((rc = migrate_out((char *)buf)))
		return fprintf(stderr, "migration to the server: %s\n", strerror(-rc)), 1;
	long after = rss_anon_kib();
	struct uhmm_devmem_stats st;
	uhmm_devmem_stats(pool, &st);
	printf("moved 256 MiB to the memory server (pid %d): RssAnon %ld -> %ld MiB, %llu pages on the device\n",
	       (int)pid, before >> 10, after >> 10, (unsigned long long)st.in_use);
	int ok = before - after >= (long)(SIZE / 1024) * 95 / 100 && st.in_use == NPAGES;

	uint64_t bad = check(buf);  /* every page faults back through the driver */
	uhmm_devmem_stats(pool, &st);
	printf("faulted back: %llu bad words, %llu pages left on the device, RssAnon %ld MiB\n",
	       (unsigned long long)bad, (unsigned long long)st.in_use, rss_anon_kib() >> 10);
	ok = ok && bad == 0 && st.in_use == 0;

	if ((rc = migrate_out((char *)buf)) || (rc = evict_all()))
		return fprintf(stderr, "evict: %s\n", strerror(-rc)), 1;
	uhmm_devmem_stats(pool, &st);
	bad = check(buf);
	printf("moved out and evicted by device address: %llu bad words, %llu pages left\n",
	       (unsigned long long)bad, (unsigned long long)st.in_use);
	ok = ok && bad == 0 && st.in_use == 0;

	struct msg q = { OP_QUIT, 0, 0 };
	xfer(wr, &q, sizeof(q));
	waitpid(pid, NULL, 0);
	free(buf);
	ok = ok && uhmm_devmem_destroy(pool) == 0;
	printf("%s\n", ok ? "remote_driver: OK" : "remote_driver: FAILED");
	return ok ? 0 : 1;
}
