/* SPDX-License-Identifier: MIT */
/*
 * xport.h - the client side of the far-memory transport (internal to
 * libuhmm_farmem): one UCX context and worker per struct fmx, guarded by one
 * lock, connections to uhmm-memd servers, their allocations and rkeys, and
 * non-blocking put/get (one-sided RMA, or READ/WRITE active messages when the
 * server hands out no rkeys or the client asks for it) completed by
 * fmx_wait().  Knows nothing of uhmm.
 *
 * Locking: every fmx_* call below except fmx_create/fmx_destroy/fmx_lock/
 * fmx_unlock must be made with fmx_lock() held (one worker, serialized).
 */
#ifndef UHMM_FARMEM_XPORT_H
#define UHMM_FARMEM_XPORT_H

#include "proto.h"
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct fmx;
struct fmx_srv;

/* One allocation on one server. */
struct fmx_region {
	uint64_t handle;
	uint64_t base;        /* remote address of page 0 */
	uint64_t npages;
	void *rkey;           /* ucp_rkey_h, NULL on the AM data path */
};

enum fmx_path {
	FMX_PATH_AUTO = 0,    /* RMA put; reads by RMA get or active message, the faster
				 one measured at the first allocation (farmem.md) */
	FMX_PATH_RMA,         /* put and get by RMA */
	FMX_PATH_AM,          /* every byte by active messages */
	FMX_PATH_AM_READ,     /* put by RMA, reads by active messages */
};

int  fmx_create(struct fmx **out);
void fmx_destroy(struct fmx *x);
void fmx_lock(struct fmx *x);
void fmx_unlock(struct fmx *x);

/*
 * Connect and authenticate: 0, -EINVAL (bad "host:port"), -ECONNREFUSED
 * (nothing listens, or the server went away at connect), -EACCES (token
 * refused), -EPROTONOSUPPORT, -ETIMEDOUT, -ENOMEM.  One line on stderr
 * says which server and why.
 */
int  fmx_connect(struct fmx *x, const char *hostport, const uint8_t *tok, uint32_t toklen,
		 enum fmx_path path, int timeout_ms, struct fmx_srv **out);
/* Frees the server's memory for us (BYE) and closes; works on a dead server. */
void fmx_disconnect(struct fmx_srv *s);
const char *fmx_name(const struct fmx_srv *s);
bool fmx_alive(const struct fmx_srv *s);
/* Why the server is dead: the UCX status text. */
const char *fmx_dead_reason(const struct fmx_srv *s);
uint64_t fmx_client_id(const struct fmx_srv *s);
uint64_t fmx_capacity(const struct fmx_srv *s);
bool fmx_uses_am_reads(const struct fmx_srv *s);
bool fmx_uses_am_writes(const struct fmx_srv *s);

int  fmx_alloc(struct fmx_srv *s, uint64_t npages, struct fmx_region *out);
int  fmx_free(struct fmx_srv *s, struct fmx_region *r);
int  fmx_stats(struct fmx_srv *s, struct fm_stats *st);

/*
 * Start a transfer of len bytes at byte off of r.  buf must stay valid
 * until fmx_wait() returns.  0 or -errno (-EPIPE: server dead).
 */
int  fmx_put(struct fmx_srv *s, struct fmx_region *r, uint64_t off, const void *buf, size_t len);
int  fmx_get(struct fmx_srv *s, struct fmx_region *r, uint64_t off, void *buf, size_t len);
/*
 * Complete every transfer started so far, on every server (flush +
 * progress).  Returns 0 if all servers with transfers are still alive, else
 * -EIO; fmx_alive() then says which one died (its transfers count as failed).
 */
int  fmx_wait(struct fmx *x);

/* Raw requests, for the tests of the parser's error paths. */
int  fmx_raw_request(struct fmx_srv *s, const struct fm_req *rq, size_t hdr_len,
		     const void *data, size_t len, struct fm_rep *rep, int timeout_ms);

#endif
