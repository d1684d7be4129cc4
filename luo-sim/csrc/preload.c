// SPDX-License-Identifier: GPL-2.0-only OR MIT
/* libluo_sim_preload.so: makes /dev/liveupdate appear to an unmodified program.
 *
 * open("/dev/liveupdate") connects a SOCK_SEQPACKET socket to the luo-sim daemon; session fds
 * are socketpair ends the daemon sends back (bound to an abstract name "luo-sim:..."). So fork,
 * dup and last close behave as with real fds: the daemon sees the close. ioctl on one of these
 * sockets is forwarded (argument struct read with process_vm_readv, so a bad pointer gives
 * EFAULT, never a crash); PRESERVE_FD sends the program's real fd with SCM_RIGHTS; RETRIEVE_FD
 * and the session ioctls receive a real fd the same way. Everything else is a raw syscall.
 *
 * The wire format is documented in luo-sim/src/proto.rs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/time.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "preload.h"

#define EXPORT __attribute__((visibility("default")))

#define OP_OPEN 1u
#define OP_IOCTL 2u
#define F_READABLE 1u
#define F_TAIL_FAULT 2u
#define F_TAIL_NONZERO 4u
#define MAX_DATA 4096
#define IOCTL_HDR 16
#define MAX_PACKET (IOCTL_HDR + MAX_DATA + 256)
#define PRESERVE_FD 0xBA40u
#define SESSION_PREFIX "luo-sim:"

static int socket_path(char *buf, size_t len)
{
	const char *p = getenv("LUO_SIM_SOCKET");
	if (p && *p)
		return snprintf(buf, len, "%s", p) < (int)len ? 0 : -1;
	p = getenv("XDG_RUNTIME_DIR");
	if (p && *p)
		return snprintf(buf, len, "%s/luo-sim.sock", p) < (int)len ? 0 : -1;
	p = getenv("TMPDIR");
	if (!p || !*p)
		p = "/tmp";
	return snprintf(buf, len, "%s/luo-sim-%u.sock", p, (unsigned)getuid()) < (int)len ? 0 : -1;
}

/* Is fd a connection to the daemon (device or session)? */
static int is_ours(int fd)
{
	struct stat st;
	if (syscall(SYS_fstat, fd, &st) != 0 || !S_ISSOCK(st.st_mode))
		return 0;
	struct sockaddr_un a;
	socklen_t al = sizeof(a);
	memset(&a, 0, sizeof(a));
	if (getpeername(fd, (struct sockaddr *)&a, &al) != 0 || a.sun_family != AF_UNIX)
		return 0;
	size_t n = al > offsetof(struct sockaddr_un, sun_path) ? al - offsetof(struct sockaddr_un, sun_path) : 0;
	if (n > 0 && a.sun_path[0] == 0)
		return n - 1 >= strlen(SESSION_PREFIX) &&
		       memcmp(a.sun_path + 1, SESSION_PREFIX, strlen(SESSION_PREFIX)) == 0;
	char path[sizeof(a.sun_path) + 1];
	if (socket_path(path, sizeof(path)) != 0)
		return 0;
	return n > 0 && strnlen(a.sun_path, n) == strlen(path) && memcmp(a.sun_path, path, strlen(path)) == 0;
}

/* Reads len bytes of our own memory at addr; 0 or -EFAULT. */
static int peek(const void *addr, void *dst, size_t len)
{
	if (len == 0)
		return 0;
	struct iovec l = { dst, len }, r = { (void *)addr, len };
	ssize_t n = process_vm_readv(getpid(), &l, 1, &r, 1, 0);
	return n == (ssize_t)len ? 0 : -EFAULT;
}

static int poke(void *addr, const void *src, size_t len)
{
	if (len == 0)
		return 0;
	struct iovec l = { (void *)src, len }, r = { addr, len };
	ssize_t n = process_vm_writev(getpid(), &l, 1, &r, 1, 0);
	return n == (ssize_t)len ? 0 : -EFAULT;
}

int send_pkt(int sock, const void *buf, size_t len, int fd)
{
	struct iovec iov = { (void *)buf, len };
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} c;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (fd >= 0) {
		memset(&c, 0, sizeof(c));
		m.msg_control = c.b;
		m.msg_controllen = sizeof(c.b);
		struct cmsghdr *h = CMSG_FIRSTHDR(&m);
		h->cmsg_level = SOL_SOCKET;
		h->cmsg_type = SCM_RIGHTS;
		h->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(h), &fd, sizeof(int));
	}
	ssize_t n;
	do
		n = sendmsg(sock, &m, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n == (ssize_t)len ? 0 : -errno;
}

/* Receives one reply: its length, or -errno; *fd gets a passed descriptor or -1. */
ssize_t recv_pkt(int sock, void *buf, size_t len, int *fd)
{
	struct iovec iov = { buf, len };
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(4 * sizeof(int))];
	} c;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.b, .msg_controllen = sizeof(c.b) };
	ssize_t n;
	*fd = -1;
	do
		n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
		if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
			continue;
		int cnt = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (int i = 0; i < cnt; i++) {
			int f;
			memcpy(&f, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
			if (*fd < 0)
				*fd = f;
			else
				syscall(SYS_close, f);
		}
	}
	return n;
}


EXPORT int luo_sim_open(int flags)
{
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	if (socket_path(path, sizeof(path)) != 0)
		return -ENOENT;
	int s = socket(AF_UNIX, SOCK_SEQPACKET | ((flags & O_CLOEXEC) ? SOCK_CLOEXEC : 0), 0);
	if (s < 0)
		return -errno;
	struct sockaddr_un a;
	memset(&a, 0, sizeof(a));
	a.sun_family = AF_UNIX;
	memcpy(a.sun_path, path, strlen(path));
	if (connect(s, (struct sockaddr *)&a, sizeof(a)) != 0) {
		syscall(SYS_close, s);
		return -ENOENT; /* no simulated machine: no device */
	}
	/* The open never waits forever on a daemon that does not answer (one out of descriptors
	 * hangs up; a stuck one times out): EIO after 30 s. Later calls wait as long as needed. */
	struct timeval tv = { .tv_sec = 30 }, none = { 0 };
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	uint32_t op = OP_OPEN;
	int32_t ret = -EIO;
	int fd = -1;
	int got = send_pkt(s, &op, sizeof(op), -1) == 0 && recv_pkt(s, &ret, sizeof(ret), &fd) == sizeof(ret);
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
	if (got) {
		if (fd >= 0)
			syscall(SYS_close, fd);
		if (ret == 0) {
			supervise(s);
			return s;
		}
	}
	syscall(SYS_close, s);
	return ret < 0 ? ret : -EIO;
}

EXPORT int luo_sim_ioctl(int fd, unsigned long req, void *arg, int *handled)
{
	*handled = 0;
	if (!is_ours(fd))
		return 0;
	*handled = 1;
	static __thread unsigned char pkt[MAX_PACKET];
	uint32_t hdr[4] = { OP_IOCTL, (uint32_t)req, 0, 0 };
	size_t dlen = 0;
	uint32_t size;
	unsigned char *data = pkt + IOCTL_HDR;
	if (peek(arg, &size, 4) == 0) {
		hdr[2] |= F_READABLE;
		hdr[3] = size;
		size_t want = size < 4 ? 4 : (size > MAX_DATA ? MAX_DATA : size);
		if (peek(arg, data, want) == 0) {
			dlen = want;
			if (size > MAX_DATA) {
				/* The tail is scanned in order, one page at a time, as the kernel's
				 * check_zeroed_user does: a non-zero byte before an unmapped page is
				 * E2BIG, an unmapped page before any non-zero byte is EFAULT. */
				unsigned char chunk[4096];
				for (uint64_t off = MAX_DATA, c; off < size; off += c) {
					uintptr_t at = (uintptr_t)arg + off;
					c = 4096 - at % 4096;
					if (c > size - off)
						c = size - off;
					if (peek((char *)arg + off, chunk, c) != 0) {
						hdr[2] |= F_TAIL_FAULT;
						break;
					}
					for (size_t i = 0; i < c; i++)
						if (chunk[i]) {
							hdr[2] |= F_TAIL_NONZERO;
							break;
						}
					if (hdr[2] & F_TAIL_NONZERO)
						break;
				}
			}
		} else {
			/* Send the readable prefix (up to the first unmapped page): the core copies the
			 * struct, then scans its tail in order, as copy_struct_from_user does. */
			dlen = 0;
			while (dlen < want) {
				uintptr_t at = (uintptr_t)arg + dlen;
				size_t c = 4096 - at % 4096;
				if (c > want - dlen)
					c = want - dlen;
				if (peek((char *)arg + dlen, data + dlen, c) != 0)
					break;
				dlen += c;
			}
			if (dlen < 4) {
				memcpy(data, &size, 4);
				dlen = 4;
			}
		}
	}
	memcpy(pkt, hdr, sizeof(hdr));
	int pass = -1;
	if ((uint32_t)req == PRESERVE_FD && dlen >= 8) {
		int32_t target;
		memcpy(&target, data + 4, 4);
		if (target >= 0 && fcntl(target, F_GETFD) >= 0)
			pass = target;
	}
	int r = send_pkt(fd, pkt, IOCTL_HDR + dlen, pass);
	if (r < 0)
		return r == -EPIPE || r == -ECONNRESET || r == -ENOTCONN ? -EIO : r;
	int got = -1;
	ssize_t n = recv_pkt(fd, pkt, sizeof(pkt), &got);
	if (n < 4) {
		if (got >= 0)
			syscall(SYS_close, got);
		return n < 0 && n != -ECONNRESET ? (int)n : -EIO; /* the machine went away (kexec) */
	}
	int32_t ret;
	memcpy(&ret, pkt, 4);
	size_t rlen = n - 4;
	if (got >= 0 && rlen >= 8)
		memcpy(pkt + 4 + 4, &got, 4);
	if (ret == 0 && poke(arg, pkt + 4, rlen) != 0) {
		ret = -EFAULT;
		if (got >= 0)
			syscall(SYS_close, got);
	} else if (ret != 0 && got >= 0) {
		syscall(SYS_close, got);
	}
	return ret;
}

static int is_dev(const char *path)
{
	return path && strcmp(path, "/dev/liveupdate") == 0;
}

static int need_mode(int flags)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

static int do_openat(int dirfd, const char *path, int flags, unsigned int mode)
{
	if (is_dev(path)) {
		int r = luo_sim_open(flags);
		if (r < 0) {
			errno = -r;
			return -1;
		}
		return r;
	}
	return (int)syscall(SYS_openat, dirfd, path, flags, mode);
}

#define MODE_ARG(flags, last)                                   \
	unsigned int mode = 0;                                  \
	if (need_mode(flags)) {                                 \
		va_list ap;                                     \
		va_start(ap, last);                             \
		mode = va_arg(ap, unsigned int);                \
		va_end(ap);                                     \
	}

EXPORT int open(const char *path, int flags, ...)
{
	MODE_ARG(flags, flags);
	return do_openat(AT_FDCWD, path, flags, mode);
}

EXPORT int open64(const char *path, int flags, ...)
{
	MODE_ARG(flags, flags);
	return do_openat(AT_FDCWD, path, flags, mode);
}

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
	MODE_ARG(flags, flags);
	return do_openat(dirfd, path, flags, mode);
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
	MODE_ARG(flags, flags);
	return do_openat(dirfd, path, flags, mode);
}

EXPORT int __open_2(const char *path, int flags)
{
	return do_openat(AT_FDCWD, path, flags, 0);
}

EXPORT int __open64_2(const char *path, int flags)
{
	return do_openat(AT_FDCWD, path, flags, 0);
}

EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
	return do_openat(dirfd, path, flags, 0);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
	return do_openat(dirfd, path, flags, 0);
}

EXPORT int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	int handled = 0;
	int r = luo_sim_ioctl(fd, req, arg, &handled);
	if (handled) {
		if (r < 0) {
			errno = -r;
			return -1;
		}
		return r;
	}
	return (int)syscall(SYS_ioctl, fd, req, arg);
}

/* A read-only shared mapping of a memfd with a write seal can never be made writable: the
 * kernel clears VM_MAYWRITE when it maps (memfd_check_seals_mmap), so a later mprotect adding
 * PROT_WRITE is EACCES. A seal added while the file was frozen is the daemon's, not the host
 * file's (see supervise): such a mapping is made through a read-only open of the same file,
 * which the host kernel likewise never lets write. F_GET_SEALS answers with the daemon's seals
 * (it fails on anything but a memfd, which is mapped as asked). */
static void *map_sealed(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	int type = flags & MAP_TYPE;
	if (fd > 2 && !(prot & PROT_WRITE) && (type == MAP_SHARED || type == MAP_SHARED_VALIDATE)) {
		int saved = errno;
		long seals = syscall(SYS_fcntl, fd, F_GET_SEALS);
		errno = saved;
		if (seals > 0 && (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))) {
			char path[64];
			snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
			int ro = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
			if (ro >= 0) {
				void *r = (void *)syscall(SYS_mmap, addr, len, prot, flags, ro, off);
				saved = errno;
				syscall(SYS_close, ro);
				errno = saved;
				return r;
			}
		}
	}
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return map_sealed(addr, len, prot, flags, fd, off);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return map_sealed(addr, len, prot, flags, fd, off);
}

/* close() of a session or device fd: the kernel releases a session on the last close before
 * close() returns (an outgoing session's files are unpreserved and thawed at once). The daemon
 * sees the hang-up asynchronously, so after closing one of ours we wait for a ping on a new
 * connection: the daemon handles every hang-up a poll reports before it accepts, so the reply
 * means the release is done. */
#define OP_PING 4u

static void barrier(void)
{
	int saved = errno;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int s = socket_path(path, sizeof(path)) == 0 ? socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0) : -1;
	if (s >= 0) {
		struct sockaddr_un a;
		memset(&a, 0, sizeof(a));
		a.sun_family = AF_UNIX;
		memcpy(a.sun_path, path, strlen(path));
		/* Never hang a close() on a daemon that does not answer. */
		struct timeval tv = { .tv_sec = 5 };
		setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		uint32_t op = OP_PING;
		int32_t ret;
		int fd = -1;
		if (connect(s, (struct sockaddr *)&a, sizeof(a)) == 0 &&
		    send_pkt(s, &op, sizeof(op), -1) == 0 && recv_pkt(s, &ret, sizeof(ret), &fd) >= 0 &&
		    fd >= 0)
			syscall(SYS_close, fd);
		syscall(SYS_close, s);
	}
	errno = saved;
}

EXPORT int close(int fd)
{
	int ours = is_ours(fd);
	int r = (int)syscall(SYS_close, fd);
	if (r < 0)
		return -1;
	if (ours)
		barrier();
	return r;
}

/* How a session fd looks: on the kernel it is an anon inode, readlink of /proc/self/fd/N reads
 * "anon_inode:[luo_session] NAME" and fstatfs gives ANON_INODE_FS_MAGIC; systemd's LUO fd store
 * recognises session fds exactly that way. Here a session fd is a socket: these calls answer as
 * the kernel would for our fds (the name comes from GET_NAME), and the device fd reads as
 * /dev/liveupdate. */
#define ANON_INODE_FS_MAGIC 0x09041934
#define GET_NAME 0xBA43u

/* The fd a /proc/self/fd/N style path names, or -1. */
static int fd_of_path(int dirfd, const char *path)
{
	static const char *const pre[] = { "/proc/self/fd/", "/dev/fd/", "/proc/thread-self/fd/" };
	const char *num = NULL;
	if (!path)
		return -1;
	if (path[0] != '/') {
		if (dirfd == AT_FDCWD || !*path)
			return -1;
		char dp[64], link[64];
		snprintf(dp, sizeof(dp), "/proc/self/fd/%d", dirfd);
		ssize_t n = syscall(SYS_readlinkat, AT_FDCWD, dp, link, sizeof(link) - 1);
		if (n <= 0)
			return -1;
		link[n] = 0;
		char self[32];
		snprintf(self, sizeof(self), "/proc/%d/fd", (int)getpid());
		if (strcmp(link, self) != 0)
			return -1;
		num = path;
	}
	for (size_t i = 0; !num && i < sizeof(pre) / sizeof(pre[0]); i++)
		if (!strncmp(path, pre[i], strlen(pre[i])))
			num = path + strlen(pre[i]);
	if (!num) {
		char self[32];
		int l = snprintf(self, sizeof(self), "/proc/%d/fd/", (int)getpid());
		if (!strncmp(path, self, l))
			num = path + l;
	}
	if (!num || *num < '0' || *num > '9')
		return -1;
	char *end;
	long fd = strtol(num, &end, 10);
	return *end || fd > 1 << 30 ? -1 : (int)fd;
}

/* For one of our fds: its link text. 1 if it is ours. */
static int our_link(int fd, char *buf, size_t len)
{
	if (fd < 0 || !is_ours(fd))
		return 0;
	struct sockaddr_un a;
	socklen_t al = sizeof(a);
	memset(&a, 0, sizeof(a));
	getpeername(fd, (struct sockaddr *)&a, &al);
	if (a.sun_path[0] != 0) {
		snprintf(buf, len, "/dev/liveupdate");
		return 1;
	}
	struct {
		uint32_t size, reserved;
		char name[64];
	} g = { .size = sizeof(g) };
	int handled;
	if (luo_sim_ioctl(fd, GET_NAME, &g, &handled) != 0)
		g.name[0] = 0;
	g.name[63] = 0;
	snprintf(buf, len, "anon_inode:[luo_session] %s", g.name);
	return 1;
}

static ssize_t link_result(const char *text, char *buf, size_t len)
{
	size_t n = strlen(text);
	if (n > len)
		n = len;
	memcpy(buf, text, n);
	return n;
}

/* A memfd handed out by RETRIEVE_FD. The kernel's retrieved file is a new one, mode 0777 with
 * an empty name (memfd_alloc_file("") in mm/memfd_luo.c), which /proc/self/fd/N reads as
 * "/ (deleted)"; the host file the daemon hands back keeps the program's name and mode, so
 * fstat and readlink answer for it as the kernel would. The daemon knows which inodes it
 * handed out: asked (OP_RETRIEVED with the inode's device and number) only for memfds (regular
 * files nobody links), on a connection of its own. */
#define OP_RETRIEVED 6u

static int retrieved(int fd)
{
	struct stat st;
	int saved = errno;
	if (fd < 0 || syscall(SYS_fstat, fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 0) {
		errno = saved;
		return 0;
	}
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int r = 0;
	int s = socket_path(path, sizeof(path)) == 0 ? socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0) : -1;
	if (s >= 0) {
		struct sockaddr_un a;
		memset(&a, 0, sizeof(a));
		a.sun_family = AF_UNIX;
		memcpy(a.sun_path, path, strlen(path));
		struct timeval tv = { .tv_sec = 5 };
		setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		uint32_t q[5] = { OP_RETRIEVED, (uint32_t)st.st_dev, (uint32_t)((uint64_t)st.st_dev >> 32),
				  (uint32_t)st.st_ino, (uint32_t)((uint64_t)st.st_ino >> 32) };
		int32_t ret = 0;
		int got = -1;
		if (connect(s, (struct sockaddr *)&a, sizeof(a)) == 0 && send_pkt(s, q, sizeof(q), -1) == 0 &&
		    recv_pkt(s, &ret, sizeof(ret), &got) == sizeof(ret))
			r = ret == 1;
		if (got >= 0)
			syscall(SYS_close, got);
		syscall(SYS_close, s);
	}
	errno = saved;
	return r;
}

EXPORT ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t len)
{
	char text[128];
	int saved = errno;
	int fd = fd_of_path(dirfd, path);
	if (our_link(fd, text, sizeof(text))) {
		errno = saved;
		return link_result(text, buf, len);
	}
	if (retrieved(fd)) {
		errno = saved;
		return link_result("/ (deleted)", buf, len);
	}
	errno = saved;
	return syscall(SYS_readlinkat, dirfd, path, buf, len);
}

EXPORT ssize_t readlink(const char *path, char *buf, size_t len)
{
	return readlinkat(AT_FDCWD, path, buf, len);
}

static int session_fd(int fd)
{
	char text[128];
	int saved = errno;
	int r = our_link(fd, text, sizeof(text)) && strncmp(text, "anon_inode:", 11) == 0;
	errno = saved;
	return r;
}

EXPORT int fstatfs(int fd, struct statfs *buf)
{
	long r = syscall(SYS_fstatfs, fd, buf);
	if (r < 0)
		return -1; /* syscall() set errno */
	if (session_fd(fd))
		buf->f_type = ANON_INODE_FS_MAGIC;
	return 0;
}

EXPORT int fstatfs64(int fd, struct statfs64 *buf)
{
	return fstatfs(fd, (struct statfs *)buf);
}

/* An anon inode has no file type bits and mode 0600. */
EXPORT int fstat(int fd, struct stat *st)
{
	long r = syscall(SYS_fstat, fd, st);
	if (r < 0)
		return -1; /* syscall() set errno */
	if (S_ISSOCK(st->st_mode) && session_fd(fd)) {
		st->st_mode = S_IRUSR | S_IWUSR;
		st->st_size = 0;
	} else if (S_ISREG(st->st_mode) && retrieved(fd)) {
		st->st_mode = (st->st_mode & ~07777) | 0777;
	}
	return 0;
}

EXPORT int fstat64(int fd, struct stat64 *st)
{
	return fstat(fd, (struct stat *)st);
}
