/* SPDX-License-Identifier: MIT */
/*
 * xport.c - owns the client's UCX state: the context, the one worker (and
 * the lock that serializes it, x->lock), the connections to servers, the
 * request/reply matching of the protocol (proto.h) and the bookkeeping of
 * transfers in flight.  See xport.h for the calls and their locking.
 *
 * Why one worker with a lock and not a worker per thread: a transfer must
 * be completed (flushed) by whoever waits for it, and uhmm may start a copy
 * on one fault-service thread and wait on it from another; with per-thread
 * workers every thread would need its own endpoints to every server (a
 * second connection and rkey unpack per thread and server).  On the
 * machines measured the lock costs < 1 us per fault against 1-60 us of
 * transfer (docs/farmem.md), and UCX progress is cheaper on one worker.
 *
 * Waiting (wait_step): progress in a loop for SPIN_NS, then sleep on the
 * worker's event fd.  A waiter that only spun held the CPU the server (on
 * the same host) needed until the scheduler tick: 4 ms, the p99 of every
 * fault.  FMX_PATH_AUTO picks the read path per connection by measuring
 * both on the first allocation (calibrate_reads).
 */
#define _GNU_SOURCE
#include "xport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <ucp/api/ucp.h>

struct rpc {
	struct rpc *next;
	struct fmx_srv *s;
	struct fm_req req;       /* the header sent (lives until the send completes) */
	uint8_t rawhdr[sizeof(struct fm_req) + 64];
	int refs;                /* send pending + reply pending */
	bool async;              /* a transfer: counted in inflight, freed when done */
	bool done;
	int status;
	struct fm_rep rep;
	void *dst;               /* READ: where the data goes; STATS: struct fm_stats */
	size_t dstlen;
	void *payload;           /* ALLOC: a copy of the rkey */
	size_t plen;
};

struct fmx_srv {
	struct fmx_srv *next;
	struct fmx *x;
	ucp_ep_h ep;
	char name[272];
	bool dead, closed, dirty, byed;
	bool used;               /* transfers since the last fmx_wait */
	char why[96];
	uint64_t client_id, capacity;
	uint32_t srv_flags;
	bool am_reads, am_writes;
	bool calibrate;          /* AUTO: pick the read path at the first allocation */
	uint64_t inflight;       /* this server's transfers not yet complete */
};

struct fmx {
	pthread_mutex_t lock;    /* serializes everything below and the worker */
	ucp_context_h ctx;
	ucp_worker_h worker;
	struct fmx_srv *srvs;
	struct rpc *rpcs;        /* waiting for a reply */
	struct rpc *raw;         /* fmx_raw_request: takes a reply with any id */
	uint64_t next_id;
	uint64_t inflight;       /* transfers and flushes not yet complete */
	int efd;                 /* the worker's event fd, -1 if none */
	bool failed;             /* a transfer failed since the last fmx_wait */
	bool tcp_only;           /* UCX_TLS names tcp and no shared-memory/IB transport */
};

static void srv_mark_dead(struct fmx_srv *s, const char *why)
{
	if (s->dead)
		return;
	s->dead = true;
	snprintf(s->why, sizeof(s->why), "%s", why);
	s->x->failed = true;
}

/* Close the endpoint of a dead server (not from a UCX callback). */
static void srv_close_dead(struct fmx_srv *s)
{
	if (!s->dead || s->closed || !s->ep)
		return;
	s->closed = true;
	ucp_request_param_t p = { .op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
				  .flags = UCP_EP_CLOSE_FLAG_FORCE };
	void *r = ucp_ep_close_nbx(s->ep, &p);
	if (UCS_PTR_IS_PTR(r)) {
		while (ucp_request_check_status(r) == UCS_INPROGRESS)
			ucp_worker_progress(s->x->worker);
		ucp_request_free(r);
	}
	s->ep = NULL;
}

static unsigned progress(struct fmx *x)
{
	unsigned n = ucp_worker_progress(x->worker);
	for (struct fmx_srv *s = x->srvs; s; s = s->next)
		if (s->dead && !s->closed)
			srv_close_dead(s);
	return n;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ms(void)
{
	return now_ns() / 1000000;
}

/*
 * One step of a wait: progress the worker; once SPIN_NS have passed with
 * nothing to do, sleep on the worker's event fd (at most SLEEP_MS) instead
 * of spinning on.  The server may need the CPU we spin on (two processes on
 * a small host): a spinning waiter was seen to hold it until the scheduler
 * tick, 4 ms, the p99 of every fault.
 */
#define SPIN_NS  50000ull
#define SLEEP_MS 2
static void wait_step(struct fmx *x, uint64_t *idle_since)
{
	if (progress(x)) {
		*idle_since = 0;
		return;
	}
	uint64_t now = now_ns();
	if (!*idle_since) {
		*idle_since = now;
		return;
	}
	if (now - *idle_since < SPIN_NS || x->efd < 0)
		return;
	if (ucp_worker_arm(x->worker) == UCS_OK) {
		struct pollfd pf = { .fd = x->efd, .events = POLLIN };
		poll(&pf, 1, SLEEP_MS);
	}
	*idle_since = 0;
}

/* ---- rpc bookkeeping ----------------------------------------------------- */

static void rpc_unlink(struct fmx *x, struct rpc *r)
{
	for (struct rpc **pp = &x->rpcs; *pp; pp = &(*pp)->next)
		if (*pp == r) {
			*pp = r->next;
			return;
		}
}

static void rpc_put_n(struct rpc *r, int n)
{
	r->refs -= n;
	if (r->refs > 0)
		return;
	free(r->payload);
	free(r);
}

static void rpc_put(struct rpc *r)
{
	rpc_put_n(r, 1);
}

/* The reply (or the failure) of r is in. */
static void rpc_complete(struct rpc *r, int status)
{
	if (r->done)
		return;
	struct fmx *x = r->s->x;
	r->done = true;
	r->status = status;
	rpc_unlink(x, r);
	if (x->raw == r)
		x->raw = NULL;
	if (r->async) {
		r->s->inflight--;
		x->inflight--;
		if (status)
			x->failed = true;
		rpc_put(r);  /* the reply reference */
	}
}

/* Every request waiting on s fails (s died). */
static void srv_fail_rpcs(struct fmx_srv *s)
{
	struct fmx *x = s->x;
	for (struct rpc *r = x->rpcs, *n; r; r = n) {
		n = r->next;
		if (r->s == s)
			rpc_complete(r, -EPIPE);
	}
}

static void ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
	struct fmx_srv *s = arg;
	srv_mark_dead(s, ucs_status_string(status));
	srv_fail_rpcs(s);
}

static void am_send_cb(void *req, ucs_status_t status, void *user_data)
{
	struct rpc *r = user_data;
	if (status != UCS_OK && status != UCS_ERR_CANCELED)
		srv_mark_dead(r->s, ucs_status_string(status));
	if (status != UCS_OK)
		rpc_complete(r, -EPIPE);
	rpc_put(r);
	ucp_request_free(req);
}

static void am_recv_done(void *req, ucs_status_t status, size_t length, void *user_data)
{
	struct rpc *r = user_data;
	rpc_complete(r, status == UCS_OK ? (int)r->rep.status : -EIO);
	rpc_put(r);  /* the receive reference */
	if (req)
		ucp_request_free(req);
}

static ucs_status_t am_rep_cb(void *arg, const void *header, size_t header_length, void *data,
			      size_t length, const ucp_am_recv_param_t *param)
{
	struct fmx *x = arg;
	struct fm_rep rep;
	if (fm_parse_reply(header, header_length, &rep))
		return UCS_OK;  /* not ours to trust: dropped */
	struct rpc *r = NULL;
	for (struct rpc *i = x->rpcs; i; i = i->next)
		if (i->req.req_id == rep.req_id && !i->done) {
			r = i;
			break;
		}
	if (!r)
		r = x->raw;
	if (!r)
		return UCS_OK;
	r->rep = rep;
	int status = (int)rep.status;
	bool rndv = param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV;
	if (status == 0 && rep.type == FM_READ && r->dst) {
		if (length != r->dstlen) {
			rpc_complete(r, -EPROTO);
			if (rndv)
				ucp_am_data_release(x->worker, data);
			return UCS_OK;
		}
		if (rndv) {
			r->refs++;
			ucp_request_param_t p = {
				.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
				.cb.recv_am = am_recv_done,
				.user_data = r,
			};
			void *q = ucp_am_recv_data_nbx(x->worker, data, r->dst, length, &p);
			if (UCS_PTR_IS_ERR(q))
				am_recv_done(NULL, UCS_PTR_STATUS(q), 0, r);
			else if (q == NULL)
				am_recv_done(NULL, UCS_OK, length, r);
			return UCS_INPROGRESS;
		}
		memcpy(r->dst, data, length);
	} else if (status == 0 && rep.type == FM_STATS && r->dst) {
		if (length != sizeof(struct fm_stats) || rndv) {
			status = -EPROTO;
		} else {
			memcpy(r->dst, data, length);
		}
	} else if (status == 0 && rep.type == FM_ALLOC && length && !rndv) {
		if (length > FM_MAX_RKEY || !(r->payload = malloc(length))) {
			status = -EPROTO;
		} else {
			memcpy(r->payload, data, length);
			r->plen = length;
		}
	}
	if (rndv)
		ucp_am_data_release(x->worker, data);
	rpc_complete(r, status);
	return UCS_OK;
}

/* Send a request; the reply completes the rpc.  0 or -EPIPE. */
static int rpc_send(struct fmx_srv *s, struct rpc *r, const void *hdr, size_t hdr_len,
		    const void *data, size_t len)
{
	struct fmx *x = s->x;
	if (s->dead || !s->ep)
		return -EPIPE;
	r->s = s;
	r->refs = 2;  /* send + reply */
	r->next = x->rpcs;
	x->rpcs = r;
	if (r->async) {
		s->inflight++;
		x->inflight++;
	}
	ucp_request_param_t p = {
		.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
				UCP_OP_ATTR_FIELD_FLAGS,
		.flags = UCP_AM_SEND_FLAG_REPLY,
		.cb.send = am_send_cb,
		.user_data = r,
	};
	void *q = ucp_am_send_nbx(s->ep, FM_AM_REQ, hdr, hdr_len, data, len, &p);
	if (UCS_PTR_IS_ERR(q)) {
		srv_mark_dead(s, ucs_status_string(UCS_PTR_STATUS(q)));
		rpc_complete(r, -EPIPE);
		rpc_put(r);  /* the send reference */
		return -EPIPE;
	}
	if (q == NULL)
		rpc_put(r);  /* sent at once */
	return 0;
}

static struct rpc *rpc_new(struct fmx *x, uint16_t type)
{
	struct rpc *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->req.magic = FM_MAGIC;
	r->req.version = FM_VERSION;
	r->req.type = type;
	r->req.req_id = ++x->next_id;
	return r;
}

/* Wait for a synchronous rpc; returns its status (-ETIMEDOUT marks the server dead). */
static int rpc_wait(struct rpc *r, int timeout_ms)
{
	struct fmx *x = r->s->x;
	uint64_t deadline = now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 10000);
	uint64_t idle = 0;
	while (!r->done) {
		wait_step(x, &idle);
		if (!r->done && now_ms() > deadline) {
			srv_mark_dead(r->s, "no reply (timed out)");
			srv_fail_rpcs(r->s);
			srv_close_dead(r->s);
			if (!r->done)
				rpc_complete(r, -ETIMEDOUT);
			int st = r->status == -EPIPE ? -ETIMEDOUT : r->status;
			rpc_put(r);
			return st;
		}
	}
	int st = r->status;
	rpc_put(r);  /* the reply reference (the send one may still be held) */
	return st;
}

/* ---- context ---------------------------------------------------------------- */

int fmx_create(struct fmx **out)
{
	struct fmx *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	pthread_mutex_init(&x->lock, NULL);
	const char *tls = getenv("UCX_TLS");
	(void)tls;
	x->tcp_only = tls && strstr(tls, "tcp") && !strstr(tls, "sm") && !strstr(tls, "cma") &&
		      !strstr(tls, "posix") && !strstr(tls, "sysv") && !strstr(tls, "rc") &&
		      !strstr(tls, "ud") && !strstr(tls, "dc") && !strstr(tls, "all");
	/*
	 * Endpoints need peer failure detection (a server that dies must show
	 * up as an error, never as a hang); UCX 1.13 leaves it off for its
	 * shared-memory transports unless asked, and then does not use them.
	 */
	if (!tls || strstr(tls, "sm") || strstr(tls, "posix") || strstr(tls, "all"))
		setenv("UCX_POSIX_ERROR_HANDLING", "y", 0);
	if (!tls || strstr(tls, "sm") || strstr(tls, "sysv") || strstr(tls, "all"))
		setenv("UCX_SYSV_ERROR_HANDLING", "y", 0);
	ucp_config_t *cfg;
	if (ucp_config_read(NULL, NULL, &cfg) != UCS_OK) {
		free(x);
		return -ENOMEM;
	}
	ucp_params_t up = {
		.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME |
			      UCP_PARAM_FIELD_MT_WORKERS_SHARED,
		.features = UCP_FEATURE_AM | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP,
		.name = "uhmm_farmem",
		.mt_workers_shared = 0,
	};
	ucs_status_t st = ucp_init(&up, cfg, &x->ctx);
	ucp_config_release(cfg);
	if (st != UCS_OK) {
		fprintf(stderr, "uhmm_farmem: UCX init failed: %s\n", ucs_status_string(st));
		free(x);
		return -ENODEV;
	}
	ucp_worker_params_t wp = { .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
				   .thread_mode = UCS_THREAD_MODE_SERIALIZED };
	if ((st = ucp_worker_create(x->ctx, &wp, &x->worker)) != UCS_OK) {
		fprintf(stderr, "uhmm_farmem: UCX worker: %s\n", ucs_status_string(st));
		ucp_cleanup(x->ctx);
		free(x);
		return -ENODEV;
	}
	ucp_am_handler_param_t hp = {
		.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
			      UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS,
		.id = FM_AM_REP,
		.flags = UCP_AM_FLAG_WHOLE_MSG,
		.cb = am_rep_cb,
		.arg = x,
	};
	ucp_worker_set_am_recv_handler(x->worker, &hp);
	if (ucp_worker_get_efd(x->worker, &x->efd) != UCS_OK)
		x->efd = -1;
	*out = x;
	return 0;
}

void fmx_destroy(struct fmx *x)
{
	if (!x)
		return;
	fmx_lock(x);
	while (x->srvs)
		fmx_disconnect(x->srvs);
	fmx_unlock(x);
	ucp_worker_destroy(x->worker);
	ucp_cleanup(x->ctx);
	pthread_mutex_destroy(&x->lock);
	free(x);
}

void fmx_lock(struct fmx *x)
{
	pthread_mutex_lock(&x->lock);
}

void fmx_unlock(struct fmx *x)
{
	pthread_mutex_unlock(&x->lock);
}

/* ---- connections ------------------------------------------------------------ */

static int status_errno(const char *why)
{
	if (strstr(why, "nreachable") || strstr(why, "ejected") || strstr(why, "efused") ||
	    strstr(why, "reset") || strstr(why, "not connected"))
		return -ECONNREFUSED;
	if (strstr(why, "imed out") || strstr(why, "timeout"))
		return -ETIMEDOUT;
	return -ECONNREFUSED;
}

int fmx_connect(struct fmx *x, const char *hostport, const uint8_t *tok, uint32_t toklen,
		enum fmx_path path, int timeout_ms, struct fmx_srv **out)
{
	char host[256];
	uint16_t port;
	if (!hostport || fm_parse_hostport(hostport, host, sizeof(host), &port) || port == 0 ||
	    toklen > FM_TOKEN_MAX) {
		fprintf(stderr, "uhmm_farmem: bad server address '%s': expected HOST:PORT\n",
			hostport ? hostport : "(null)");
		return -EINVAL;
	}
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV };
	struct addrinfo *ai;
	char ps[8];
	snprintf(ps, sizeof(ps), "%u", port);
	int grc = getaddrinfo(host, ps, &hints, &ai);
	if (grc) {
		fprintf(stderr, "uhmm_farmem: cannot resolve '%s': %s\n", host, gai_strerror(grc));
		return -EHOSTUNREACH;
	}
	struct fmx_srv *s = calloc(1, sizeof(*s));
	if (!s) {
		freeaddrinfo(ai);
		return -ENOMEM;
	}
	s->x = x;
	snprintf(s->name, sizeof(s->name), "%s", hostport);
	ucp_ep_params_t ep = {
		.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
			      UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE,
		.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER,
		.sockaddr = { .addr = ai->ai_addr, .addrlen = ai->ai_addrlen },
		.err_mode = UCP_ERR_HANDLING_MODE_PEER,
		.err_handler = { .cb = ep_err_cb, .arg = s },
	};
	ucs_status_t st = ucp_ep_create(x->worker, &ep, &s->ep);
	freeaddrinfo(ai);
	if (st != UCS_OK) {
		fprintf(stderr, "uhmm_farmem: cannot connect to %s: %s\n", hostport,
			ucs_status_string(st));
		free(s);
		return -ECONNREFUSED;
	}
	s->next = x->srvs;
	x->srvs = s;

	struct rpc *r = rpc_new(x, FM_HELLO);
	int rc = -ENOMEM;
	if (r) {
		r->req.offset = FM_BOM;
		r->req.len = toklen;
		if (toklen)
			memcpy(r->req.token, tok, toklen);
		rc = rpc_send(s, r, &r->req, sizeof(r->req), NULL, 0);
		if (rc == 0) {
			r->refs++;  /* keep r past rpc_wait to read the reply */
			rc = rpc_wait(r, timeout_ms);
			if (rc == 0) {
				s->client_id = r->rep.a;
				s->capacity = r->rep.b;
				s->srv_flags = (uint32_t)r->rep.c;
			}
			rpc_put(r);
		} else {
			rpc_put(r);
		}
	}
	if (rc) {
		const char *why;
		if (rc == -EACCES) {
			why = toklen ? "token refused" : "the server wants a token";
		} else if (rc == -EPROTONOSUPPORT) {
			why = "protocol version mismatch";
		} else if (rc == -ETIMEDOUT) {
			why = "no answer (timed out)";
		} else {
			why = s->dead ? s->why : "connection failed";
			rc = status_errno(why);
			why = rc == -ECONNREFUSED ? "connection refused (no server listening, or it went away)" : why;
		}
		fprintf(stderr, "uhmm_farmem: cannot connect to %s: %s\n", hostport, why);
		s->byed = true;  /* nothing to free there */
		fmx_disconnect(s);
		return rc;
	}
	bool rma = s->srv_flags & FM_SRV_RMA;
	s->am_writes = !rma || path == FMX_PATH_AM;
	s->am_reads = !rma || path == FMX_PATH_AM || path == FMX_PATH_AM_READ ||
		      path == FMX_PATH_AUTO;
	s->calibrate = rma && path == FMX_PATH_AUTO;
	*out = s;
	return 0;
}

void fmx_disconnect(struct fmx_srv *s)
{
	struct fmx *x = s->x;
	if (!s->dead && s->ep) {
		if (!s->byed) {
			/* BYE: the server frees our memory; no reply */
			struct rpc *r = rpc_new(x, FM_BYE);
			if (r) {
				r->async = false;
				if (rpc_send(s, r, &r->req, sizeof(r->req), NULL, 0) == 0) {
					/* nobody answers a BYE: drop the reply reference */
					rpc_unlink(x, r);
					r->done = true;
					rpc_put(r);
				} else {
					rpc_put(r);
				}
			}
		}
		/* flush, then close */
		ucp_request_param_t p = { .op_attr_mask = 0 };
		void *q = ucp_ep_close_nbx(s->ep, &p);
		uint64_t deadline = now_ms() + 2000;
		if (UCS_PTR_IS_PTR(q)) {
			while (ucp_request_check_status(q) == UCS_INPROGRESS && now_ms() < deadline)
				ucp_worker_progress(x->worker);
			if (ucp_request_check_status(q) == UCS_INPROGRESS)
				ucp_request_cancel(x->worker, q);
			while (ucp_request_check_status(q) == UCS_INPROGRESS)
				ucp_worker_progress(x->worker);
			ucp_request_free(q);
		}
		s->ep = NULL;
		s->closed = true;
	} else {
		srv_close_dead(s);
	}
	srv_fail_rpcs(s);
	/* let send callbacks that still point at s run */
	for (int i = 0; i < 16; i++)
		ucp_worker_progress(x->worker);
	for (struct fmx_srv **pp = &x->srvs; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	free(s);
}

const char *fmx_name(const struct fmx_srv *s) { return s->name; }
bool fmx_alive(const struct fmx_srv *s) { return !s->dead; }
const char *fmx_dead_reason(const struct fmx_srv *s) { return s->dead ? s->why : ""; }
uint64_t fmx_client_id(const struct fmx_srv *s) { return s->client_id; }
uint64_t fmx_capacity(const struct fmx_srv *s) { return s->capacity; }
bool fmx_uses_am_reads(const struct fmx_srv *s) { return s->am_reads; }
bool fmx_uses_am_writes(const struct fmx_srv *s) { return s->am_writes; }

/* ---- allocations ------------------------------------------------------------ */

static int xfer(struct fmx_srv *s, bool put, struct fmx_region *reg, uint64_t off, void *buf,
		size_t len);

/*
 * FMX_PATH_AUTO: reads go the faster way on this connection, measured on
 * the first allocation (16 reads of 4 KiB each way, the medians compared).
 * An RMA get is one-sided where the transport does it (shared memory,
 * RDMA: under 1 us on one host) but emulated by a request to the server on
 * TCP (one round trip more); a READ active message is one round trip
 * everywhere.  docs/farmem.md has the numbers.
 */
static void calibrate_reads(struct fmx_srv *s, struct fmx_region *reg)
{
	enum { N = 16 };
	uint64_t t[2][N];
	struct fmx *x = s->x;
	if (x->inflight)
		return;  /* only on an idle worker: fmx_wait() would complete the caller's */
	uint8_t *page = aligned_alloc(FM_PAGE, FM_PAGE);
	if (!page)
		return;
	s->calibrate = false;
	/* fmx_wait() below must not hide a failure from the caller's next wait */
	bool used[64] = { 0 };
	unsigned n = 0;
	for (struct fmx_srv *i = x->srvs; i && n < 64; i = i->next)
		used[n++] = i->used;
	int rc = 0;
	for (int i = 0; i < 2 * N && !rc; i++) {
		int am = i & 1;
		s->am_reads = am;
		uint64_t t0 = now_ns();
		rc = xfer(s, false, reg, 0, page, FM_PAGE);
		rc = fmx_wait(x) ? -EIO : rc;
		t[am][i / 2] = now_ns() - t0;
	}
	free(page);
	n = 0;
	for (struct fmx_srv *i = x->srvs; i && n < 64; i = i->next)
		i->used |= used[n++];
	if (rc) {
		s->am_reads = true;
		return;
	}
	for (int k = 0; k < 2; k++)  /* insertion sort for the medians */
		for (int i = 1; i < N; i++)
			for (int j = i; j > 0 && t[k][j - 1] > t[k][j]; j--) {
				uint64_t v = t[k][j];
				t[k][j] = t[k][j - 1];
				t[k][j - 1] = v;
			}
	s->am_reads = t[1][N / 2] <= t[0][N / 2];
}

int fmx_alloc(struct fmx_srv *s, uint64_t npages, struct fmx_region *out)
{
	struct fmx *x = s->x;
	if (npages == 0 || npages > FM_MAX_ALLOC_PAGES)
		return -EINVAL;
	struct rpc *r = rpc_new(x, FM_ALLOC);
	if (!r)
		return -ENOMEM;
	r->req.handle = npages;
	r->refs = 0;
	int rc = rpc_send(s, r, &r->req, sizeof(r->req), NULL, 0);
	if (rc) {
		rpc_put(r);
		return rc;
	}
	r->refs++;  /* keep r past rpc_wait to read the payload */
	rc = rpc_wait(r, 10000);
	if (rc == 0) {
		memset(out, 0, sizeof(*out));
		out->handle = r->rep.a;
		out->base = r->rep.b;
		out->npages = r->rep.c;
		if (out->npages != npages) {
			rc = -EPROTO;
		} else if (!s->am_writes || !s->am_reads) {
			if (!r->payload) {
				rc = -EPROTO;
			} else {
				ucp_rkey_h rk;
				ucs_status_t st = ucp_ep_rkey_unpack(s->ep, r->payload, &rk);
				if (st != UCS_OK)
					rc = -EPROTO;
				else
					out->rkey = rk;
				if (!rc && s->calibrate)
					calibrate_reads(s, out);
			}
		}
	}
	rpc_put(r);
	return rc;
}

int fmx_free(struct fmx_srv *s, struct fmx_region *reg)
{
	if (reg->rkey) {
		ucp_rkey_destroy(reg->rkey);
		reg->rkey = NULL;
	}
	if (s->dead)
		return 0;  /* the server is gone and its memory with it */
	struct rpc *r = rpc_new(s->x, FM_FREE);
	if (!r)
		return -ENOMEM;
	r->req.handle = reg->handle;
	int rc = rpc_send(s, r, &r->req, sizeof(r->req), NULL, 0);
	if (rc) {
		rpc_put(r);
		return rc;
	}
	return rpc_wait(r, 5000);
}

int fmx_stats(struct fmx_srv *s, struct fm_stats *st)
{
	struct rpc *r = rpc_new(s->x, FM_STATS);
	if (!r)
		return -ENOMEM;
	r->dst = st;
	r->dstlen = sizeof(*st);
	int rc = rpc_send(s, r, &r->req, sizeof(r->req), NULL, 0);
	if (rc) {
		rpc_put(r);
		return rc;
	}
	return rpc_wait(r, 5000);
}

int fmx_raw_request(struct fmx_srv *s, const struct fm_req *rq, size_t hdr_len, const void *data,
		    size_t len, struct fm_rep *rep, int timeout_ms)
{
	struct fmx *x = s->x;
	struct rpc *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	if (hdr_len > sizeof(r->rawhdr))
		hdr_len = sizeof(r->rawhdr);
	memcpy(r->rawhdr, rq, hdr_len < sizeof(*rq) ? hdr_len : sizeof(*rq));
	r->req = *rq;
	x->raw = r;
	r->refs = 0;
	int rc = rpc_send(s, r, r->rawhdr, hdr_len, data, len);
	r->refs++;
	if (rc) {
		x->raw = NULL;
		rpc_put(r);
		return rc;
	}
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms, idle = 0;
	while (!r->done && now_ms() < deadline)
		wait_step(x, &idle);
	if (!r->done)
		rpc_complete(r, -ETIMEDOUT);
	rc = r->status;
	if (rep)
		*rep = r->rep;
	x->raw = NULL;
	rpc_put_n(r, 2);
	return rc;
}

/* ---- transfers -------------------------------------------------------------- */

static void rma_cb(void *req, ucs_status_t status, void *user_data)
{
	struct fmx_srv *s = user_data;
	s->inflight--;
	s->x->inflight--;
	if (status != UCS_OK) {
		s->x->failed = true;
		srv_mark_dead(s, ucs_status_string(status));
	}
	ucp_request_free(req);
}

static int rma_start(struct fmx_srv *s, bool put, struct fmx_region *reg, uint64_t off,
		     void *buf, size_t len)
{
	ucp_request_param_t p = {
		.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
		.cb.send = rma_cb,
		.user_data = s,
	};
	s->inflight++;
	s->x->inflight++;
	if (put)
		s->dirty = true;  /* a get is complete with its data: only puts need the flush */
	void *q = put ? ucp_put_nbx(s->ep, buf, len, reg->base + off, reg->rkey, &p)
		      : ucp_get_nbx(s->ep, buf, len, reg->base + off, reg->rkey, &p);
	if (UCS_PTR_IS_PTR(q))
		return 0;
	s->inflight--;
	s->x->inflight--;
	if (UCS_PTR_IS_ERR(q)) {
		srv_mark_dead(s, ucs_status_string(UCS_PTR_STATUS(q)));
		return -EPIPE;
	}
	return 0;
}

static int am_start(struct fmx_srv *s, bool put, struct fmx_region *reg, uint64_t off,
		    void *buf, size_t len)
{
	struct fmx *x = s->x;
	while (len) {
		size_t n = len > FM_MAX_IO ? FM_MAX_IO : len;
		struct rpc *r = rpc_new(x, put ? FM_WRITE : FM_READ);
		if (!r)
			return -ENOMEM;
		r->async = true;
		r->req.handle = reg->handle;
		r->req.offset = off;
		r->req.len = n;
		if (!put) {
			r->dst = buf;
			r->dstlen = n;
		}
		int rc = rpc_send(s, r, &r->req, sizeof(r->req), put ? buf : NULL, put ? n : 0);
		if (rc)
			return rc;
		buf = (char *)buf + n;
		off += n;
		len -= n;
	}
	return 0;
}

static int xfer(struct fmx_srv *s, bool put, struct fmx_region *reg, uint64_t off, void *buf,
		size_t len)
{
	if (s->dead || !s->ep)
		return -EPIPE;
	if (off > reg->npages * FM_PAGE || len > reg->npages * FM_PAGE - off)
		return -EINVAL;
	bool am = put ? s->am_writes : s->am_reads;
	s->used = true;
	return am ? am_start(s, put, reg, off, buf, len) : rma_start(s, put, reg, off, buf, len);
}

int fmx_put(struct fmx_srv *s, struct fmx_region *reg, uint64_t off, const void *buf, size_t len)
{
	return xfer(s, true, reg, off, (void *)buf, len);
}

int fmx_get(struct fmx_srv *s, struct fmx_region *reg, uint64_t off, void *buf, size_t len)
{
	return xfer(s, false, reg, off, buf, len);
}

static void flush_cb(void *req, ucs_status_t status, void *user_data)
{
	struct fmx_srv *s = user_data;
	s->x->inflight--;
	if (status != UCS_OK) {
		s->x->failed = true;
		srv_mark_dead(s, ucs_status_string(status));
	}
	ucp_request_free(req);
}

int fmx_wait(struct fmx *x)
{
	/* flush every server with RMA in flight: remote completion */
	for (struct fmx_srv *s = x->srvs; s; s = s->next) {
		if (!s->dirty || s->dead || !s->ep)
			continue;
		s->dirty = false;
		ucp_request_param_t p = {
			.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
			.cb.send = flush_cb,
			.user_data = s,
		};
		x->inflight++;
		void *q = ucp_ep_flush_nbx(s->ep, &p);
		if (!UCS_PTR_IS_PTR(q)) {
			x->inflight--;
			if (UCS_PTR_IS_ERR(q))
				srv_mark_dead(s, ucs_status_string(UCS_PTR_STATUS(q)));
		}
	}
	uint64_t last = now_ms(), seen = x->inflight, idle = 0;
	while (x->inflight) {
		wait_step(x, &idle);
		if (x->inflight != seen) {
			seen = x->inflight;
			last = now_ms();
		} else if (now_ms() - last > 10000) {
			/* 10 s without progress: the servers with work in flight are gone */
			for (struct fmx_srv *s = x->srvs; s; s = s->next)
				if (s->inflight || s->dirty) {
					srv_mark_dead(s, "no progress for 10 s");
					srv_fail_rpcs(s);
					srv_close_dead(s);
				}
			if (x->inflight)  /* flushes of closed endpoints */
				x->inflight = 0;
		}
	}
	int rc = 0;
	for (struct fmx_srv *s = x->srvs; s; s = s->next) {
		if (s->used && s->dead)
			rc = -EIO;
		s->used = false;
	}
	x->failed = false;
	return rc;
}
