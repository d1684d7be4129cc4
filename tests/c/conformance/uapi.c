/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Conformance: the /dev/liveupdate and session ioctls (luo_core.c, luo_session.c):
 * dispatcher errnos, copy_struct_from_user size rules, session names, tokens, the outgoing and
 * incoming session kinds, RETRIEVE_FD twice, FINISH rules, closing sessions in every state.
 */
#include "conf.h"
#include <termios.h>
#include <sys/syscall.h>

#define ANON_INODE_FS_MAGIC 0x09041934

/* How a session fd looks to a program that does not call our ioctls (systemd checks both). */
static void identity(const char *what, int s)
{
	char path[64], link[256];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", s);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = 0;
	struct statfs sf;
	int r = fstatfs(s, &sf);
	struct stat st;
	fstat(s, &st);
	say("%s: link \"%s\" anon_inode_fs %s fmt %s accmode %s cloexec %d", what,
	    n > 0 ? link : ename(errno),
	    r < 0 ? ename(errno) : (unsigned long)sf.f_type == ANON_INODE_FS_MAGIC ? "yes" : "no",
	    S_ISREG(st.st_mode) ? "reg" : S_ISSOCK(st.st_mode) ? "sock" : S_ISCHR(st.st_mode) ? "chr" : "other",
	    (fcntl(s, F_GETFL) & O_ACCMODE) == O_RDWR ? "rdwr" : "other",
	    !!(fcntl(s, F_GETFD) & FD_CLOEXEC));
}

static void stage1(void)
{
	int dev = dev_open();
	say("open /dev/liveupdate: %s", dev >= 0 ? "ok" : ename(errno));
	say("second open: %s", R(open("/dev/liveupdate", O_RDWR)));
	say("dev cloexec %d", !!(fcntl(dev, F_GETFD) & FD_CLOEXEC));

	/* Dispatcher. */
	struct liveupdate_session_finish f = { .size = sizeof(f) };
	say("nr 0x05 (unknown): %s", R(ioctl(dev, _IO(LIVEUPDATE_IOCTL_TYPE, 0x05), &f)));
	say("nr 0x44 (unknown): %s", R(ioctl(dev, _IO(LIVEUPDATE_IOCTL_TYPE, 0x44), &f)));
	say("nr 0x00 with _IOW encoding: %s",
	    R(ioctl(dev, _IOW(LIVEUPDATE_IOCTL_TYPE, 0x00, int), &f)));
	say("session cmd on dev: %s", R(ioctl(dev, LIVEUPDATE_SESSION_FINISH, &f)));
	say("NULL arg: %s", R(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, NULL)));
	say("bad pointer: %s", R(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, (void *)8)));
	say("TCGETS NULL on dev: %s", R(ioctl(dev, TCGETS, NULL)));
	struct termios tio;
	say("TCGETS on dev: %s", R(ioctl(dev, TCGETS, &tio)));
	say("type 'x' NULL on dev: %s", R(ioctl(dev, _IO('x', 1), NULL)));
	say("nr 0x00 _IOW NULL on dev: %s", R(ioctl(dev, _IOW(LIVEUPDATE_IOCTL_TYPE, 0x00, int), NULL)));
	say("nr 0x07 NULL on dev: %s", R(ioctl(dev, _IO(LIVEUPDATE_IOCTL_TYPE, 0x07), NULL)));

	/* Sizes: copy_struct_from_user. */
	struct { struct liveupdate_ioctl_create_session s; char tail[64]; } big;
	memset(&big, 0, sizeof(big));
	big.s.size = 71;
	strcpy((char *)big.s.name, "c-short");
	say("size 71: %s", R(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &big)));
	big.s.size = 0;
	say("size 0: %s", R(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &big)));
	big.s.size = sizeof(big);
	strcpy((char *)big.s.name, "c-big");
	int r = ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &big);
	say("size %zu zero tail: %s", sizeof(big), r < 0 ? ename(errno) : "ok");
	if (r == 0)
		close(big.s.fd);
	strcpy((char *)big.s.name, "c-big2");
	big.tail[63] = 1;
	say("nonzero tail: %s", R(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &big)));
	say("name c-big2 after E2BIG: %s", R(create_session(dev, "c-big2")));
	big.tail[63] = 0;
	/* A struct whose size runs into an unmapped page. */
	char *pg = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	munmap(pg + 4096, 4096);
	struct liveupdate_ioctl_create_session *edge = (void *)(pg + 4096 - 72);
	memset(edge, 0, 72);
	edge->size = 200;
	strcpy((char *)edge->name, "c-edge");
	say("size past the mapping: %s", R(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, edge)));
	edge->size = 72;
	r = ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, edge);
	say("size 72 at the mapping's end: %s", r < 0 ? ename(errno) : "ok");
	if (r == 0)
		close(edge->fd);
	big.s.size = 0xffffffff;
	say("size 0xffffffff: %s", R(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &big)));

	/* Names. */
	say("empty name: %s", R(create_session(dev, "")));
	struct liveupdate_ioctl_create_session nn = { .size = sizeof(nn) };
	memset(nn.name, 'n', sizeof(nn.name));
	say("64 bytes, no NUL: %s", R(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &nn)));
	nn.name[63] = 0;
	r = ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &nn);
	say("63-byte name: %s", r < 0 ? ename(errno) : "ok");
	if (r == 0) {
		say("63-byte name reads back: %s",
		    strcmp(session_name(nn.fd), (char *)nn.name) ? "no" : "yes");
		close(nn.fd);
	}
	int a = create_session(dev, "c-alpha");
	say("create c-alpha: %s", a >= 0 ? "ok" : ename(errno));
	say("create c-alpha again: %s", R(create_session(dev, "c-alpha")));
	int odd = create_session(dev, "c odd/name\twith\x01 bytes");
	say("name with spaces, slash, tab, \\x01: %s", odd >= 0 ? "ok" : ename(errno));
	identity("outgoing session", a);
	say("GET_NAME: %s", session_name(a));
	struct liveupdate_session_get_name g = { .size = sizeof(g), .reserved = 1 };
	say("GET_NAME reserved=1: %s", R(ioctl(a, LIVEUPDATE_SESSION_GET_NAME, &g)));
	g.reserved = 0;
	g.size = 71;
	say("GET_NAME size 71: %s", R(ioctl(a, LIVEUPDATE_SESSION_GET_NAME, &g)));
	say("GET_NAME NULL: %s", R(ioctl(a, LIVEUPDATE_SESSION_GET_NAME, NULL)));

	/* Wrong session kind, wrong fd kind. */
	say("dev cmd on session: %s", R(ioctl(a, LIVEUPDATE_IOCTL_CREATE_SESSION, &big)));
	say("FINISH on outgoing: %s", R(finish(a)));
	say("RETRIEVE_FD on outgoing: %s", R(retrieve_fd(a, 1)));
	say("TCGETS NULL on session: %s", R(ioctl(a, TCGETS, NULL)));
	say("nr 0x40 _IOW NULL on session: %s",
	    R(ioctl(a, _IOW(LIVEUPDATE_IOCTL_TYPE, 0x40, int), NULL)));
	say("nr 0x40 _IOW on session: %s", R(ioctl(a, _IOW(LIVEUPDATE_IOCTL_TYPE, 0x40, int), &f)));
	say("nr 0x42 NULL on session: %s", R(ioctl(a, LIVEUPDATE_SESSION_FINISH, NULL)));
	say("nr 0x4f NULL on session: %s", R(ioctl(a, _IO(LIVEUPDATE_IOCTL_TYPE, 0x4f), NULL)));
	say("unknown nr on session: %s", R(ioctl(a, _IO(LIVEUPDATE_IOCTL_TYPE, 0x50), &f)));
	struct liveupdate_session_preserve_fd pf = { .size = 15, .fd = 0, .token = 1 };
	say("PRESERVE_FD size 15: %s", R(ioctl(a, LIVEUPDATE_SESSION_PRESERVE_FD, &pf)));
	say("RETRIEVE_SESSION of an outgoing name: %s", R(retrieve_session(dev, "c-alpha")));
	say("RETRIEVE_SESSION unknown: %s", R(retrieve_session(dev, "c-nothing")));

	/* PRESERVE_FD. */
	int m0 = memfd_create("tok0", 0), mmax = memfd_create("tokmax", 0),
	    m1 = memfd_create("tok1", 0), m2 = memfd_create("tok2", 0);
	fill(m0, 1, 100, 0);
	fill(mmax, 2, 5000, 0);
	fill(m1, 3, 4096, 0);
	fill(m2, 4, 1, 0);
	say("preserve token 0: %s", R(preserve_fd(a, m0, 0)));
	say("preserve token 2^64-1: %s", R(preserve_fd(a, mmax, UINT64_MAX)));
	say("preserve token 1: %s", R(preserve_fd(a, m1, 1)));
	say("preserve token 2: %s", R(preserve_fd(a, m2, 2)));
	say("token 0 again, other memfd: %s", R(preserve_fd(a, m2, 0)));
	say("same memfd, new token: %s", R(preserve_fd(a, m1, 7)));
	int d1 = dup(m1);
	say("dup of a preserved memfd in another session: %s", R(preserve_fd(odd, d1, 1)));
	close(d1);
	say("bad fd: %s", R(preserve_fd(a, 9999, 9)));
	say("fd -1: %s", R(preserve_fd(a, -1, 9)));
	int null = open("/dev/null", O_RDWR);
	say("/dev/null: %s", R(preserve_fd(a, null, 9)));
	say("a session fd: %s", R(preserve_fd(a, odd, 9)));
	say("/dev/liveupdate itself: %s", R(preserve_fd(a, dev, 9)));
	int pipefd[2];
	pipe(pipefd);
	say("a pipe: %s", R(preserve_fd(a, pipefd[0], 9)));
	/* The program may close its fds right after preserving. */
	close(m0);
	close(mmax);
	close(m1);
	close(m2);

	/* Sessions carried in various states. */
	int empty = create_session(dev, "c-empty");
	say("create c-empty: %s", empty >= 0 ? "ok" : ename(errno));
	int closed = create_session(dev, "c-closed");
	int mc = memfd_create("closed", 0);
	fill(mc, 5, 300, 0);
	say("preserve into c-closed: %s", R(preserve_fd(closed, mc, 1)));
	say("close c-closed: %s", R(close(closed)));
	say("memfd of a closed session preserved again elsewhere: %s", R(preserve_fd(empty, mc, 5)));
	say("unpreserve by closing c-odd: %s", R(close(odd)));
	int again = create_session(dev, "c-closed");
	say("create c-closed again: %s", again >= 0 ? "ok" : ename(errno));
	close(again);
	close(dev);
	hold_sessions(-1);
}

static void stage2(void)
{
	int dev = dev_open();
	say("open /dev/liveupdate: %s", dev >= 0 ? "ok" : ename(errno));
	say("retrieve c-closed (closed before the kexec): %s", R(retrieve_session(dev, "c-closed")));
	say("retrieve c-odd...: %s", R(retrieve_session(dev, "c odd/name\twith\x01 bytes")));
	say("retrieve c-big: %s", R(retrieve_session(dev, "c-big")));
	int a = retrieve_session(dev, "c-alpha");
	say("retrieve c-alpha: %s", a >= 0 ? "ok" : ename(errno));
	say("retrieve c-alpha again: %s", R(retrieve_session(dev, "c-alpha")));
	identity("incoming session", a);
	say("GET_NAME incoming: %s", session_name(a));
	int na = create_session(dev, "c-alpha");
	say("create outgoing c-alpha beside the incoming one: %s", na >= 0 ? "ok" : ename(errno));
	say("GET_NAME of the new one: %s", session_name(na));
	int mm = memfd_create("x", 0);
	say("PRESERVE_FD on incoming: %s", R(preserve_fd(a, mm, 1)));
	say("RETRIEVE_FD on the new outgoing: %s", R(retrieve_fd(na, 0)));
	say("RETRIEVE_FD unknown token 3: %s", R(retrieve_fd(a, 3)));
	struct liveupdate_session_retrieve_fd rf = { .size = 15, .token = 0 };
	say("RETRIEVE_FD size 15: %s", R(ioctl(a, LIVEUPDATE_SESSION_RETRIEVE_FD, &rf)));
	int f0 = retrieve_fd(a, 0);
	say("RETRIEVE_FD token 0: %s", f0 >= 0 ? "ok" : ename(errno));
	describe("token 0", f0);
	int fmax = retrieve_fd(a, UINT64_MAX);
	say("RETRIEVE_FD token 2^64-1: %s", fmax >= 0 ? "ok" : ename(errno));
	describe("token 2^64-1", fmax);
	int f0b = retrieve_fd(a, 0);
	say("RETRIEVE_FD token 0 again: %s", f0b >= 0 ? "ok" : ename(errno));
	struct stat s1, s2;
	fstat(f0, &s1);
	fstat(f0b, &s2);
	say("second retrieve: same inode %s, distinct fd %s", s1.st_ino == s2.st_ino ? "yes" : "no",
	    f0 != f0b ? "yes" : "no");
	lseek(f0, 17, SEEK_SET);
	say("second retrieve shares the file position: %s",
	    lseek(f0b, 0, SEEK_CUR) == 17 ? "yes" : "no");
	say("token 7 (refused at preserve): %s", R(retrieve_fd(a, 7)));
	struct liveupdate_session_finish fr = { .size = sizeof(fr), .reserved = 1 };
	say("FINISH reserved=1: %s", R(ioctl(a, LIVEUPDATE_SESSION_FINISH, &fr)));
	fr.size = 7;
	fr.reserved = 0;
	say("FINISH size 7: %s", R(ioctl(a, LIVEUPDATE_SESSION_FINISH, &fr)));
	say("FINISH NULL: %s", R(ioctl(a, LIVEUPDATE_SESSION_FINISH, NULL)));
	say("FINISH with tokens 1 and 2 not retrieved: %s", R(finish(a)));
	say("FINISH again: %s", R(finish(a)));
	say("GET_NAME after FINISH: %s", session_name(a));
	say("RETRIEVE_FD token 1 after FINISH: %s", R(retrieve_fd(a, 1)));
	say("RETRIEVE_FD token 0 after FINISH: %s", R(retrieve_fd(a, 0)));
	describe("token 0 after FINISH", f0);
	say("close finished c-alpha: %s", R(close(a)));
	say("retrieve c-alpha after close: %s", R(retrieve_session(dev, "c-alpha")));

	int e = retrieve_session(dev, "c-empty");
	say("retrieve c-empty: %s", e >= 0 ? "ok" : ename(errno));
	say("RETRIEVE_FD token 5 (memfd of c-closed): %s", R(retrieve_fd(e, 5)));
	/* Closing an incoming session without FINISH: an implicit finish. */
	say("close c-empty unfinished: %s", R(close(e)));
	say("retrieve c-empty after close: %s", R(retrieve_session(dev, "c-empty")));
	close(dev);
	say("reopen /dev/liveupdate: %s", R(dev = dev_open()));
	say("retrieve c-alpha after reopen: %s", R(retrieve_session(dev, "c-alpha")));
}

int main(void)
{
	if (stage() == 1)
		stage1();
	else
		stage2();
	return 0;
}
