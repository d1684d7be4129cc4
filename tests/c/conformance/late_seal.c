/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Conformance: seals added to a preserved (frozen) memfd. The kernel records a memfd's seals
 * when it is preserved and re-applies them on retrieve; seals added afterwards are the inode's
 * while the old kernel runs (reported by F_GET_SEALS, enforced, F_SEAL_WRITE refused with
 * EBUSY for the pinned folios, kept when the file thaws) but do not cross the kexec.
 */
#include "conf.h"

#define PG 4096

int main(void)
{
	if (stage() == 1) {
		int dev = dev_open();
		int s = create_session(dev, "k-late");
		int h = memfd_create("late-seal", MFD_ALLOW_SEALING);
		fill(h, 9, PG, 0);
		say("preserve: %s", R(preserve_fd(s, h, 1)));
		say("add F_SEAL_GROW after preserve: %s", R(fcntl(h, F_ADD_SEALS, F_SEAL_GROW)));
		say("seals while preserved: %s", seals_str(h));
		say("add F_SEAL_WRITE: %s", R(fcntl(h, F_ADD_SEALS, F_SEAL_WRITE)));
		say("pwrite within before F_SEAL_FUTURE_WRITE: %s", R(pwrite(h, "a", 1, 0)));
		char *early = mmap(NULL, PG, PROT_READ, MAP_SHARED, h, 0);
		say("add F_SEAL_FUTURE_WRITE: %s", R(fcntl(h, F_ADD_SEALS, F_SEAL_FUTURE_WRITE)));
		say("pwrite within after F_SEAL_FUTURE_WRITE: %s", R(pwrite(h, "b", 1, 0)));
		void *w = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, h, 0);
		say("shared writable mmap: %s", w == MAP_FAILED ? ename(errno) : "ok");
		void *r = mmap(NULL, PG, PROT_READ, MAP_SHARED, h, 0);
		say("shared read-only mmap: %s", r == MAP_FAILED ? ename(errno) : "ok");
		void *c = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, h, 0);
		say("private writable mmap: %s", c == MAP_FAILED ? ename(errno) : "ok");
		say("mprotect PROT_WRITE of the shared mapping made after the seal: %s",
		    r == MAP_FAILED ? "-" : R(mprotect(r, PG, PROT_READ | PROT_WRITE)));
		say("mprotect PROT_WRITE of the shared mapping made before the seal: %s",
		    early == MAP_FAILED ? "-" : R(mprotect(early, PG, PROT_READ | PROT_WRITE)));
		say("add F_SEAL_EXEC (the file is 0777: implies the write seal): %s",
		    R(fcntl(h, F_ADD_SEALS, F_SEAL_EXEC)));
		say("add F_SEAL_SEAL: %s", R(fcntl(h, F_ADD_SEALS, F_SEAL_SEAL)));
		say("add F_SEAL_SHRINK after F_SEAL_SEAL: %s", R(fcntl(h, F_ADD_SEALS, F_SEAL_SHRINK)));
		say("seals now: %s", seals_str(h));

		/* F_SEAL_EXEC on a file without exec bits: the mode cannot gain them. */
		int x = memfd_create("exec", MFD_ALLOW_SEALING);
		fill(x, 5, PG, 0);
		say("exec: fchmod 0600 before preserve: %s", R(fchmod(x, 0600)));
		say("exec: preserve: %s", R(preserve_fd(s, x, 2)));
		say("exec: add F_SEAL_EXEC: %s", R(fcntl(x, F_ADD_SEALS, F_SEAL_EXEC)));
		say("exec: fchmod 0700: %s", R(fchmod(x, 0700)));
		say("exec: fchmod 0640: %s", R(fchmod(x, 0640)));
		say("exec: seals: %s", seals_str(x));

		/* A seal added while frozen stays when the file thaws (its session closed). */
		int t = create_session(dev, "k-thaw");
		int u = memfd_create("thaw", MFD_ALLOW_SEALING);
		fill(u, 3, 2 * PG, 0);
		say("preserve thaw: %s", R(preserve_fd(t, u, 1)));
		say("thaw: add F_SEAL_GROW: %s", R(fcntl(u, F_ADD_SEALS, F_SEAL_GROW)));
		close(t);
		say("thaw: seals after the session closed: %s", seals_str(u));
		say("thaw: ftruncate grow: %s", R(ftruncate(u, 3 * PG)));
		say("thaw: ftruncate shrink: %s", R(ftruncate(u, PG)));
		close(dev);
		hold_sessions(-1);
	} else {
		int dev = dev_open();
		int s = retrieve_session(dev, "k-late");
		int fd = retrieve_fd(s, 1);
		say("retrieved seals: %s", seals_str(fd));
		say("ftruncate grow: %s", R(ftruncate(fd, 2 * PG)));
		say("pwrite: %s", R(pwrite(fd, "c", 1, 0)));
		say("add F_SEAL_WRITE: %s", R(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE)));
		describe("retrieved", fd);
		int x = retrieve_fd(s, 2);
		describe("exec", x);
		say("exec: fchmod 0700: %s", R(fchmod(x, 0700)));
	}
	return 0;
}
