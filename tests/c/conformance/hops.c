/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * Conformance across two live updates (run with --stages 3): what the second kexec carries.
 * Stage 1 preserves two sessions. Stage 2 retrieves one (left unfinished and held open) and
 * not the other, and preserves in a new session both a new memfd and the retrieved one.
 * Stage 3 sees only what stage 2 preserved: incoming sessions are not carried again.
 */
#include "conf.h"

int main(void)
{
	int dev = dev_open();
	int st = stage();
	if (st == 1) {
		int a = create_session(dev, "h-a"), b = create_session(dev, "h-b");
		int ma = memfd_create("a", 0), mb = memfd_create("b", 0);
		fill(ma, 21, 7000, 0);
		fill(mb, 22, 100, 0);
		say("preserve a: %s", R(preserve_fd(a, ma, 1)));
		say("preserve b: %s", R(preserve_fd(b, mb, 1)));
		close(dev);
		hold_sessions(-1);
	} else if (st == 2) {
		int a = retrieve_session(dev, "h-a");
		say("retrieve h-a: %s", a >= 0 ? "ok" : ename(errno));
		int ma = retrieve_fd(a, 1);
		describe("a", ma);
		int c = create_session(dev, "h-c");
		say("create h-c: %s", c >= 0 ? "ok" : ename(errno));
		say("create h-a as outgoing too: %s", R(create_session(dev, "h-a")));
		say("preserve the retrieved memfd again: %s", R(preserve_fd(c, ma, 1)));
		int mc = memfd_create("c", 0);
		fill(mc, 23, 9000, 0);
		lseek(mc, 77, SEEK_SET);
		say("preserve a new memfd: %s", R(preserve_fd(c, mc, 2)));
		say("finish h-a: %s", R(finish(a)));
		say("preserve the retrieved memfd after FINISH: %s", R(preserve_fd(c, ma, 1)));
		close(dev);
		hold_sessions(-1);
	} else {
		say("retrieve h-b (never retrieved in stage 2): %s", R(retrieve_session(dev, "h-b")));
		int a = retrieve_session(dev, "h-a");
		say("retrieve h-a (the stage-2 outgoing one): %s", a >= 0 ? "ok" : ename(errno));
		if (a >= 0)
			say("h-a has a token 1: %s", R(retrieve_fd(a, 1)));
		int c = retrieve_session(dev, "h-c");
		say("retrieve h-c: %s", c >= 0 ? "ok" : ename(errno));
		describe("c/1 (preserved in stage 1, then again in stage 2)", retrieve_fd(c, 1));
		describe("c/2", retrieve_fd(c, 2));
		say("finish h-c: %s", R(finish(c)));
	}
	return 0;
}
