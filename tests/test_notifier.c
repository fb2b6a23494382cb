/* SPDX-License-Identifier: MIT */
/*
 * test_notifier.c - conformance tests for the interval notifier API
 * (uhmm_interval_notifier_*, read_begin/read_retry, set_seq) and for
 * uhmm_range_fault(), used directly as a driver would (lib/test_hmm.c and
 * mm/hmm.c semantics):
 *   - insert/remove; which notifiers an application munmap/mprotect/madvise
 *     calls, with which event, owner and range (the callback receives the
 *     range of the change, not clipped to the notifier), and that it runs
 *     before the change (the old data is still readable from the callback);
 *   - the sequence protocol, read_begin() waiting out an invalidation, and
 *     inserts/removes from other threads deferred during an invalidation;
 *   - 100 000 notifiers;
 *   - range_fault: -EBUSY on a stale sequence, output flags, request flags
 *     (default_flags / pfn_flags_mask), holes, protections, pfn_to_virt().
 */
#include "harness.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <uhmm.h>

#define PS UHMM_PAGE_SIZE

/* ------------------------------------------------------------------------ */
/* a recording notifier                                                      */
/* ------------------------------------------------------------------------ */

struct tnot {
	int id;
	struct uhmm_interval_notifier n;	/* embedded, deliberately not first */
	pthread_mutex_t lock;			/* protects the fields below */
	int calls;
	struct uhmm_notifier_range last;
	unsigned long last_seq;
	int pre_ret;				/* uhmm_device_read() in the callback */
	int pre_val;				/* first int of the range, read there */
	int block;				/* wait at the gate in the callback */
};

#define to_tnot(p) ((struct tnot *)((char *)(p) - offsetof(struct tnot, n)))

/* The gate holds blocking callbacks until the test opens it. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int entered;
	int open;
} gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 };

static void gate_pass(void)
{
	pthread_mutex_lock(&gate.lock);
	gate.entered++;
	pthread_cond_broadcast(&gate.cond);
	while (!gate.open)
		pthread_cond_wait(&gate.cond, &gate.lock);
	pthread_mutex_unlock(&gate.lock);
}

static void gate_open(void)
{
	pthread_mutex_lock(&gate.lock);
	gate.open = 1;
	pthread_cond_broadcast(&gate.cond);
	pthread_mutex_unlock(&gate.lock);
}

/* Wait (up to 10 s) until a callback is held at the gate. */
static void gate_wait_entered(void)
{
	struct timespec ts;
	int ret = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 10;
	pthread_mutex_lock(&gate.lock);
	while (!gate.entered && ret == 0)
		ret = pthread_cond_timedwait(&gate.cond, &gate.lock, &ts);
	pthread_mutex_unlock(&gate.lock);
	ASSERT_EQ(ret, 0);
}

static bool rec_invalidate(struct uhmm_interval_notifier *n,
			   const struct uhmm_notifier_range *r, unsigned long cur_seq)
{
	struct tnot *t = to_tnot(n);
	int v = 0, pre = uhmm_device_read(&v, r->start, sizeof(v));

	pthread_mutex_lock(&t->lock);
	if (t->calls == 0) {
		t->pre_ret = pre;
		t->pre_val = v;
	}
	t->calls++;
	t->last = *r;
	t->last_seq = cur_seq;
	uhmm_interval_set_seq(n, cur_seq);
	pthread_mutex_unlock(&t->lock);
	if (t->block)
		gate_pass();
	return true;
}

static const struct uhmm_interval_notifier_ops rec_ops = {
	.invalidate = rec_invalidate,
};

static void tnot_init(struct tnot *t, int id)
{
	memset(t, 0, sizeof(*t));
	t->id = id;
	pthread_mutex_init(&t->lock, NULL);
}

static void tnot_insert(struct tnot *t, int id, const void *start, size_t len)
{
	int ret;

	tnot_init(t, id);
	ret = uhmm_interval_notifier_insert(&t->n, (uint64_t)(uintptr_t)start, len, &rec_ops);
	if (ret == -ENOSYS)
		SKIP("kernel has no userfaultfd");
	if (ret == -EPERM)
		SKIP("userfaultfd not permitted for this user");
	ASSERT_EQ(ret, 0);
}

static int tnot_calls(struct tnot *t)
{
	int c;

	pthread_mutex_lock(&t->lock);
	c = t->calls;
	pthread_mutex_unlock(&t->lock);
	return c;
}

static void *map_anon(size_t size, int prot)
{
	void *p = th_mmap_isolated(size, prot, MAP_PRIVATE | MAP_ANONYMOUS);

	ASSERT_MAPPED(p);
	return p;
}

static unsigned int time_scale(void)
{
	const char *s = getenv("UHMM_TEST_TIMEOUT_SCALE");

	return s && atoi(s) > 1 ? (unsigned int)atoi(s) : 1;
}

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* Fault [start, start + npages) in with the read_begin/-EBUSY retry loop. */
static int fault_range(struct uhmm_interval_notifier *n, const void *start, uint64_t npages,
		       uint64_t *pfns, uint64_t default_flags, uint64_t mask)
{
	struct uhmm_range r = {
		.notifier = n,
		.start = (uint64_t)(uintptr_t)start,
		.end = (uint64_t)(uintptr_t)start + npages * PS,
		.hmm_pfns = pfns,
		.default_flags = default_flags,
		.pfn_flags_mask = mask,
	};
	int ret;

	for (int tries = 0; tries < 1000; tries++) {
		r.notifier_seq = uhmm_interval_read_begin(n);
		ret = uhmm_range_fault(&r);
		if (ret != -EBUSY)
			return ret;
	}
	return -EBUSY;
}

/* ------------------------------------------------------------------------ */
/* insert / remove                                                           */
/* ------------------------------------------------------------------------ */

TEST(insert_remove)
{
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE);
	struct tnot a, b;
	unsigned long seq;

	tnot_insert(&a, 1, p, 4 * PS);
	tnot_insert(&b, 2, p + PS, PS);
	seq = uhmm_interval_read_begin(&a.n);
	ASSERT_FALSE(uhmm_interval_read_retry(&a.n, seq));
	ASSERT_FALSE(uhmm_interval_check_retry(&a.n, seq));
	memset(p, 1, 4 * PS);		/* CPU use alone invalidates nothing */
	ASSERT_FALSE(uhmm_interval_read_retry(&a.n, seq));
	ASSERT_EQ(uhmm_interval_notifier_remove(&a.n), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(&b.n), 0);
	ASSERT_EQ(tnot_calls(&a), 0);
	ASSERT_EQ(tnot_calls(&b), 0);

	/* a zeroed, removed notifier can be inserted again */
	tnot_insert(&a, 1, p, 4 * PS);
	ASSERT_EQ(uhmm_interval_notifier_remove(&a.n), 0);

	/* removed notifiers are not called any more */
	ASSERT_EQ(munmap(p, 4 * PS), 0);
	ASSERT_EQ(tnot_calls(&a), 0);
	ASSERT_EQ(tnot_calls(&b), 0);
}

/* ------------------------------------------------------------------------ */
/* which notifiers an application change calls                               */
/* ------------------------------------------------------------------------ */

enum change { CH_MUNMAP, CH_MPROTECT, CH_DONTNEED };

#define NREG 16
#define CH_FIRST 3	/* the change covers pages [3, 6) */
#define CH_END 6

static const struct { int first, end, hit; } layout[] = {
	{ 0, 3, 0 },	/* ends where the change starts */
	{ 2, 4, 1 },	/* overlaps its first page */
	{ 4, 6, 1 },	/* inside */
	{ 5, 9, 1 },	/* overlaps its last page */
	{ 6, 10, 0 },	/* starts where it ends */
	{ 0, 16, 1 },	/* covers everything */
	{ 12, 16, 0 },	/* far away */
	{ 3, 6, 1 },	/* exactly the change */
};
#define NLAYOUT (sizeof(layout) / sizeof(layout[0]))

static int do_change(enum change ch, char *a, size_t len)
{
	switch (ch) {
	case CH_MUNMAP:
		return munmap(a, len);
	case CH_MPROTECT:
		return mprotect(a, len, PROT_READ);
	case CH_DONTNEED:
		return madvise(a, len, MADV_DONTNEED);
	}
	return -1;
}

static const enum uhmm_notify_event change_event[] = {
	[CH_MUNMAP] = UHMM_NOTIFY_UNMAP,
	[CH_MPROTECT] = UHMM_NOTIFY_PROTECTION_VMA,
	[CH_DONTNEED] = UHMM_NOTIFY_CLEAR,
};

static void check_called(struct tnot *t, unsigned long seq, uint64_t cs, uint64_t ce,
			 enum change ch, int first_int)
{
	ASSERT_EQ(t->calls, 1);
	ASSERT_EQ(t->last.event, change_event[ch]);
	ASSERT_TRUE(t->last.owner == NULL);
	ASSERT_EQ(t->last.start, cs);
	ASSERT_EQ(t->last.end, ce);
	/* called before the change: the old data was still there */
	ASSERT_EQ(t->pre_ret, 0);
	ASSERT_EQ(t->pre_val, first_int);
	ASSERT_TRUE(uhmm_interval_read_retry(&t->n, seq));
	ASSERT_TRUE(uhmm_interval_check_retry(&t->n, seq));
}

/*
 * faulted: a driver has range-faulted the memory first (the usual flow);
 * otherwise the runtime never saw it except through the notifiers.
 */
static void overlap_case(enum change ch, int faulted)
{
	char *p = map_anon(NREG * PS, PROT_READ | PROT_WRITE);
	uint64_t cs = (uint64_t)(uintptr_t)(p + CH_FIRST * PS);
	uint64_t ce = (uint64_t)(uintptr_t)(p + CH_END * PS);
	struct tnot t[NLAYOUT];
	unsigned long seq[NLAYOUT];
	uint64_t pfns[NREG];

	for (int i = 0; i < (int)(NREG * PS / sizeof(int)); i++)
		((int *)p)[i] = i + 1;
	for (size_t i = 0; i < NLAYOUT; i++) {
		tnot_insert(&t[i], (int)i, p + layout[i].first * PS,
			    (size_t)(layout[i].end - layout[i].first) * PS);
		seq[i] = uhmm_interval_read_begin(&t[i].n);
	}
	if (faulted) {
		ASSERT_EQ(fault_range(&t[5].n, p, NREG, pfns, UHMM_PFN_REQ_FAULT, 0), 0);
		seq[5] = uhmm_interval_read_begin(&t[5].n);
	}

	ASSERT_EQ(do_change(ch, p + CH_FIRST * PS, (CH_END - CH_FIRST) * PS), 0);

	for (size_t i = 0; i < NLAYOUT; i++) {
		pthread_mutex_lock(&t[i].lock);
		if (layout[i].hit) {
			check_called(&t[i], seq[i], cs, ce, ch,
				     (int)(CH_FIRST * PS / sizeof(int)) + 1);
		} else {
			ASSERT_EQ(t[i].calls, 0);
			ASSERT_FALSE(uhmm_interval_read_retry(&t[i].n, seq[i]));
		}
		pthread_mutex_unlock(&t[i].lock);
	}
	/* the untouched pages kept their data */
	ASSERT_EQ(((int *)p)[0], 1);
	ASSERT_EQ(*(int *)(p + CH_END * PS), (int)(CH_END * PS / sizeof(int)) + 1);

	for (size_t i = 0; i < NLAYOUT; i++)
		ASSERT_EQ(uhmm_interval_notifier_remove(&t[i].n), 0);
	munmap(p, NREG * PS);
}

TEST(overlap_munmap) { overlap_case(CH_MUNMAP, 1); }
TEST(overlap_mprotect) { overlap_case(CH_MPROTECT, 1); }
TEST(overlap_dontneed) { overlap_case(CH_DONTNEED, 1); }
TEST(overlap_munmap_unfaulted) { overlap_case(CH_MUNMAP, 0); }
TEST(overlap_mprotect_unfaulted) { overlap_case(CH_MPROTECT, 0); }
TEST(overlap_dontneed_unfaulted) { overlap_case(CH_DONTNEED, 0); }

/* ------------------------------------------------------------------------ */
/* the sequence protocol                                                     */
/* ------------------------------------------------------------------------ */

TEST(seq_protocol)
{
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE);
	char *other = map_anon(PS, PROT_READ | PROT_WRITE);
	struct tnot t;
	unsigned long s1, s2;

	memset(p, 7, 4 * PS);
	tnot_insert(&t, 1, p, 4 * PS);
	s1 = uhmm_interval_read_begin(&t.n);
	ASSERT_FALSE(uhmm_interval_read_retry(&t.n, s1));
	ASSERT_FALSE(uhmm_interval_check_retry(&t.n, s1));

	ASSERT_EQ(mprotect(p + PS, PS, PROT_READ), 0);
	ASSERT_EQ(tnot_calls(&t), 1);
	ASSERT_TRUE(uhmm_interval_read_retry(&t.n, s1));
	ASSERT_TRUE(uhmm_interval_check_retry(&t.n, s1));

	s2 = uhmm_interval_read_begin(&t.n);
	ASSERT_NE(s2, s1);
	ASSERT_FALSE(uhmm_interval_read_retry(&t.n, s2));
	ASSERT_FALSE(uhmm_interval_check_retry(&t.n, s2));

	/* a change elsewhere leaves the sequence alone */
	ASSERT_EQ(munmap(other, PS), 0);
	ASSERT_EQ(tnot_calls(&t), 1);
	ASSERT_FALSE(uhmm_interval_read_retry(&t.n, s2));

	/* still stale after several invalidations */
	ASSERT_EQ(madvise(p, PS, MADV_DONTNEED), 0);
	ASSERT_EQ(mprotect(p + PS, PS, PROT_READ | PROT_WRITE), 0);
	ASSERT_EQ(tnot_calls(&t), 3);
	ASSERT_TRUE(uhmm_interval_read_retry(&t.n, s1));
	ASSERT_TRUE(uhmm_interval_read_retry(&t.n, s2));
	ASSERT_FALSE(uhmm_interval_read_retry(&t.n, uhmm_interval_read_begin(&t.n)));

	ASSERT_EQ(uhmm_interval_notifier_remove(&t.n), 0);
	munmap(p, 4 * PS);
}

/* ------------------------------------------------------------------------ */
/* concurrency with an invalidation in progress                              */
/* ------------------------------------------------------------------------ */

struct changer {
	char *addr;
	size_t len;
	int prot;
	atomic_int done;
	int ret;
};

static void *changer_fn(void *arg)
{
	struct changer *c = arg;

	c->ret = mprotect(c->addr, c->len, c->prot);
	atomic_store(&c->done, 1);
	return NULL;
}

struct reader {
	struct uhmm_interval_notifier *n;
	atomic_int done;
	unsigned long seq;
};

static void *reader_fn(void *arg)
{
	struct reader *r = arg;

	r->seq = uhmm_interval_read_begin(r->n);
	atomic_store(&r->done, 1);
	return NULL;
}

/* Start an mprotect() in another thread and wait until it is held in a callback. */
static void start_blocked_change(pthread_t *th, struct changer *c, char *p, size_t len)
{
	c->addr = p;
	c->len = len;
	c->prot = PROT_READ;
	ASSERT_EQ(pthread_create(th, NULL, changer_fn, c), 0);
	gate_wait_entered();
	ASSERT_EQ(atomic_load(&c->done), 0);
}

TEST_TIMEOUT(read_begin_waits, 60)
{
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE);
	struct changer ch = { 0 };
	struct reader rd = { 0 };
	pthread_t tc, tr;
	struct tnot t;
	unsigned long s0;

	memset(p, 3, 4 * PS);
	tnot_insert(&t, 1, p, 4 * PS);
	t.block = 1;
	s0 = uhmm_interval_read_begin(&t.n);
	start_blocked_change(&tc, &ch, p, 4 * PS);

	rd.n = &t.n;
	ASSERT_EQ(pthread_create(&tr, NULL, reader_fn, &rd), 0);
	sleep_ms(300 * time_scale());
	ASSERT_EQ(atomic_load(&rd.done), 0);	/* still waiting */
	ASSERT_EQ(atomic_load(&ch.done), 0);	/* mprotect has not returned */
	ASSERT_TRUE(uhmm_interval_check_retry(&t.n, s0));

	gate_open();
	ASSERT_EQ(pthread_join(tc, NULL), 0);
	ASSERT_EQ(ch.ret, 0);
	ASSERT_EQ(pthread_join(tr, NULL), 0);
	ASSERT_EQ(atomic_load(&rd.done), 1);
	ASSERT_NE(rd.seq, s0);
	ASSERT_FALSE(uhmm_interval_read_retry(&t.n, rd.seq));
	ASSERT_TRUE(uhmm_interval_read_retry(&t.n, s0));
	ASSERT_EQ(tnot_calls(&t), 1);

	ASSERT_EQ(uhmm_interval_notifier_remove(&t.n), 0);
	munmap(p, 4 * PS);
}

struct inserter {
	struct tnot *t;
	char *addr;
	size_t len;
	atomic_int done;
	int ret;
};

static void *inserter_fn(void *arg)
{
	struct inserter *in = arg;

	in->ret = uhmm_interval_notifier_insert(&in->t->n, (uint64_t)(uintptr_t)in->addr,
						in->len, &rec_ops);
	atomic_store(&in->done, 1);
	return NULL;
}

static void *remover_fn(void *arg)
{
	struct inserter *in = arg;

	in->ret = uhmm_interval_notifier_remove(&in->t->n);
	atomic_store(&in->done, 1);
	return NULL;
}

/* Poll a flag for up to ms milliseconds. */
static int wait_flag(atomic_int *f, unsigned int ms)
{
	for (unsigned int i = 0; i < ms && !atomic_load(f); i++)
		sleep_ms(1);
	return atomic_load(f);
}

TEST_TIMEOUT(insert_deferred, 60)
{
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE);
	struct changer ch = { 0 };
	struct inserter in = { 0 };
	struct reader rd = { 0 };
	pthread_t tc, ti, tr;
	struct tnot t1, t2;

	memset(p, 3, 4 * PS);
	tnot_insert(&t1, 1, p, 4 * PS);
	t1.block = 1;
	start_blocked_change(&tc, &ch, p, 4 * PS);

	/* the insert returns while the invalidation is still held */
	tnot_init(&t2, 2);
	in.t = &t2;
	in.addr = p;
	in.len = 4 * PS;
	ASSERT_EQ(pthread_create(&ti, NULL, inserter_fn, &in), 0);
	ASSERT_EQ(wait_flag(&in.done, 5000 * time_scale()), 1);
	ASSERT_EQ(in.ret, 0);
	ASSERT_EQ(atomic_load(&ch.done), 0);

	/* read_begin() on the new notifier waits for the invalidation */
	rd.n = &t2.n;
	ASSERT_EQ(pthread_create(&tr, NULL, reader_fn, &rd), 0);
	sleep_ms(300 * time_scale());
	ASSERT_EQ(atomic_load(&rd.done), 0);

	gate_open();
	ASSERT_EQ(pthread_join(tc, NULL), 0);
	ASSERT_EQ(ch.ret, 0);
	ASSERT_EQ(pthread_join(ti, NULL), 0);
	ASSERT_EQ(pthread_join(tr, NULL), 0);
	ASSERT_FALSE(uhmm_interval_read_retry(&t2.n, rd.seq));
	/* not called for the invalidation that was running at insert time */
	ASSERT_EQ(tnot_calls(&t2), 0);
	ASSERT_EQ(tnot_calls(&t1), 1);

	/* but it is in the tree now */
	ASSERT_EQ(mprotect(p, 4 * PS, PROT_READ | PROT_WRITE), 0);
	ASSERT_EQ(tnot_calls(&t2), 1);
	ASSERT_EQ(tnot_calls(&t1), 2);
	ASSERT_TRUE(uhmm_interval_read_retry(&t2.n, rd.seq));

	ASSERT_EQ(uhmm_interval_notifier_remove(&t1.n), 0);
	ASSERT_EQ(uhmm_interval_notifier_remove(&t2.n), 0);
	munmap(p, 4 * PS);
}

TEST_TIMEOUT(remove_deferred, 60)
{
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE);
	struct changer ch = { 0 };
	struct inserter rm = { 0 };
	pthread_t tc, trm;
	struct tnot t1, t3;
	int c3;

	memset(p, 3, 4 * PS);
	tnot_insert(&t1, 1, p, 4 * PS);
	tnot_insert(&t3, 3, p, 4 * PS);
	t1.block = 1;
	start_blocked_change(&tc, &ch, p, 4 * PS);

	rm.t = &t3;
	ASSERT_EQ(pthread_create(&trm, NULL, remover_fn, &rm), 0);
	sleep_ms(300 * time_scale());
	ASSERT_EQ(atomic_load(&rm.done), 0);	/* waits for the invalidation */

	gate_open();
	ASSERT_EQ(pthread_join(trm, NULL), 0);
	ASSERT_EQ(rm.ret, 0);
	ASSERT_EQ(pthread_join(tc, NULL), 0);
	ASSERT_EQ(ch.ret, 0);
	c3 = tnot_calls(&t3);
	ASSERT_LE(c3, 1);

	/* never called again */
	ASSERT_EQ(mprotect(p, 4 * PS, PROT_READ | PROT_WRITE), 0);
	ASSERT_EQ(munmap(p + PS, PS), 0);
	ASSERT_EQ(tnot_calls(&t3), c3);
	ASSERT_EQ(tnot_calls(&t1), 3);
	ASSERT_EQ(uhmm_interval_notifier_remove(&t3.n), -EINVAL);

	ASSERT_EQ(uhmm_interval_notifier_remove(&t1.n), 0);
	munmap(p, PS);
	munmap(p + 2 * PS, 2 * PS);
}

/* ------------------------------------------------------------------------ */
/* many notifiers                                                            */
/* ------------------------------------------------------------------------ */

#define MANY 100000

struct cnot {
	struct uhmm_interval_notifier n;
	atomic_int calls;
};

static atomic_int many_total;

static bool count_invalidate(struct uhmm_interval_notifier *n,
			     const struct uhmm_notifier_range *r, unsigned long cur_seq)
{
	struct cnot *c = (struct cnot *)((char *)n - offsetof(struct cnot, n));

	(void)r;
	uhmm_interval_set_seq(n, cur_seq);
	atomic_fetch_add(&c->calls, 1);
	atomic_fetch_add(&many_total, 1);
	return true;
}

static const struct uhmm_interval_notifier_ops count_ops = {
	.invalidate = count_invalidate,
};

TEST_TIMEOUT(many_notifiers, 120)
{
	size_t size = (size_t)MANY * PS;
	char *p = map_anon(size, PROT_READ | PROT_WRITE);
	struct cnot *c = calloc(MANY, sizeof(*c));
	const int k = 54321, k2 = 777;
	uint64_t t0 = th_now_ns(), ms;

	ASSERT_NOT_NULL(c);
	for (int i = 0; i < MANY; i++) {
		uint64_t a = (uint64_t)(uintptr_t)(p + (size_t)i * PS);

		ASSERT_EQ(uhmm_interval_notifier_insert(&c[i].n, a, PS, &count_ops), 0);
	}

	ASSERT_EQ(munmap(p + (size_t)k * PS, PS), 0);
	ASSERT_EQ(atomic_load(&many_total), 1);
	ASSERT_EQ(atomic_load(&c[k].calls), 1);

	ASSERT_EQ(mprotect(p + (size_t)k2 * PS, 3 * PS, PROT_READ), 0);
	ASSERT_EQ(atomic_load(&many_total), 4);
	for (int i = k2; i < k2 + 3; i++)
		ASSERT_EQ(atomic_load(&c[i].calls), 1);
	ASSERT_EQ(atomic_load(&c[k2 - 1].calls), 0);
	ASSERT_EQ(atomic_load(&c[k2 + 3].calls), 0);

	for (int i = 0; i < MANY; i++)
		ASSERT_EQ(uhmm_interval_notifier_remove(&c[i].n), 0);
	ms = (th_now_ns() - t0) / 1000000;
	fprintf(stderr, "many_notifiers: %d inserts, 2 changes, %d removes: %" PRIu64 " ms\n",
		MANY, MANY, ms);
	ASSERT_LT(ms, 5000 * time_scale());

	/* all gone: nothing is called any more */
	ASSERT_EQ(munmap(p, size), 0);
	ASSERT_EQ(atomic_load(&many_total), 4);
	free(c);
}

/* ------------------------------------------------------------------------ */
/* uhmm_range_fault                                                          */
/* ------------------------------------------------------------------------ */

#define PFN_OF(a) ((uint64_t)(uintptr_t)(a) >> UHMM_PAGE_SHIFT)

TEST(range_fault_busy)
{
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE);
	uint64_t pfns[4];
	struct tnot t;
	struct uhmm_range r;
	struct uhmm_stats s0, s1;

	memset(p, 1, 4 * PS);
	tnot_insert(&t, 1, p, 4 * PS);
	r = (struct uhmm_range){
		.notifier = &t.n,
		.notifier_seq = uhmm_interval_read_begin(&t.n),
		.start = (uint64_t)(uintptr_t)p,
		.end = (uint64_t)(uintptr_t)(p + 4 * PS),
		.hmm_pfns = pfns,
		.default_flags = UHMM_PFN_REQ_FAULT,
	};
	/* an invalidation of another page of the notifier makes the seq stale */
	ASSERT_EQ(mprotect(p + 3 * PS, PS, PROT_READ), 0);
	ASSERT_EQ(uhmm_range_fault(&r), -EBUSY);

	uhmm_stats_get(&s0);
	r.notifier_seq = uhmm_interval_read_begin(&t.n);
	ASSERT_EQ(uhmm_range_fault(&r), 0);
	uhmm_stats_get(&s1);
	ASSERT_GT(s1.range_faults, s0.range_faults);
	for (int i = 0; i < 4; i++)
		ASSERT_TRUE(pfns[i] & UHMM_PFN_VALID);
	ASSERT_FALSE(uhmm_interval_read_retry(&t.n, r.notifier_seq));

	ASSERT_EQ(uhmm_interval_notifier_remove(&t.n), 0);
	munmap(p, 4 * PS);
}

/* Output of present pages: VALID|WRITE or VALID alone, order 0, the page's own pfn. */
TEST(range_fault_output)
{
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE);
	uint64_t pfns[4];
	struct tnot t;

	ASSERT_EQ(madvise(p, 4 * PS, MADV_NOHUGEPAGE), 0);
	for (int i = 0; i < 4; i++)
		memset(p + i * PS, 0x10 + i, PS);
	ASSERT_EQ(mprotect(p + 2 * PS, 2 * PS, PROT_READ), 0);
	tnot_insert(&t, 1, p, 4 * PS);

	memset(pfns, 0, sizeof(pfns));
	ASSERT_EQ(fault_range(&t.n, p, 4, pfns, UHMM_PFN_REQ_FAULT, 0), 0);
	for (int i = 0; i < 4; i++) {
		uint64_t f = pfns[i];
		unsigned char *v = uhmm_pfn_to_virt(f);

		ASSERT_TRUE(f & UHMM_PFN_VALID);
		ASSERT_EQ(!!(f & UHMM_PFN_WRITE), i < 2);
		ASSERT_FALSE(f & (UHMM_PFN_ERROR | UHMM_PFN_DEVICE | UHMM_PFN_ZERO));
		ASSERT_EQ(uhmm_pfn_to_map_order(f), 0);
		ASSERT_EQ(f & UHMM_PFN_PFN_MASK, PFN_OF(p + i * PS));
		ASSERT_TRUE(v == (unsigned char *)p + i * PS);
		ASSERT_EQ(v[0], 0x10 + i);
	}
	ASSERT_EQ(uhmm_interval_notifier_remove(&t.n), 0);
	munmap(p, 4 * PS);
}

/* A CPU-read page of a read-only mapping is the zero page. */
TEST(range_fault_zero_page)
{
	char *p = map_anon(2 * PS, PROT_READ);
	uint64_t pfns[2];
	struct tnot t;

	ASSERT_EQ(*(volatile char *)p, 0);
	tnot_insert(&t, 1, p, 2 * PS);
	ASSERT_EQ(fault_range(&t.n, p, 1, pfns, 0, 0), 0);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_VALID);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_ZERO);
	ASSERT_FALSE(pfns[0] & UHMM_PFN_WRITE);
	ASSERT_EQ(uhmm_interval_notifier_remove(&t.n), 0);
	munmap(p, 2 * PS);
}

TEST(range_fault_hole)
{
	char *p = map_anon(3 * PS, PROT_READ | PROT_WRITE);
	uint64_t pfns[3];
	struct tnot t;

	memset(p, 5, 3 * PS);
	ASSERT_EQ(munmap(p + PS, PS), 0);
	tnot_insert(&t, 1, p, 3 * PS);

	ASSERT_EQ(fault_range(&t.n, p, 3, pfns, UHMM_PFN_REQ_FAULT, 0), -EFAULT);

	/* without a request the hole reads as ERROR, the rest as usual */
	memset(pfns, 0, sizeof(pfns));
	ASSERT_EQ(fault_range(&t.n, p, 3, pfns, 0, 0), 0);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_VALID);
	ASSERT_TRUE(pfns[1] & UHMM_PFN_ERROR);
	ASSERT_FALSE(pfns[1] & UHMM_PFN_VALID);
	ASSERT_TRUE(pfns[2] & UHMM_PFN_VALID);

	/* a request only on the present pages succeeds */
	pfns[0] = UHMM_PFN_REQ_FAULT;
	pfns[1] = 0;
	pfns[2] = UHMM_PFN_REQ_FAULT;
	ASSERT_EQ(fault_range(&t.n, p, 3, pfns, 0, UHMM_PFN_REQ_FAULT), 0);
	ASSERT_TRUE(pfns[1] & UHMM_PFN_ERROR);

	ASSERT_EQ(uhmm_interval_notifier_remove(&t.n), 0);
	munmap(p, PS);
	munmap(p + 2 * PS, PS);
}

TEST(range_fault_prot)
{
	char *p = map_anon(2 * PS, PROT_READ);
	uint64_t pfns[2];
	struct tnot t;

	tnot_insert(&t, 1, p, 2 * PS);
	ASSERT_EQ(fault_range(&t.n, p, 2, pfns, UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE, 0),
		  -EPERM);
	/* REQ_WRITE masked out per page: a read fault is fine */
	pfns[0] = pfns[1] = UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE;
	ASSERT_EQ(fault_range(&t.n, p, 2, pfns, 0, UHMM_PFN_REQ_FAULT), 0);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_VALID);
	ASSERT_FALSE(pfns[0] & UHMM_PFN_WRITE);
	ASSERT_FALSE(pfns[1] & UHMM_PFN_WRITE);

	/* PROT_NONE: a request fails, no request reads ERROR */
	ASSERT_EQ(mprotect(p, 2 * PS, PROT_NONE), 0);
	ASSERT_EQ(fault_range(&t.n, p, 2, pfns, UHMM_PFN_REQ_FAULT, 0), -EFAULT);
	ASSERT_EQ(fault_range(&t.n, p, 2, pfns, 0, 0), 0);
	ASSERT_TRUE(pfns[0] & UHMM_PFN_ERROR);
	ASSERT_FALSE(pfns[0] & UHMM_PFN_VALID);

	ASSERT_EQ(uhmm_interval_notifier_remove(&t.n), 0);
	munmap(p, 2 * PS);
}

/*
 * req = (hmm_pfns[i] & pfn_flags_mask) | default_flags.  Pages 0-3 written
 * by the CPU, 4-7 never touched.
 */
TEST(range_fault_flags_mask)
{
	char *p = map_anon(8 * PS, PROT_READ | PROT_WRITE);
	const uint64_t req = UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE;
	unsigned char vec[8];
	uint64_t pfns[8];
	struct tnot t;

	ASSERT_EQ(madvise(p, 8 * PS, MADV_NOHUGEPAGE), 0);
	memset(p, 9, 4 * PS);
	tnot_insert(&t, 1, p, 8 * PS);

	/* mask 0: per-page requests are ignored, nothing is faulted */
	for (int i = 0; i < 8; i++)
		pfns[i] = req;
	ASSERT_EQ(fault_range(&t.n, p, 8, pfns, 0, 0), 0);
	for (int i = 0; i < 8; i++)
		ASSERT_EQ(!!(pfns[i] & UHMM_PFN_VALID), i < 4);
	ASSERT_EQ(mincore(p, 8 * PS, vec), 0);
	for (int i = 4; i < 8; i++)
		ASSERT_EQ(vec[i] & 1, 0);

	/* per-page requests on 5 (read) and 6 (write) only */
	memset(pfns, 0, sizeof(pfns));
	pfns[5] = UHMM_PFN_REQ_FAULT;
	pfns[6] = req;
	ASSERT_EQ(fault_range(&t.n, p, 8, pfns, 0, req), 0);
	for (int i = 0; i < 4; i++)
		ASSERT_EQ(pfns[i] & (UHMM_PFN_VALID | UHMM_PFN_WRITE), req);
	ASSERT_FALSE(pfns[4] & UHMM_PFN_VALID);
	ASSERT_TRUE(pfns[5] & UHMM_PFN_VALID);
	ASSERT_EQ(pfns[6] & req, req);
	ASSERT_FALSE(pfns[7] & UHMM_PFN_VALID);
	ASSERT_EQ(p[5 * PS], 0);
	ASSERT_EQ(p[6 * PS], 0);
	ASSERT_EQ(p[0], 9);

	/* default_flags alone faults everything */
	memset(pfns, 0, sizeof(pfns));
	ASSERT_EQ(fault_range(&t.n, p, 8, pfns, UHMM_PFN_REQ_FAULT, 0), 0);
	for (int i = 0; i < 8; i++)
		ASSERT_TRUE(pfns[i] & UHMM_PFN_VALID);

	ASSERT_EQ(uhmm_interval_notifier_remove(&t.n), 0);
	munmap(p, 8 * PS);
}

TEST_MAIN()
