// SPDX-License-Identifier: GPL-2.0
/*
 * A test file handler written in C against the generated <linux/liveupdate.h>.
 *
 * It preserves the model's synthetic test files: the value goes into a
 * KHO-preserved struct c_ser whose physical address is the handed-over data.
 * Its FLB counts dependent files, its global state (LUO v4's API) counts
 * preserves across the kexec, and its subsystem hands over one u64.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "luo_model.h"
#include "test_handler.h"

#define C_SER_MAGIC 0x4c554f43484e444cULL /* "LUOCHNDL" */
#define C_FLB_MAGIC 0x464c424d41474943ULL /* "FLBMAGIC" */

struct c_ser {
	u64 magic;
	u64 value;
	u64 frozen;
};

struct c_flb_obj {
	u64 magic;
	u64 files;
};

struct c_gs_obj {
	u64 phys;
	u64 preserves;
	int restored;
};

int c_calls[C_NR_CALLS];
u64 c_sub_boot_data;

static int read_ser(u64 phys, struct c_ser *s)
{
	int r = luo_kho_read(phys, s, sizeof(*s));

	if (r)
		return r;
	return s->magic == C_SER_MAGIC ? 0 : -EINVAL;
}

static bool c_can_preserve(struct liveupdate_file_handler *h, struct file *f)
{
	u64 v;

	(void)h;
	return luo_test_file_value(f, &v) == 0;
}

static int c_preserve(struct liveupdate_file_op_args *a)
{
	struct c_ser s = { C_SER_MAGIC, 0, 0 };
	struct c_gs_obj *gs;
	struct c_flb_obj *fo;
	void *obj = NULL;
	u64 phys;
	int r;

	c_calls[C_PRESERVE]++;
	if (a->handler != &c_handler)
		return -EINVAL;
	r = luo_test_file_value(a->file, &s.value);
	if (r)
		return r;
	/* The FLB was preserved before this file. */
	r = liveupdate_flb_get_outgoing(&c_flb, &obj);
	if (r || !obj)
		return r ? r : -EINVAL;
	fo = obj;
	if (fo->magic != C_FLB_MAGIC)
		return -EINVAL;
	fo->files++;
	/* The global state exists from the first preserve on; update it under its lock. */
	r = liveupdate_fh_global_state_get(&c_handler, &obj);
	if (r)
		return r;
	gs = obj;
	gs->preserves++;
	r = luo_kho_write(gs->phys, &gs->preserves, sizeof(gs->preserves));
	/* A second get while holding it would deadlock: the core refuses it. */
	if (!r && liveupdate_fh_global_state_get(&c_handler, &obj) != -EDEADLK)
		r = -EPROTO;
	liveupdate_fh_global_state_put(&c_handler);
	if (r)
		return r;
	r = luo_kho_alloc_preserve(sizeof(s), &phys);
	if (r)
		return r;
	r = luo_kho_write(phys, &s, sizeof(s));
	if (r) {
		luo_kho_unpreserve_free(phys);
		return r;
	}
	a->serialized_data = phys;
	return 0;
}

static void c_unpreserve(struct liveupdate_file_op_args *a)
{
	c_calls[C_UNPRESERVE]++;
	luo_kho_unpreserve_free(a->serialized_data);
}

static int set_frozen(u64 phys, u64 frozen)
{
	struct c_ser s;
	int r = read_ser(phys, &s);

	if (r)
		return r;
	s.frozen = frozen;
	return luo_kho_write(phys, &s, sizeof(s));
}

static int c_freeze(struct liveupdate_file_op_args *a)
{
	c_calls[C_FREEZE]++;
	return set_frozen(a->serialized_data, 1);
}

static void c_unfreeze(struct liveupdate_file_op_args *a)
{
	c_calls[C_UNFREEZE]++;
	set_frozen(a->serialized_data, 0);
}

static int c_retrieve(struct liveupdate_file_op_args *a)
{
	struct c_gs_obj *gs;
	struct c_flb_obj *fo;
	struct c_ser s;
	struct file *f;
	void *obj;
	int r;

	c_calls[C_RETRIEVE]++;
	r = read_ser(a->serialized_data, &s);
	if (r)
		return r;
	if (s.frozen != 1)
		return -EINVAL;
	r = liveupdate_flb_get_incoming(&c_flb, &obj);
	if (r)
		return r;
	fo = obj;
	r = fo->magic == C_FLB_MAGIC ? 0 : -EINVAL;
	liveupdate_flb_put_incoming(&c_flb);
	if (r)
		return r;
	r = liveupdate_fh_global_state_get(&c_handler, &obj);
	if (r)
		return r;
	gs = obj;
	r = gs->restored && gs->preserves == 8 ? 0 : -EINVAL;
	liveupdate_fh_global_state_put(&c_handler);
	if (r)
		return r;
	f = luo_test_file_alloc(s.value);
	if (!f)
		return -ENOMEM;
	r = luo_kho_restore_free(a->serialized_data);
	if (r)
		return r;
	a->file = f;
	return 0;
}

static bool c_can_finish(struct liveupdate_file_op_args *a)
{
	(void)a;
	c_calls[C_CAN_FINISH]++;
	return true;
}

static void c_finish(struct liveupdate_file_op_args *a)
{
	c_calls[C_FINISH]++;
	/* Retrieved files were freed by retrieve; the others are discarded here. */
	if (a->retrieve_status == 0)
		luo_kho_restore_free(a->serialized_data);
}

static const struct liveupdate_file_ops c_ops = {
	.can_preserve = c_can_preserve,
	.preserve = c_preserve,
	.unpreserve = c_unpreserve,
	.freeze = c_freeze,
	.unfreeze = c_unfreeze,
	.retrieve = c_retrieve,
	.can_finish = c_can_finish,
	.finish = c_finish,
};

struct liveupdate_file_handler c_handler = {
	.ops = &c_ops,
	.compatible = "c-test-v1",
};

static int c_flb_preserve(struct liveupdate_flb_op_args *a)
{
	struct c_flb_obj *o;
	u64 magic = C_FLB_MAGIC;
	int r;

	c_calls[C_FLB_PRESERVE]++;
	o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	o->magic = C_FLB_MAGIC;
	r = luo_kho_alloc_preserve(sizeof(magic), &a->data);
	if (!r)
		r = luo_kho_write(a->data, &magic, sizeof(magic));
	if (r) {
		free(o);
		return r;
	}
	a->obj = o;
	return 0;
}

static void c_flb_unpreserve(struct liveupdate_flb_op_args *a)
{
	c_calls[C_FLB_UNPRESERVE]++;
	luo_kho_unpreserve_free(a->data);
	free(a->obj);
}

static int c_flb_retrieve(struct liveupdate_flb_op_args *a)
{
	struct c_flb_obj *o;
	u64 magic = 0;
	int r;

	c_calls[C_FLB_RETRIEVE]++;
	r = luo_kho_read(a->data, &magic, sizeof(magic));
	if (r)
		return r;
	if (magic != C_FLB_MAGIC)
		return -EINVAL;
	o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	o->magic = magic;
	a->obj = o;
	return 0;
}

static void c_flb_finish(struct liveupdate_flb_op_args *a)
{
	c_calls[C_FLB_FINISH]++;
	luo_kho_restore_free(a->data);
	free(a->obj);
}

static const struct liveupdate_flb_ops c_flb_ops = {
	.preserve = c_flb_preserve,
	.unpreserve = c_flb_unpreserve,
	.retrieve = c_flb_retrieve,
	.finish = c_flb_finish,
};

struct liveupdate_flb c_flb = {
	.ops = &c_flb_ops,
	.compatible = "c-test-flb-v1",
};

static int c_gs_create(struct liveupdate_file_handler *h, void **obj, u64 *data)
{
	struct c_gs_obj *o;
	int r;

	(void)h;
	c_calls[C_GS_CREATE]++;
	o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	r = luo_kho_alloc_preserve(sizeof(o->preserves), &o->phys);
	if (r) {
		free(o);
		return r;
	}
	*obj = o;
	*data = o->phys;
	return 0;
}

static int c_gs_restore(struct liveupdate_file_handler *h, u64 data, void **obj)
{
	struct c_gs_obj *o;
	int r;

	(void)h;
	c_calls[C_GS_RESTORE]++;
	o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	o->phys = data;
	o->restored = 1;
	r = luo_kho_read(data, &o->preserves, sizeof(o->preserves));
	if (r) {
		free(o);
		return r;
	}
	*obj = o;
	return 0;
}

static void c_gs_destroy(struct liveupdate_file_handler *h, void *obj)
{
	struct c_gs_obj *o = obj;

	(void)h;
	c_calls[C_GS_DESTROY]++;
	if (o->restored)
		luo_kho_restore_free(o->phys);
	else
		luo_kho_unpreserve_free(o->phys);
	free(o);
}

static const struct liveupdate_fh_global_state_ops c_gs_ops = {
	.global_state_create = c_gs_create,
	.global_state_restore = c_gs_restore,
	.global_state_destroy = c_gs_destroy,
};

static int c_sub_prepare(struct liveupdate_subsystem *h, u64 *data)
{
	(void)h;
	*data = 0x5ab5;
	return 0;
}

static int c_sub_freeze(struct liveupdate_subsystem *h, u64 *data)
{
	(void)h;
	*data |= 0x10000;
	return 0;
}

static void c_sub_boot(struct liveupdate_subsystem *h, u64 data)
{
	(void)h;
	c_calls[C_SUB_BOOT]++;
	c_sub_boot_data = data;
}

static void c_sub_finish(struct liveupdate_subsystem *h, u64 data)
{
	(void)h;
	(void)data;
	c_calls[C_SUB_FINISH]++;
}

static const struct liveupdate_subsystem_ops c_sub_ops = {
	.prepare = c_sub_prepare,
	.freeze = c_sub_freeze,
	.boot = c_sub_boot,
	.finish = c_sub_finish,
};

struct liveupdate_subsystem c_subsys = {
	.ops = &c_sub_ops,
	.name = "c-subsystem",
};

int c_test_register(void)
{
	int r = liveupdate_register_file_handler(&c_handler);

	if (!r)
		r = liveupdate_register_flb(&c_handler, &c_flb);
	if (!r)
		r = liveupdate_fh_global_state_register(&c_handler, &c_gs_ops);
	if (!r)
		r = liveupdate_register_subsystem(&c_subsys);
	return r;
}
