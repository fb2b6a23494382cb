/* SPDX-License-Identifier: MIT */
/*
 * test_stat.c - what uhmm shows outside the process (docs/observability.md):
 * the counters file /dev/shm/uhmm.<pid> read by tools/uhmm-stat (a child
 * migrates pages to the reference device and faults them back, and the tool
 * must print exactly the child's counters and pool counters; the file goes
 * away at exit), stale files (dead pid, reused pid, exec'd image), the
 * tool's errors, and the UHMM_TRACE_FILE timeline (valid JSON, one event per
 * fault, a bounded ring that counts what it dropped).
 */
#include "harness.h"
#include <fcntl.h>
#include <libgen.h>
#include <sys/stat.h>
#include <uhmm.h>
#include <uhmm_dmirror.h>

#define PS UHMM_PAGE_SIZE
#define RW (PROT_READ | PROT_WRITE)
#define PRIV_ANON (MAP_PRIVATE | MAP_ANONYMOUS)

static char tool[4096];

/* build/<san>/tests/test_stat -> build/<san>/tools/uhmm-stat */
__attribute__((constructor)) static void find_tool(void)
{
	char exe[4096];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return;
	exe[n] = 0;
	char *dir = dirname(dirname(exe));
	snprintf(tool, sizeof(tool), "%s/tools/uhmm-stat", dir);
}

/* What a worker child did, sent to the test over a pipe. */
struct report {
	int rc;                   /* 0, or the -errno of the step that failed */
	int step;
	uint64_t cpages;
	uint64_t data_ok;         /* pages whose data came back intact */
	struct uhmm_stats st;
	struct uhmm_devmem_stats dst;
};

/*
 * Put npages on device 0, then read every one from the CPU (a CPU fault
 * each), and report.  The child's counters are its own: the process is new.
 */
static void work(struct report *r, uint64_t npages)
{
	struct uhmm_dmirror *dm = NULL;
	memset(r, 0, sizeof(*r));
	r->step = 1;
	r->rc = uhmm_dmirror_open(0, &dm);
	if (r->rc)
		return;
	uint64_t len = npages * PS;
	int *buf = th_mmap_isolated(len, RW, PRIV_ANON);
	void *mirror = th_mmap_isolated(len, RW, PRIV_ANON);
	r->step = 2;
	if (buf == MAP_FAILED || mirror == MAP_FAILED) {
		r->rc = -ENOMEM;
		return;
	}
	for (uint64_t i = 0; i < len / sizeof(int); i++)
		buf[i] = (int)(i * 7 + 1);
	struct uhmm_dmirror_cmd cmd = {
		.addr = (uint64_t)(uintptr_t)buf, .ptr = (uint64_t)(uintptr_t)mirror,
		.npages = npages,
	};
	r->step = 3;
	r->rc = uhmm_dmirror_migrate_to_dev(dm, &cmd);
	r->cpages = cmd.cpages;
	if (r->rc)
		return;
	for (uint64_t p = 0; p < npages; p++) {
		bool ok = true;
		for (uint64_t i = p * PS / sizeof(int); i < (p + 1) * PS / sizeof(int); i++)
			ok &= buf[i] == (int)(i * 7 + 1);
		r->data_ok += ok;
	}
	uhmm_stats_get(&r->st);
	r->step = 4;
	r->rc = uhmm_dmirror_devmem_stats(0, &r->dst);
}

static void write_all(int fd, const void *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w <= 0)
			_exit(3);
		p = (const char *)p + w;
		n -= (size_t)w;
	}
}

static void read_report(int fd, struct report *r)
{
	size_t got = 0;
	while (got < sizeof(*r)) {
		ssize_t n = read(fd, (char *)r + got, sizeof(*r) - got);
		ASSERT_GT(n, 0);
		got += (size_t)n;
	}
}

/* Run the tool; its stdout and stderr in out, its exit status returned. */
static int run_tool(char *out, size_t len, const char *args)
{
	char cmd[8192];
	snprintf(cmd, sizeof(cmd), "%s %s 2>&1", tool, args);
	FILE *f = popen(cmd, "r");
	ASSERT_NOT_NULL(f);
	size_t n = fread(out, 1, len - 1, f);
	out[n] = 0;
	int st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* The number after "key": in a JSON text (the first occurrence after from). */
static long long json_num(const char *from, const char *key)
{
	char k[128];
	snprintf(k, sizeof(k), "\"%s\":", key);
	const char *p = strstr(from, k);
	if (!p)
		th_fail(__FILE__, __LINE__, "no %s in: %.300s", k, from);
	return strtoll(p + strlen(k), NULL, 10);
}

static int count_str(const char *s, const char *what)
{
	int n = 0;
	for (const char *p = s; (p = strstr(p, what)); p += strlen(what))
		n++;
	return n;
}

static void need_tool(void)
{
	if (access(tool, X_OK))
		SKIP("%.300s not built", tool);
}

/* A child that works, reports, then waits for the test to close its pipe. */
static pid_t spawn_worker(uint64_t npages, int *rep_fd, int *hold_fd)
{
	int rp[2], hp[2];
	ASSERT_EQ(pipe(rp), 0);
	ASSERT_EQ(pipe(hp), 0);
	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		close(rp[0]);
		close(hp[1]);
		struct report r;
		work(&r, npages);
		write_all(rp[1], &r, sizeof(r));
		char c;
		while (read(hp[0], &c, 1) > 0)
			;
		exit(0);  /* normal exit: the runtime removes its file */
	}
	close(rp[1]);
	close(hp[0]);
	*rep_fd = rp[0];
	*hold_fd = hp[1];
	return pid;
}

/* (a) uhmm-stat --json PID shows what the process did, exactly. */
TEST(stat_json_matches_child)
{
	need_tool();
	const uint64_t N = 16;
	int rfd, hfd;
	pid_t pid = spawn_worker(N, &rfd, &hfd);
	struct report r;
	read_report(rfd, &r);
	if (r.rc == -EPERM || r.rc == -ENOSYS)
		SKIP("userfaultfd not available: %s", strerror(-r.rc));
	ASSERT_EQ(r.rc, 0);
	ASSERT_EQ(r.cpages, N);
	ASSERT_EQ(r.data_ok, N);
	ASSERT_EQ(r.st.pages_to_device, N);
	/* the device brings back a window of pages per fault */
	ASSERT_GE(r.st.cpu_faults_private, 1);
	ASSERT_GE(r.st.pages_to_system, N);

	char path[64];
	snprintf(path, sizeof(path), "/dev/shm/uhmm.%d", (int)pid);
	struct stat sb;
	ASSERT_EQ(stat(path, &sb), 0);
	ASSERT_EQ(sb.st_mode & 0777, 0600);

	static char out[1 << 16];
	char args[64];
	snprintf(args, sizeof(args), "--json %d", (int)pid);
	ASSERT_EQ(run_tool(out, sizeof(out), args), 0);
	ASSERT_EQ(count_str(out, "\n"), 1);
	ASSERT_EQ(json_num(out, "pid"), pid);
	ASSERT_TRUE(strstr(out, "\"state\":\"live\"") != NULL);
	/* the child is idle: its live counters are exactly what it last read */
	ASSERT_EQ(json_num(out, "cpu_faults_private"), r.st.cpu_faults_private);
	ASSERT_GE(json_num(out, "cpu_faults_private"), 1);
	ASSERT_EQ(json_num(out, "cpu_faults"), r.st.cpu_faults);
	ASSERT_EQ(json_num(out, "pages_to_device"), N);
	ASSERT_EQ(json_num(out, "pages_to_system"), r.st.pages_to_system);
	ASSERT_GE(json_num(out, "pages_to_system"), N);
	ASSERT_EQ(json_num(out, "bytes_to_device"), N * PS);
	ASSERT_EQ(json_num(out, "migrate_to_dev"), 1);
	/* one histogram entry per CPU fault event */
	const char *lat = strstr(out, "\"fault_latency_ns\"");
	ASSERT_NOT_NULL(lat);
	ASSERT_EQ(json_num(lat, "count"), json_num(out, "cpu_fault"));
	ASSERT_GE(json_num(lat, "count"), r.st.cpu_faults_private);
	ASSERT_GT(json_num(lat, "p50"), 0);
	ASSERT_GE(json_num(lat, "p99"), json_num(lat, "p50"));
	/* the device's pool, as uhmm_devmem_stats() says in the child */
	const char *pool = strstr(out, "\"type\":\"private\"");
	ASSERT_NOT_NULL(pool);
	ASSERT_EQ(json_num(pool, "capacity"), r.dst.capacity);
	ASSERT_EQ(json_num(pool, "allocated"), r.dst.allocated);
	ASSERT_GE(json_num(pool, "allocated"), N);
	ASSERT_EQ(json_num(pool, "in_use"), r.dst.in_use);
	ASSERT_EQ(json_num(pool, "freed"), r.dst.freed);

	/* the vmstat-like views: a snapshot, then two lines of rates */
	snprintf(args, sizeof(args), "%d", (int)pid);
	ASSERT_EQ(run_tool(out, sizeof(out), args), 0);
	ASSERT_TRUE(strstr(out, "cpu faults") != NULL);
	ASSERT_TRUE(strstr(out, "pool private") != NULL);
	ASSERT_EQ(count_str(out, "\n"), 2 + 1 + 2);  /* header, line, system + device pool */
	snprintf(args, sizeof(args), "--json %d 0.05 2", (int)pid);
	ASSERT_EQ(run_tool(out, sizeof(out), args), 0);
	ASSERT_EQ(count_str(out, "\"rates\""), 2);
	/* the second interval saw nothing happen */
	const char *second = strchr(out, '\n') + 1;
	ASSERT_EQ(json_num(strstr(second, "\"rates\""), "cpu_faults"), 0);
	ASSERT_EQ(json_num(second, "cpu_faults_private"), r.st.cpu_faults_private);

	close(hfd);
	int status;
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ASSERT_EQ(access(path, F_OK), -1);  /* removed at exit */
	ASSERT_EQ(errno, ENOENT);
}

static void copy_file(const char *from, const char *to, int new_pid)
{
	char buf[1 << 16];
	int in = open(from, O_RDONLY);
	ASSERT_GE(in, 0);
	ssize_t n = read(in, buf, sizeof(buf));
	close(in);
	ASSERT_GT(n, 24);
	ASSERT_EQ(memcmp(buf, "UHMMSTAT", 8), 0);
	/* header: pid at 16, start time at 24 (ticks: an earlier process's) */
	memcpy(buf + 16, &(uint32_t){ (uint32_t)new_pid }, 4);
	uint64_t start;
	memcpy(&start, buf + 24, 8);
	ASSERT_GT(start, 0);
	memcpy(buf + 24, &(uint64_t){ start - 1 }, 8);
	int out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ASSERT_GE(out, 0);
	ASSERT_EQ(write(out, buf, (size_t)n), n);
	close(out);
}

/* (b) a file whose process is gone, was replaced, or exec'd is "stale". */
TEST(stat_stale_files)
{
	need_tool();
	static char out[1 << 16];
	char args[64], path[64], path2[64];

	/* dead: the runtime is made, then _exit skips the exit handlers */
	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0)
		_exit(uhmm_init() ? 5 : 0);
	int status;
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	if (WEXITSTATUS(status) == 5)
		SKIP("no uhmm runtime here");
	snprintf(path, sizeof(path), "/dev/shm/uhmm.%d", (int)pid);
	ASSERT_EQ(access(path, F_OK), 0);
	ASSERT_EQ(run_tool(out, sizeof(out), "-l"), 0);
	char want[64];
	snprintf(want, sizeof(want), "\n%-8d stale", (int)pid);
	ASSERT_TRUE(strstr(out, want) != NULL);
	snprintf(args, sizeof(args), "%d", (int)pid);
	ASSERT_EQ(run_tool(out, sizeof(out), args), 1);
	ASSERT_TRUE(strstr(out, "stale (process is gone)") != NULL);

	/* reused: a live process (not using uhmm) with the dead one's file */
	pid_t live = fork();
	ASSERT_GE(live, 0);
	if (live == 0) {
		pause();
		_exit(0);
	}
	snprintf(path2, sizeof(path2), "/dev/shm/uhmm.%d", (int)live);
	copy_file(path, path2, live);
	snprintf(args, sizeof(args), "%d", (int)live);
	int rc = run_tool(out, sizeof(out), args);
	unlink(path2);
	unlink(path);
	ASSERT_EQ(rc, 1);
	ASSERT_TRUE(strstr(out, "stale (pid reused") != NULL);
	/* without its file the same process is "not a uhmm process" */
	ASSERT_EQ(run_tool(out, sizeof(out), args), 1);
	ASSERT_TRUE(strstr(out, "is not a uhmm process") != NULL);
	kill(live, SIGKILL);
	ASSERT_EQ(waitpid(live, &status, 0), live);
	/* and once it is gone, there is no such process */
	ASSERT_EQ(run_tool(out, sizeof(out), args), 1);
	ASSERT_TRUE(strstr(out, "no such process") != NULL);

	/* exec'd: same pid, same start time, but the new image maps no file */
	int p[2];
	ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		close(p[0]);
		if (uhmm_init())
			_exit(5);
		execl("/bin/sleep", "sleep", "30", (char *)NULL);
		_exit(6);
	}
	close(p[1]);
	char c;
	ASSERT_EQ(read(p[0], &c, 1), 0);  /* EOF: exec'd (close-on-exec) or exited */
	close(p[0]);
	snprintf(path, sizeof(path), "/dev/shm/uhmm.%d", (int)pid);
	snprintf(args, sizeof(args), "%d", (int)pid);
	rc = run_tool(out, sizeof(out), args);
	kill(pid, SIGKILL);
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_EQ(access(path, F_OK), 0);
	unlink(path);
	ASSERT_EQ(rc, 1);
	ASSERT_TRUE(strstr(out, "stale (process no longer runs uhmm") != NULL);

	/* bad usage: one line, non-zero */
	ASSERT_NE(run_tool(out, sizeof(out), "notapid"), 0);
	ASSERT_TRUE(strstr(out, "not a process id") != NULL);
}

/* Run a worker with the timeline on; its report and the file's text. */
static void traced_worker(uint64_t npages, const char *ring, const char *file,
			  struct report *r, char *text, size_t len)
{
	unlink(file);
	int rfd, hfd;
	setenv("UHMM_TRACE_FILE", file, 1);
	if (ring)
		setenv("UHMM_TRACE_EVENTS", ring, 1);
	pid_t pid = spawn_worker(npages, &rfd, &hfd);
	unsetenv("UHMM_TRACE_FILE");
	unsetenv("UHMM_TRACE_EVENTS");
	read_report(rfd, r);
	close(hfd);
	int status;
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	if (r->rc == -EPERM || r->rc == -ENOSYS)
		SKIP("userfaultfd not available: %s", strerror(-r->rc));
	ASSERT_EQ(r->rc, 0);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	int fd = open(file, O_RDONLY);
	ASSERT_GE(fd, 0);
	ssize_t n = read(fd, text, len - 1);
	close(fd);
	ASSERT_GT(n, 0);
	ASSERT_LT(n, (ssize_t)len - 1);
	text[n] = 0;
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "command -v python3 >/dev/null || exit 0; "
		 "python3 -m json.tool %s >/dev/null", file);
	ASSERT_EQ(system(cmd), 0);
	ASSERT_EQ(strncmp(text, "{\"traceEvents\":[", 16), 0);
}

/* (c) UHMM_TRACE_FILE: a Chrome trace with every fault and migration. */
TEST(stat_trace_file)
{
	const uint64_t N = 24;
	static char text[8 << 20];
	char file[128];
	snprintf(file, sizeof(file), "/tmp/uhmm-test-trace.%d.json", (int)getpid());
	struct report r;
	traced_worker(N, NULL, file, &r, text, sizeof(text));
	ASSERT_EQ(r.data_ok, N);
	/* one cpu_fault event per fault counted when the worker reported */
	ASSERT_EQ(count_str(text, "\"name\":\"cpu_fault\""), r.st.cpu_faults);
	ASSERT_EQ(count_str(text, "\"cause\":\"private\""), r.st.cpu_faults_private);
	ASSERT_GE(r.st.cpu_faults_private, 1);
	ASSERT_EQ(count_str(text, "\"name\":\"migrate_to_dev\""), 1);
	char want[64];
	snprintf(want, sizeof(want), "\"pages\":%d,\"migrated\":%d}", (int)N, (int)N);
	ASSERT_TRUE(strstr(text, want) != NULL);
	ASSERT_GE(count_str(text, "\"name\":\"migrate_to_sys\""), 1);
	ASSERT_GE(count_str(text, "\"name\":\"invalidate\""), 1);
	ASSERT_EQ(json_num(text, "uhmm_dropped"), 0);
	ASSERT_EQ(json_num(text, "uhmm_written"), count_str(text, "\"ph\":\"X\""));
	/* the fault thread is named: the service thread or a fault worker */
	ASSERT_TRUE(strstr(text, "\"name\":\"uhmm-fault") != NULL);
	unlink(file);

	/* a ring of 16 slots keeps the last 16 events and counts the rest */
	traced_worker(4 * N, "16", file, &r, text, sizeof(text));
	ASSERT_EQ(r.data_ok, 4 * N);
	ASSERT_EQ(count_str(text, "\"ph\":\"X\""), 16);
	long long total = json_num(text, "uhmm_events");
	ASSERT_GT(total, 16 + 2);
	ASSERT_GE(total, r.st.cpu_faults + 2);  /* + the migrations */
	ASSERT_EQ(json_num(text, "uhmm_dropped"), total - 16);
	ASSERT_EQ(json_num(text, "uhmm_ring_slots"), 16);
	unlink(file);
}

TEST_MAIN()
