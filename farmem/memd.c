/* SPDX-License-Identifier: MIT */
/*
 * memd.c - uhmm-memd, the far-memory server: owns the region (one anonymous
 * mapping of --size bytes, reserved lazily), the UCX context, worker and
 * listener, the client connections and the I/O of the protocol whose rules
 * live in proto.c.  One thread, one worker: the loop progresses the worker,
 * and sleeps on its event fd and a signalfd when there is nothing to do.
 *
 * Isolation.  Each client allocation is registered on its own
 * (ucp_mem_map of exactly its pages) and the client receives the rkey of
 * that registration only, never one for the region; a handle is checked
 * against the asking client's table on every request.  Where the transport
 * checks rkeys in hardware (InfiniBand/RoCE: the memory region's bounds)
 * a client cannot reach outside its pages by RMA.  UCX's TCP and shared
 * memory (CMA) transports do not confine RMA by rkey, so on a network with
 * untrusted clients run with --no-rma: no rkey is handed out and every byte
 * goes through READ/WRITE active messages that the server bounds-checks.
 * Freed pages are deregistered first, then zeroed, so nothing crosses from
 * one client to the next.  They stay resident (memset) for the next
 * allocation: a page given back to the OS is zero-filled again by the
 * kernel on the next client's first write, in the middle of its transfer
 * (measured, 256 MiB placed and fetched in turn: place 1.3 GB/s with pages
 * given back, 3.9 GB/s kept; docs/farmem.md).  --release-freed gives them
 * back instead (MADV_DONTNEED), for a server whose clients come and go.
 * --prefault commits the whole region at start (RSS = --size at once), so
 * that even the first client's writes find their pages: the first
 * placement into untouched memory ran at 1.3-1.6 GB/s, the server's own
 * page faults in the middle of the transfer.
 *
 *   uhmm-memd --listen HOST:PORT --size BYTES[K|M|G] --token-file FILE
 *             [--no-rma] [--spin-us N] [--release-freed] [--prefault] [--quiet]
 * PORT 0 picks a free port; the first line on stdout names the address:
 *   uhmm-memd: listening on 127.0.0.1:40123 size 1073741824 rma on
 * SIGTERM/SIGINT: clean shutdown (clients disconnected, memory released).
 * SIGUSR1: one line of counters on stderr.
 * --spin-us N (default 200): after the last event the loop keeps polling
 * for N us before it sleeps on the worker's event fd, yielding the CPU
 * between polls so that a client on the same CPU still runs.  A client's
 * 4 KiB read needs the server's progress, even on one host (UCX 1.13, a
 * client/server endpoint: UCX_TLS=cma,tcp reads small pages as slowly as
 * tcp), so a sleeping server puts its wake-up (~40 us on this VM) into
 * every CPU fault: measured on 2 CPUs,
 * client and server on one host, random faults p50 110 us with 0, 14 us
 * with 200 (docs/farmem.md).  While it spins, the server reads the
 * machine's CPU pressure (/proc/pressure/cpu) every 100 us: tasks waiting
 * for a CPU for over half that time mean the host is busy, and a spinning
 * server only delays them and its clients, so it sleeps between requests
 * for the next 100 ms (measured, both CPUs busy with two other programs:
 * faults p50 36-75 us instead of 130-152; quiet host unchanged).  0 never
 * spins.
 */
#define _GNU_SOURCE
#include "proto.h"
#include "../src/compat.h"  /* MADV_POPULATE_WRITE on older headers */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <ucp/api/ucp.h>

#define PROG "uhmm-memd"

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct conn {
	struct conn *next;
	ucp_ep_h ep;
	struct fm_client cl;
	char peer[80];
	bool closing;       /* cut off or gone: no more requests */
	int inflight;       /* sends and receives not yet complete */
};

/* A rendezvous WRITE being received into a bounce buffer. */
struct pending_write {
	struct conn *c;
	uint64_t handle, offset, len, req_id;
	void *buf;
};

/* A message being sent; freed when the send completes. */
struct sendbuf {
	struct conn *c;
	struct fm_rep rep;
	void *payload;
	bool payload_rkey;   /* release with ucp_rkey_buffer_release */
};

static struct {
	ucp_context_h ctx;
	ucp_worker_h worker;
	ucp_listener_h listener;
	char *base;
	uint64_t size;
	struct fm_server s;
	struct conn *conns;
	bool quiet;
	bool release_freed;        /* --release-freed: freed pages go back to the OS */
	volatile int stop;
	uint64_t bytes_rma_registered;
} g;

static void logline(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logline(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, PROG ": %s\n", buf);
}

static void print_counters(const char *why)
{
	const struct fm_stats *st = &g.s.st;
	logline("%s: capacity %llu pages, used %llu, clients %llu (total %llu), refused %llu, "
		"cut off %llu, allocs %llu, frees %llu, alloc failures %llu, am reads %llu (%llu B), "
		"am writes %llu (%llu B)", why,
		(unsigned long long)st->capacity_pages, (unsigned long long)st->used_pages,
		(unsigned long long)st->clients, (unsigned long long)st->clients_total,
		(unsigned long long)st->refused, (unsigned long long)st->violations,
		(unsigned long long)st->allocs, (unsigned long long)st->frees,
		(unsigned long long)st->alloc_failures, (unsigned long long)st->am_reads,
		(unsigned long long)st->am_bytes_read, (unsigned long long)st->am_writes,
		(unsigned long long)st->am_bytes_written);
}

/* ---- memory --------------------------------------------------------------- */

static void on_free(struct fm_server *s, struct fm_alloc *a)
{
	if (a->priv) {
		ucp_mem_unmap(g.ctx, (ucp_mem_h)a->priv);
		a->priv = NULL;
	}
	/* zero (and give back if asked): the next owner reads zeros (I5) */
	char *p = g.base + a->first * FM_PAGE;
	if (g.release_freed)
		madvise(p, a->npages * FM_PAGE, MADV_DONTNEED);
	else
		memset(p, 0, a->npages * FM_PAGE);
}

static int register_alloc(struct fm_alloc *a, void **rkey, size_t *rkey_len)
{
	ucp_mem_map_params_t mp = {
		.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH,
		.address = g.base + a->first * FM_PAGE,
		.length = a->npages * FM_PAGE,
	};
	ucp_mem_h mh;
	ucs_status_t st = ucp_mem_map(g.ctx, &mp, &mh);
	if (st != UCS_OK)
		return -ENOMEM;
	st = ucp_rkey_pack(g.ctx, mh, rkey, rkey_len);
	if (st != UCS_OK || *rkey_len > FM_MAX_RKEY) {
		if (st == UCS_OK)
			ucp_rkey_buffer_release(*rkey);
		ucp_mem_unmap(g.ctx, mh);
		return -ENOMEM;
	}
	a->priv = mh;
	return 0;
}

/* ---- connections ---------------------------------------------------------- */

static struct conn *conn_of_ep(ucp_ep_h ep)
{
	for (struct conn *c = g.conns; c; c = c->next)
		if (c->ep == ep)
			return c;
	return NULL;
}

static void conn_unlink_free(struct conn *c)
{
	for (struct conn **pp = &g.conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	free(c);
}

static void close_cb(void *req, ucs_status_t status, void *user_data)
{
	ucp_request_free(req);
}

/* Cut a client off (or let a gone one go): its pages are freed now. */
static void conn_close(struct conn *c, bool force)
{
	if (c->ep) {
		ucp_request_param_t p = {
			.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_CALLBACK,
			.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0,
			.cb.send = close_cb,
		};
		void *r = ucp_ep_close_nbx(c->ep, &p);
		(void)r;  /* freed by close_cb when it completes */
		c->ep = NULL;
	}
	fm_client_release(&g.s, &c->cl);
	c->closing = true;
	if (c->inflight == 0)
		conn_unlink_free(c);
}

static void ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
	struct conn *c = arg;
	if (!c->closing && !g.quiet)
		logline("client %llu (%s) gone: %s", (unsigned long long)c->cl.id, c->peer,
			ucs_status_string(status));
	/* the ep is unusable: close it with FORCE */
	conn_close(c, true);
}

static void conn_handler(ucp_conn_request_h req, void *arg)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		ucp_listener_reject(g.listener, req);
		return;
	}
	ucp_conn_request_attr_t attr = { .field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR };
	snprintf(c->peer, sizeof(c->peer), "?");
	if (ucp_conn_request_query(req, &attr) == UCS_OK) {
		char h[64] = "?";
		uint16_t port = 0;
		if (attr.client_address.ss_family == AF_INET) {
			struct sockaddr_in *in = (struct sockaddr_in *)&attr.client_address;
			inet_ntop(AF_INET, &in->sin_addr, h, sizeof(h));
			port = ntohs(in->sin_port);
		} else if (attr.client_address.ss_family == AF_INET6) {
			struct sockaddr_in6 *in = (struct sockaddr_in6 *)&attr.client_address;
			inet_ntop(AF_INET6, &in->sin6_addr, h, sizeof(h));
			port = ntohs(in->sin6_port);
		}
		snprintf(c->peer, sizeof(c->peer), "%s:%u", h, port);
	}
	fm_client_init(&g.s, &c->cl);
	c->cl.priv = c;
	ucp_ep_params_t ep = {
		.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLER |
			      UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE,
		.conn_request = req,
		.err_mode = UCP_ERR_HANDLING_MODE_PEER,
		.err_handler = { .cb = ep_err_cb, .arg = c },
	};
	ucs_status_t st = ucp_ep_create(g.worker, &ep, &c->ep);
	if (st != UCS_OK) {
		logline("cannot accept %s: %s", c->peer, ucs_status_string(st));
		free(c);
		return;
	}
	c->next = g.conns;
	g.conns = c;
}

/* ---- sending -------------------------------------------------------------- */

static void sendbuf_free(struct sendbuf *sb)
{
	struct conn *c = sb->c;
	if (sb->payload_rkey)
		ucp_rkey_buffer_release(sb->payload);
	else
		free(sb->payload);
	free(sb);
	if (c && --c->inflight == 0 && c->closing)
		conn_unlink_free(c);
}

static void send_cb(void *req, ucs_status_t status, void *user_data)
{
	sendbuf_free(user_data);
	ucp_request_free(req);
}

/* Sends rep (+ payload, which the send then owns). */
static void send_rep(struct conn *c, const struct fm_rep *rep, void *payload, size_t len,
		     bool payload_rkey)
{
	struct sendbuf *sb = malloc(sizeof(*sb));
	if (!sb || !c->ep) {
		if (payload_rkey)
			ucp_rkey_buffer_release(payload);
		else
			free(payload);
		free(sb);
		return;
	}
	sb->c = c;
	sb->rep = *rep;
	sb->payload = payload;
	sb->payload_rkey = payload_rkey;
	c->inflight++;
	ucp_request_param_t p = {
		.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
		.cb.send = send_cb,
		.user_data = sb,
	};
	void *r = ucp_am_send_nbx(c->ep, FM_AM_REP, &sb->rep, sizeof(sb->rep), payload, len, &p);
	if (!UCS_PTR_IS_PTR(r))
		sendbuf_free(sb);  /* done at once, or failed: the err handler follows */
}

/* ---- rendezvous writes ---------------------------------------------------- */

static void write_done(void *req, ucs_status_t status, size_t length, void *user_data)
{
	struct pending_write *pw = user_data;
	struct conn *c = pw->c;
	struct fm_rep rep = { .magic = FM_MAGIC, .type = FM_WRITE, .req_id = pw->req_id };
	c->inflight--;
	if (status != UCS_OK) {
		rep.status = -EIO;
	} else if (!c->closing) {
		/* re-check: the allocation may have been freed while receiving */
		struct fm_alloc *a = NULL;
		for (uint32_t i = 0; i < c->cl.nallocs; i++)
			if (c->cl.allocs[i].handle == pw->handle)
				a = &c->cl.allocs[i];
		if (a && pw->offset + pw->len <= a->npages * FM_PAGE)
			memcpy(g.base + a->first * FM_PAGE + pw->offset, pw->buf, pw->len);
		else
			rep.status = -ESTALE;
	}
	free(pw->buf);
	free(pw);
	if (req)
		ucp_request_free(req);
	if (c->closing) {
		if (c->inflight == 0)
			conn_unlink_free(c);
		return;
	}
	send_rep(c, &rep, NULL, 0, false);
}

/* ---- requests ------------------------------------------------------------- */

static ucs_status_t am_req_cb(void *arg, const void *header, size_t header_length, void *data,
			      size_t length, const ucp_am_recv_param_t *param)
{
	if (!(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP))
		return UCS_OK;  /* cannot tell who sent it: dropped */
	struct conn *c = conn_of_ep(param->reply_ep);
	if (!c || c->closing)
		return UCS_OK;
	struct fm_result res;
	enum fm_action act = fm_handle(&g.s, &c->cl, header, header_length, length, &res);
	bool rndv = param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV;

	if (act == FM_ACT_CUT) {
		if (!g.quiet)
			logline("client %llu (%s) cut off: %s", (unsigned long long)c->cl.id, c->peer,
				res.why);
		send_rep(c, &res.rep, NULL, 0, false);
		conn_close(c, false);
		return UCS_OK;
	}
	if (act == FM_ACT_NONE) {  /* BYE */
		conn_close(c, false);
		return UCS_OK;
	}
	/* the header may be unaligned (fm_handle checked its size) */
	struct fm_req rqbuf = { 0 };
	memcpy(&rqbuf, header, header_length < sizeof(rqbuf) ? header_length : sizeof(rqbuf));
	const struct fm_req *rq = &rqbuf;
	switch (res.rep.type) {
	case FM_HELLO:
		if (!g.quiet)
			logline("client %llu connected from %s", (unsigned long long)c->cl.id, c->peer);
		break;
	case FM_ALLOC: {
		void *rkey = NULL;
		size_t rlen = 0;
		if (res.rep.status || !res.alloc)
			break;  /* -ENOMEM, -EMFILE */
		res.rep.b += (uint64_t)(uintptr_t)g.base;
		if (g.s.flags & FM_SRV_RMA) {
			int rc = register_alloc(res.alloc, &rkey, &rlen);
			if (rc) {
				/* undo: free it again */
				struct fm_req fr = { .magic = FM_MAGIC, .version = FM_VERSION,
						     .type = FM_FREE, .handle = res.alloc->handle };
				struct fm_result r2;
				fm_handle(&g.s, &c->cl, &fr, sizeof(fr), 0, &r2);
				memset(&res.rep, 0, sizeof(res.rep));
				res.rep.magic = FM_MAGIC;
				res.rep.type = FM_ALLOC;
				res.rep.req_id = rq->req_id;
				res.rep.status = rc;
				g.s.st.alloc_failures++;
				break;
			}
		}
		send_rep(c, &res.rep, rkey, rlen, rkey != NULL);
		return UCS_OK;
	}
	case FM_WRITE: {
		char *dst = g.base + res.alloc->first * FM_PAGE + res.offset;
		if (!rndv) {
			memcpy(dst, data, res.len);
			break;
		}
		/* into a bounce buffer: the allocation is re-checked when it is in */
		struct pending_write *pw = malloc(sizeof(*pw));
		void *buf = malloc(res.len);
		if (!pw || !buf) {
			free(pw);
			free(buf);
			ucp_am_data_release(g.worker, data);
			res.rep.status = -ENOMEM;
			break;
		}
		*pw = (struct pending_write){ c, rq->handle, res.offset, res.len, rq->req_id, buf };
		c->inflight++;
		ucp_request_param_t p = {
			.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
			.cb.recv_am = write_done,
			.user_data = pw,
		};
		void *r = ucp_am_recv_data_nbx(g.worker, data, buf, res.len, &p);
		if (UCS_PTR_IS_ERR(r))
			write_done(NULL, UCS_PTR_STATUS(r), 0, pw);
		else if (r == NULL)
			write_done(NULL, UCS_OK, res.len, pw);
		return UCS_INPROGRESS;
	}
	case FM_READ: {
		/* a copy: the pages may be freed and reused before the send is done */
		void *buf = malloc(res.len);
		if (!buf) {
			res.rep.status = -ENOMEM;
			break;
		}
		memcpy(buf, g.base + res.alloc->first * FM_PAGE + res.offset, res.len);
		send_rep(c, &res.rep, buf, res.len, false);
		return UCS_OK;
	}
	case FM_STATS: {
		struct fm_stats *st = malloc(sizeof(*st));
		if (!st) {
			res.rep.status = -ENOMEM;
			break;
		}
		*st = g.s.st;
		st->client_id = c->cl.id;
		st->client_pages = c->cl.pages;
		send_rep(c, &res.rep, st, sizeof(*st), false);
		return UCS_OK;
	}
	default:
		break;
	}
	send_rep(c, &res.rep, NULL, 0, false);
	return UCS_OK;
}

/* ---- setup ---------------------------------------------------------------- */

static int resolve(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *ai;
	char ps[8];
	snprintf(ps, sizeof(ps), "%u", port);
	int rc = getaddrinfo(strcmp(host, "*") ? host : NULL, ps, &hints, &ai);
	if (rc)
		return rc;
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

/* Port in use is caught here with a plain bind, for a clear message. */
static int port_free(const struct sockaddr_storage *ss, socklen_t len)
{
	int fd = socket(ss->ss_family, SOCK_STREAM, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	int rc = bind(fd, (const struct sockaddr *)ss, len) ? -errno : 0;
	close(fd);
	return rc;
}

#define PSI_EVERY_NS 100000ULL
#define CALM_NS 100000000ULL
/* CPU pressure: the us tasks of this machine spent waiting for a CPU, 0 if unknown. */
static uint64_t cpu_wait_us(int fd)
{
	char b[256];
	ssize_t n = fd < 0 ? -1 : pread(fd, b, sizeof(b) - 1, 0);
	if (n <= 0)
		return 0;
	b[n] = 0;
	const char *t = strstr(b, "total=");
	return t ? strtoull(t + 6, NULL, 10) : 0;
}

/* MemAvailable in bytes, 0 if unknown. */
static uint64_t mem_available(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	unsigned long long kib = 0;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
			break;
	if (f)
		fclose(f);
	return (uint64_t)kib << 10;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: " PROG " --listen HOST:PORT --size BYTES[K|M|G] --token-file FILE "
		   "[--no-rma] [--spin-us N] [--release-freed] [--prefault] [--quiet]\n");
}

int main(int argc, char **argv)
{
	/*
	 * No UCX memory hooks: they patch mmap/munmap/madvise for UCX's
	 * registration cache, which the server does not need (its region is
	 * registered explicitly), and crash ThreadSanitizer when a thread
	 * exits.  libucs reads UCX_MEM_EVENTS when it is loaded, hence the
	 * re-exec; an explicit setting is kept.
	 */
	if (!getenv("UCX_MEM_EVENTS")) {
		char self[4096];
		ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		setenv("UCX_MEM_EVENTS", "no", 1);
		if (n > 0) {
			self[n] = 0;
			execv(self, argv);  /* on failure: go on with the hooks */
		}
	}
	const char *listen = NULL, *size_s = NULL, *token_file = NULL;
	uint64_t spin_ns = 200000;  /* --spin-us: polling after the last event */
	bool rma = true, prefault = false;
	static const struct option opts[] = {
		{ "listen", required_argument, 0, 'l' },
		{ "size", required_argument, 0, 's' },
		{ "token-file", required_argument, 0, 't' },
		{ "no-rma", no_argument, 0, 'n' },
		{ "quiet", no_argument, 0, 'q' },
		{ "spin-us", required_argument, 0, 'S' },
		{ "release-freed", no_argument, 0, 'R' },
		{ "prefault", no_argument, 0, 'P' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	int o;
	while ((o = getopt_long(argc, argv, "l:s:t:nqh", opts, NULL)) != -1) {
		switch (o) {
		case 'l': listen = optarg; break;
		case 's': size_s = optarg; break;
		case 't': token_file = optarg; break;
		case 'n': rma = false; break;
		case 'q': g.quiet = true; break;
		case 'R': g.release_freed = true; break;
		case 'P': prefault = true; break;
		case 'S': {
			char *e;
			unsigned long v = strtoul(optarg, &e, 10);
			if (*e || v > 1000000) {
				logline("bad --spin-us '%s': expected 0..1000000", optarg);
				return 2;
			}
			spin_ns = (uint64_t)v * 1000;
			break;
		}
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!listen || !size_s || !token_file || optind != argc) {
		usage(stderr);
		return 2;
	}
	char host[256];
	uint16_t port;
	if (fm_parse_hostport(listen, host, sizeof(host), &port)) {
		logline("bad --listen '%s': expected HOST:PORT", listen);
		return 2;
	}
	if (fm_parse_size(size_s, &g.size) || g.size < FM_PAGE) {
		logline("bad --size '%s': expected bytes with an optional K, M or G suffix", size_s);
		return 2;
	}
	g.size = (g.size + FM_PAGE - 1) & ~(uint64_t)(FM_PAGE - 1);
	uint64_t phys = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
	if (g.size > phys) {
		logline("--size %s is too big: this machine has %llu MiB of memory", size_s,
			(unsigned long long)(phys >> 20));
		return 1;
	}
	uint8_t tok[FM_TOKEN_MAX];
	uint32_t toklen = 0;
	int rc = fm_read_token_file(token_file, tok, &toklen);
	if (rc) {
		logline("cannot read the token from '%s': %s", token_file,
			rc == -ENODATA ? "empty" : rc == -E2BIG ? "longer than 64 bytes" : strerror(-rc));
		return 1;
	}
	struct sockaddr_storage ss;
	socklen_t sslen;
	if ((rc = resolve(host, port, &ss, &sslen))) {
		logline("cannot resolve '%s': %s", host, gai_strerror(rc));
		return 1;
	}
	if ((rc = port_free(&ss, sslen))) {
		logline("cannot listen on %s: %s", listen,
			rc == -EADDRINUSE ? "port in use" : strerror(-rc));
		return 1;
	}
	g.base = mmap(NULL, g.size, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (g.base == MAP_FAILED) {
		logline("cannot reserve %s bytes: %s", size_s, strerror(errno));
		return 1;
	}
	if (prefault) {
		/* more than the machine has free would call the OOM killer, not fail */
		uint64_t avail = mem_available();
		if (avail && g.size > avail) {
			logline("cannot commit %s bytes (--prefault): %llu MiB available", size_s,
				(unsigned long long)(avail >> 20));
			return 1;
		}
		if (madvise(g.base, g.size, MADV_POPULATE_WRITE) != 0) {
			logline("cannot commit %s bytes (--prefault): %s", size_s, strerror(errno));
			return 1;
		}
	}
	if ((rc = fm_server_init(&g.s, g.size / FM_PAGE, tok, toklen, rma ? FM_SRV_RMA : 0))) {
		logline("out of memory");
		return 1;
	}
	g.s.on_free = on_free;

	/* signals through a signalfd, read in the loop */
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGUSR1);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	signal(SIGPIPE, SIG_IGN);

	/* peer failure detection on shared memory too (see xport.c) */
	const char *tls = getenv("UCX_TLS");
	if (!tls || strstr(tls, "sm") || strstr(tls, "posix") || strstr(tls, "all"))
		setenv("UCX_POSIX_ERROR_HANDLING", "y", 0);
	if (!tls || strstr(tls, "sm") || strstr(tls, "sysv") || strstr(tls, "all"))
		setenv("UCX_SYSV_ERROR_HANDLING", "y", 0);
	ucp_config_t *cfg;
	ucs_status_t st = ucp_config_read(NULL, NULL, &cfg);
	if (st != UCS_OK) {
		logline("UCX configuration: %s", ucs_status_string(st));
		return 1;
	}
	ucp_params_t up = {
		.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME,
		.features = UCP_FEATURE_AM | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP,
		.name = PROG,
	};
	st = ucp_init(&up, cfg, &g.ctx);
	ucp_config_release(cfg);
	if (st != UCS_OK) {
		logline("UCX init: %s", ucs_status_string(st));
		return 1;
	}
	ucp_worker_params_t wp = { .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
				   .thread_mode = UCS_THREAD_MODE_SINGLE };
	if ((st = ucp_worker_create(g.ctx, &wp, &g.worker)) != UCS_OK) {
		logline("UCX worker: %s", ucs_status_string(st));
		return 1;
	}
	ucp_am_handler_param_t hp = {
		.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
			      UCP_AM_HANDLER_PARAM_FIELD_FLAGS,
		.id = FM_AM_REQ,
		.flags = UCP_AM_FLAG_WHOLE_MSG,
		.cb = am_req_cb,
	};
	if ((st = ucp_worker_set_am_recv_handler(g.worker, &hp)) != UCS_OK) {
		logline("UCX AM handler: %s", ucs_status_string(st));
		return 1;
	}
	ucp_listener_params_t lp = {
		.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER,
		.sockaddr = { .addr = (const struct sockaddr *)&ss, .addrlen = sslen },
		.conn_handler = { .cb = conn_handler, .arg = NULL },
	};
	if ((st = ucp_listener_create(g.worker, &lp, &g.listener)) != UCS_OK) {
		logline("cannot listen on %s: %s", listen,
			st == UCS_ERR_BUSY ? "port in use" : ucs_status_string(st));
		return 1;
	}
	ucp_listener_attr_t la = { .field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR };
	char shown[300];
	snprintf(shown, sizeof(shown), "%s", listen);
	if (ucp_listener_query(g.listener, &la) == UCS_OK) {
		char h[64];
		uint16_t p = 0;
		if (la.sockaddr.ss_family == AF_INET) {
			struct sockaddr_in *in = (struct sockaddr_in *)&la.sockaddr;
			inet_ntop(AF_INET, &in->sin_addr, h, sizeof(h));
			p = ntohs(in->sin_port);
			snprintf(shown, sizeof(shown), "%s:%u", h, p);
		} else if (la.sockaddr.ss_family == AF_INET6) {
			struct sockaddr_in6 *in = (struct sockaddr_in6 *)&la.sockaddr;
			inet_ntop(AF_INET6, &in->sin6_addr, h, sizeof(h));
			p = ntohs(in->sin6_port);
			snprintf(shown, sizeof(shown), "[%s]:%u", h, p);
		}
	}
	int efd = -1;
	if (ucp_worker_get_efd(g.worker, &efd) != UCS_OK)
		efd = -1;
	printf(PROG ": listening on %s size %llu rma %s\n", shown, (unsigned long long)g.size,
	       rma ? "on" : "off");
	fflush(stdout);

	uint64_t busy_until = 0, calm_until = 0, psi_at = 0, psi_us = 0;
	int psi_fd = open("/proc/pressure/cpu", O_RDONLY | O_CLOEXEC);
	while (!g.stop) {
		/*
		 * Progress, and keep polling for --spin-us after the last event
		 * before sleeping (see the top).
		 */
		for (;;) {
			if (ucp_worker_progress(g.worker)) {
				uint64_t t = now_ns();
				busy_until = t < calm_until ? 0 : t + spin_ns;
				continue;
			}
			uint64_t t = now_ns();
			if (t >= busy_until)
				break;
			if (t - psi_at > PSI_EVERY_NS) {
				uint64_t w = cpu_wait_us(psi_fd);
				if (w && psi_us && w - psi_us > (t - psi_at) / 2000) {
					calm_until = t + CALM_NS;
					busy_until = 0;
				}
				psi_us = w;
				psi_at = t;
			}
			sched_yield();
		}
		struct signalfd_siginfo si;
		while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
			if (si.ssi_signo == SIGUSR1)
				print_counters("counters");
			else
				g.stop = 1;
		}
		if (g.stop)
			break;
		if (efd < 0) {
			struct pollfd pf = { .fd = sfd, .events = POLLIN };
			poll(&pf, 1, 0);
			continue;
		}
		st = ucp_worker_arm(g.worker);
		if (st == UCS_ERR_BUSY)
			continue;
		struct pollfd pf[2] = { { .fd = efd, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		poll(pf, 2, 1000);
	}

	/* clean shutdown: stop accepting, let every client go, free everything */
	ucp_listener_destroy(g.listener);
	uint64_t used = g.s.st.used_pages;
	for (struct conn *c = g.conns, *n; c; c = n) {
		n = c->next;
		if (!c->closing)
			conn_close(c, false);
	}
	/* up to 2 s for the last replies and closes to complete */
	for (int i = 0; i < 2000 && g.conns; i++) {
		while (ucp_worker_progress(g.worker))
			;
		usleep(1000);
	}
	print_counters("shutdown");
	if (!g.quiet)
		logline("shut down: %llu pages released", (unsigned long long)used);
	ucp_worker_destroy(g.worker);
	ucp_cleanup(g.ctx);
	munmap(g.base, g.size);
	fm_server_fini(&g.s);
	return 0;
}
