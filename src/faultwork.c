/* SPDX-License-Identifier: MIT */
/*
 * faultwork.c - fault workers: CPU faults on the pages of a pool created
 * with UHMM_DEVMEM_DEFER_FAULTS are served off the fault-service thread.
 * The service thread locks the page for the fault (LOCK_FAULT), queues a
 * job and goes on reading faults; a worker runs the owner's migrate_to_ram
 * (a copy that takes a DMA or a network round trip), then finishes the
 * fault: unlock, wake the faulting thread, or SIGBUS it.  Faults on
 * different pages are so served concurrently, one per worker; a second
 * fault on a page whose job runs waits on the page lock like any other.
 *
 * The hand-off costs about 20 us here (a wake-up on another CPU), more than
 * a memcpy of a page: so a DEFER pool is deferred only while its
 * migrate_to_ram takes long, measured: a running average of each call's
 * time (pool->mtr_ns), deferred above DEFER_ABOVE_NS.  The first fault of
 * a pool is served in place and measured.
 *
 * fw->lock (a leaf) protects the queue; workers start on first use and
 * live as long as the process (a fork child starts its own).
 */
#include "internal.h"

#include <signal.h>

#define FAULT_WORKERS 4
#define DEFER_ABOVE_NS 25000ULL

bool uhmm__fault_should_defer(struct uhmm_devmem *pool)
{
	return (pool->flags & UHMM_DEVMEM_DEFER_FAULTS) &&
	       __atomic_load_n(&pool->mtr_ns, __ATOMIC_RELAXED) > DEFER_ABOVE_NS;
}

/*
 * What one migrate_to_ram costs, for the average: the time of its driver
 * copies (devcopy.c adds each copy-and-wait here) when it copied through
 * uhmm_migrate_copy, else its wall time.  Not the wall time always: the
 * migration's last move wakes the faulting thread, which on this CPU runs
 * before the caller gets back, so the wall time held the program's own
 * time until its next fault and a fast pool read as slow (far memory: its
 * faults went to workers and p50 went 14 -> 33 us).  Per thread, read in
 * signal handlers too: initial-exec TLS.
 */
static __thread uint64_t tls_copy_ns __attribute__((tls_model("initial-exec")));
static __thread bool tls_timing __attribute__((tls_model("initial-exec")));

void uhmm__fault_time_begin(void)
{
	tls_copy_ns = 0;
	tls_timing = true;
}

void uhmm__fault_copy_time(uint64_t ns)
{
	if (tls_timing)
		tls_copy_ns += ns;
}

uint64_t uhmm__fault_time_end(uint64_t wall_ns)
{
	tls_timing = false;
	return tls_copy_ns ? tls_copy_ns : wall_ns;
}

/* One migrate_to_ram took ns: a running average, 1/4 weight to the new. */
void uhmm__fault_timed(struct uhmm_devmem *pool, uint64_t ns)
{
	uint64_t old = __atomic_load_n(&pool->mtr_ns, __ATOMIC_RELAXED);
	__atomic_store_n(&pool->mtr_ns, old ? old - old / 4 + ns / 4 : ns, __ATOMIC_RELAXED);
}

struct fault_job {
	struct uhmm_devmem *pool;
	uint64_t addr, page, t0;
	pid_t tid;
	bool write;
	struct fault_job *next;
};

struct uhmm__faultwork {
	pthread_mutex_t lock;      /* protects the queue and nstarted */
	pthread_cond_t cond;       /* a job was queued */
	struct fault_job *head, **tail;
	unsigned nstarted;
	struct uhmm__as *as;
};

static void *worker_main(void *arg)
{
	struct uhmm__faultwork *fw = arg;
	uhmm__set_fault_worker();
	for (;;) {
		uhmm__lock(&fw->lock);
		while (!fw->head)
			pthread_cond_wait(&fw->cond, &fw->lock);
		struct fault_job *j = fw->head;
		fw->head = j->next;
		if (!fw->head)
			fw->tail = &fw->head;
		uhmm__unlock(&fw->lock);
		struct uhmm_fault vmf = { .addr = j->addr, .page = j->page, .write = j->write };
		uint64_t m0 = uhmm__now_ns();
		uhmm__fault_time_begin();
		int rc = j->pool->ops->migrate_to_ram(j->pool, &vmf);
		uhmm__fault_timed(j->pool, uhmm__fault_time_end(uhmm__now_ns() - m0));
		uhmm__fault_finish(fw->as, j->addr, rc, j->tid, j->t0);
		uhmm__free(j, sizeof(*j));
	}
	return NULL;
}

/* The workers of as, started on first use; NULL if none could start. */
static struct uhmm__faultwork *workers(struct uhmm__as *as)
{
	struct uhmm__faultwork *fw = __atomic_load_n(&as->faultwork, __ATOMIC_ACQUIRE);
	if (UHMM_LIKELY(fw))
		return fw;
	fw = uhmm__zalloc(sizeof(*fw));
	if (!fw)
		return NULL;
	pthread_mutex_init(&fw->lock, NULL);
	pthread_cond_init(&fw->cond, NULL);
	fw->tail = &fw->head;
	fw->as = as;
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);  /* signals go to the application */
	for (unsigned i = 0; i < FAULT_WORKERS; i++) {
		pthread_t t;
		pthread_attr_t at;
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		if (!uhmm__inject(INJ_THREAD) && pthread_create(&t, &at, worker_main, fw) == 0) {
			pthread_setname_np(t, "uhmm-fault-w");
			fw->nstarted++;
		}
		pthread_attr_destroy(&at);
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!fw->nstarted) {
		uhmm__log("no fault worker thread could start: deferred faults are served in place");
		uhmm__free(fw, sizeof(*fw));
		return NULL;
	}
	/* Only the service thread starts workers, so there is no race here. */
	__atomic_store_n(&as->faultwork, fw, __ATOMIC_RELEASE);
	return fw;
}

int uhmm__fault_defer(struct uhmm__as *as, struct uhmm_devmem *pool, uint64_t addr,
		      uint64_t page, bool write, pid_t tid, uint64_t t0)
{
	struct uhmm__faultwork *fw = workers(as);
	struct fault_job *j = fw ? uhmm__zalloc(sizeof(*j)) : NULL;
	if (!j)
		return -ENOMEM;
	*j = (struct fault_job){ .pool = pool, .addr = addr, .page = page, .t0 = t0,
				 .tid = tid, .write = write };
	uhmm__lock(&fw->lock);
	*fw->tail = j;
	fw->tail = &j->next;
	pthread_cond_signal(&fw->cond);
	uhmm__unlock(&fw->lock);
	return 0;
}
