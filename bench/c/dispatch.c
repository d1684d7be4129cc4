// SPDX-License-Identifier: GPL-2.0
/*
 * The C baseline of the `dispatch` benchmark: a memfd-like file handler written
 * in C against the generated <linux/liveupdate.h>, as an in-tree C handler
 * would be. Its preserve does what the Rust handlers of bench/src/dispatch.rs
 * do: read the file's position, size and seals, check the seals, fill a
 * struct memfd_luo_ser and copy it into memory from kho_alloc_preserve
 * (modelled by the two luo_bench_kho_* functions, which use the same ring of
 * preserved memory as the Rust handlers), and hand its address over as
 * serialized_data. Built with gcc -O2 by build.rs.
 */
#include <stddef.h>
#include <string.h>
#include <linux/liveupdate.h>
#include <linux/kho/abi/memfd.h>

#define BENCH_EBADF 9
#define BENCH_ENOMEM 12
#define BENCH_EINVAL 22
#define BENCH_EOPNOTSUPP 95

/* What the core's struct file * points to for the C handler. */
struct luo_bench_c_file {
	u64 pos;
	u64 size;
	u32 seals;
};

/* kho_alloc_preserve() and the copy into the preserved memory (Rust side). */
extern u64 luo_bench_kho_alloc_preserve(size_t size);
extern int luo_bench_kho_write(u64 phys, const void *buf, size_t len);
extern int luo_bench_kho_unpreserve_free(u64 phys);

static bool c_can_preserve(struct liveupdate_file_handler *h, struct file *f)
{
	(void)h;
	return f != NULL;
}

static int c_preserve(struct liveupdate_file_op_args *args)
{
	const struct luo_bench_c_file *f = (const void *)args->file;
	struct memfd_luo_ser ser;
	u64 phys;

	if (!f)
		return -BENCH_EBADF;
	if (f->seals & ~(u32)MEMFD_LUO_ALL_SEALS)
		return -BENCH_EOPNOTSUPP;
	memset(&ser, 0, sizeof(ser));
	ser.pos = f->pos;
	ser.size = f->size;
	ser.seals = f->seals;
	phys = luo_bench_kho_alloc_preserve(sizeof(ser));
	if (!phys)
		return -BENCH_ENOMEM;
	if (luo_bench_kho_write(phys, &ser, sizeof(ser))) {
		luo_bench_kho_unpreserve_free(phys);
		return -BENCH_EINVAL;
	}
	args->serialized_data = phys;
	args->private_data = NULL;
	return 0;
}

static void c_unpreserve(struct liveupdate_file_op_args *args)
{
	luo_bench_kho_unpreserve_free(args->serialized_data);
}

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
	.compatible = "memfd-v2",
};
