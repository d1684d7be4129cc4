/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Conformance: memfds across a live update (mm/memfd_luo.c): the frozen inode
 * after PRESERVE_FD (size changes and fallocate refused, writes within the size allowed),
 * seals (F_SEAL_*, MFD_NOEXEC_SEAL, a memfd without MFD_ALLOW_SEALING), sparse and empty files,
 * file position, writes through mmap before and after preserve, what an unpreserve (closing the
 * outgoing session) gives back, files that cannot be preserved.
 */
#include "conf.h"

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
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		int fd = retrieve_fd(s, t[i].tok);
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
}

int main(void)
{
	if (stage() == 1)
		stage1();
	else
		stage2();
	return 0;
}
