/* SPDX-License-Identifier: MIT */
/*
 * placement.c - where the fault-service thread runs.  A fault is cheapest
 * when the service thread runs on the faulting thread's CPU: the faulting
 * thread sleeps, the service thread runs there at once, and its wake-up of
 * the faulting thread is local.  Left to the scheduler, an idle CPU next
 * door wins both wake-ups (measured here: 53 us at p50 against 10.8 pinned,
 * the service thread on the other CPU for 90 % of the faults), because at
 * the moment of each wake-up the faulting CPU is still busy.
 *
 * So the service thread follows a faulting thread that is pinned to one
 * CPU: after four faults in a row from threads pinned to the same CPU it
 * pins itself there; faults from unpinned threads (or threads pinned
 * elsewhere) four times in a row give it its own mask back.  A thread's
 * affinity is looked up when the faulting thread changes and every 100 ms
 * (one sched_getaffinity call), never per fault.  Service thread only (its
 * state is thread-local); UHMM_SERVICE_FOLLOW=0 turns it off.
 */
#include "internal.h"

#include <sched.h>

#define FOLLOW_STREAK 4
#define RECHECK_NS 100000000ULL

struct follow {
	bool init, off;
	pid_t tid;            /* the last faulting thread */
	int tid_cpu;          /* its one CPU, or -1 (unpinned / unknown) */
	uint64_t checked_ns;
	int streak_cpu, streak;
	int pinned;           /* the CPU we pinned ourselves to, or -1 */
	cpu_set_t own;        /* our mask before any pinning */
};

static __thread struct follow F;

static int single_cpu(const cpu_set_t *s)
{
	if (CPU_COUNT(s) != 1)
		return -1;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, s))
			return c;
	return -1;
}

/* At the service thread's start: its own mask, and whether to follow. */
void uhmm__service_placement_init(void)
{
	const char *v = getenv("UHMM_SERVICE_FOLLOW");
	F = (struct follow){ .init = true, .off = v && !strcmp(v, "0"), .tid_cpu = -1,
			     .streak_cpu = -2, .pinned = -1 };
	if (sched_getaffinity(0, sizeof(F.own), &F.own) != 0 || CPU_COUNT(&F.own) < 2)
		F.off = true;  /* nothing to choose */
}

/* Before serving a fault of thread tid. */
void uhmm__service_follow(pid_t tid)
{
	if (!F.init || F.off || tid <= 0)
		return;
	uint64_t now = uhmm__now_ns();
	if (tid != F.tid || now - F.checked_ns > RECHECK_NS) {
		cpu_set_t s;
		F.tid = tid;
		F.tid_cpu = sched_getaffinity(tid, sizeof(s), &s) == 0 ? single_cpu(&s) : -1;
		F.checked_ns = now;
	}
	int want = F.tid_cpu >= 0 && CPU_ISSET(F.tid_cpu, &F.own) ? F.tid_cpu : -1;
	if (want == F.streak_cpu) {
		if (F.streak < FOLLOW_STREAK)
			F.streak++;
	} else {
		F.streak_cpu = want;
		F.streak = 1;
	}
	if (F.streak < FOLLOW_STREAK || want == F.pinned)
		return;
	cpu_set_t s;
	if (want >= 0) {
		CPU_ZERO(&s);
		CPU_SET(want, &s);
	} else {
		s = F.own;
	}
	if (sched_setaffinity(0, sizeof(s), &s) == 0)
		F.pinned = want;
}
