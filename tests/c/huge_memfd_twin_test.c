// SPDX-License-Identifier: GPL-2.0
/*
 * Drives the C huge-memfd-v1 twin (huge_memfd_twin.c) through a simulated kexec of the Rust
 * LUO core: preserve, unpreserve on session close, get/put of the handler's global state from
 * several threads while files are preserved, freeze, kexec, retrieve, finish of a retrieved
 * session and of a never-retrieved one.
 *
 * Prints the pools at each phase as "pool PHASE order=O total=T free=F held=H" (the Rust test
 * compares them with the Rust handler's) and "huge memfd twin test: ok" last on success.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "huge_memfd_twin.h"
#include "luo_model.h"
#include "luo_model_uapi.h"

#define NTHREADS 4
#define ITERS 200
/* 2 MiB, 4 MiB and 1 MiB pages with 4 KiB base pages. */
#define ORDER_2M 9
#define ORDER_4M 10
#define ORDER_1M 8

/* A HugeTLB memfd of nr pages taken from the pool, preserved in `session` as `token`. */
static int preserve_huge(int session, unsigned int order, u64 nr, u64 token)
{
	int fd, r;

	r = huge_twin_alloc(order, nr);
	if (r)
		return r;
	fd = luo_model_huge_memfd(order, nr);
	if (fd < 0)
		return fd;
	r = preserve(session, fd, token);
	/* The session holds the file now; the fd is not needed. */
	luo_model_close(fd);
	return r;
}

static void print_pools(const char *phase)
{
	static const unsigned int orders[] = { ORDER_2M, ORDER_4M, ORDER_1M };
	struct twin_pool p;
	unsigned int i;

	for (i = 0; i < sizeof(orders) / sizeof(orders[0]); i++) {
		huge_twin_pool(orders[i], &p);
		printf("pool %s order=%u total=%" PRIu64 " free=%" PRIu64 " held=%" PRIu64 "\n",
		       phase, orders[i], (uint64_t)p.total, (uint64_t)p.free,
		       (uint64_t)p.held_incoming);
	}
}

static int pool_is(unsigned int order, u64 total, u64 free, u64 held)
{
	struct twin_pool p;

	return huge_twin_pool(order, &p) == 0 && p.total == total && p.free == free &&
	       p.held_incoming == held;
}

struct worker {
	pthread_t tid;
	int errors;
};

/*
 * Another user of the pools while files are being preserved: takes a huge page and gives it
 * back, rewriting the handed-over pool state under the global state's lock each time.
 */
static void *worker(void *arg)
{
	struct worker *w = arg;
	int i, r;

	if (luo_model_enter()) {
		w->errors++;
		return NULL;
	}
	for (i = 0; i < ITERS; i++) {
		r = huge_twin_alloc(ORDER_4M, 1);
		if (r)
			w->errors++;
		if (huge_twin_sync(NULL))
			w->errors++;
		if (!r)
			huge_twin_free(ORDER_4M, 1);
		if (huge_twin_sync(NULL))
			w->errors++;
	}
	return NULL;
}

static int hugetlb_backing_is(int fd, unsigned int order, u64 nr)
{
	unsigned int o;
	u64 n;

	return luo_model_huge_memfd_backing(fd, &o, &n) == 0 && o == order && n == nr;
}

/* The main scenario: three kernels, the second carrying one retrieved file on to the third. */
static void scenario(void)
{
	struct worker workers[NTHREADS];
	struct twin_pool p;
	int dev, a, b, c, d, x, fd, i, fd_a1;
	u64 syncs = 0;

	CHECK(luo_model_boot() == 0);
	CHECK(huge_twin_register() == 0);
	CHECK(liveupdate_register_file_handler(&huge_twin) == -EEXIST);
	CHECK(huge_twin_configure(ORDER_2M, 8) == 0);
	CHECK(huge_twin_configure(ORDER_4M, NTHREADS) == 0);
	CHECK(huge_twin_configure(ORDER_1M, 2) == 0);
	dev = luo_model_open_dev();
	CHECK(dev >= 0);

	/* One file preserved, then unpreserved on session close: the state lives and dies with it. */
	x = create_session(dev, "x");
	CHECK(x >= 0);
	CHECK(preserve_huge(x, ORDER_2M, 1, 9) == 0);
	CHECK(twin_calls[TWIN_GS_CREATE] == 1);
	CHECK(luo_model_close(x) == 0);
	CHECK(twin_calls[TWIN_UNPRESERVE] == 1);
	CHECK(twin_calls[TWIN_GS_DESTROY] == 1);
	CHECK(luo_model_preserved_pages() == 0);

	/* Sessions a (2 MiB and 1 GiB files), b (never retrieved) and c (closed before kexec). */
	a = create_session(dev, "a");
	b = create_session(dev, "b");
	c = create_session(dev, "c");
	CHECK(a >= 0 && b >= 0 && c >= 0);
	CHECK(huge_twin_alloc(ORDER_2M, 2) == 0);
	fd_a1 = luo_model_huge_memfd(ORDER_2M, 2);
	CHECK(fd_a1 >= 0);
	CHECK(preserve(a, fd_a1, 1) == 0);
	CHECK(twin_calls[TWIN_GS_CREATE] == 2);
	/* Several threads get and put the state while the other files are preserved. */
	for (i = 0; i < NTHREADS; i++) {
		workers[i].errors = 0;
		CHECK(pthread_create(&workers[i].tid, NULL, worker, &workers[i]) == 0);
	}
	CHECK(preserve_huge(a, ORDER_1M, 1, 2) == 0);
	CHECK(preserve_huge(b, ORDER_2M, 3, 3) == 0);
	CHECK(preserve_huge(c, ORDER_2M, 1, 4) == 0);
	CHECK(preserve(a, fd_a1, 5) == -EBUSY);
	CHECK(huge_twin_alloc(ORDER_2M, 2) == -ENOMEM);
	for (i = 0; i < NTHREADS; i++) {
		CHECK(pthread_join(workers[i].tid, NULL) == 0);
		CHECK(workers[i].errors == 0);
	}
	/* No update was lost: the state's lock excluded every other holder. */
	CHECK(huge_twin_sync(&syncs) == 0);
	CHECK(syncs == (u64)NTHREADS * ITERS * 2 + 1);
	CHECK(twin_calls[TWIN_GS_CREATE] == 2);
	CHECK(luo_model_close(c) == 0);
	CHECK(twin_calls[TWIN_UNPRESERVE] == 2);
	CHECK(twin_calls[TWIN_GS_DESTROY] == 1);
	CHECK(pool_is(ORDER_2M, 8, 1, 0));
	CHECK(pool_is(ORDER_4M, NTHREADS, NTHREADS, 0));
	print_pools("old-preserved");

	CHECK(luo_model_kexec() == 0);
	CHECK(twin_calls[TWIN_FREEZE] == 3);
	CHECK(twin_calls[TWIN_UNFREEZE] == 0);

	/* The new kernel: no HugeTLB pool until the handler's state is first used. */
	CHECK(huge_twin_register() == 0);
	print_pools("new-boot");
	CHECK(huge_twin_pool(ORDER_2M, &p) == -ENOENT);
	dev = luo_model_open_dev();
	CHECK(dev >= 0);
	a = retrieve_session(dev, "a");
	CHECK(a >= 0);
	CHECK(retrieve_session(dev, "c") == -ENOENT);
	fd_a1 = retrieve_fd(a, 1);
	CHECK(fd_a1 >= 0 && hugetlb_backing_is(fd_a1, ORDER_2M, 2));
	CHECK(twin_calls[TWIN_GS_RESTORE] == 1);
	/*
	 * Only preserved pages crossed: A1's 2 (now the file's) and B1's 3 (held for it); the
	 * rest of the pool would be this kernel's nr_hugepages.
	 */
	CHECK(pool_is(ORDER_2M, 5, 0, 3));
	print_pools("new-retrieved-1");
	fd = retrieve_fd(a, 2);
	CHECK(fd >= 0 && hugetlb_backing_is(fd, ORDER_1M, 1));
	CHECK(pool_is(ORDER_1M, 1, 0, 0));
	print_pools("new-retrieved-2");
	CHECK(retrieve_fd(a, 4) == -ENOENT);
	CHECK(finish(a) == 0);
	CHECK(luo_model_close(a) == 0);
	CHECK(twin_calls[TWIN_GS_DESTROY] == 0);
	/* Session b is never retrieved: closing it finishes B1, whose pages return to the pool. */
	b = retrieve_session(dev, "b");
	CHECK(b >= 0);
	CHECK(luo_model_close(b) == 0);
	CHECK(twin_calls[TWIN_FINISH] == 3);
	CHECK(twin_calls[TWIN_GS_RESTORE] == 1);
	CHECK(twin_calls[TWIN_GS_DESTROY] == 1);
	CHECK(pool_is(ORDER_2M, 5, 3, 0));
	print_pools("new-finished");
	CHECK(luo_model_preserved_pages() == 0);

	/* A second live update: the retrieved 2 MiB file goes on; the state is created anew. */
	d = create_session(dev, "d");
	CHECK(d >= 0);
	CHECK(preserve(d, fd_a1, 1) == 0);
	CHECK(twin_calls[TWIN_GS_CREATE] == 1);
	CHECK(luo_model_kexec() == 0);
	CHECK(huge_twin_register() == 0);
	dev = luo_model_open_dev();
	d = retrieve_session(dev, "d");
	CHECK(d >= 0);
	fd = retrieve_fd(d, 1);
	CHECK(fd >= 0 && hugetlb_backing_is(fd, ORDER_2M, 2));
	/* Only what the second kernel preserved crossed: A1's 2 pages, now the file's. */
	CHECK(pool_is(ORDER_2M, 2, 0, 0));
	CHECK(pool_is(ORDER_1M, 0, 0, 0));
	print_pools("third-retrieved");
	CHECK(finish(d) == 0);
	CHECK(twin_calls[TWIN_GS_RESTORE] == 1 && twin_calls[TWIN_GS_DESTROY] == 1);
	CHECK(luo_model_preserved_pages() == 0);
	luo_model_shutdown();
}

/* A hugetlb_ser member to corrupt, and the value written there. */
struct corruption {
	const char *what;
	size_t offset;
	u64 value;
	size_t len;
};

#define HSTATE0(member) (offsetof(struct hugetlb_ser, hstates) + \
			 offsetof(struct hugetlb_hstate_ser, member))

static const struct corruption corruptions[] = {
	{ "nr_hstates past the array", offsetof(struct hugetlb_ser, nr_hstates), 5, 1 },
	{ "nr_hstates huge", offsetof(struct hugetlb_ser, nr_hstates), 255, 1 },
	{ "order 0", HSTATE0(order), 0, 1 },
	{ "order past 64-bit sizes", HSTATE0(order), 64, 1 },
	/* hstates[1] (order 8) takes hstates[0]'s order. */
	{ "two pools of one size", HSTATE0(order) + sizeof(struct hugetlb_hstate_ser), ORDER_2M, 1 },
};

/*
 * The handed-over pool state is corrupted before the new kernel uses it: the restore refuses
 * it with -EINVAL, retrieve fails with that error, the never-retrieved files are still
 * finished, and nothing stays preserved.
 */
static void corrupt_sweep(void)
{
	unsigned int i;

	for (i = 0; i < sizeof(corruptions) / sizeof(corruptions[0]); i++) {
		const struct corruption *k = &corruptions[i];
		int dev, a, before = failures;
		struct twin_pool p;
		u64 phys = 0;

		CHECK(luo_model_boot() == 0);
		CHECK(huge_twin_register() == 0);
		CHECK(huge_twin_configure(ORDER_2M, 8) == 0);
		CHECK(huge_twin_configure(ORDER_1M, 2) == 0);
		dev = luo_model_open_dev();
		a = create_session(dev, "a");
		CHECK(preserve_huge(a, ORDER_2M, 2, 1) == 0);
		CHECK(preserve_huge(a, ORDER_1M, 1, 2) == 0);
		CHECK(huge_twin_data(&phys) == 0 && phys != 0);
		CHECK(luo_model_kexec() == 0);
		CHECK(huge_twin_register() == 0);
		CHECK(luo_kho_write(phys + k->offset, &k->value, k->len) == 0);
		dev = luo_model_open_dev();
		a = retrieve_session(dev, "a");
		CHECK(a >= 0);
		CHECK(retrieve_fd(a, 1) == -EINVAL);
		/* Asked again, the state is refused again without reading freed memory. */
		CHECK(retrieve_fd(a, 2) == -EINVAL);
		CHECK(twin_calls[TWIN_GS_RESTORE] == 2);
		CHECK(huge_twin_pool(ORDER_2M, &p) == -ENOENT);
		CHECK(luo_model_close(a) == 0);
		CHECK(twin_calls[TWIN_FINISH] == 2);
		CHECK(twin_calls[TWIN_GS_DESTROY] == 0);
		CHECK(luo_model_preserved_pages() == 0);
		luo_model_shutdown();
		printf("corrupt %s: %s\n", k->what, failures == before ? "refused" : "FAILED");
	}
}

int main(void)
{
	scenario();
	corrupt_sweep();
	if (failures) {
		fprintf(stderr, "huge memfd twin test: %d failures\n", failures);
		return 1;
	}
	printf("huge memfd twin test: ok\n");
	return 0;
}
