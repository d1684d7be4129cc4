// SPDX-License-Identifier: GPL-2.0
/*
 * The C variant of the `dispatch` benchmark (context, no target): the handler of
 * bench/src/dispatch.rs written in C against the generated <linux/liveupdate.h>,
 * as an in-tree C handler would be, built with gcc -O2 by build.rs and
 * registered with luo-core like any C handler (Kernel::register_raw_handler).
 * It reaches preserved memory through luo-core's C API for KHO (the luo_kho_*
 * calls of tests/c/luo_model.h, which act on the calling thread's current
 * kernel) and the file's memfd-like state through one accessor of the
 * benchmark (luo_bench_file_state, the model's stand-in for the inode).
 */
#include <stddef.h>
#include <string.h>
#include <linux/liveupdate.h>
#include <linux/kho/abi/memfd.h>

#define BENCH_EBADF 9
#define BENCH_EINVAL 22
#define BENCH_EOPNOTSUPP 95

/* luo-core's C API (luo-core/src/capi.rs). */
extern int luo_kho_alloc_preserve(size_t size, u64 *phys);
extern int luo_kho_write(u64 phys, const void *buf, size_t len);
extern int luo_kho_read(u64 phys, void *buf, size_t len);
extern int luo_kho_unpreserve_free(u64 phys);

/* The benchmark's file accessor and counter (bench/src/dispatch.rs). */
extern int luo_bench_file_state(struct file *f, u64 *pos, u64 *size, u32 *seals);
extern u64 luo_bench_unpreserved_bytes;

static bool c_can_preserve(struct liveupdate_file_handler *h, struct file *f)
{
	(void)h;
	return luo_bench_file_state(f, NULL, NULL, NULL) == 0;
}

static int c_preserve(struct liveupdate_file_op_args *args)
{
	struct memfd_luo_ser ser;
	u64 pos, size, phys;
	u32 seals;
	int err;

	if (!args->file)
		return -BENCH_EBADF;
	if (luo_bench_file_state(args->file, &pos, &size, &seals))
		return -BENCH_EINVAL;
	if (seals & ~(u32)MEMFD_LUO_ALL_SEALS)
		return -BENCH_EOPNOTSUPP;
	memset(&ser, 0, sizeof(ser));
	ser.pos = pos;
	ser.size = size;
	ser.seals = seals;
	err = luo_kho_alloc_preserve(sizeof(ser), &phys);
	if (err)
		return err;
	err = luo_kho_write(phys, &ser, sizeof(ser));
	if (err) {
		luo_kho_unpreserve_free(phys);
		return err;
	}
	args->serialized_data = phys;
	args->private_data = NULL;
	return 0;
}

/*
 * gcc 12 reports a dangling pointer to `ser` (a packed struct whose address
 * went to luo_kho_read) where there is none.
 */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpragmas"
#pragma GCC diagnostic ignored "-Wdangling-pointer"
static void c_unpreserve(struct liveupdate_file_op_args *args)
{
	struct memfd_luo_ser ser;

	if (!args->serialized_data)
		return;
	if (!luo_kho_read(args->serialized_data, &ser, sizeof(ser)))
		__atomic_fetch_add(&luo_bench_unpreserved_bytes, ser.size,
				   __ATOMIC_RELAXED);
	luo_kho_unpreserve_free(args->serialized_data);
}
#pragma GCC diagnostic pop

static int c_retrieve(struct liveupdate_file_op_args *args)
{
	(void)args;
	return -BENCH_EOPNOTSUPP;
}

static void c_finish(struct liveupdate_file_op_args *args)
{
	(void)args;
}

static const struct liveupdate_file_ops luo_bench_c_ops = {
	.can_preserve = c_can_preserve,
	.preserve = c_preserve,
	.unpreserve = c_unpreserve,
	.retrieve = c_retrieve,
	.finish = c_finish,
};

struct liveupdate_file_handler luo_bench_c_handler = {
	.ops = &luo_bench_c_ops,
	.compatible = "bench-dispatch-c-v2",
};
