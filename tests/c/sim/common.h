/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/* Helpers shared by the luo-sim C test programs (only the standard uAPI header is used). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/liveupdate.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK failed: %s (errno %d %s)\n", \
	__FILE__, __LINE__, #c, errno, strerror(errno)); exit(1); } } while (0)
#define FAILS(call, e) do { errno = 0; int r_ = (call); if (r_ != -1 || errno != (e)) { \
	fprintf(stderr, "%s:%d: %s: want errno %d (%s), got r=%d errno %d (%s)\n", __FILE__, \
	__LINE__, #call, (e), strerror(e), r_, errno, strerror(errno)); exit(1); } } while (0)

static inline void raise_nofile(void)
{
	struct rlimit r;
	if (getrlimit(RLIMIT_NOFILE, &r) == 0) {
		r.rlim_cur = r.rlim_max;
		setrlimit(RLIMIT_NOFILE, &r);
	}
}

static inline int create_session(int dev, const char *name)
{
	struct liveupdate_ioctl_create_session a = { .size = sizeof(a) };
	snprintf((char *)a.name, sizeof(a.name), "%s", name);
	if (ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &a) < 0)
		return -1;
	return a.fd;
}

static inline int retrieve_session(int dev, const char *name)
{
	struct liveupdate_ioctl_retrieve_session a = { .size = sizeof(a) };
	snprintf((char *)a.name, sizeof(a.name), "%s", name);
	if (ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, &a) < 0)
		return -1;
	return a.fd;
}

static inline int preserve_fd(int s, int fd, unsigned long long token)
{
	struct liveupdate_session_preserve_fd a = { .size = sizeof(a), .fd = fd, .token = token };
	return ioctl(s, LIVEUPDATE_SESSION_PRESERVE_FD, &a);
}

static inline int retrieve_fd(int s, unsigned long long token)
{
	struct liveupdate_session_retrieve_fd a = { .size = sizeof(a), .fd = -1, .token = token };
	if (ioctl(s, LIVEUPDATE_SESSION_RETRIEVE_FD, &a) < 0)
		return -1;
	return a.fd;
}

static inline int finish(int s)
{
	struct liveupdate_session_finish a = { .size = sizeof(a) };
	return ioctl(s, LIVEUPDATE_SESSION_FINISH, &a);
}

/* A memfd of len bytes filled with a pattern derived from seed. */
static inline int pattern_memfd(const char *name, unsigned seed, size_t len)
{
	int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	CHECK(fd >= 0);
	char *buf = malloc(len ? len : 1);
	for (size_t i = 0; i < len; i++)
		buf[i] = (char)(seed * 31 + i * 7 + (i >> 8));
	CHECK(ftruncate(fd, len) == 0);
	CHECK(pwrite(fd, buf, len, 0) == (ssize_t)len);
	free(buf);
	return fd;
}

static inline void check_pattern(int fd, unsigned seed, size_t len)
{
	struct stat st;
	CHECK(fstat(fd, &st) == 0);
	if ((size_t)st.st_size != len) {
		fprintf(stderr, "size %lld, want %zu\n", (long long)st.st_size, len);
		exit(1);
	}
	char *buf = malloc(len ? len : 1);
	CHECK(pread(fd, buf, len, 0) == (ssize_t)len);
	for (size_t i = 0; i < len; i++)
		if (buf[i] != (char)(seed * 31 + i * 7 + (i >> 8))) {
			fprintf(stderr, "seed %u: byte %zu differs\n", seed, i);
			exit(1);
		}
	free(buf);
}
