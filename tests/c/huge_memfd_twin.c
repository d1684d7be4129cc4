// SPDX-License-Identifier: GPL-2.0
/*
 * The "huge-memfd-v1" file handler in C, against the generated <linux/liveupdate.h> and
 * <linux/kho/abi/hugetlb.h>: a twin of the Rust handler in handlers/src/hugetlb.rs, with the
 * same file format (struct hugemfd_ser), whose HugeTLB pools cross the kexec as the
 * handler's global state (LUO v4's liveupdate_fh_global_state_* API) instead of an FLB or
 * a subsystem.
 *
 * - create (first preserve of the handler): KHO-preserve a struct hugetlb_ser and write
 *   every pool's order and preserved pages into it; its physical address is the data handle.
 * - preserve / unpreserve / freeze: update nr_preserved and rewrite the snapshot, under the
 *   state's lock (liveupdate_fh_global_state_get/put).
 * - restore (new kernel, first get): read the struct hugetlb_ser back and count the
 *   preserved pages into the pools, held for their files (only they cross; the rest of a
 *   pool is the new kernel's configuration).
 * - retrieve hands a file its held pages; finish of a never-retrieved file frees them.
 * - destroy (after the last unpreserve or finish): free the KHO memory.
 *
 * The model's huge pages are counts per size, as in the Rust handler: the folio array of
 * struct hugemfd_ser stays empty.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "huge_memfd_twin.h"
#include "luo_model.h"

/* Bytes of one huge page of `order` (as the Rust handler: 4 KiB << order). */
#define TWIN_HUGE_BYTES(order) ((u64)PAGE_SIZE << (order))
/* Largest order whose huge page size fits a u64 with 4 KiB pages. */
#define TWIN_MAX_ORDER 51

int twin_calls[TWIN_NR_CALLS];

/* The running kernel's hstates, in configuration order (hugetlb_lock). */
static struct {
	pthread_mutex_t lock;
	unsigned int nr;
	struct twin_pool pool[HUGETLB_SER_MAX_HSTATES];
} hstates = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* The handler's global state: the handover record of the pools. */
struct twin_gs {
	u64 phys;				/* KHO-preserved struct hugetlb_ser */
	bool incoming;				/* restored from the previous kernel */
	u64 nr_preserved[HUGETLB_SER_MAX_HSTATES]; /* by hstates.pool index (outgoing) */
	u64 syncs;				/* huge_twin_sync() calls, see there */
};

/* Index of the pool of `order`, or -1. Called with hstates.lock held. */
static int pool_index(unsigned int order)
{
	unsigned int i;

	for (i = 0; i < hstates.nr; i++)
		if (hstates.pool[i].order == order)
			return (int)i;
	return -1;
}

/* Index of the pool of `order`, added empty if missing; -1 when full. Lock held. */
static int pool_index_add(unsigned int order)
{
	int i = pool_index(order);

	if (i >= 0 || hstates.nr == HUGETLB_SER_MAX_HSTATES)
		return i;
	memset(&hstates.pool[hstates.nr], 0, sizeof(hstates.pool[0]));
	hstates.pool[hstates.nr].order = order;
	return (int)hstates.nr++;
}

int huge_twin_configure(unsigned int order, u64 nr)
{
	int i, r = 0;

	pthread_mutex_lock(&hstates.lock);
	i = pool_index_add(order);
	if (i < 0) {
		r = -ENOSPC;
	} else {
		hstates.pool[i].total += nr;
		hstates.pool[i].free += nr;
	}
	pthread_mutex_unlock(&hstates.lock);
	return r;
}

int huge_twin_alloc(unsigned int order, u64 nr)
{
	int i, r = -ENOMEM;

	pthread_mutex_lock(&hstates.lock);
	i = pool_index(order);
	if (i >= 0 && hstates.pool[i].free >= nr) {
		hstates.pool[i].free -= nr;
		r = 0;
	}
	pthread_mutex_unlock(&hstates.lock);
	return r;
}

void huge_twin_free(unsigned int order, u64 nr)
{
	int i;

	pthread_mutex_lock(&hstates.lock);
	i = pool_index(order);
	if (i >= 0)
		hstates.pool[i].free += nr;
	pthread_mutex_unlock(&hstates.lock);
}

int huge_twin_pool(unsigned int order, struct twin_pool *out)
{
	int i;

	pthread_mutex_lock(&hstates.lock);
	i = pool_index(order);
	if (i >= 0)
		*out = hstates.pool[i];
	else
		memset(out, 0, sizeof(*out));
	pthread_mutex_unlock(&hstates.lock);
	return i >= 0 ? 0 : -ENOENT;
}

/* Writes the pools, with the state's preserved counts, into the handed-over bytes. */
static int write_snapshot(const struct twin_gs *gs)
{
	struct hugetlb_ser ser;
	unsigned int i;

	memset(&ser, 0, sizeof(ser));
	pthread_mutex_lock(&hstates.lock);
	for (i = 0; i < hstates.nr; i++) {
		ser.hstates[i].order = (u8)hstates.pool[i].order;
		ser.hstates[i].nr_pages = gs->nr_preserved[i];
	}
	ser.nr_hstates = (u8)hstates.nr;
	pthread_mutex_unlock(&hstates.lock);
	return luo_kho_write(gs->phys, &ser, sizeof(ser));
}

/* ---- global state callbacks (run by the core under the state's lock) ------------------ */

static int twin_gs_create(struct liveupdate_file_handler *h, void **obj, u64 *data)
{
	struct twin_gs *gs;
	void *again;
	int r;

	twin_calls[TWIN_GS_CREATE]++;
	/* The state is being created under its lock: a get from here must not deadlock. */
	if (liveupdate_fh_global_state_get(h, &again) != -EDEADLK)
		return -EPROTO;
	gs = calloc(1, sizeof(*gs));
	if (!gs)
		return -ENOMEM;
	r = luo_kho_alloc_preserve(sizeof(struct hugetlb_ser), &gs->phys);
	if (r) {
		free(gs);
		return r;
	}
	r = write_snapshot(gs);
	if (r) {
		luo_kho_unpreserve_free(gs->phys);
		free(gs);
		return r;
	}
	*obj = gs;
	*data = gs->phys;
	return 0;
}

/* Checks a handed-over struct hugetlb_ser before anything is rebuilt from it. */
static int check_ser(const struct hugetlb_ser *ser)
{
	u64 i, j;

	if (ser->nr_hstates > HUGETLB_SER_MAX_HSTATES)
		return -EINVAL;
	for (i = 0; i < ser->nr_hstates; i++) {
		const struct hugetlb_hstate_ser *hs = &ser->hstates[i];

		/* Order 0 is no huge page; past TWIN_MAX_ORDER a page size overflows. */
		if (hs->order == 0 || hs->order > TWIN_MAX_ORDER)
			return -EINVAL;
		for (j = 0; j < i; j++)
			if (ser->hstates[j].order == hs->order)
				return -EINVAL;
	}
	return 0;
}

/*
 * The handle of handed-over state this kernel refused. The core asks again at the next get,
 * but the memory is freed by then: refuse without reading it.
 */
static u64 twin_rejected;

static int twin_gs_restore(struct liveupdate_file_handler *h, u64 data, void **obj)
{
	struct hugetlb_ser ser;
	struct twin_gs *gs;
	u64 i;
	int r, k;

	(void)h;
	twin_calls[TWIN_GS_RESTORE]++;
	if (data == twin_rejected)
		return -EINVAL;
	r = luo_kho_read(data, &ser, sizeof(ser));
	if (r)
		return r;
	r = check_ser(&ser);
	if (r) {
		/* Nothing can be rebuilt from it, and destroy only runs for live state. */
		twin_rejected = data;
		luo_kho_restore_free(data);
		return r;
	}
	gs = calloc(1, sizeof(*gs));
	if (!gs)
		return -ENOMEM;
	pthread_mutex_lock(&hstates.lock);
	/*
	 * Check everything before changing anything: sizes this kernel lacks need a free slot,
	 * and pools it already has (boot-time nr_hugepages) must not overflow.
	 */
	for (i = 0, k = 0; i < ser.nr_hstates; i++) {
		int at = pool_index(ser.hstates[i].order);

		if (at < 0)
			k++;
		else if (hstates.pool[at].total > UINT64_MAX - ser.hstates[i].nr_pages)
			r = -EOVERFLOW;
	}
	if (!r && hstates.nr + (unsigned int)k > HUGETLB_SER_MAX_HSTATES)
		r = -ENOSPC;
	for (i = 0; !r && i < ser.nr_hstates; i++) {
		const struct hugetlb_hstate_ser *hs = &ser.hstates[i];
		k = pool_index_add(hs->order);
		hstates.pool[k].total += hs->nr_pages;
		hstates.pool[k].held_incoming += hs->nr_pages;
	}
	pthread_mutex_unlock(&hstates.lock);
	if (r) {
		free(gs);
		return r;
	}
	gs->phys = data;
	gs->incoming = true;
	*obj = gs;
	return 0;
}

static void twin_gs_destroy(struct liveupdate_file_handler *h, void *obj)
{
	struct twin_gs *gs = obj;

	(void)h;
	twin_calls[TWIN_GS_DESTROY]++;
	if (gs->incoming)
		luo_kho_restore_free(gs->phys);
	else
		luo_kho_unpreserve_free(gs->phys);
	free(gs);
}

static const struct liveupdate_fh_global_state_ops twin_gs_ops = {
	.global_state_create = twin_gs_create,
	.global_state_restore = twin_gs_restore,
	.global_state_destroy = twin_gs_destroy,
};

int huge_twin_data(u64 *phys)
{
	struct twin_gs *gs;
	void *obj;
	int r;

	r = liveupdate_fh_global_state_get(&huge_twin, &obj);
	if (r)
		return r;
	gs = obj;
	*phys = gs->phys;
	liveupdate_fh_global_state_put(&huge_twin);
	return 0;
}

int huge_twin_sync(u64 *syncs)
{
	struct twin_gs *gs;
	void *obj;
	u64 seen;
	int r;

	r = liveupdate_fh_global_state_get(&huge_twin, &obj);
	if (r)
		return r;
	gs = obj;
	r = gs->incoming ? -EINVAL : write_snapshot(gs);
	/* Read, let another thread run, write back: only the state's lock keeps this exact. */
	seen = gs->syncs;
	sched_yield();
	gs->syncs = seen + 1;
	if (syncs)
		*syncs = gs->syncs;
	liveupdate_fh_global_state_put(&huge_twin);
	return r;
}

/* ---- file callbacks ---------------------------------------------------------------------- */

/*
 * Adds `delta` preserved pages of `order` (outgoing) and rewrites the snapshot. Under the
 * state's lock: several sessions preserve concurrently with other users of the pools.
 */
static int account_preserved(unsigned int order, u64 nr, bool add)
{
	struct twin_gs *gs;
	void *obj;
	int r, i;

	r = liveupdate_fh_global_state_get(&huge_twin, &obj);
	if (r)
		return r;
	gs = obj;
	pthread_mutex_lock(&hstates.lock);
	i = pool_index(order);
	pthread_mutex_unlock(&hstates.lock);
	if (i < 0 || gs->incoming || (!add && gs->nr_preserved[i] < nr)) {
		r = -EINVAL;
	} else {
		if (add)
			gs->nr_preserved[i] += nr;
		else
			gs->nr_preserved[i] -= nr;
		r = write_snapshot(gs);
	}
	/* Holding the state, a second get would deadlock: the core refuses it. */
	if (!r && liveupdate_fh_global_state_get(&huge_twin, &obj) != -EDEADLK)
		r = -EPROTO;
	liveupdate_fh_global_state_put(&huge_twin);
	return r;
}

static bool twin_can_preserve(struct liveupdate_file_handler *h, struct file *f)
{
	unsigned int order;
	u64 nr;

	(void)h;
	return luo_huge_memfd_backing(f, &order, &nr) == 0;
}

static int twin_preserve(struct liveupdate_file_op_args *a)
{
	struct hugemfd_ser ser;
	unsigned int order;
	u64 nr, phys;
	int r;

	twin_calls[TWIN_PRESERVE]++;
	r = luo_huge_memfd_backing(a->file, &order, &nr);
	if (r)
		return r;
	if (order > TWIN_MAX_ORDER || nr > UINT64_MAX / TWIN_HUGE_BYTES(order))
		return -EINVAL;
	memset(&ser, 0, sizeof(ser));
	ser.size = nr * TWIN_HUGE_BYTES(order);
	ser.pos = 0;
	ser.nr_folios = nr;
	ser.order = (u8)order;
	r = luo_kho_alloc_preserve(sizeof(ser), &phys);
	if (r)
		return r;
	r = luo_kho_write(phys, &ser, sizeof(ser));
	if (!r)
		r = account_preserved(order, nr, true);
	if (r) {
		luo_kho_unpreserve_free(phys);
		return r;
	}
	a->serialized_data = phys;
	return 0;
}

/* Reads and checks a file's struct hugemfd_ser. */
static int read_file_ser(u64 phys, struct hugemfd_ser *ser)
{
	int r = luo_kho_read(phys, ser, sizeof(*ser));

	if (r)
		return r;
	if (ser->order > TWIN_MAX_ORDER || ser->nr_folios > UINT64_MAX / TWIN_HUGE_BYTES(ser->order) ||
	    ser->size != ser->nr_folios * TWIN_HUGE_BYTES(ser->order))
		return -EINVAL;
	return 0;
}

static void twin_unpreserve(struct liveupdate_file_op_args *a)
{
	struct hugemfd_ser ser;

	twin_calls[TWIN_UNPRESERVE]++;
	if (read_file_ser(a->serialized_data, &ser) == 0)
		account_preserved(ser.order, ser.nr_folios, false);
	luo_kho_unpreserve_free(a->serialized_data);
}

static int twin_freeze(struct liveupdate_file_op_args *a)
{
	(void)a;
	twin_calls[TWIN_FREEZE]++;
	/* The counts handed over are those of the frozen kernel. */
	return huge_twin_sync(NULL);
}

static void twin_unfreeze(struct liveupdate_file_op_args *a)
{
	(void)a;
	twin_calls[TWIN_UNFREEZE]++;
}

enum held_move { HELD_TO_FILE, HELD_TO_FREE, FILE_TO_HELD };

/*
 * New kernel: moves nr pages of `order` out of the held ones, to the retrieved file or back
 * to the free pool (or, undoing a failed retrieve, back to held). The first get restores the
 * pools from the handed-over state.
 */
static int move_held(unsigned int order, u64 nr, enum held_move m)
{
	struct twin_pool *p;
	void *obj;
	int r, i;

	r = liveupdate_fh_global_state_get(&huge_twin, &obj);
	if (r)
		return r;
	pthread_mutex_lock(&hstates.lock);
	i = pool_index(order);
	p = i < 0 ? NULL : &hstates.pool[i];
	if (!p || (m != FILE_TO_HELD && p->held_incoming < nr)) {
		r = -EINVAL;
	} else if (m == FILE_TO_HELD) {
		p->held_incoming += nr;
	} else {
		p->held_incoming -= nr;
		if (m == HELD_TO_FREE)
			p->free += nr;
	}
	pthread_mutex_unlock(&hstates.lock);
	liveupdate_fh_global_state_put(&huge_twin);
	return r;
}

static int twin_retrieve(struct liveupdate_file_op_args *a)
{
	struct hugemfd_ser ser;
	struct file *f;
	int r;

	twin_calls[TWIN_RETRIEVE]++;
	r = read_file_ser(a->serialized_data, &ser);
	if (r)
		return r;
	r = move_held(ser.order, ser.nr_folios, HELD_TO_FILE);
	if (r)
		return r;
	f = luo_huge_memfd_alloc(ser.order, ser.nr_folios);
	if (!f) {
		move_held(ser.order, ser.nr_folios, FILE_TO_HELD);
		return -ENOMEM;
	}
	luo_kho_restore_free(a->serialized_data);
	a->file = f;
	return 0;
}

static void twin_finish(struct liveupdate_file_op_args *a)
{
	struct hugemfd_ser ser;

	twin_calls[TWIN_FINISH]++;
	/* A retrieved file owns its pages and freed its data in retrieve. */
	if (a->retrieve_status > 0)
		return;
	/* Never retrieved (or retrieve failed): the pages go back to the free pool. */
	if (read_file_ser(a->serialized_data, &ser) == 0)
		move_held(ser.order, ser.nr_folios, HELD_TO_FREE);
	luo_kho_restore_free(a->serialized_data);
}

static const struct liveupdate_file_ops twin_ops = {
	.can_preserve = twin_can_preserve,
	.preserve = twin_preserve,
	.unpreserve = twin_unpreserve,
	.freeze = twin_freeze,
	.unfreeze = twin_unfreeze,
	.retrieve = twin_retrieve,
	.finish = twin_finish,
};

struct liveupdate_file_handler huge_twin = {
	.ops = &twin_ops,
	.compatible = HUGEMFD_LUO_FH_COMPATIBLE,
};

int huge_twin_register(void)
{
	int r;

	pthread_mutex_lock(&hstates.lock);
	hstates.nr = 0;
	memset(hstates.pool, 0, sizeof(hstates.pool));
	pthread_mutex_unlock(&hstates.lock);
	memset(twin_calls, 0, sizeof(twin_calls));
	twin_rejected = 0;
	r = liveupdate_register_file_handler(&huge_twin);
	if (!r)
		r = liveupdate_fh_global_state_register(&huge_twin, &twin_gs_ops);
	return r;
}
