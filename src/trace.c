/* SPDX-License-Identifier: MIT */
/*
 * trace.c - the debug trace of page events (only with -DUHMM_TRACE, see
 * internal.h): a lock-free ring of the last TRACE_N events; a test that
 * finds a bad page calls uhmm__tr_dump() with its address to get its
 * history (moves, zero fills, locks, faults, registrations).
 */
#ifdef UHMM_TRACE
#include <stdint.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))
#define TRACE_N (1u << 22)

struct tr_ev {
	uint64_t ns, a, b, len;
	int64_t c;
	int tid;
	char k;
};

static struct tr_ev g_ring[TRACE_N];
static unsigned long g_next;		/* atomic: events ever recorded */

API void uhmm__tr(char k, uint64_t a, uint64_t b, uint64_t len, int64_t c);
API void uhmm__tr_dump(uint64_t addr);

void uhmm__tr(char k, uint64_t a, uint64_t b, uint64_t len, int64_t c)
{
	static __thread int tid;
	struct timespec ts;

	if (!tid)
		tid = (int)syscall(SYS_gettid);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	unsigned long i = __atomic_fetch_add(&g_next, 1, __ATOMIC_RELAXED) % TRACE_N;
	g_ring[i] = (struct tr_ev){ (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec,
				    a, b, len, c, tid, k };
}

void uhmm__tr_dump(uint64_t addr)
{
	unsigned long end = __atomic_load_n(&g_next, __ATOMIC_ACQUIRE);
	unsigned long start = end > TRACE_N ? end - TRACE_N : 0;

	for (unsigned long j = start; j < end; j++) {
		const struct tr_ev *e = &g_ring[j % TRACE_N];
		if ((e->a <= addr && addr < e->a + e->len) ||
		    (e->b && e->b <= addr && addr < e->b + e->len))
			fprintf(stderr, "trace %llu tid %d %c %llx %llx len %llx val %lld\n",
				(unsigned long long)e->ns, e->tid, e->k, (unsigned long long)e->a,
				(unsigned long long)e->b, (unsigned long long)e->len,
				(long long)e->c);
	}
}
#endif
