/* SPDX-License-Identifier: MIT */
/*
 * fuzz_memd.c - libFuzzer target (make fuzz-memd, make fuzz) over the
 * uhmm-memd request parser and per-client state (farmem/proto.c).
 *
 * The input drives three clients of one server with a 1024-page region and
 * a known token.  Each step takes a client and a request: either a
 * structured one (type, handle picked among the client's own, another
 * client's, stale or random ones, offsets and lengths near the bounds) or
 * raw bytes of any size as the header.  After every step:
 *   - a READ/WRITE that fm_handle() accepts lies inside an allocation that
 *     the asking client owns right now;
 *   - no two live allocations overlap, and the bitmap, the server's
 *     used_pages and the clients' pages all agree;
 *   - a client that was cut off stays cut off (every later request is CUT);
 *   - a request before a good HELLO is never accepted.
 * The input ends by releasing every client: the region must be empty.
 * Violations abort() (libFuzzer reports them).
 */
#include "proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NCLIENTS 3
#define NPAGES   1024
#define MAX_STEPS 256

static const char TOKEN[] = "fuzz-token";

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "fuzz_memd: %s:%d: %s\n", __FILE__, __LINE__, #c); abort(); } } while (0)

struct rd {
	const uint8_t *p;
	size_t n;
};

static uint64_t take(struct rd *r, unsigned bytes)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < bytes && r->n; i++, r->p++, r->n--)
		v |= (uint64_t)*r->p << (8 * i);
	return v;
}

static void check_state(struct fm_server *s, struct fm_client *cl)
{
	static uint8_t owner[NPAGES];
	memset(owner, 0, sizeof(owner));
	uint64_t total = 0;
	for (int c = 0; c < NCLIENTS; c++) {
		uint64_t pages = 0;
		for (uint32_t i = 0; i < cl[c].nallocs; i++) {
			struct fm_alloc *a = &cl[c].allocs[i];
			CHECK(a->handle != 0 && a->npages > 0);
			CHECK(a->first + a->npages <= NPAGES);
			for (uint64_t p = a->first; p < a->first + a->npages; p++) {
				CHECK(owner[p] == 0);
				owner[p] = (uint8_t)(c + 1);
				CHECK((s->bitmap[p >> 6] >> (p & 63)) & 1);
			}
			pages += a->npages;
		}
		CHECK(pages == cl[c].pages);
		total += pages;
	}
	CHECK(total == s->st.used_pages);
	for (uint64_t p = 0; p < NPAGES; p++)
		CHECK(!!((s->bitmap[p >> 6] >> (p & 63)) & 1) == (owner[p] != 0));
}

static bool owns(const struct fm_client *c, const struct fm_alloc *a)
{
	for (uint32_t i = 0; i < c->nallocs; i++)
		if (&c->allocs[i] == a)
			return true;
	return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fm_server s;
	struct fm_client cl[NCLIENTS];
	CHECK(fm_server_init(&s, NPAGES, TOKEN, sizeof(TOKEN) - 1, FM_SRV_RMA) == 0);
	for (int c = 0; c < NCLIENTS; c++)
		fm_client_init(&s, &cl[c]);
	uint64_t stale[8] = { 0 };
	unsigned nstale = 0;
	struct rd r = { data, size };

	for (int step = 0; step < MAX_STEPS && r.n; step++) {
		uint8_t op = (uint8_t)take(&r, 1);
		int c = (op >> 6) % NCLIENTS;
		struct fm_client *me = &cl[c];
		bool was_dead = me->dead, was_hello = me->hello;
		struct fm_result res;
		uint8_t raw[sizeof(struct fm_req) + 16];
		size_t hl, dl = 0;
		if ((op & 0x3f) >= 0x38) {
			/* raw bytes of any size */
			hl = take(&r, 1) % sizeof(raw);
			for (size_t i = 0; i < hl; i++)
				raw[i] = (uint8_t)take(&r, 1);
			dl = take(&r, 2);
		} else {
			struct fm_req q = { .magic = FM_MAGIC, .version = FM_VERSION };
			q.type = (uint16_t)(1 + (op & 0x3f) % (FM_TYPE_MAX - 1 + 1)); /* incl. one bad type */
			q.req_id = take(&r, 1);
			uint8_t sel = (uint8_t)take(&r, 1);
			/* a handle: mine, someone else's, stale, random */
			struct fm_client *other = &cl[(c + 1 + (sel & 1)) % NCLIENTS];
			switch ((sel >> 1) & 3) {
			case 0:
				q.handle = me->nallocs ? me->allocs[take(&r, 1) % me->nallocs].handle : 1;
				break;
			case 1:
				q.handle = other->nallocs ? other->allocs[take(&r, 1) % other->nallocs].handle : 2;
				break;
			case 2:
				q.handle = nstale ? stale[take(&r, 1) % nstale] : 3;
				break;
			default:
				q.handle = take(&r, 8);
			}
			if (q.type == FM_ALLOC)
				q.handle = (sel & 0x80) ? take(&r, 8) : take(&r, 2) % 300;
			uint8_t ofs = (uint8_t)take(&r, 1);
			q.offset = (ofs & 0x80) ? take(&r, 8) : (uint64_t)(ofs & 0x7f) * 4096 + (ofs & 1);
			uint8_t ln = (uint8_t)take(&r, 1);
			q.len = (ln & 0x80) ? take(&r, 8) : (uint64_t)(ln & 0x7f) * 4096;
			if (q.type == FM_HELLO) {
				q.offset = (sel & 0x40) ? FM_BOM : q.offset;
				if (sel & 0x20) {
					memcpy(q.token, TOKEN, sizeof(TOKEN) - 1);
					q.len = sizeof(TOKEN) - 1;
				}
				if (sel & 0x10)
					q.version = (uint16_t)take(&r, 2);
			}
			if (sel & 0x08)
				q.magic ^= (uint32_t)take(&r, 4);
			if (q.type == FM_WRITE)
				dl = (sel & 0x04) ? take(&r, 3) : q.len;
			hl = sizeof(q);
			memcpy(raw, &q, sizeof(q));
		}
		/* remember handles about to be freed (stale later) */
		if (me->nallocs && nstale < 8)
			stale[nstale++] = me->allocs[0].handle;

		enum fm_action act = fm_handle(&s, me, raw, hl, dl, &res);
		if (was_dead)
			CHECK(act == FM_ACT_CUT);
		if (!was_hello && act == FM_ACT_REPLY)
			CHECK(res.rep.type == FM_HELLO && me->hello);
		if (act == FM_ACT_REPLY && (res.rep.type == FM_READ || res.rep.type == FM_WRITE)) {
			CHECK(res.alloc && owns(me, res.alloc));
			CHECK(res.len > 0 && res.len <= FM_MAX_IO);
			CHECK(res.offset + res.len <= res.alloc->npages * FM_PAGE);
			CHECK(res.offset + res.len > res.offset);
			if (res.rep.type == FM_WRITE)
				CHECK(dl == res.len);
		}
		if (act == FM_ACT_REPLY && res.rep.type == FM_ALLOC && res.rep.status == 0)
			CHECK(res.alloc && owns(me, res.alloc) && res.rep.c == res.alloc->npages);
		if (act == FM_ACT_CUT || act == FM_ACT_NONE)
			fm_client_release(&s, me);
		check_state(&s, cl);
	}
	for (int c = 0; c < NCLIENTS; c++)
		fm_client_release(&s, &cl[c]);
	check_state(&s, cl);
	CHECK(s.st.used_pages == 0);
	fm_server_fini(&s);
	return 0;
}
