// SPDX-License-Identifier: GPL-2.0-only OR MIT
/*
 * The preload's seccomp supervision: the filter installed at a process's first open of
 * /dev/liveupdate and the listener handed to the daemon (see the comment below and
 * luo-sim/src/supervise).
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "preload.h"

/* The freeze of a preserved memfd (the kernel's frozen shmem mapping, mm/shmem.c, set by
 * mm/memfd_luo.c while the file is preserved): size changes, every fallocate and any write that
 * would pass the end fail with EPERM, F_SEAL_WRITE is EBUSY (the folios are pinned), and the
 * other seals added meanwhile are the inode's but not carried over the kexec (mm/memfd_luo.c
 * records the seals at preserve time). The program's memfd here is the host file the daemon
 * preserved, which the host kernel does not freeze, and whose seals, once added, would cross.
 *
 * So the checks are the daemon's: at the first open of /dev/liveupdate this process installs a
 * seccomp filter that turns into user notifications the calls that can change a memfd or its
 * seals (the write family, copy_file_range, splice, sendfile, ftruncate, fallocate, fchmod,
 * fcntl(F_ADD_SEALS / F_GET_SEALS), shared writable mmap, on fds above 2; truncate and opens
 * with O_TRUNC, by path), and hands the filter's listener to the daemon (OP_SUPERVISE). The
 * daemon answers each call: "continue" (the host kernel runs it) for every file that is not
 * frozen, or the frozen inode's answer, keeping seals added to a frozen file as its own state
 * (luo-sim/src/supervise.rs). Raw syscalls and statically linked children are covered alike
 * (the filter is inherited across fork and execve, and sets no_new_privs); io_uring is not
 * (seccomp never sees its requests). The filter answers a probe itself, so a process (or an
 * execve'd image) under it
 * does not stack a second one. */
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#ifndef SECCOMP_FILTER_FLAG_NEW_LISTENER
#define SECCOMP_FILTER_FLAG_NEW_LISTENER (1UL << 3)
#endif
#ifndef SECCOMP_FILTER_FLAG_TSYNC_ESRCH
#define SECCOMP_FILTER_FLAG_TSYNC_ESRCH (1UL << 4)
#endif
#ifndef SECCOMP_RET_USER_NOTIF
#define SECCOMP_RET_USER_NOTIF 0x7fc00000U
#endif

/* The filter matches this ABI's system call numbers only (those the daemon decodes). */
#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#else
#error "luo-sim preload: no seccomp audit arch for this target"
#endif

#define OP_SUPERVISE 5u
/* fcntl(PROBE_FD, PROBE_CMD) fails with ENOTUNIQ under our filter, EBADF otherwise. */
#define PROBE_FD 0x7ffffff0
#define PROBE_CMD 0x4c554f53 /* "LUOS" */

static int supervised(void)
{
	int saved = errno;
	int r = syscall(SYS_fcntl, PROBE_FD, PROBE_CMD, 0) < 0 && errno == ENOTUNIQ;
	errno = saved;
	return r;
}

#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i))
#define ARG_HI(i) (ARG_LO(i) + 4)
#define LD(off) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (off))
#define JEQ(k, t, f) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (k), (t), (f))
#define JGE(k, t, f) BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, (k), (t), (f))
#define JSET(k, t, f) BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, (k), (t), (f))
#define RET(k) BPF_STMT(BPF_RET | BPF_K, (k))
#define MAX_FILTER 160

/* One forwarded call: system call `nr`, forwarded when argument `fd` (if >= 0) is an fd above
 * 2 and every `mask[i]` has a bit set in argument `arg[i]` (if arg[i] >= 0). */
struct rule {
	int nr, fd;
	int arg[2];
	uint32_t mask[2];
};

/* Emits one rule: with the system call number in A, the rule's block either returns (its
 * call) or falls through to the next block with A unchanged. Jumps are patched once the
 * block's two exits are placed. */
static int emit(struct sock_filter *f, int n, const struct rule *r)
{
	int head = n, allow[4], na = 0, high[1], nh = 0;
	f[n++] = (struct sock_filter)JEQ(r->nr, 0, 0); /* jf: past the block */
	for (int i = 0; i < 2; i++) {
		if (r->arg[i] < 0)
			continue;
		f[n++] = (struct sock_filter)LD(ARG_LO(r->arg[i]));
		allow[na++] = n;
		f[n++] = (struct sock_filter)JSET(r->mask[i], 0, 0); /* jf: allow */
	}
	if (r->fd >= 0) {
		f[n++] = (struct sock_filter)LD(ARG_HI(r->fd));
		allow[na++] = n;
		f[n++] = (struct sock_filter)JEQ(0, 0, 0); /* jf: allow */
		f[n++] = (struct sock_filter)LD(ARG_LO(r->fd));
		high[nh++] = n;
		f[n++] = (struct sock_filter)JGE(0x80000000U, 0, 0); /* jt: allow (negative) */
		allow[na++] = n;
		f[n++] = (struct sock_filter)JGE(3, 0, 0); /* jf: allow */
	}
	f[n++] = (struct sock_filter)RET(SECCOMP_RET_USER_NOTIF);
	int ret_allow = n;
	f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
	for (int i = 0; i < na; i++)
		f[allow[i]].jf = ret_allow - allow[i] - 1;
	for (int i = 0; i < nh; i++)
		f[high[i]].jt = ret_allow - high[i] - 1;
	f[head].jf = n - head - 1;
	return n;
}

/* Installs the filter and hands its listener to the daemon over `dev`. */
void supervise(int dev)
{
	if (supervised())
		return;
	/* What can change a frozen memfd or its seals: the write family and the calls that write
	 * a file from another one (by their output fd), size changes by fd and by path (a memfd's
	 * only paths are /proc/PID/fd/N and /dev/fd/N), opens with O_TRUNC, seals, a shared
	 * writable mapping (refused after a late F_SEAL_FUTURE_WRITE), exec bits (F_SEAL_EXEC). */
	static const struct rule rules[] = {
		{ SYS_write, 0, { -1, -1 }, { 0, 0 } },
		{ SYS_pwrite64, 0, { -1, -1 }, { 0, 0 } },
		{ SYS_writev, 0, { -1, -1 }, { 0, 0 } },
		{ SYS_pwritev, 0, { -1, -1 }, { 0, 0 } },
		{ SYS_pwritev2, 0, { -1, -1 }, { 0, 0 } },
		{ SYS_copy_file_range, 2, { -1, -1 }, { 0, 0 } },
		{ SYS_splice, 2, { -1, -1 }, { 0, 0 } },
		{ SYS_sendfile, 0, { -1, -1 }, { 0, 0 } },
		{ SYS_ftruncate, 0, { -1, -1 }, { 0, 0 } },
		{ SYS_fallocate, 0, { -1, -1 }, { 0, 0 } },
		{ SYS_truncate, -1, { -1, -1 }, { 0, 0 } },
#ifdef SYS_open
		{ SYS_open, -1, { 1, -1 }, { O_TRUNC, 0 } },
#endif
		{ SYS_openat, -1, { 2, -1 }, { O_TRUNC, 0 } },
		{ SYS_mmap, 4, { 2, 3 }, { PROT_WRITE, MAP_SHARED } },
		{ SYS_fchmod, 0, { -1, -1 }, { 0, 0 } },
	};
	struct sock_filter f[MAX_FILTER];
	int n = 0;
	f[n++] = (struct sock_filter)LD(offsetof(struct seccomp_data, arch));
	f[n++] = (struct sock_filter)JEQ(NATIVE_ARCH, 1, 0);
	f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW); /* another ABI */
	f[n++] = (struct sock_filter)LD(offsetof(struct seccomp_data, nr));
	/* fcntl: the probe, F_ADD_SEALS and F_GET_SEALS on fds above 2. */
	f[n++] = (struct sock_filter)JEQ(SYS_fcntl, 0, 12);
	f[n++] = (struct sock_filter)LD(ARG_LO(1));
	f[n++] = (struct sock_filter)JEQ(PROBE_CMD, 9, 0);   /* errno */
	f[n++] = (struct sock_filter)JEQ(F_ADD_SEALS, 1, 0); /* fd check */
	f[n++] = (struct sock_filter)JEQ(F_GET_SEALS, 0, 5); /* allow */
	f[n++] = (struct sock_filter)LD(ARG_HI(0));
	f[n++] = (struct sock_filter)JEQ(0, 0, 3);           /* allow */
	f[n++] = (struct sock_filter)LD(ARG_LO(0));
	f[n++] = (struct sock_filter)JGE(0x80000000U, 1, 0); /* allow */
	f[n++] = (struct sock_filter)JGE(3, 1, 0);           /* notif, else allow */
	f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
	f[n++] = (struct sock_filter)RET(SECCOMP_RET_USER_NOTIF);
	f[n++] = (struct sock_filter)RET(SECCOMP_RET_ERRNO | ENOTUNIQ);
	for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++)
		n = emit(f, n, &rules[i]);
	/* openat2 (its flags are behind a pointer): every call. */
	f[n++] = (struct sock_filter)JEQ(SYS_openat2, 0, 1);
	f[n++] = (struct sock_filter)RET(SECCOMP_RET_USER_NOTIF);
	f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
	struct sock_fprog prog = { .len = (unsigned short)n, .filter = f };
	int saved = errno;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		goto fail;
	/* Every thread of the process, if their filters allow; else this thread (and what it
	 * starts) only. */
	long l = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
			 SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_TSYNC |
				 SECCOMP_FILTER_FLAG_TSYNC_ESRCH,
			 &prog);
	if (l < 0)
		l = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
	if (l < 0)
		goto fail;
	/* From here the filtered calls wait for the daemon, which gets the listener now. */
	uint32_t op = OP_SUPERVISE;
	int32_t ret = -EIO;
	int got = -1;
	if (send_pkt(dev, &op, sizeof(op), (int)l) == 0)
		recv_pkt(dev, &ret, sizeof(ret), &got);
	if (got >= 0)
		syscall(SYS_close, got);
	syscall(SYS_close, (int)l);
	if (ret != 0)
		fprintf(stderr, "luo-sim preload: the daemon did not take the freeze supervision "
				"(%d)\n", ret);
	errno = saved;
	return;
fail:
	fprintf(stderr, "luo-sim preload: no seccomp user notification (%s): the freeze of "
			"preserved memfds is not enforced in this process\n", strerror(errno));
	errno = saved;
}
