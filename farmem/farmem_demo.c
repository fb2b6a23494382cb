/* SPDX-License-Identifier: MIT */
/*
 * farmem_demo.c - make farmem-demo (and make demo): far memory in a few
 * calls.  Starts a local uhmm-memd, moves a 512 MiB table of malloc'd
 * memory to it, reads it back randomly (one fault per page) and then
 * sequentially (read-ahead), and prints RssAnon before and after, the
 * throughput and the fault latency; then the same with the table in THPs
 * (MADV_HUGEPAGE), which travel whole.  UHMM_FARMEM_DEMO_MB changes the size;
 * UCX_TLS picks the transport (default sm,tcp: shared memory on one host).
 */
#define _GNU_SOURCE
#include "testutil.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <uhmm.h>
#include <uhmm_farmem.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(void)
{
	const char *mbs = getenv("UHMM_FARMEM_DEMO_MB");
	size_t mb = mbs ? (size_t)atol(mbs) : 512;
	size_t len = mb << 20, n = len / 8, npages = len / 4096;
	if (!getenv("UCX_TLS"))
		setenv("UCX_TLS", "sm,tcp", 1);
	if (!getenv("UCX_NET_DEVICES"))
		setenv("UCX_NET_DEVICES", "lo", 1);
	int rc = uhmm_init();
	if (rc) {
		fprintf(stderr, "farmem_demo: uhmm_init: %s\n", strerror(-rc));
		return 1;
	}
	char tok[256], size[32];
	srand((unsigned)getpid());
	tu_token_file(tok, sizeof(tok), "demo-token");
	snprintf(size, sizeof(size), "%zuM", mb + 64);
	struct tu_server srv;
	if ((rc = tu_server_start(&srv, size, tok, NULL))) {
		fprintf(stderr, "farmem_demo: cannot start uhmm-memd (%s): %s\n", tu_memd_path(),
			strerror(-rc));
		return 1;
	}
	printf("server uhmm-memd on %s (UCX_TLS=%s)\n", srv.addr, getenv("UCX_TLS"));
	struct uhmm_farmem_opts o = { .token_file = tok, .max_pages = npages + 1024 };
	struct uhmm_farmem *fm;
	if ((rc = uhmm_farmem_open(srv.addr, &o, &fm))) {
		tu_server_stop(&srv, SIGTERM);
		return 1;
	}
	uint64_t *t = malloc(len + 4096);
	t = (uint64_t *)(((uintptr_t)t + 4095) & ~(uintptr_t)4095);
	for (size_t i = 0; i < n; i++)
		t[i] = i * 2654435761u;
	long rss0 = tu_rss_anon_kb();
	double t0 = now();
	rc = uhmm_farmem_place(fm, t, len);
	double t1 = now();
	long rss1 = tu_rss_anon_kb();
	printf("placed %zu MiB in far memory: %d, %.2f GB/s; RssAnon %ld MiB -> %ld MiB (-%ld MiB)\n",
	       mb, rc, len / (t1 - t0) / 1e9, rss0 >> 10, rss1 >> 10, (rss0 - rss1) >> 10);

	/* random: one page each, a fault each */
	size_t nrand = npages / 4, bad = 0;
	double t2 = now();
	for (size_t k = 0; k < nrand; k++) {
		size_t pg = ((size_t)rand() * 7919u) % npages;
		size_t i = pg * 512 + (size_t)rand() % 512;
		bad += t[i] != i * 2654435761u;
	}
	double t3 = now();
	struct uhmm_farmem_stats st;
	uhmm_farmem_stats(fm, &st);
	printf("random reads: %zu pages in %.2f s, %.0f faults/s, fault p50 %.1f us p99 %.1f us\n",
	       nrand, t3 - t2, st.faults / (t3 - t2), st.fault_p50_ns / 1e3, st.fault_p99_ns / 1e3);
	uint64_t f0 = st.faults;
	double t4 = now();
	for (size_t i = 0; i < n; i++)
		bad += t[i] != i * 2654435761u;
	double t5 = now();
	uhmm_farmem_stats(fm, &st);
	long rss2 = tu_rss_anon_kb();
	printf("sequential read of all %zu MiB: %.2f GB/s, %llu faults (read-ahead), "
	       "fault p50 %.1f us p99 %.1f us\n", mb, len / (t5 - t4) / 1e9,
	       (unsigned long long)(st.faults - f0), st.fault_p50_ns / 1e3, st.fault_p99_ns / 1e3);
	printf("RssAnon after reading back: %ld MiB; bytes out %llu MiB, in %llu MiB; %s\n",
	       rss2 >> 10, (unsigned long long)(st.bytes_out >> 20),
	       (unsigned long long)(st.bytes_in >> 20), bad ? "DATA MISMATCH" : "data exact");

	/* the same table in THPs (MADV_HUGEPAGE): 2 MiB pages out and back */
	size_t hb = 2UL << 20;
	char *hm = mmap(NULL, len + hb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (hm != MAP_FAILED) {
		uint64_t *h = (uint64_t *)(((uintptr_t)hm + hb - 1) & ~(uintptr_t)(hb - 1));
		madvise(h, len, MADV_HUGEPAGE);
		for (size_t i = 0; i < n; i++)
			h[i] = i * 2654435761u;
		uhmm_farmem_stats(fm, &st);
		f0 = st.faults;
		double t6 = now();
		int prc = uhmm_farmem_place(fm, h, len);
		double t7 = now();
		for (size_t i = 0; i < n; i++)
			bad += h[i] != i * 2654435761u;
		double t8 = now();
		uhmm_farmem_stats(fm, &st);
		printf("the same table in THPs (MADV_HUGEPAGE): placed %d, %.2f GB/s; sequential read "
		       "%.2f GB/s, %llu faults (one per 2 MiB once the stream goes); %s\n", prc,
		       len / (t7 - t6) / 1e9, len / (t8 - t7) / 1e9,
		       (unsigned long long)(st.faults - f0), bad ? "DATA MISMATCH" : "data exact");
		munmap(hm, len + hb);
	}
	rc = uhmm_farmem_close(fm);
	tu_server_stop(&srv, SIGTERM);
	return bad || rc ? 1 : 0;
}
