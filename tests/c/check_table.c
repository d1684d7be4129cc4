// SPDX-License-Identifier: GPL-2.0
/*
 * Reads, from C, the ops tables the Rust macros built, through the generated
 * header <linux/liveupdate.h>: which callbacks are present (non-NULL), the
 * compatible string, and a call through the table.
 */
#include <stddef.h>
#include <string.h>
#include <linux/liveupdate.h>
#include <linux/luo_ext.h>

/* Bit i set when the i-th callback of struct liveupdate_file_ops is non-NULL,
 * in declaration order: can_preserve, preserve, unpreserve, freeze, unfreeze,
 * retrieve, can_finish, finish, get_id. */
unsigned int luo_c_file_ops_mask(const struct liveupdate_file_handler *h)
{
	const struct liveupdate_file_ops *o = h->ops;
	unsigned int m = 0;

	m |= (o->can_preserve != NULL) << 0;
	m |= (o->preserve != NULL) << 1;
	m |= (o->unpreserve != NULL) << 2;
	m |= (o->freeze != NULL) << 3;
	m |= (o->unfreeze != NULL) << 4;
	m |= (o->retrieve != NULL) << 5;
	m |= (o->can_finish != NULL) << 6;
	m |= (o->finish != NULL) << 7;
	m |= (o->get_id != NULL) << 8;
	return m;
}

/* 0 when h->compatible is exactly `expect` followed by NUL padding. */
int luo_c_check_compatible(const struct liveupdate_file_handler *h,
			   const char *expect)
{
	size_t n = strlen(expect);
	size_t i;

	if (n >= sizeof(h->compatible))
		return -1;
	if (memcmp(h->compatible, expect, n) != 0)
		return -2;
	for (i = n; i < sizeof(h->compatible); i++)
		if (h->compatible[i] != 0)
			return -3;
	return 0;
}

/* Calls can_preserve through the table, as the core does at PRESERVE_FD. */
int luo_c_call_can_preserve(struct liveupdate_file_handler *h, struct file *f)
{
	return h->ops->can_preserve(h, f) ? 1 : 0;
}

/* Calls preserve then unpreserve through the table; returns preserve's result
 * and stores the handle it produced. */
int luo_c_preserve_unpreserve(struct liveupdate_file_handler *h,
			      struct file *f, u64 *handle)
{
	struct liveupdate_file_op_args args;
	int ret;

	memset(&args, 0, sizeof(args));
	args.handler = h;
	args.file = f;
	ret = h->ops->preserve(&args);
	if (ret)
		return ret;
	*handle = args.serialized_data;
	h->ops->unpreserve(&args);
	return 0;
}

/* Bit i set when the i-th op of struct liveupdate_flb_ops is non-NULL. */
unsigned int luo_c_flb_ops_mask(const struct liveupdate_flb *flb)
{
	const struct liveupdate_flb_ops *o = flb->ops;

	return (o->preserve != NULL) << 0 | (o->unpreserve != NULL) << 1 |
	       (o->retrieve != NULL) << 2 | (o->finish != NULL) << 3;
}

/* Bit i set when the i-th op of struct liveupdate_subsystem_ops is non-NULL:
 * prepare, freeze, cancel, boot, finish. */
unsigned int luo_c_subsystem_ops_mask(const struct liveupdate_subsystem *s)
{
	const struct liveupdate_subsystem_ops *o = s->ops;

	return (o->prepare != NULL) << 0 | (o->freeze != NULL) << 1 |
	       (o->cancel != NULL) << 2 | (o->boot != NULL) << 3 |
	       (o->finish != NULL) << 4;
}

/* 0 when the subsystem's name is `expect`. */
int luo_c_subsystem_name(const struct liveupdate_subsystem *s,
			 const char *expect)
{
	return strcmp((const char *)s->name, expect) == 0 ? 0 : -1;
}

/* Bit i set when the i-th op of struct liveupdate_fh_global_state_ops is
 * non-NULL: create, restore, destroy. */
unsigned int luo_c_state_ops_mask(const struct liveupdate_fh_global_state_ops *o)
{
	return (o->global_state_create != NULL) << 0 |
	       (o->global_state_restore != NULL) << 1 |
	       (o->global_state_destroy != NULL) << 2;
}
