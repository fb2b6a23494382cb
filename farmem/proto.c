/* SPDX-License-Identifier: MIT */
/*
 * proto.c - owns the far-memory request parser and the server's per-client
 * state: the page allocator of the region (a bitmap, next fit), the
 * allocation table of each client (handles are never reused, so a stale or
 * guessed handle never names someone else's pages) and the checks every
 * request passes before memd.c touches memory.  No I/O, no UCX: the fuzz
 * target links this file alone.
 */
#define _GNU_SOURCE
#include "proto.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small parsers ------------------------------------------------------ */

int fm_parse_size(const char *s, uint64_t *out)
{
	if (!s || !*s || !out)
		return -EINVAL;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	unsigned shift = 0;
	switch (*end) {
	case 0: break;
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default: return -EINVAL;
	}
	if (*end == 'i' || *end == 'B' || *end == 'b')
		end++;
	if (*end == 'B')
		end++;
	if (*end)
		return -EINVAL;
	if (shift && v > (~0ULL >> shift))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

int fm_parse_hostport(const char *s, char *host, size_t hostlen, uint16_t *port)
{
	if (!s || !host || !port || hostlen < 2)
		return -EINVAL;
	const char *colon = strrchr(s, ':');
	if (!colon || colon == s)
		return -EINVAL;
	size_t hl = (size_t)(colon - s);
	const char *h = s;
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') { /* [v6]:port */
		h++;
		hl -= 2;
	}
	if (hl == 0 || hl >= hostlen)
		return -EINVAL;
	char *end;
	errno = 0;
	unsigned long p = strtoul(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || p > 65535)
		return -EINVAL;
	memcpy(host, h, hl);
	host[hl] = 0;
	*port = (uint16_t)p;
	return 0;
}

int fm_read_token_file(const char *path, uint8_t *tok, uint32_t *len)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return -errno;
	char buf[FM_TOKEN_MAX + 2];
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	int err = ferror(f);
	fclose(f);
	if (err)
		return -EIO;
	buf[n] = 0;
	char *nl = strchr(buf, '\n');
	if (nl)
		*nl = 0;
	else if (n > FM_TOKEN_MAX)
		return -E2BIG;
	n = strlen(buf);
	while (n && isspace((unsigned char)buf[n - 1]))
		buf[--n] = 0;
	if (n == 0)
		return -ENODATA;
	memcpy(tok, buf, n);
	*len = (uint32_t)n;
	return 0;
}

bool fm_token_equal(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen)
{
	if (alen > FM_TOKEN_MAX || blen > FM_TOKEN_MAX)
		return false;
	unsigned diff = alen ^ blen;
	for (uint32_t i = 0; i < FM_TOKEN_MAX; i++) {
		uint8_t x = i < alen ? a[i] : 0, y = i < blen ? b[i] : 0;
		diff |= (unsigned)(x ^ y);
	}
	return diff == 0;
}

/* ---- the region's page allocator ---------------------------------------- */

static bool bit_get(const uint64_t *bm, uint64_t i)
{
	return (bm[i >> 6] >> (i & 63)) & 1;
}

static void bits_set(uint64_t *bm, uint64_t first, uint64_t n, bool on)
{
	for (uint64_t i = first; i < first + n; i++) {
		if (on)
			bm[i >> 6] |= 1ULL << (i & 63);
		else
			bm[i >> 6] &= ~(1ULL << (i & 63));
	}
}

/* First fit from hint, wrapping once; returns the first page or UINT64_MAX. */
static uint64_t region_find(struct fm_server *s, uint64_t n)
{
	if (n == 0 || n > s->npages)
		return UINT64_MAX;
	for (int pass = 0; pass < 2; pass++) {
		uint64_t i = pass ? 0 : s->hint;
		uint64_t stop = pass ? s->hint + n : s->npages;
		if (stop > s->npages)
			stop = s->npages;
		while (i + n <= stop) {
			/* skip full words fast */
			if ((i & 63) == 0 && s->bitmap[i >> 6] == ~0ULL) {
				i += 64;
				continue;
			}
			uint64_t run = 0;
			while (run < n && !bit_get(s->bitmap, i + run))
				run++;
			if (run == n)
				return i;
			i += run + 1;
		}
	}
	return UINT64_MAX;
}

int fm_server_init(struct fm_server *s, uint64_t npages, const void *token, uint32_t token_len,
		   uint32_t flags)
{
	if (!s || npages == 0 || token_len > FM_TOKEN_MAX || (token_len && !token))
		return -EINVAL;
	memset(s, 0, sizeof(*s));
	s->bitmap = calloc((npages + 63) / 64, sizeof(uint64_t));
	if (!s->bitmap)
		return -ENOMEM;
	s->npages = npages;
	if (token_len)
		memcpy(s->token, token, token_len);
	s->token_len = token_len;
	s->flags = flags;
	s->next_id = 1;
	s->next_handle = 1;
	s->st.capacity_pages = npages;
	return 0;
}

void fm_server_fini(struct fm_server *s)
{
	free(s->bitmap);
	s->bitmap = NULL;
}

void fm_client_init(struct fm_server *s, struct fm_client *c)
{
	memset(c, 0, sizeof(*c));
	c->id = s->next_id++;
}

static void alloc_free(struct fm_server *s, struct fm_client *c, uint32_t idx)
{
	struct fm_alloc *a = &c->allocs[idx];
	if (s->on_free)
		s->on_free(s, a);
	bits_set(s->bitmap, a->first, a->npages, false);
	if (a->first < s->hint)
		s->hint = a->first;
	s->st.used_pages -= a->npages;
	c->pages -= a->npages;
	s->st.frees++;
	c->allocs[idx] = c->allocs[--c->nallocs];
}

void fm_client_release(struct fm_server *s, struct fm_client *c)
{
	while (c->nallocs)
		alloc_free(s, c, c->nallocs - 1);
	free(c->allocs);
	c->allocs = NULL;
	c->cap = 0;
	if (c->hello && s->st.clients)
		s->st.clients--;
	c->hello = false;
}

/* The client's allocation with this handle, or -1: another client's handle
 * is simply not found (handles are unique per server and never reused). */
static int find_alloc(const struct fm_client *c, uint64_t handle)
{
	if (handle == 0)
		return -1;
	for (uint32_t i = 0; i < c->nallocs; i++)
		if (c->allocs[i].handle == handle)
			return (int)i;
	return -1;
}

static enum fm_action cut(struct fm_server *s, struct fm_client *c, struct fm_result *out,
			  const char *why)
{
	if (!c->dead)
		s->st.violations++;
	c->dead = true;
	out->act = FM_ACT_CUT;
	out->rep.status = -EPROTO;
	out->why = why;
	out->alloc = NULL;
	return FM_ACT_CUT;
}

enum fm_action fm_handle(struct fm_server *s, struct fm_client *c, const void *hdr,
			 size_t hdr_len, size_t data_len, struct fm_result *out)
{
	memset(out, 0, sizeof(*out));
	out->rep.magic = FM_MAGIC;
	out->act = FM_ACT_REPLY;
	if (c->dead)
		return cut(s, c, out, "request after cut-off");
	if (!hdr || hdr_len != sizeof(struct fm_req))
		return cut(s, c, out, "bad header size");
	struct fm_req r;
	memcpy(&r, hdr, sizeof(r));  /* hdr may be unaligned */
	out->rep.req_id = r.req_id;
	out->rep.type = r.type;
	if (r.magic != FM_MAGIC)
		return cut(s, c, out, "bad magic");
	if (r.type == 0 || r.type >= FM_TYPE_MAX)
		return cut(s, c, out, "unknown request type");
	if (r.type != FM_HELLO && !c->hello)
		return cut(s, c, out, "request before HELLO");
	if (r.type != FM_WRITE && data_len != 0)
		return cut(s, c, out, "unexpected payload");

	switch (r.type) {
	case FM_HELLO: {
		if (c->hello)
			return cut(s, c, out, "second HELLO");
		if (r.version != FM_VERSION || r.offset != FM_BOM) {
			s->st.refused++;
			out->rep.status = -EPROTONOSUPPORT;
			c->dead = true;
			out->act = FM_ACT_CUT;
			out->why = "protocol version or byte order mismatch";
			return FM_ACT_CUT;
		}
		if (r.len > FM_TOKEN_MAX ||
		    !fm_token_equal(r.token, (uint32_t)r.len, s->token, s->token_len)) {
			s->st.refused++;
			out->rep.status = -EACCES;
			c->dead = true;
			out->act = FM_ACT_CUT;
			out->why = r.len ? "bad token" : "no token";
			return FM_ACT_CUT;
		}
		c->hello = true;
		s->st.clients++;
		s->st.clients_total++;
		out->rep.a = c->id;
		out->rep.b = s->npages;
		out->rep.c = s->flags;
		return FM_ACT_REPLY;
	}
	case FM_ALLOC: {
		uint64_t n = r.handle;
		if (n == 0 || n > FM_MAX_ALLOC_PAGES || r.offset || r.len)
			return cut(s, c, out, "bad ALLOC size");
		if (c->nallocs >= FM_MAX_ALLOCS) {
			out->rep.status = -EMFILE;
			s->st.alloc_failures++;
			return FM_ACT_REPLY;
		}
		uint64_t first = region_find(s, n);
		if (first == UINT64_MAX) {
			out->rep.status = -ENOMEM;
			s->st.alloc_failures++;
			return FM_ACT_REPLY;
		}
		if (c->nallocs == c->cap) {
			uint32_t ncap = c->cap ? c->cap * 2 : 16;
			struct fm_alloc *na = realloc(c->allocs, ncap * sizeof(*na));
			if (!na) {
				out->rep.status = -ENOMEM;
				s->st.alloc_failures++;
				return FM_ACT_REPLY;
			}
			c->allocs = na;
			c->cap = ncap;
		}
		bits_set(s->bitmap, first, n, true);
		s->hint = first + n < s->npages ? first + n : 0;
		struct fm_alloc *a = &c->allocs[c->nallocs++];
		a->handle = s->next_handle++;
		a->first = first;
		a->npages = n;
		a->priv = NULL;
		c->pages += n;
		s->st.used_pages += n;
		s->st.allocs++;
		out->alloc = a;
		out->rep.a = a->handle;
		out->rep.b = first * FM_PAGE;  /* offset in the region; memd adds its base */
		out->rep.c = n;
		return FM_ACT_REPLY;
	}
	case FM_FREE: {
		int i = find_alloc(c, r.handle);
		if (i < 0)
			return cut(s, c, out, "FREE of a handle that is not the client's");
		alloc_free(s, c, (uint32_t)i);
		return FM_ACT_REPLY;
	}
	case FM_READ:
	case FM_WRITE: {
		int i = find_alloc(c, r.handle);
		if (i < 0)
			return cut(s, c, out, "READ/WRITE of a handle that is not the client's");
		struct fm_alloc *a = &c->allocs[i];
		uint64_t size = a->npages * FM_PAGE;
		if (r.len == 0 || r.len > FM_MAX_IO || r.offset >= size || r.len > size - r.offset)
			return cut(s, c, out, "READ/WRITE range outside the allocation");
		if (r.type == FM_WRITE && data_len != r.len)
			return cut(s, c, out, "WRITE payload size differs from its length");
		out->alloc = a;
		out->offset = r.offset;
		out->len = r.len;
		if (r.type == FM_READ) {
			s->st.am_reads++;
			s->st.am_bytes_read += r.len;
		} else {
			s->st.am_writes++;
			s->st.am_bytes_written += r.len;
		}
		return FM_ACT_REPLY;
	}
	case FM_STATS:
		return FM_ACT_REPLY;
	case FM_BYE:
		fm_client_release(s, c);
		c->dead = true;
		out->act = FM_ACT_NONE;
		return FM_ACT_NONE;
	}
	return cut(s, c, out, "unknown request type");
}

int fm_parse_reply(const void *hdr, size_t hdr_len, struct fm_rep *out)
{
	if (!hdr || hdr_len != sizeof(struct fm_rep))
		return -EPROTO;
	memcpy(out, hdr, sizeof(*out));
	if (out->magic != FM_MAGIC || out->type == 0 || out->type >= FM_TYPE_MAX)
		return -EPROTO;
	if (out->status > 0 || out->status < -4095)
		return -EPROTO;
	return 0;
}
