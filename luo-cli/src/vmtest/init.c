/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * /init of the initramfs `luo vmtest` builds (linked with gcc -static; PID 1 of the guest).
 *
 * The stage this boot plays comes from `luo_vmtest_stage=N` on /proc/cmdline (1 on a cold
 * boot). /vmtest/plan lists what to run, one program per line:
 *     STAGE <TAB> PATH [<TAB> ARG]...
 * plus one line `stages <TAB> N` and, for a stage that boots another image than the first,
 * `kernel <TAB> STAGE <TAB> PATH`. At the start of each stage the running kernel is reported:
 *     @@luo-vmtest kernel STAGE RELEASE VERSION     (uname -r, uname -v)
 * Each program of this stage runs in turn with its stdout and
 * stderr sent to files (not pipes: a program may leave a child behind that holds its session fds
 * across the kexec, as upstream's selftests do, and such a child must not keep a pipe open); when
 * the program itself has exited, the files are copied to the results port (/dev/ttyS1, a serial
 * port of its own so kernel messages on the console never interleave) between marker lines:
 *     @@luo-vmtest run STAGE IDX
 *     o <line>          (stdout)
 *     e <line>          (stderr)
 *     @@luo-vmtest status STAGE IDX exit CODE | signal SIG | spawn ERRNO
 * Then, below the last stage, the next boot is loaded with kexec_file_load (its image, an
 * initramfs packed here from the running root, the command line with the stage bumped) and
 * entered with reboot(LINUX_REBOOT_CMD_KEXEC); children still alive hold their sessions over it.
 * After the last stage: `@@luo-vmtest done` and a restart, which ends QEMU (-no-reboot).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define MARK "@@luo-vmtest"
#define MAX_ARGS 64
#define CMDLINE_MAX 2048

static int results = -1;

static void out(const char *fmt, ...)
{
	char buf[8192];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	for (int off = 0; off < n;) {
		ssize_t w = write(results >= 0 ? results : 1, buf + off, n - off);
		if (w <= 0) {
			if (w < 0 && errno == EINTR)
				continue;
			return;
		}
		off += w;
	}
}

static void halt_machine(void)
{
	sync();
	/* No ACPI here: a restart is how the guest ends; QEMU runs with -no-reboot and exits. */
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

static void fail(const char *what)
{
	out(MARK " error %s: %s\n", what, strerror(errno));
	halt_machine();
}

static char *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 4096, n = 0;
	char *b = malloc(cap + 1);
	for (;;) {
		if (n == cap) {
			cap *= 2;
			b = realloc(b, cap + 1);
		}
		ssize_t r = read(fd, b + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += r;
	}
	close(fd);
	b[n] = 0;
	if (len)
		*len = n;
	return b;
}

/* Copies a captured output file to the results port, each line prefixed with `tag`. */
static void emit(const char *path, char tag)
{
	size_t len;
	char *b = read_file(path, &len);
	if (!b)
		return;
	char *p = b, *end = b + len;
	while (p < end) {
		char *nl = memchr(p, '\n', end - p);
		size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
		out("%c %.*s\n", tag, (int)l, p);
		p += l + (nl ? 1 : 0);
	}
	free(b);
	unlink(path);
}

static int current_stage(const char *cmdline)
{
	const char *p = strstr(cmdline, "luo_vmtest_stage=");
	return p ? atoi(p + strlen("luo_vmtest_stage=")) : 1;
}

static void run(int stage, int idx, char **argv)
{
	char opath[64], epath[64];
	snprintf(opath, sizeof(opath), "/tmp/out.%d", idx);
	snprintf(epath, sizeof(epath), "/tmp/err.%d", idx);
	out(MARK " run %d %d\n", stage, idx);
	pid_t pid = fork();
	if (pid < 0)
		fail("fork");
	if (pid == 0) {
		int o = open(opath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int e = open(epath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int in = open("/dev/null", O_RDONLY);
		if (o < 0 || e < 0 || in < 0 || dup2(in, 0) < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
			_exit(127);
		char env_stage[32];
		snprintf(env_stage, sizeof(env_stage), "LUO_VMTEST_STAGE=%d", stage);
		char *envp[] = { "PATH=/vmtest", "HOME=/", env_stage, NULL };
		execve(argv[0], argv, envp);
		dprintf(2, "execve %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			fail("waitpid");
	emit(opath, 'o');
	emit(epath, 'e');
	if (WIFEXITED(st))
		out(MARK " status %d %d exit %d\n", stage, idx, WEXITSTATUS(st));
	else
		out(MARK " status %d %d signal %d\n", stage, idx, WTERMSIG(st));
}

/* cpio "newc" writer for the next boot's initramfs: the running root minus /proc, /sys, /dev
 * and /tmp contents (their directories are kept so the next /init can mount on them). */
struct cpio {
	int fd;
	unsigned long ino;
	unsigned long long off;
};

static void cpio_put(struct cpio *c, const void *b, size_t n)
{
	const char *p = b;
	while (n) {
		ssize_t w = write(c->fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			fail("write initramfs");
		p += w;
		n -= w;
		c->off += w;
	}
}

static void cpio_pad(struct cpio *c)
{
	static const char zero[4];
	if (c->off % 4)
		cpio_put(c, zero, 4 - c->off % 4);
}

static void cpio_entry(struct cpio *c, const char *name, unsigned mode, const char *data,
		       size_t len)
{
	char hdr[111];
	size_t nlen = strlen(name) + 1;
	snprintf(hdr, sizeof(hdr), "070701%08lX%08X%08X%08X%08X%08X%08zX%08X%08X%08X%08X%08zX%08X",
		 ++c->ino, mode, 0, 0, 1, 0, len, 0, 0, 0, 0, nlen, 0);
	cpio_put(c, hdr, 110);
	cpio_put(c, name, nlen);
	cpio_pad(c);
	if (len)
		cpio_put(c, data, len);
	cpio_pad(c);
}

static void cpio_tree(struct cpio *c, const char *dir)
{
	DIR *d = opendir(*dir ? dir : "/");
	if (!d)
		fail("opendir");
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char path[512];
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		struct stat st;
		if (lstat(path, &st) != 0)
			continue;
		const char *name = path + 1; /* archive names carry no leading slash */
		if (S_ISDIR(st.st_mode)) {
			cpio_entry(c, name, st.st_mode, NULL, 0);
			if (strcmp(path, "/proc") && strcmp(path, "/sys") && strcmp(path, "/dev") &&
			    strcmp(path, "/tmp"))
				cpio_tree(c, path);
		} else if (S_ISREG(st.st_mode)) {
			size_t len;
			char *b = read_file(path, &len);
			if (!b)
				fail("read for initramfs");
			cpio_entry(c, name, st.st_mode, b, len);
			free(b);
		}
	}
	closedir(d);
}

static void kexec_next(const char *cmdline, int stage, const char *image)
{
	struct cpio c = { .fd = open("/tmp/next.cpio", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) };
	if (c.fd < 0)
		fail("create /tmp/next.cpio");
	cpio_tree(&c, "");
	cpio_entry(&c, "TRAILER!!!", 0, NULL, 0);

	/* The same command line with luo_vmtest_stage replaced. */
	char next[CMDLINE_MAX];
	size_t n = 0;
	const char *p = cmdline;
	while (*p && n + 1 < sizeof(next)) {
		while (*p == ' ' || *p == '\n')
			p++;
		const char *w = p;
		while (*p && *p != ' ' && *p != '\n')
			p++;
		if (p == w)
			break;
		if (!strncmp(w, "luo_vmtest_stage=", strlen("luo_vmtest_stage=")))
			continue;
		n += snprintf(next + n, sizeof(next) - n, "%.*s ", (int)(p - w), w);
	}
	if (n < sizeof(next))
		snprintf(next + n, sizeof(next) - n, "luo_vmtest_stage=%d", stage + 1);

	int k = open(image, O_RDONLY | O_CLOEXEC);
	if (k < 0)
		fail("open the next stage's kernel image");
	/* kexec_file_load refuses a file open for writing (ETXTBSY): reopen the archive. */
	close(c.fd);
	int initrd = open("/tmp/next.cpio", O_RDONLY | O_CLOEXEC);
	if (initrd < 0)
		fail("open /tmp/next.cpio");
	if (syscall(SYS_kexec_file_load, k, initrd, strlen(next) + 1, next, 0UL) != 0)
		fail("kexec_file_load");
	close(k);
	close(initrd);
	out(MARK " kexec %d\n", stage + 1);
	sync();
	reboot(RB_KEXEC);
	fail("reboot(LINUX_REBOOT_CMD_KEXEC)");
}

int main(void)
{
	mkdir("/proc", 0755);
	mkdir("/sys", 0755);
	mkdir("/dev", 0755);
	mkdir("/tmp", 01777);
	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
	results = open("/dev/ttyS1", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (results >= 0) {
		/* Raw output: no \n -> \r\n mapping on the results port. */
		struct termios t;
		if (tcgetattr(results, &t) == 0) {
			t.c_oflag &= ~OPOST;
			tcsetattr(results, TCSANOW, &t);
		}
	}
	char *cmdline = read_file("/proc/cmdline", NULL);
	if (!cmdline)
		fail("read /proc/cmdline");
	int stage = current_stage(cmdline);
	char *plan = read_file("/vmtest/plan", NULL);
	if (!plan)
		fail("read /vmtest/plan");

	out(MARK " stage %d\n", stage);
	struct utsname u;
	if (uname(&u) == 0)
		out(MARK " kernel %d %s %s\n", stage, u.release, u.version);
	int stages = 1, idx = 0;
	const char *next_image = "/vmtest/kernel";
	for (char *line = strtok(plan, "\n"); line; line = strtok(NULL, "\n")) {
		char *argv[MAX_ARGS + 1];
		int argc = 0;
		for (char *f = line; f && argc < MAX_ARGS;) {
			argv[argc++] = f;
			f = strchr(f, '\t');
			if (f)
				*f++ = 0;
		}
		argv[argc] = NULL;
		if (argc == 2 && !strcmp(argv[0], "stages")) {
			stages = atoi(argv[1]);
			continue;
		}
		if (argc == 3 && !strcmp(argv[0], "kernel")) {
			if (atoi(argv[1]) == stage + 1)
				next_image = argv[2];
			continue;
		}
		if (argc < 2)
			continue;
		int s = atoi(argv[0]);
		idx++;
		if (s == stage)
			run(stage, idx, argv + 1);
	}
	if (stage < stages)
		kexec_next(cmdline, stage, next_image);
	out(MARK " done\n");
	halt_machine();
	return 0;
}
