/* SPDX-License-Identifier: MIT */
/*
 * teardown.c - a range that goes away (munmap, MAP_FIXED over it, a
 * discarding madvise, an unseen UNMAP event): wait for the operations that
 * hold its pages, then free its frames and forget its metadata and
 * registration.
 */
#include "internal.h"
#include "compat.h"

/* Wait until no page of [start, end) is locked by an operation. */
void uhmm__wait_range_unlocked(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	uhmm__pt_lock(as);
	for (uint64_t a = start; a < end;) {
		uint64_t bend = uhmm__block_end(a);
		if (!uhmm__has_block(as, a)) {
			a = bend;
			continue;
		}
		for (; a < end && a < bend; a += PG_SIZE)
			uhmm__page_lock_wait(as, a);
	}
	uhmm__pt_unlock(as);
}

/*
 * The range [start, end) is going away (munmap, or mremap after the data was
 * brought back): free every frame it held (device pages back to their pools,
 * I4) and forget its metadata and registration.
 */
void uhmm__forget_range(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	uint32_t batch[256];
	unsigned n = 0;
	TR('G', start, 0, end - start, 0);
	/*
	 * Under reg_lock: a registration that passed its teardown check before
	 * the range was marked must have recorded itself before we forget.
	 */
	uhmm__lock(&as->reg_lock);
	uhmm__pt_lock(as);
	uhmm__reg_forget(as, start, end);
	uhmm__pt_unlock(as);
	uhmm__unlock(&as->reg_lock);
	uhmm__pt_lock(as);
	for (uint64_t a = start; a < end;) {
		uint64_t bend = uhmm__block_end(a);
		if (!uhmm__has_block(as, a)) {
			a = bend;
			continue;
		}
		for (; a < end && a < bend; a += PG_SIZE) {
			uhmm__page_lock_wait(as, a);
			struct pmeta *pm = uhmm__pmeta(as, a, false);
			if (!pm || pm->state == PS_SYSTEM)
				continue;
			if (pm->frame)
				batch[n++] = pm->frame;
			pm->state = PS_SYSTEM;
			pm->frame = 0;
			uhmm__pmeta_changed(as, a, pm);
			if (n == ARRAY_SIZE(batch)) {
				uhmm__pt_unlock(as);
				for (unsigned i = 0; i < n; i++)
					uhmm__frame_put(as, batch[i]);
				n = 0;
				uhmm__pt_lock(as);
			}
		}
	}
	uhmm__pt_unlock(as);
	for (unsigned i = 0; i < n; i++)
		uhmm__frame_put(as, batch[i]);
}
