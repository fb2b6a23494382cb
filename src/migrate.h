/* SPDX-License-Identifier: MIT */
/*
 * migrate.h - what the phases of a migration share (migrate_setup.c,
 * migrate.c): the per-migration record behind uhmm_migrate.uhmm__priv.
 */
#ifndef UHMM_MIGRATE_H
#define UHMM_MIGRATE_H

enum origin { OR_NONE = 0, OR_SYSTEM, OR_HOLE, OR_PRIVATE, OR_COHERENT };

/* m->comp[]: a page's part in a compound entry (UHMM_MIGRATE_SELECT_COMPOUND) */
enum { COMP_NONE = 0, COMP_HEAD, COMP_TAIL };

struct mig {
	struct uhmm__as *as;
	uint8_t *origin;   /* enum origin per page */
	uint8_t *comp;     /* COMP_* per page (NULL: no compound entry) */
	uint64_t fault_addr;  /* the fault page (LOCK_FAULT, taken by collect), or 0 */
};

#endif
