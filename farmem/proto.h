/* SPDX-License-Identifier: MIT */
/*
 * proto.h - the far-memory wire protocol (client <-> uhmm-memd) and the
 * server's per-client state machine, without any UCX: parsing, validation,
 * the page allocator of the server's region and who owns what.  memd.c does
 * the I/O around it; fuzz/fuzz_memd.c drives it with hostile input.
 *
 * Every message is one UCX active message: the fixed-size header below as
 * the AM header, bulk data (rkeys, page data, stats) as the AM payload.
 * Client -> server: AM id FM_AM_REQ.  Server -> client: AM id FM_AM_REP.
 * Integers are little endian (host order: both ends are x86-64/aarch64 LE;
 * the HELLO carries a byte-order mark and a mismatched peer is refused).
 *
 *   HELLO  token                      -> status, client id, page size, capacity,
 *                                        flags (FM_SRV_RMA: rkeys are handed out)
 *   ALLOC  npages                     -> handle, remote base address, rkey (payload)
 *   FREE   handle                     -> status
 *   WRITE  handle, offset, len + data -> status          (AM data path)
 *   READ   handle, offset, len        -> status + data   (AM data path)
 *   STATS                             -> struct fm_stats (payload)
 *   BYE                               -> (none; the server frees everything)
 *
 * A request that breaks a rule (unknown type, wrong header or payload size,
 * a handle that is not the client's, an offset or length outside the
 * allocation, anything before HELLO) is a protocol violation: the server
 * answers -EPROTO where it can and cuts the client off; its allocations are
 * freed and zeroed, the other clients notice nothing.  A well-formed request
 * that cannot be satisfied (out of memory) is answered with its -errno.
 */
#ifndef UHMM_FARMEM_PROTO_H
#define UHMM_FARMEM_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FM_AM_REQ 17
#define FM_AM_REP 18

#define FM_MAGIC   0x6d6d6866u  /* "fhmm" */
#define FM_VERSION 1
#define FM_BOM     0x01020304u
#define FM_PAGE    4096u
#define FM_TOKEN_MAX 64
/* Largest single allocation and single AM read/write. */
#define FM_MAX_ALLOC_PAGES (1u << 20)  /* 4 GiB */
#define FM_MAX_IO          (1u << 20)  /* 1 MiB per READ/WRITE message */
#define FM_MAX_ALLOCS      65536       /* per client */
#define FM_MAX_RKEY        4096

enum fm_type {
	FM_HELLO = 1,
	FM_ALLOC,
	FM_FREE,
	FM_WRITE,
	FM_READ,
	FM_STATS,
	FM_BYE,
	FM_TYPE_MAX
};

/* Request header: the AM header of every client message (48 bytes). */
struct fm_req {
	uint32_t magic;
	uint16_t version;
	uint16_t type;       /* enum fm_type */
	uint64_t req_id;     /* echoed in the reply */
	uint64_t handle;     /* ALLOC: npages; FREE/READ/WRITE: allocation handle */
	uint64_t offset;     /* READ/WRITE: byte offset inside the allocation; HELLO: byte-order mark */
	uint64_t len;        /* READ/WRITE: bytes; HELLO: token length */
	uint8_t  token[FM_TOKEN_MAX]; /* HELLO only, else zero */
};

/* Reply header: the AM header of every server message. */
struct fm_rep {
	uint32_t magic;
	uint16_t type;       /* the request's type */
	uint16_t pad;
	uint64_t req_id;
	int64_t  status;     /* 0 or -errno */
	uint64_t a, b, c;    /* HELLO: client id, capacity pages, flags; ALLOC: handle, base, npages */
};

#define FM_SRV_RMA (1u << 0)  /* the server hands out rkeys for one-sided put/get */

/* Server counters (STATS payload, SIGUSR1). */
struct fm_stats {
	uint64_t capacity_pages;
	uint64_t used_pages;
	uint64_t clients;
	uint64_t clients_total;
	uint64_t refused;         /* bad or missing token, version */
	uint64_t violations;      /* clients cut off for protocol violations */
	uint64_t allocs, frees, alloc_failures;
	uint64_t am_reads, am_writes, am_bytes_read, am_bytes_written;
	uint64_t client_id;       /* the asking client's id */
	uint64_t client_pages;    /* the asking client's pages */
};

/* ---- the server's state, without I/O ------------------------------------ */

/* One allocation: pages [first, first + npages) of the region. */
struct fm_alloc {
	uint64_t handle;     /* unique per server, never reused, 0 = free slot */
	uint64_t first;
	uint64_t npages;
	void *priv;          /* memd: the ucp_mem_h */
};

struct fm_client {
	uint64_t id;
	bool hello;          /* authenticated */
	bool dead;           /* cut off */
	struct fm_alloc *allocs;
	uint32_t nallocs, cap;
	uint64_t pages;
	void *priv;          /* memd: the connection */
};

struct fm_server {
	uint64_t npages;            /* region size */
	uint64_t *bitmap;           /* one bit per page, 1 = in use */
	uint64_t hint;              /* next-fit start */
	uint8_t token[FM_TOKEN_MAX];
	uint32_t token_len;
	uint32_t flags;             /* FM_SRV_* */
	uint64_t next_id, next_handle;
	struct fm_stats st;
	/* Called when pages are freed (memd: deregister, zero and release). */
	void (*on_free)(struct fm_server *s, struct fm_alloc *a);
	void *priv;
};

/* What the server must do after fm_handle(). */
enum fm_action {
	FM_ACT_REPLY = 1,    /* send rep (with payload data/len if set) */
	FM_ACT_NONE,         /* nothing to send (BYE) */
	FM_ACT_CUT,          /* protocol violation: send rep if status set, then disconnect */
};

/* The decoded result of one request. */
struct fm_result {
	enum fm_action act;
	struct fm_rep rep;
	struct fm_alloc *alloc;   /* ALLOC (new), READ/WRITE (target) */
	uint64_t offset, len;     /* READ/WRITE: validated byte range inside alloc */
	const char *why;          /* violation: a short reason, for the log */
};

int  fm_server_init(struct fm_server *s, uint64_t npages, const void *token, uint32_t token_len,
		    uint32_t flags);
void fm_server_fini(struct fm_server *s);
void fm_client_init(struct fm_server *s, struct fm_client *c);
/* Frees everything the client holds (disconnect, BYE, violation). */
void fm_client_release(struct fm_server *s, struct fm_client *c);

/*
 * Parse and validate one request of client c: hdr/hdr_len is the AM header,
 * data_len the payload size.  Applies ALLOC/FREE to the state and fills
 * out; the payload of WRITE is copied by the caller into the validated
 * range (out->alloc, out->offset, out->len).  Never trusts a field: sizes,
 * type, version, handles and ranges are all checked.  Returns out->act.
 */
enum fm_action fm_handle(struct fm_server *s, struct fm_client *c, const void *hdr,
			 size_t hdr_len, size_t data_len, struct fm_result *out);

/* Parse a reply on the client side: 0 if well formed, else -EPROTO. */
int fm_parse_reply(const void *hdr, size_t hdr_len, struct fm_rep *out);

/* Constant-time token comparison. */
bool fm_token_equal(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen);

/* "12", "4K", "256M", "2G" -> bytes; 0 on success, -EINVAL. */
int fm_parse_size(const char *s, uint64_t *out);
/* "host:port" -> host (NUL-terminated, max hostlen) and port; 0 or -EINVAL. */
int fm_parse_hostport(const char *s, char *host, size_t hostlen, uint16_t *port);
/* Reads a token file (first line, trailing whitespace stripped). 0 or -errno. */
int fm_read_token_file(const char *path, uint8_t *tok, uint32_t *len);

#endif
