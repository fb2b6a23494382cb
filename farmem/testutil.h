/* SPDX-License-Identifier: MIT */
/*
 * testutil.h - helpers of the farmem tests and the demo: start uhmm-memd on
 * loopback with a free port (--listen 127.0.0.1:0, the port read back from
 * its first line) or in another network namespace, write a token file, pick the UCX transport variant, read
 * RssAnon, fill and check the data pattern of the cases.  Header-only, used by
 * tests/test_farmem*.c and farmem_demo.c; the tu_case_* helpers at the end
 * exist only after tests/harness.h (they SKIP or fail the case).
 */
#ifndef UHMM_FARMEM_TESTUTIL_H
#define UHMM_FARMEM_TESTUTIL_H
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

struct tu_server {
	pid_t pid;
	unsigned port;
	char addr[64];     /* "127.0.0.1:port" */
	char errfile[PATH_MAX];  /* unlinked at once; read through errfd */
	int errfd;
};

/* The uhmm-memd next to this program: <build>/tests/x -> <build>/farmem/uhmm-memd. */
static inline const char *tu_memd_path(void)
{
	static char path[PATH_MAX + 32];
	const char *env = getenv("UHMM_MEMD");
	if (env)
		return env;
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return "uhmm-memd";
	exe[n] = 0;
	char *slash = strrchr(exe, '/');
	if (slash)
		*slash = 0;
	slash = strrchr(exe, '/');
	if (slash)
		*slash = 0;
	snprintf(path, sizeof(path), "%s/farmem/uhmm-memd", exe);
	return path;
}

/* A token file in /tmp holding tok; returns its path (static buffer per call site). */
static inline int tu_token_file(char *path, size_t len, const char *tok)
{
	/* one file per uid and token, rewritten with the same bytes: no leftovers */
	unsigned h = 5381;
	for (const char *c = tok; *c; c++)
		h = h * 33 + (unsigned char)*c;
	snprintf(path, len, "/tmp/uhmm_farmem_tok_%u_%08x", (unsigned)getuid(), h);
	char tmp[PATH_MAX + 16];
	snprintf(tmp, sizeof(tmp), "%s.%d", path, (int)getpid());
	FILE *f = fopen(tmp, "w");
	if (!f)
		return -errno;
	fprintf(f, "%s\n", tok);
	fclose(f);
	return rename(tmp, path) ? -errno : 0;
}

/*
 * Start a server listening on host:0 (a free port), in the network
 * namespace netns (a name under /var/run/netns, or NULL for ours); extra is
 * NULL or one extra argument ("--no-rma").  Returns 0 and fills s (addr =
 * "host:port"), or -errno (the server's stderr is in s->errfd).  The server
 * gets SIGKILL when the calling thread exits (a killed test leaves none).
 */
static inline int tu_server_start_in(struct tu_server *s, const char *host, const char *netns,
				     const char *size, const char *tokfile, const char *extra)
{
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC))
		return -errno;
	memset(s, 0, sizeof(*s));
	snprintf(s->errfile, sizeof(s->errfile), "/tmp/uhmm_memd_err_%d_%d", (int)getpid(), rand());
	const char *memd = tu_memd_path();
	char listen[80];
	snprintf(listen, sizeof(listen), "%s:0", host);
	s->errfd = open(s->errfile, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_APPEND, 0600);
	unlink(s->errfile);
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		/* dies with the test (a killed or timed-out test leaves no server) */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		dup2(pfd[1], 1);
		if (s->errfd >= 0)
			dup2(s->errfd, 2);
		/* ip netns exec also mounts the namespace's /sys, where UCX finds its devices */
		if (netns)
			execlp("ip", "ip", "netns", "exec", netns, memd, "--listen", listen, "--size",
			       size, "--token-file", tokfile, extra, (char *)NULL);
		else
			execl(memd, "uhmm-memd", "--listen", listen, "--size", size, "--token-file",
			      tokfile, extra, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	char line[256], want[80];
	size_t n = 0;
	int rc = -ETIMEDOUT;
	snprintf(want, sizeof(want), "listening on %s:", host);
	for (int i = 0; i < 200 && n < sizeof(line) - 1; i++) {
		struct pollfd p = { .fd = pfd[0], .events = POLLIN };
		if (poll(&p, 1, 50) <= 0)
			continue;
		ssize_t r = read(pfd[0], line + n, sizeof(line) - 1 - n);
		if (r <= 0) {
			rc = -ECHILD;
			break;
		}
		n += (size_t)r;
		line[n] = 0;
		char *at = strstr(line, want);
		if (at && strchr(at + strlen(want), ' ')) {
			s->port = (unsigned)atoi(at + strlen(want));
			rc = 0;
			break;
		}
	}
	close(pfd[0]);
	if (rc) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return rc;
	}
	s->pid = pid;
	snprintf(s->addr, sizeof(s->addr), "%s:%u", host, s->port);
	return 0;
}

/* A server on 127.0.0.1 in our namespace (see tu_server_start_in). */
static inline int tu_server_start(struct tu_server *s, const char *size, const char *tokfile,
				  const char *extra)
{
	return tu_server_start_in(s, "127.0.0.1", NULL, size, tokfile, extra);
}

/* Stop with sig (SIGTERM: clean; SIGKILL: crash); returns the wait status. */
static inline int tu_server_stop(struct tu_server *s, int sig)
{
	if (s->pid <= 0)
		return -1;
	kill(s->pid, sig);
	int st = 0;
	waitpid(s->pid, &st, 0);
	s->pid = 0;
	return st;
}

/* The server's stderr so far (static buffer). */
static inline const char *tu_server_log(const struct tu_server *s)
{
	static char buf[16384];
	ssize_t n = s->errfd >= 0 ? pread(s->errfd, buf, sizeof(buf) - 1, 0) : -1;
	buf[n > 0 ? n : 0] = 0;
	return buf;
}

/* The transport variant of this case: "sm" -> UCX_TLS=sm,tcp (the client/
 * server connection needs tcp for its wireup; data AMs go over shared
 * memory), "tcp" -> UCX_TLS=tcp.  Set before anything starts UCX. */
static inline void tu_set_tls(const char *variant)
{
	setenv("UCX_TLS", strcmp(variant, "sm") == 0 ? "sm,tcp" : "tcp", 1);
	setenv("UCX_NET_DEVICES", "lo", 1);
}

/* A "Name:  N kB" line of /proc/PID/status (pid 0: this process) in KiB, or -1. */
static inline long tu_status_kb(pid_t pid, const char *name)
{
	char path[64], line[256];
	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	else
		snprintf(path, sizeof(path), "/proc/self/status");
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t nl = strlen(name);
	long v = -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, name, nl) && line[nl] == ':' && sscanf(line + nl + 1, "%ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* RssAnon of this process in KiB. */
static inline long tu_rss_anon_kb(void)
{
	return tu_status_kb(0, "RssAnon");
}

/*
 * Under ThreadSanitizer: UCX's memory hooks (patched munmap/madvise) crash
 * TSan when a thread exits, and libucs reads UCX_MEM_EVENTS when it is
 * loaded: the program re-executes itself with the hooks off.  RssAnon also
 * counts TSan's shadow of the moved pages, so tu_rss_exact() says no.
 */
#if defined(__SANITIZE_THREAD__)
__attribute__((constructor)) static void tu_tsan_no_ucx_hooks(int argc, char **argv)
{
	(void)argc;
	if (getenv("UCX_MEM_EVENTS"))
		return;
	setenv("UCX_MEM_EVENTS", "no", 1);
	execv("/proc/self/exe", argv);
}
static inline int tu_rss_exact(void) { return 0; }
#else
static inline int tu_rss_exact(void) { return 1; }
#endif

static inline int tu_quick(void)
{
	const char *q = getenv("UHMM_TEST_QUICK");
	return q && *q && *q != '0';
}

/* The data of the cases: the 8-byte word at offset off of a buffer filled with seed. */
static inline uint64_t tu_pat(uint64_t off, uint64_t seed)
{
	return (off + seed) * 0x9e3779b97f4a7c15ULL;
}

static inline void tu_fill(uint8_t *p, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = tu_pat(i, seed);
		memcpy(p + i, &v, 8);
	}
}

#define TU_PAGE 4096UL

/* The 4 KiB page at offset off holds the pattern of seed: 0, or -1 when it differs. */
static inline int tu_check_page(const uint8_t *p, size_t off, uint64_t seed)
{
	for (size_t i = 0; i < TU_PAGE; i += 8) {
		uint64_t v;
		memcpy(&v, p + off + i, 8);
		if (v != tu_pat(off + i, seed))
			return -1;
	}
	return 0;
}

/*
 * Built without UCX (mk/farmem.mk passes -DUHMM_FARMEM_NO_UCX): the whole of
 * a farmem test is this main, which says so and passes.
 */
#define TU_MAIN_NO_UCX()                                                      \
int main(void)                                                                \
{                                                                             \
	printf("SKIP farmem: UCX not installed (apt-get install libucx-dev ucx-utils)\n"); \
	return 0;                                                             \
}

#ifdef SKIP
#include <uhmm.h>

/*
 * The start of every farmem case: seed rand() (the server's error-file
 * names) and write the token file tok (its path into path).
 */
static inline void tu_case_token(char *path, size_t len, const char *tok)
{
	srand((unsigned)getpid());
	ASSERT_EQ(tu_token_file(path, len, tok), 0);
}

/* uhmm running with UFFDIO_MOVE (far memory moves pages), or SKIP saying what is missing. */
static inline void tu_case_uhmm(void)
{
	int rc = uhmm_init();
	if (rc == -EPERM || rc == -ENOSYS)
		SKIP("userfaultfd not available (%d)", rc);
	ASSERT_EQ(rc, 0);
	if (!(uhmm_features() & UHMM_FEAT_MOVE))
		SKIP("kernel without UFFDIO_MOVE");
}
#endif

#endif
