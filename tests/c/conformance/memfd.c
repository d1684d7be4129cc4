/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Conformance: memfds across a live update (mm/memfd_luo.c): the frozen inode
 * after PRESERVE_FD (size changes and fallocate refused, writes within the size allowed),
 * seals (F_SEAL_*, MFD_NOEXEC_SEAL, a memfd without MFD_ALLOW_SEALING), sparse and empty files,
 * file position, writes through mmap before and after preserve, what an unpreserve (closing the
 * outgoing session) gives back, files that cannot be preserved.
 */
#include "conf.h"
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#define PG 4096

static int mk(const char *name, unsigned flags, unsigned seed, size_t len)
{
	int fd = memfd_create(name, flags);
	if (fd < 0) {
		say("memfd_create %s: %s", name, ename(errno));
		return -1;
	}
	if (len) {
		if (ftruncate(fd, len) < 0)
			say("ftruncate %s: %s", name, ename(errno));
		fill(fd, seed, len, 0);
	}
	return fd;
}

static void frozen(const char *what, int fd)
{
	struct stat st;
	fstat(fd, &st);
	off_t sz = st.st_size;
	say("%s: ftruncate grow: %s", what, R(ftruncate(fd, sz + PG)));
	say("%s: ftruncate shrink: %s", what, R(ftruncate(fd, sz ? sz - 1 : 0)));
	say("%s: ftruncate same size: %s", what, R(ftruncate(fd, sz)));
	say("%s: fallocate extend: %s", what, R(fallocate(fd, 0, sz, PG)));
	say("%s: fallocate keep size: %s", what, R(fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, PG)));
	say("%s: fallocate punch hole: %s", what,
	    R(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, PG)));
	char c = 'Z';
	say("%s: pwrite past the end: %s", what, R(pwrite(fd, &c, 1, sz + 10)));
	say("%s: pwrite at the end: %s", what, R(pwrite(fd, &c, 1, sz)));
	say("%s: pwrite of 0 bytes past the end: %s", what, R(pwrite(fd, &c, 0, sz + 10)));
	if (sz) {
		char two[2] = { 'Y', 'Y' };
		ssize_t n2 = pwrite(fd, two, 2, sz - 1);
		say("%s: pwrite straddling the end: %s", what,
		    n2 < 0 ? ename(errno) : n2 == 2 ? "ok" : "short");
		ssize_t n = pwrite(fd, &c, 1, sz - 1);
		say("%s: pwrite within: %s", what, n < 0 ? ename(errno) : n == 1 ? "ok" : "short");
	}
	fstat(fd, &st);
	say("%s: size now %lld", what, (long long)st.st_size);
}

/* The freeze holds for the system calls themselves: made without the C library's wrappers,
 * and by a program exec'd with the fd and none of the libraries its parent loaded. */
static void raw(const char *what, int fd)
{
	struct stat st;
	fstat(fd, &st);
	long sz = st.st_size;
	char c = 'Z'; /* frozen() left a 'Z' at sz - 1: the write within changes nothing */
	say("%s: raw ftruncate grow: %s", what, R(syscall(SYS_ftruncate, fd, sz + PG)));
	say("%s: raw ftruncate shrink: %s", what, R(syscall(SYS_ftruncate, fd, 0L)));
	say("%s: raw fallocate: %s", what, R(syscall(SYS_fallocate, fd, 0, 0L, (long)PG)));
	say("%s: raw pwrite64 past the end: %s", what, R(syscall(SYS_pwrite64, fd, &c, 1L, sz)));
	struct iovec v[2] = { { &c, 1 }, { &c, 1 } };
	say("%s: raw pwritev straddling the end: %s", what,
	    R(syscall(SYS_pwritev, fd, v, 2, sz - 1, 0L)));
	say("%s: raw pwritev within: %s", what, R(syscall(SYS_pwritev, fd, v, 1, sz - 1, 0L)));
	fflush(stdout);
	pid_t p = fork();
	if (p == 0) {
		char arg[16];
		snprintf(arg, sizeof(arg), "%d", fd);
		unsetenv("LD_PRELOAD");
		execl("/proc/self/exe", "memfd", "raw-child", arg, (char *)NULL);
		_exit(127);
	}
	int status = 0;
	waitpid(p, &status, 0);
	say("%s: exec'd child: exit %d", what, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

/* The other ways to write or resize a frozen file: from another file (the length is what the
 * source holds), by path (/proc/self/fd/N, /proc/thread-self/fd/N), by an open with O_TRUNC. */
static void paths(int s)
{
	int m = mk("paths", 0, 13, 2 * PG);
	say("preserve paths: %s", R(preserve_fd(s, m, 12)));
	int src = mk("source", 0, 14, 3 * PG);
	loff_t in = 0, out = PG;
	say("paths: copy_file_range within: %s", R(copy_file_range(src, &in, m, &out, PG, 0)));
	in = 0, out = PG + 1;
	say("paths: copy_file_range straddling the end: %s",
	    R(copy_file_range(src, &in, m, &out, PG, 0)));
	in = 3 * PG - 5, out = 2 * PG - 5;
	say("paths: copy_file_range of 100 from a source with 5 left, up to the end: %s",
	    R(copy_file_range(src, &in, m, &out, 100, 0)));
	off_t so = 0;
	lseek(m, 2 * PG - 10, SEEK_SET);
	say("paths: sendfile straddling the end: %s", R(sendfile(m, src, &so, 100)));
	lseek(m, 0, SEEK_SET);
	say("paths: sendfile within: %s", R(sendfile(m, src, &so, 100)));
	int p[2];
	if (pipe(p) == 0 && write(p[1], "hello", 5) == 5) {
		loff_t po = 2 * PG - 2;
		say("paths: splice straddling the end: %s",
		    R(splice(p[0], NULL, m, &po, 5, SPLICE_F_NONBLOCK)));
		po = 0;
		say("paths: splice within: %s", R(splice(p[0], NULL, m, &po, 5, SPLICE_F_NONBLOCK)));
		close(p[0]);
		close(p[1]);
	}
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", m);
	say("paths: truncate /proc/self/fd/N: %s", R(truncate(path, PG)));
	int t = open(path, O_RDWR | O_TRUNC);
	say("paths: open /proc/self/fd/N with O_TRUNC: %s", t >= 0 ? "ok" : ename(errno));
	snprintf(path, sizeof(path), "/proc/thread-self/fd/%d", m);
	say("paths: truncate /proc/thread-self/fd/N to the same size: %s", R(truncate(path, 2 * PG)));
	say("paths: truncate /proc/thread-self/fd/N: %s", R(truncate(path, 3 * PG)));
	t = open(path, O_RDWR);
	say("paths: open /proc/thread-self/fd/N: %s", t >= 0 ? "ok" : ename(errno));
	if (t >= 0)
		close(t);
	int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY);
	snprintf(path, sizeof(path), "%d", m);
	t = openat(dir, path, O_RDWR | O_TRUNC);
	say("paths: openat of N in /proc/self/fd with O_TRUNC: %s", t >= 0 ? "ok" : ename(errno));
	close(dir);
	describe("paths", m);
	close(src);
}

/* The exec'd child of raw(). */
static int raw_child(int fd)
{
	struct stat st;
	fstat(fd, &st);
	say("exec'd child: raw ftruncate grow: %s", R(syscall(SYS_ftruncate, fd, st.st_size + PG)));
	say("exec'd child: raw write past the end: %s", R(syscall(SYS_pwrite64, fd, "x", 1L, st.st_size)));
	return 0;
}

static void stage1(void)
{
	int dev = dev_open();
	say("open: %s", dev >= 0 ? "ok" : ename(errno));
	int s = create_session(dev, "m-main");
	say("create m-main: %s", s >= 0 ? "ok" : ename(errno));

	/* 1: data, position; frozen after preserve. */
	int a = mk("data", MFD_ALLOW_SEALING, 1, 3 * PG + 123);
	lseek(a, 1234, SEEK_SET);
	say("preserve data: %s", R(preserve_fd(s, a, 1)));
	frozen("data", a);
	raw("data", a);
	paths(s);
	describe("data after preserve", a);
	lseek(a, 999, SEEK_SET); /* the position at the kexec is what crosses */

	/* 2: seals set before preserve. */
	int b = mk("sealed", MFD_ALLOW_SEALING, 2, PG);
	say("add seals: %s", R(fcntl(b, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)));
	say("preserve sealed: %s", R(preserve_fd(s, b, 2)));
	describe("sealed", b);

	/* 3: MFD_NOEXEC_SEAL. */
	int c = mk("noexec", MFD_NOEXEC_SEAL, 3, 100);
	describe("noexec before", c);
	say("preserve noexec: %s", R(preserve_fd(s, c, 3)));

	/* 4: no MFD_ALLOW_SEALING (F_SEAL_SEAL from the start). */
	int d = mk("nosealing", 0, 4, 200);
	describe("nosealing before", d);
	say("preserve nosealing: %s", R(preserve_fd(s, d, 4)));

	/* 5: empty. */
	int e = mk("empty", 0, 0, 0);
	say("preserve empty: %s", R(preserve_fd(s, e, 5)));
	frozen("empty", e);

	/* 6: sparse: 1 MiB with two written pages. */
	int f = mk("sparse", 0, 0, 0);
	ftruncate(f, 1 << 20);
	fill(f, 6, PG, 5 * PG);
	fill(f, 7, 10, (1 << 20) - 10);
	say("preserve sparse: %s", R(preserve_fd(s, f, 6)));

	/* 7: written through a shared mapping before and after preserve. */
	int g = mk("mmap", 0, 8, 2 * PG);
	char *map = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, g, 0);
	memcpy(map, "before preserve", 15);
	say("preserve mmap: %s", R(preserve_fd(s, g, 7)));
	memcpy(map + PG, "after preserve", 14);
	munmap(map, 2 * PG);

	/* 8: F_SEAL_WRITE after preserve (a seal the kernel accepts after preserve is not
	 * carried: known/late_seal.c). */
	int h = mk("late-seal", MFD_ALLOW_SEALING, 9, PG);
	say("preserve late-seal: %s", R(preserve_fd(s, h, 8)));
	say("add F_SEAL_WRITE after preserve: %s", R(fcntl(h, F_ADD_SEALS, F_SEAL_WRITE)));

	/* 9: written with write() at the position after preserve (within the size). */
	int w = mk("write", 0, 10, PG);
	say("preserve write: %s", R(preserve_fd(s, w, 9)));
	lseek(w, PG - 5, SEEK_SET);
	say("write 5 at the end: %s", R(write(w, "12345", 5)));
	say("write 1 more: %s", R(write(w, "6", 1)));

	/* 10: O_APPEND reopened through /proc (the same inode, another open file). */
	int ap = mk("append", 0, 11, PG);
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", ap);
	int ap2 = open(path, O_RDWR | O_APPEND);
	say("reopen via /proc: %s", ap2 >= 0 ? "ok" : ename(errno));
	say("preserve the reopened file: %s", R(preserve_fd(s, ap2, 10)));
	say("preserve the first open of the same inode: %s", R(preserve_fd(s, ap, 11)));
	say("append write to frozen: %s", R(write(ap2, "x", 1)));

	/* Unpreserve: closing an outgoing session thaws its files. */
	int t = create_session(dev, "m-thaw");
	int u = mk("thaw", 0, 12, PG);
	say("preserve thaw: %s", R(preserve_fd(t, u, 1)));
	say("thaw: ftruncate while preserved: %s", R(ftruncate(u, 2 * PG)));
	close(t);
	say("thaw: ftruncate after the session closed: %s", R(ftruncate(u, 2 * PG)));
	say("thaw: fallocate punch hole after: %s",
	    R(fallocate(u, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, PG)));
	describe("thaw", u);

	/* Files that are not shmem memfds. */
	int hug = memfd_create("huge", MFD_HUGETLB);
	if (hug >= 0)
		say("preserve a HugeTLB memfd: %s", R(preserve_fd(s, hug, 20)));
	else
		say("preserve a HugeTLB memfd: no HugeTLB memfd here");

	close(dev);
	hold_sessions(-1);
}

static void stage2(void)
{
	int dev = dev_open();
	int s = retrieve_session(dev, "m-main");
	say("retrieve m-main: %s", s >= 0 ? "ok" : ename(errno));
	say("retrieve m-thaw: %s", R(retrieve_session(dev, "m-thaw")));
	static const struct { uint64_t tok; const char *what; } t[] = {
		{ 1, "data" }, { 2, "sealed" }, { 3, "noexec" }, { 4, "nosealing" }, { 5, "empty" },
		{ 6, "sparse" }, { 7, "mmap" }, { 8, "late-seal" }, { 9, "write" }, { 10, "append" },
		{ 11, "append first open" }, { 20, "huge" },
	};
	int data = -1;
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		int fd = retrieve_fd(s, t[i].tok);
		if (t[i].tok == 1)
			data = fd;
		if (fd < 0) {
			say("%s: retrieve %s", t[i].what, ename(errno));
			continue;
		}
		describe(t[i].what, fd);
		char path[64], link[256];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		ssize_t n = readlink(path, link, sizeof(link) - 1);
		link[n > 0 ? n : 0] = 0;
		say("%s: reads as \"%s\"", t[i].what, n > 0 ? link : ename(errno));
		struct stat st;
		fstat(fd, &st);
		if (t[i].tok == 7) {
			char buf[16] = { 0 };
			pread(fd, buf, 15, 0);
			say("mmap page 0: %s", buf);
			memset(buf, 0, sizeof(buf));
			pread(fd, buf, 14, PG);
			say("mmap page 1: %s", buf);
		}
		if (t[i].tok == 6) {
			say("sparse: SEEK_DATA 0 -> %lld, SEEK_HOLE 0 -> %lld",
			    (long long)lseek(fd, 0, SEEK_DATA), (long long)lseek(fd, 0, SEEK_HOLE));
			lseek(fd, 0, SEEK_SET);
		}
		/* A retrieved file is an ordinary memfd again. */
		say("%s: ftruncate grow after retrieve: %s", t[i].what, R(ftruncate(fd, st.st_size + PG)));
		say("%s: add F_SEAL_SEAL after retrieve: %s", t[i].what,
		    R(fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL)));
	}
	say("finish: %s", R(finish(s)));

	/* A retrieved file preserved again is frozen until its new session lets it go, whatever
	 * becomes of the session it came from. */
	int n = create_session(dev, "m-again");
	say("preserve the retrieved data again: %s", R(preserve_fd(n, data, 1)));
	close(s);
	struct stat st;
	fstat(data, &st);
	say("again: ftruncate grow after m-main closed: %s", R(ftruncate(data, st.st_size + PG)));
	say("again: pwrite past the end: %s", R(pwrite(data, "x", 1, st.st_size)));
	close(n);
	say("again: ftruncate grow after m-again closed: %s", R(ftruncate(data, st.st_size + PG)));
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "raw-child") == 0)
		return raw_child(atoi(argv[2]));
	if (stage() == 1)
		stage1();
	else
		stage2();
	return 0;
}
