/* SPDX-License-Identifier: MIT */
/*
 * teardown.c - a range that goes away (munmap, MAP_FIXED over it, a
 * discarding madvise, an unseen UNMAP event): wait for the operations that
 * hold its pages, then free its frames and forget its metadata and
 * registration.
 */
#include "internal.h"
#include "compat.h"

static int no_op(struct uhmm__as *as, uint64_t addr, struct pmeta *pm, void *arg)
{
	(void)as, (void)addr, (void)pm, (void)arg;
	return 0;
}

/* Wait until no page of [start, end) is locked by an operation. */
void uhmm__wait_range_unlocked(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	uhmm__pt_lock(as);
	uhmm__walk(as, start, end, WALK_UNLOCKED, no_op, NULL, NULL);
	uhmm__pt_unlock(as);
}

struct forget {
	uint64_t batch[256];
	unsigned n;
};

/* The frames of forgotten pages go back in batches, pt_lock dropped. */
static void forget_flush(struct uhmm__as *as, struct forget *fg)
{
	uhmm__frame_put_many(as, fg->batch, fg->n);
	fg->n = 0;
}

static int forget_page(struct uhmm__as *as, uint64_t addr, struct pmeta *pm, void *arg)
{
	struct forget *fg = arg;
	if (pm->state == PS_SYSTEM)
		return 0;
	if (pm->frame)
		fg->batch[fg->n++] = pm->frame;
	pm->state = PS_SYSTEM;
	pm->frame = 0;
	uhmm__pmeta_changed(as, addr, pm);
	if (fg->n == ARRAY_SIZE(fg->batch)) {
		uhmm__pt_unlock(as);
		forget_flush(as, fg);
		uhmm__pt_lock(as);
	}
	return 0;
}

/*
 * The range [start, end) is going away (munmap, mremap after the data was
 * brought back: unmapped) or its pages are discarded (MADV_DONTNEED and
 * kin): free every frame it held (device pages back to their pools, I4)
 * and forget its metadata.  Only an unmap forgets its registration too: a
 * discard leaves the mapping, and the kernel keeps its userfaultfd
 * registration (a self-service range stays one).
 */
void uhmm__forget_range(struct uhmm__as *as, uint64_t start, uint64_t end, bool unmapped)
{
	struct forget fg = { .n = 0 };
	TR('G', start, 0, end - start, unmapped);
	/*
	 * Under reg_lock: a registration that passed its teardown check before
	 * the range was marked must have recorded itself before we forget.
	 */
	if (unmapped) {
		uhmm__lock(&as->reg_lock);
		uhmm__pt_lock(as);
		uhmm__reg_forget(as, start, end);
		uhmm__ss_forget(as, start, end);
		uhmm__pt_unlock(as);
		uhmm__unlock(&as->reg_lock);
	}
	uhmm__pt_lock(as);
	uhmm__walk(as, start, end, WALK_UNLOCKED, forget_page, &fg, NULL);
	uhmm__pt_unlock(as);
	forget_flush(as, &fg);
}
