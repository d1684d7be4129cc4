/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Helpers of the conformance suite: programs that print one line per observable outcome
 * (errno names, sizes, seals, data digests, fd identity), run by `luo vmtest --diff` on the real
 * kernel and under the simulator; the suite passes when every line is equal. So nothing printed
 * may depend on the machine: no fd numbers, pids, inode numbers or addresses; identity is
 * printed as a comparison ("same inode"), data as a digest.
 *
 * The stage comes from $LUO_VMTEST_STAGE (set by luo vmtest). A program that carries sessions
 * across the live update forks a child that holds them (hold_sessions()); the kernel ends it at
 * the kexec.
 */
#ifndef LUO_CONF_H
#define LUO_CONF_H
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/liveupdate.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif

static inline const char *ename(int e)
{
	switch (e) {
	case 0: return "ok";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EIO: return "EIO";
	case EBADF: return "EBADF";
	case ENOMEM: return "ENOMEM";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case EEXIST: return "EEXIST";
	case ENODEV: return "ENODEV";
	case EINVAL: return "EINVAL";
	case ENFILE: return "ENFILE";
	case EMFILE: return "EMFILE";
	case ENOTTY: return "ENOTTY";
	case EFBIG: return "EFBIG";
	case ENOSPC: return "ENOSPC";
	case ESPIPE: return "ESPIPE";
	case EROFS: return "EROFS";
	case E2BIG: return "E2BIG";
	case EACCES: return "EACCES";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case EOVERFLOW: return "EOVERFLOW";
	case ENOSYS: return "ENOSYS";
	default: {
		static char b[32];
		snprintf(b, sizeof(b), "errno %d", e);
		return b;
	}
	}
}

/* One outcome line. */
static inline void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

/* The outcome of a call returning -1/errno: "ok" or the errno name. */
#define R(call) ({ errno = 0; long r_ = (long)(call); r_ < 0 ? ename(errno) : "ok"; })

static inline int stage(void)
{
	const char *s = getenv("LUO_VMTEST_STAGE");
	return s ? atoi(s) : 1;
}

static inline int dev_open(void)
{
	return open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
}

static inline int create_session(int dev, const char *name)
{
	struct liveupdate_ioctl_create_session a = { .size = sizeof(a) };
	snprintf((char *)a.name, sizeof(a.name), "%s", name);
	return ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &a) < 0 ? -1 : a.fd;
}

static inline int retrieve_session(int dev, const char *name)
{
	struct liveupdate_ioctl_retrieve_session a = { .size = sizeof(a) };
	snprintf((char *)a.name, sizeof(a.name), "%s", name);
	return ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, &a) < 0 ? -1 : a.fd;
}

static inline int preserve_fd(int s, int fd, uint64_t token)
{
	struct liveupdate_session_preserve_fd a = { .size = sizeof(a), .fd = fd, .token = token };
	return ioctl(s, LIVEUPDATE_SESSION_PRESERVE_FD, &a);
}

static inline int retrieve_fd(int s, uint64_t token)
{
	struct liveupdate_session_retrieve_fd a = { .size = sizeof(a), .fd = -1, .token = token };
	return ioctl(s, LIVEUPDATE_SESSION_RETRIEVE_FD, &a) < 0 ? -1 : a.fd;
}

static inline int finish(int s)
{
	struct liveupdate_session_finish a = { .size = sizeof(a) };
	return ioctl(s, LIVEUPDATE_SESSION_FINISH, &a);
}

static inline const char *session_name(int s)
{
	static struct liveupdate_session_get_name g;
	memset(&g, 0, sizeof(g));
	g.size = sizeof(g);
	if (ioctl(s, LIVEUPDATE_SESSION_GET_NAME, &g) < 0)
		return ename(errno);
	return (const char *)g.name;
}

/* FNV-1a over the whole file (read with pread: the position is left alone). */
static inline uint64_t digest(int fd)
{
	uint64_t h = 1469598103934665603ULL;
	char buf[65536];
	off_t off = 0;
	for (;;) {
		ssize_t n = pread(fd, buf, sizeof(buf), off);
		if (n <= 0)
			break;
		for (ssize_t i = 0; i < n; i++)
			h = (h ^ (unsigned char)buf[i]) * 1099511628211ULL;
		off += n;
	}
	return h;
}

static inline void fill(int fd, unsigned seed, size_t len, off_t at)
{
	char *b = malloc(len ? len : 1);
	for (size_t i = 0; i < len; i++)
		b[i] = (char)(seed * 131 + i * 7 + (i >> 9));
	if (pwrite(fd, b, len, at) != (ssize_t)len)
		say("fill: %s", ename(errno));
	free(b);
}

/* Seals as names. */
static inline const char *seals_str(int fd)
{
	static char b[128];
	int s = fcntl(fd, F_GET_SEALS);
	if (s < 0)
		return ename(errno);
	b[0] = 0;
	static const struct { int bit; const char *n; } t[] = {
		{ F_SEAL_SEAL, "SEAL" }, { F_SEAL_SHRINK, "SHRINK" }, { F_SEAL_GROW, "GROW" },
		{ F_SEAL_WRITE, "WRITE" }, { F_SEAL_FUTURE_WRITE, "FUTURE_WRITE" },
		{ F_SEAL_EXEC, "EXEC" },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (s & t[i].bit) {
			strcat(b, b[0] ? "|" : "");
			strcat(b, t[i].n);
			s &= ~t[i].bit;
		}
	if (s)
		sprintf(b + strlen(b), "%s%#x", b[0] ? "|" : "", s);
	return b[0] ? b : "none";
}

/* What a program sees of a file: size, position, mode (unless with_mode is 0), flags, seals,
 * data. */
static inline void describe_file(const char *what, int fd, int with_mode)
{
	struct stat st;
	if (fstat(fd, &st) < 0) {
		say("%s: fstat %s", what, ename(errno));
		return;
	}
	off_t pos = lseek(fd, 0, SEEK_CUR);
	int fl = fcntl(fd, F_GETFL);
	int fdfl = fcntl(fd, F_GETFD);
	char mode[16] = "-";
	if (with_mode)
		snprintf(mode, sizeof(mode), "%o", st.st_mode & 07777);
	say("%s: size %lld pos %lld mode %s nlink %lu accmode %s%s cloexec %d seals %s digest %016llx",
	    what, (long long)st.st_size, (long long)pos, mode,
	    (unsigned long)st.st_nlink,
	    (fl & O_ACCMODE) == O_RDWR ? "rdwr" : (fl & O_ACCMODE) == O_RDONLY ? "rdonly" : "wronly",
	    (fl & O_APPEND) ? "|append" : "", !!(fdfl & FD_CLOEXEC), seals_str(fd),
	    (unsigned long long)digest(fd));
}

static inline void describe(const char *what, int fd)
{
	describe_file(what, fd, 1);
}

/* Forks a child that keeps every open fd (the sessions) until the kexec ends it. The child
 * closes /dev/liveupdate (so the next program can open it) and stdio. */
static inline void hold_sessions(int dev)
{
	fflush(stdout);
	pid_t p = fork();
	if (p == 0) {
		close(dev);
		setsid();
		close(0);
		close(1);
		close(2);
		for (;;)
			pause();
	}
	say("holder started: %s", p > 0 ? "ok" : ename(errno));
}
#endif
