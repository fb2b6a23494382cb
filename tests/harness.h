/* SPDX-License-Identifier: MIT */
/*
 * harness.h - the tiny test harness: TEST() cases, each run in its own forked
 * child with a time limit, ASSERT_*() that fail the case with file:line, and
 * SKIP() with a reason.  A test program prints one line per case:
 *   PASS <prog>.<case>      FAIL <prog>.<case>: why      SKIP <prog>.<case>: why
 * and exits 0 only when nothing failed.  tests/run.sh adds the lines up.
 * Run one program with a case name as argument to run only that case.
 */
#ifndef UHMM_TEST_HARNESS_H
#define UHMM_TEST_HARNESS_H
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TH_MAX_CASES 256
#define TH_EXIT_PASS 0
#define TH_EXIT_FAIL 1
#define TH_EXIT_SKIP 4

struct th_case { const char *name; void (*fn)(void); unsigned timeout_s; };
static struct th_case th_cases[TH_MAX_CASES];
static int th_ncases;
static const char *th_prog = "test";
static const char *th_cur = "";
static unsigned th_default_timeout = 120;

static inline void th_register(const char *name, void (*fn)(void), unsigned timeout_s)
{
	if (th_ncases < TH_MAX_CASES)
		th_cases[th_ncases++] = (struct th_case){ name, fn, timeout_s };
}

#define TEST_TIMEOUT(name, secs)                                              \
	static void name(void);                                               \
	__attribute__((constructor)) static void th_reg_##name(void)          \
	{ th_register(#name, name, secs); }                                   \
	static void name(void)
#define TEST(name) TEST_TIMEOUT(name, 0)

static inline void th_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	char msg[512];
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	printf("FAIL %s.%s: %s:%d: %s\n", th_prog, th_cur, file, line, msg);
	fflush(stdout);
	_exit(TH_EXIT_FAIL);
}

/* Skip the current case, saying which kernel feature or resource is missing. */
#define SKIP(...) do {                                                        \
	char th_m[400];                                                       \
	snprintf(th_m, sizeof(th_m), __VA_ARGS__);                            \
	printf("SKIP %s.%s: %s\n", th_prog, th_cur, th_m);                    \
	fflush(stdout);                                                       \
	_exit(TH_EXIT_SKIP);                                                  \
} while (0)

#define ASSERT_TRUE(c) do { if (!(c))                                         \
	th_fail(__FILE__, __LINE__, "expected %s", #c); } while (0)
#define ASSERT_FALSE(c) ASSERT_TRUE(!(c))
#define TH_CMP(a, b, op) do {                                                 \
	long long th_a = (long long)(a), th_b = (long long)(b);               \
	if (!(th_a op th_b))                                                  \
		th_fail(__FILE__, __LINE__, "%s %s %s (%lld vs %lld)",        \
			#a, #op, #b, th_a, th_b);                             \
} while (0)
#define ASSERT_EQ(a, b) TH_CMP(a, b, ==)
#define ASSERT_NE(a, b) TH_CMP(a, b, !=)
#define ASSERT_LT(a, b) TH_CMP(a, b, <)
#define ASSERT_LE(a, b) TH_CMP(a, b, <=)
#define ASSERT_GT(a, b) TH_CMP(a, b, >)
#define ASSERT_GE(a, b) TH_CMP(a, b, >=)
#define ASSERT_NOT_NULL(p) ASSERT_TRUE((p) != NULL)
#define ASSERT_MAPPED(p) ASSERT_TRUE((p) != MAP_FAILED)

/*
 * mmap in an area of the address space nothing else uses (thread stacks,
 * malloc, sanitizer runtimes, uhmm's own metadata), so that a hole a test
 * punches stays a hole: a few TiB below where the kernel places mappings,
 * inside the application range of ASan's and TSan's layouts.  Falls back to
 * an ordinary mmap.
 */
static inline void *th_mmap_isolated(size_t len, int prot, int flags)
{
	static uintptr_t next = 0x7ec000000000ULL;
	const size_t align = 2UL << 20;
	for (int tries = 0; tries < 64; tries++) {
		void *want = (void *)next;
		next += (len + 2 * align) & ~(align - 1);
		void *p = mmap(want, len, prot, flags | MAP_FIXED_NOREPLACE, -1, 0);
		if (p == want)
			return p;
		if (p != MAP_FAILED)
			munmap(p, len);
	}
	return mmap(NULL, len, prot, flags, -1, 0);
}

static inline uint64_t th_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * A hung case: print every thread's stack of the child, and of every process
 * it started, before it is killed, so that the log says why.  gdb when present (bounded in time), else the
 * kernel's view: /proc/PID/task/TID/{comm,wchan,stack}.
 */
static inline void th_dump_stacks(pid_t pid)
{
	char cmd[2048];
	fflush(stdout);
	snprintf(cmd, sizeof(cmd),
		 "tree() { echo $1; for c in $(cat /proc/$1/task/*/children 2>/dev/null); do "
		 "tree $c; done; }; for p in $(tree %d); do "
		 "echo \"    stack| === process $p ($(tr '\\0' ' ' < /proc/$p/cmdline))\"; "
		 "if command -v gdb >/dev/null 2>&1; then "
		 "timeout 60 gdb -nx -batch -p $p -ex 'set pagination off' "
		 "-ex 'thread apply all bt' 2>&1 | grep -v '^\\[New LWP\\|^warning:' "
		 "| sed 's/^/    stack| /'; "
		 "else for t in /proc/$p/task/*; do "
		 "echo \"    stack| thread ${t##*/} $(cat $t/comm) wchan=$(cat $t/wchan)\"; "
		 "sed 's/^/    stack|   /' $t/stack 2>/dev/null; done; fi; done",
		 (int)pid);
	if (system(cmd) != 0)
		printf("    stack| (stack dump incomplete)\n");
	fflush(stdout);
}

/* Run one case in a child; returns its verdict. */
static inline int th_run_case(const struct th_case *c)
{
	unsigned limit = c->timeout_s ? c->timeout_s : th_default_timeout;
	const char *scale = getenv("UHMM_TEST_TIMEOUT_SCALE");
	if (scale && atoi(scale) > 1)
		limit *= (unsigned)atoi(scale);
	/* Cases that run for a chosen time (make stress) add it here. */
	const char *extra = getenv("UHMM_TEST_EXTRA_SECONDS");
	if (extra && atoi(extra) > 0)
		limit += (unsigned)atoi(extra);
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0) {
		printf("FAIL %s.%s: fork: %s\n", th_prog, c->name, strerror(errno));
		return TH_EXIT_FAIL;
	}
	if (pid == 0) {
		th_cur = c->name;
		c->fn();
		printf("PASS %s.%s\n", th_prog, c->name);
		fflush(stdout);
		_exit(TH_EXIT_PASS);
	}
	uint64_t deadline = th_now_ns() + (uint64_t)limit * 1000000000ull;
	int status;
	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			break;
		if (th_now_ns() > deadline) {
			printf("FAIL %s.%s: timed out after %us; stacks of pid %d:\n", th_prog,
			       c->name, limit, (int)pid);
			th_dump_stacks(pid);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			return TH_EXIT_FAIL;
		}
		usleep(2000);
	}
	if (WIFSIGNALED(status)) {
		printf("FAIL %s.%s: killed by signal %d (%s)\n", th_prog, c->name,
		       WTERMSIG(status), strsignal(WTERMSIG(status)));
		return TH_EXIT_FAIL;
	}
	int code = WEXITSTATUS(status);
	if (code != TH_EXIT_PASS && code != TH_EXIT_FAIL && code != TH_EXIT_SKIP) {
		printf("FAIL %s.%s: exited with %d\n", th_prog, c->name, code);
		return TH_EXIT_FAIL;
	}
	return code;
}

static inline int th_main(int argc, char **argv)
{
	const char *slash = strrchr(argv[0], '/');
	th_prog = slash ? slash + 1 : argv[0];
	setvbuf(stdout, NULL, _IOLBF, 0);
	int failed = 0, ran = 0;
	for (int i = 0; i < th_ncases; i++) {
		if (argc > 1 && strcmp(argv[1], th_cases[i].name) != 0)
			continue;
		ran++;
		if (th_run_case(&th_cases[i]) == TH_EXIT_FAIL)
			failed++;
	}
	if (argc > 1 && !ran) {
		printf("FAIL %s.%s: no such case\n", th_prog, argv[1]);
		return 1;
	}
	return failed ? 1 : 0;
}

#define TEST_MAIN() int main(int argc, char **argv) { return th_main(argc, argv); }

#endif
