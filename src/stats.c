/* SPDX-License-Identifier: MIT */
/*
 * stats.c - process counters and the optional event callback.  Counters are
 * relaxed atomics bumped on the paths that do the work (no lock); readers
 * get a snapshot that may be a few events behind.
 */
#include "internal.h"

#include <sched.h>
#include <time.h>

struct uhmm_stats uhmm__stats;
/* Where STAT_ADD counts: here, or in the published file once there is one (publish.c). */
struct uhmm_stats *uhmm__statp = &uhmm__stats;

/* The event callback (atomics, no lock) and how many calls are running. */
static void (*g_cb)(const struct uhmm_event *ev, void *arg);
static void *g_cb_arg;
static unsigned long g_cb_active;

uint64_t uhmm__now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void uhmm_stats_get(struct uhmm_stats *st)
{
	if (!st)
		return;
	const uint64_t *src = (const uint64_t *)__atomic_load_n(&uhmm__statp, __ATOMIC_ACQUIRE);
	uint64_t *dst = (uint64_t *)st;
	for (size_t i = 0; i < sizeof(*st) / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

void uhmm_stats_reset(void)
{
	uint64_t *p = (uint64_t *)__atomic_load_n(&uhmm__statp, __ATOMIC_ACQUIRE);
	for (size_t i = 0; i < sizeof(uhmm__stats) / sizeof(uint64_t); i++)
		__atomic_store_n(&p[i], 0, __ATOMIC_RELAXED);
}

/*
 * Once this returns, no call of the previous callback is still running, and
 * everything those calls did happened before (the caller may free what the
 * callback used).
 */
void uhmm_set_event_cb(void (*cb)(const struct uhmm_event *ev, void *arg), void *arg)
{
	__atomic_store_n(&g_cb, NULL, __ATOMIC_SEQ_CST);
	while (__atomic_load_n(&g_cb_active, __ATOMIC_SEQ_CST))
		sched_yield();
	__atomic_store_n(&g_cb_arg, arg, __ATOMIC_SEQ_CST);
	__atomic_store_n(&g_cb, cb, __ATOMIC_SEQ_CST);
}

void uhmm__event(uint32_t type, uint32_t arg, uint64_t addr, uint64_t len, uint64_t t0)
{
	if (__atomic_load_n(&uhmm__obs_on, __ATOMIC_RELAXED))
		uhmm__obs_event(type, arg, addr, len, t0);  /* histogram, pools, timeline */
	if (UHMM_LIKELY(!__atomic_load_n(&g_cb, __ATOMIC_RELAXED)))
		return;
	__atomic_fetch_add(&g_cb_active, 1, __ATOMIC_SEQ_CST);
	void (*cb)(const struct uhmm_event *, void *) = __atomic_load_n(&g_cb, __ATOMIC_SEQ_CST);
	if (!cb) {
		__atomic_fetch_sub(&g_cb_active, 1, __ATOMIC_SEQ_CST);
		return;
	}
	uint64_t now = uhmm__now_ns();
	struct uhmm_event ev = {
		.ts_ns = now, .addr = addr, .len = len,
		.duration_ns = t0 ? now - t0 : 0, .type = type, .arg = arg,
	};
	cb(&ev, __atomic_load_n(&g_cb_arg, __ATOMIC_SEQ_CST));
	__atomic_fetch_sub(&g_cb_active, 1, __ATOMIC_SEQ_CST);
}
