// SPDX-License-Identifier: GPL-2.0
/*
 * Drives the C test handler through a simulated kexec of the Rust LUO core,
 * using the uAPI structs of the generated <linux/liveupdate.h> as an ioctl
 * caller would. Exit status 0 and a last line "c handler test: ok" on success.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "luo_model.h"
#include "luo_model_uapi.h"
#include "test_handler.h"

static const struct liveupdate_file_ops missing_ops = { 0 };
static struct liveupdate_file_handler broken = {
	.ops = &missing_ops,
	.compatible = "c-broken-v1",
};

int main(void)
{
	int dev, a, b, fd, i;
	u64 v;
	void *obj;

	/* Without a kernel, LUO is disabled. */
	CHECK(!liveupdate_enabled());
	CHECK(liveupdate_register_file_handler(&c_handler) == -EOPNOTSUPP);

	CHECK(luo_model_boot() == 0);
	CHECK(liveupdate_enabled());
	CHECK(luo_model_liveupdate_num() == 0);
	CHECK(c_test_register() == 0);
	/* Registration errnos. */
	CHECK(liveupdate_register_file_handler(&c_handler) == -EEXIST);
	CHECK(liveupdate_register_file_handler(&broken) == -EINVAL);
	CHECK(liveupdate_register_flb(&c_handler, &c_flb) == -EEXIST);
	CHECK(liveupdate_register_flb(&broken, &c_flb) == -EINVAL);
	CHECK(liveupdate_register_subsystem(&c_subsys) == -EEXIST);
	/* Fresh boot: no incoming FLB data. */
	CHECK(liveupdate_flb_get_incoming(&c_flb, &obj) == -ENODATA);

	dev = luo_model_open_dev();
	CHECK(dev >= 0);
	CHECK(luo_model_open_dev() == -EBUSY);
	a = create_session(dev, "c-a");
	b = create_session(dev, "c-b");
	CHECK(a >= 0 && b >= 0);
	CHECK(create_session(dev, "c-a") == -EEXIST);
	for (i = 0; i < 5; i++) {
		fd = luo_model_test_file(100 + i);
		CHECK(preserve(a, fd, i) == 0);
		CHECK(luo_model_close(fd) == 0);
	}
	for (i = 0; i < 3; i++) {
		fd = luo_model_test_file(200 + i);
		CHECK(preserve(b, fd, i) == 0);
	}
	CHECK(preserve(a, fd, 77) == -EBUSY);
	CHECK(preserve(a, 999, 78) == -EBADF);
	CHECK(c_calls[C_PRESERVE] == 8);
	CHECK(c_calls[C_FLB_PRESERVE] == 1);
	CHECK(c_calls[C_GS_CREATE] == 1);

	CHECK(luo_model_kexec() == 0);
	CHECK(luo_model_liveupdate_num() == 1);
	CHECK(c_calls[C_FREEZE] == 8);
	CHECK(c_calls[C_UNPRESERVE] == 0);

	/* The new kernel: handlers register again; the subsystem boots with its data. */
	CHECK(c_test_register() == 0);
	CHECK(c_calls[C_SUB_BOOT] == 1);
	CHECK(c_sub_boot_data == 0x15ab5);
	dev = luo_model_open_dev();
	CHECK(dev >= 0);
	a = retrieve_session(dev, "c-a");
	CHECK(a >= 0);
	CHECK(retrieve_session(dev, "c-a") == -EINVAL);
	CHECK(retrieve_session(dev, "nope") == -ENOENT);
	for (i = 0; i < 5; i++) {
		fd = retrieve_fd(a, i);
		CHECK(fd >= 0);
		CHECK(luo_model_test_file_value(fd, &v) == 0 && v == (u64)(100 + i));
	}
	CHECK(retrieve_fd(a, 9) == -ENOENT);
	CHECK(c_calls[C_FLB_RETRIEVE] == 1);
	CHECK(c_calls[C_GS_RESTORE] == 1);
	CHECK(finish(a) == 0);
	CHECK(luo_model_close(a) == 0);
	CHECK(c_calls[C_SUB_FINISH] == 0);
	/* Never retrieved: closing finishes it, and its files get finish() too. */
	b = retrieve_session(dev, "c-b");
	CHECK(b >= 0);
	CHECK(luo_model_close(b) == 0);
	CHECK(c_calls[C_FINISH] == 8);
	CHECK(c_calls[C_FLB_FINISH] == 1);
	CHECK(c_calls[C_GS_DESTROY] == 1);
	CHECK(c_calls[C_SUB_FINISH] == 1);
	CHECK(luo_model_preserved_pages() == 0);
	luo_model_shutdown();

	if (failures) {
		fprintf(stderr, "c handler test: %d failures\n", failures);
		return 1;
	}
	printf("c handler test: ok\n");
	return 0;
}
