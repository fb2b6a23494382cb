/* SPDX-License-Identifier: MIT */
/*
 * ranges.c - the ranges uhmm knows of: the userfaultfd-registered ranges
 * (which pages may leave the CPU view) and the intercepted calls in flight
 * (which ranges are being torn down, which uffd events were ours).  Both
 * lists are under pt_lock.
 */
#include "internal.h"
#include "compat.h"

bool uhmm__reg_covers(struct uhmm__as *as, uint64_t s, uint64_t e, bool missing)
{
	/* Ranges are kept disjoint; walk until [s, e) is covered. */
	uint64_t at = s;
	bool progress = true;
	while (at < e && progress) {
		progress = false;
		for (struct reg_range *r = as->regs; r; r = r->next) {
			if (r->start <= at && at < r->end && (!missing || r->missing)) {
				at = r->end;
				progress = true;
			}
		}
	}
	return at >= e;
}

/* Caller holds pt_lock.  Drop [s, e) from the registration list. */
void uhmm__reg_forget(struct uhmm__as *as, uint64_t s, uint64_t e)
{
	uhmm__assert_pt_held(as);
	struct reg_range **pp = &as->regs, *r;
	while ((r = *pp)) {
		if (r->end <= s || r->start >= e) {
			pp = &r->next;
			continue;
		}
		if (r->start < s && r->end > e) {
			struct reg_range *tail = uhmm__zalloc(sizeof(*tail));
			if (tail) {
				*tail = (struct reg_range){ e, r->end, r->missing, r->next };
				r->next = tail;
			}
			r->end = s;
			pp = &r->next;
			continue;
		}
		if (r->start < s) {
			r->end = s;
			pp = &r->next;
		} else if (r->end > e) {
			r->start = e;
			pp = &r->next;
		} else {
			*pp = r->next;
			uhmm__free(r, sizeof(*r));
		}
	}
}

/* Caller holds pt_lock: record [s, e) as registered (mode missing). */
void uhmm__reg_add(struct uhmm__as *as, struct reg_range *r, uint64_t s, uint64_t e,
		    bool missing)
{
	uhmm__assert_pt_held(as);
	uhmm__reg_forget(as, s, e);
	*r = (struct reg_range){ s, e, missing, as->regs };
	as->regs = r;
	/* Merge neighbours of the same mode: the list stays short. */
	for (struct reg_range **pp = &as->regs; *pp;) {
		struct reg_range *o = *pp;
		if (o != r && o->missing == r->missing && (o->end == r->start || o->start == r->end)) {
			r->start = o->start < r->start ? o->start : r->start;
			r->end = o->end > r->end ? o->end : r->end;
			*pp = o->next;
			uhmm__free(o, sizeof(*o));
			pp = &as->regs;
			continue;
		}
		pp = &o->next;
	}
}

/*
 * Caller holds pt_lock: the first run [*gs, *ge) of [at, e) that no
 * registration covers (*gs == e if none); with missing, only MISSING
 * registrations cover.  A tracking (WP-only) registration goes only there:
 * registering a range again replaces its mode, and WP-only over a MISSING
 * range would let the kernel fill the holes of pages that are on a device
 * with zeros.  A MISSING one skips what is MISSING already, which may be a
 * self-service range registered with another userfaultfd (-EBUSY there).
 */
void uhmm__reg_gap(struct uhmm__as *as, uint64_t at, uint64_t e, bool missing, uint64_t *gs,
		   uint64_t *ge)
{
	uhmm__assert_pt_held(as);
	for (bool moved = true; moved && at < e;) {
		moved = false;
		for (struct reg_range *r = as->regs; r; r = r->next)
			if (r->start <= at && at < r->end && (!missing || r->missing)) {
				at = r->end;
				moved = true;
			}
	}
	*gs = at < e ? at : e;
	*ge = e;
	for (struct reg_range *r = as->regs; r; r = r->next)
		if (r->start > *gs && r->start < *ge && (!missing || r->missing))
			*ge = r->start;
}

static void ss_set(struct ss_range *r, uint64_t s, uint64_t e)
{
	__atomic_store_n(&r->start, 0, __ATOMIC_RELEASE);  /* empty while it changes */
	__atomic_store_n(&r->end, e, __ATOMIC_RELEASE);
	__atomic_store_n(&r->start, s < e ? s : e, __ATOMIC_RELEASE);
}

/*
 * Caller holds pt_lock: record [start, end) as self-service (selfserve.c);
 * false if the table is full.
 */
bool uhmm__ss_add(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	uhmm__assert_pt_held(as);
	for (unsigned i = 0; i < SS_MAX; i++)
		if (as->ss[i].start >= as->ss[i].end) {
			ss_set(&as->ss[i], start, end);
			return true;
		}
	return false;
}

/* Caller holds pt_lock: [start, end) is no longer self-service (unmapped). */
void uhmm__ss_forget(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	uhmm__assert_pt_held(as);
	for (unsigned i = 0; i < SS_MAX; i++) {
		struct ss_range *r = &as->ss[i];
		uint64_t s = r->start, e = r->end;
		if (s >= e || e <= start || s >= end)
			continue;
		uint64_t le = e < start ? e : start;   /* [s, le): the part below */
		uint64_t us = s > end ? s : end;       /* [us, e): the part above */
		if (s < le && us < e) {
			ss_set(r, s, le);
			if (!uhmm__ss_add(as, us, e))
				uhmm__log("self-service table full: faults in 0x%llx-0x%llx can no "
					  "longer be served", (unsigned long long)us,
					  (unsigned long long)e);
		} else if (s < le) {
			ss_set(r, s, le);
		} else {
			ss_set(r, us, e);  /* empty when nothing is above either */
		}
	}
}

/* Caller holds pt_lock: does [start, end) touch a registered range? */
bool uhmm__reg_overlaps(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	uhmm__assert_pt_held(as);
	for (struct reg_range *r = as->regs; r; r = r->next)
		if (r->start < end && start < r->end)
			return true;
	return false;
}

/*
 * Caller holds pt_lock: is addr in a MISSING-registered range?  An operation
 * that registered a range and then locked its pages checks again here: an
 * munmap + mmap in between leaves a new, unregistered mapping, whose pages
 * must not leave the CPU view (the kernel would fill the hole with zeros).
 */
bool uhmm__reg_missing(struct uhmm__as *as, uint64_t addr)
{
	uhmm__assert_pt_held(as);
	for (struct reg_range *r = as->regs; r; r = r->next)
		if (r->start <= addr && addr < r->end)
			return r->missing;
	return false;
}

/* ---- intercepted calls in flight ----------------------------------------- */

/*
 * An intercepted call is recorded before it runs.  Where it touches ranges
 * registered with userfaultfd the kernel also sends events for it: one per
 * VMA for MADV_DONTNEED (REMOVE), one for the whole range for munmap
 * (UNMAP), and measured: an UNMAP can be read after munmap returned.  The
 * service thread may handle them later still.  An event is the call's if it
 * falls in its range and the call is running, or ended less than
 * INFLIGHT_GRACE_NS ago, or the event was read before it ended (number <=
 * end_seq).  Until then the record stays, so that its events are recognised
 * as already handled and cannot hit a new mapping placed at the same
 * address in between; a raw-syscall event for the same range within that
 * time is taken for the call's (harmless: the call forgot the range).
 */
#define INFLIGHT_GRACE_NS 2000000000ULL
struct inflight_op *uhmm__inflight_begin(struct uhmm__as *as, uint64_t s, uint64_t e,
					  bool teardown)
{
	struct inflight_op *op = uhmm__zalloc(sizeof(*op));
	if (!op)
		return NULL;
	op->start = s;
	op->end = e;
	op->teardown = teardown;
	uhmm__pt_lock(as);
	op->expect = uhmm__reg_overlaps(as, s, e);
	op->next = as->inflight;
	as->inflight = op;
	uhmm__pt_unlock(as);
	return op;
}

/* An ended call whose events can still be handled (see above)? */
static bool inflight_recent(const struct inflight_op *op, uint64_t seq, uint64_t now)
{
	return op->expect && (seq <= op->end_seq || now - op->end_ns < INFLIGHT_GRACE_NS);
}

/* pt_lock held: drop the ended calls no event can still belong to. */
static void inflight_reap(struct uhmm__as *as)
{
	uhmm__assert_pt_held(as);
	uint64_t handled = __atomic_load_n(&as->ev_handled, __ATOMIC_ACQUIRE);
	uint64_t now = uhmm__now_ns();
	for (struct inflight_op **pp = &as->inflight; *pp;) {
		struct inflight_op *op = *pp;
		if (op->done && !inflight_recent(op, handled + 1, now)) {
			*pp = op->next;
			uhmm__free(op, sizeof(*op));
			continue;
		}
		pp = &op->next;
	}
}

void uhmm__inflight_end(struct uhmm__as *as, struct inflight_op *op, bool ok)
{
	if (!op)
		return;
	(void)ok;
	uhmm__lock(&as->read_lock);
	uint64_t seq = as->ev_read;  /* its events, if any, are read by now */
	uhmm__unlock(&as->read_lock);
	uhmm__pt_lock(as);
	op->done = true;
	op->end_seq = seq;
	op->end_ns = uhmm__now_ns();
	op->teardown = false;
	inflight_reap(as);
	uhmm__pt_unlock(as);
}

/* pt_lock held: is addr in a range an intercepted call is tearing down? */
bool uhmm__torn_down(struct uhmm__as *as, uint64_t addr)
{
	uhmm__assert_pt_held(as);
	for (struct inflight_op *op = as->inflight; op; op = op->next)
		if (op->teardown && op->start <= addr && addr < op->end)
			return true;
	return false;
}

/* pt_lock held: does [start, end) touch a range being torn down? */
bool uhmm__torn_overlaps(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	uhmm__assert_pt_held(as);
	for (struct inflight_op *op = as->inflight; op; op = op->next)
		if (op->teardown && op->start < end && start < op->end)
			return true;
	return false;
}

/* The service thread handles event number seq, for [start, end): was it ours? */
bool uhmm__inflight_consume(struct uhmm__as *as, uint64_t start, uint64_t end, uint64_t seq)
{
	bool ours = false;
	uint64_t now = uhmm__now_ns();
	uhmm__pt_lock(as);
	for (struct inflight_op *op = as->inflight; op && !ours; op = op->next)
		ours = op->start <= start && end <= op->end &&
		       (!op->done || inflight_recent(op, seq, now));
	inflight_reap(as);
	uhmm__pt_unlock(as);
	return ours;
}
