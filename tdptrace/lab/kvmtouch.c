// SPDX-License-Identifier: GPL-2.0-only
/*
 * kvmtouch: the lab's guest workload. Runs inside the L1 guest (a stock Debian kernel with kvm_amd) and
 * drives the TDP MMU through the phases that make KVM zap:
 *   1. populate:  one vCPU in 64-bit mode writes one qword into every 4 KiB data page
 *   2. madvise:   MADV_DONTNEED on the upper half of guest memory (mmu notifier -> leaf zaps)
 *   3. retouch:   the vCPU writes the upper half again
 *   3b. contend:  (CONTEND_MIB > 0) MADV_DONTNEED of CONTEND_MIB from the first data page while a second
 *                 thread, on the other CPU, maps and zaps the last page of guest memory again and again: a second task
 *                 zapping, so that the first zap's mmu_lock has a waiter (lock contention, not need_resched)
 *   4. delete:    the memslot is deleted (zap_all_fast -> zap invalidated roots / whole tree)
 *   5. close:     vCPU and VM file descriptors are closed (VM teardown)
 *
 * Usage: kvmtouch MIB THP [ITERS [HOG [BASE_MIB [CONTEND_MIB]]]]
 *   MIB   guest memory in MiB, a multiple of 4, at least 8 and at most 4096
 *   THP   1: back guest memory with 2 MiB pages (MADV_HUGEPAGE), 0: 4 KiB pages (MADV_NOHUGEPAGE)
 *   ITERS how many times to run the whole sequence (default 1)
 *   HOG   1: fork a busy loop pinned to CPU 0 and pin this process to CPU 0 too, so that need_resched
 *         gets set while KVM holds mmu_lock and the zap loops really yield (default 0)
 *   BASE_MIB  guest-physical address of the memory in MiB, even (default 0). With the memory straddling a
 *         1 GiB boundary the TDP tree has two 1 GiB entries, as any guest over 1 GiB has.
 *   CONTEND_MIB  size of the contended zap of phase 3b, in MiB (default 0: no such phase); at most half of MIB
 *         less 2 MiB, so that it stays in the lower half and away from the helper's page.
 *
 * Guest physical layout, from BASE (identity mapped with 2 MiB guest pages):
 *   +0x0000 code, +0x1000 PML4, +0x2000 PDPT, +0x3000.. one PD per GiB spanned; data pages from BASE + 2 MiB.
 * The first 2 MiB region therefore has OVERHEAD pages touched by the vCPU itself (code + page tables),
 * which the summary line reports so that tests can do the arithmetic exactly.
 *
 * Prints human lines "[kvmtouch] ..." and one machine line "KVMTOUCH key=value ..." per iteration.
 * Built static at lab time: gcc -O2 -static -o kvmtouch kvmtouch.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define HUGE (2UL << 20)
#define GIB (1UL << 30)

#define CR0_PE 0x1UL
#define CR0_PG 0x80000000UL
#define CR4_PAE 0x20UL
#define EFER_LME 0x100UL
#define EFER_LMA 0x400UL
#define PTE_P 0x1UL
#define PTE_W 0x2UL
#define PTE_PS 0x80UL

static void die(const char *what)
{
	fprintf(stderr, "[kvmtouch] error: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void pin_cpu(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		die("sched_setaffinity");
}

static void pin_cpu0(void)
{
	pin_cpu(0);
}

/* Phase 3b's second task: zaps one page (the last of guest memory) until told to stop, from CPU 1. Each
 * madvise of the page, mapped again just before, is an mmu-notifier invalidation that takes mmu_lock for write
 * (whether or not the guest has an SPTE for it). */
struct contender {
	uint8_t *page;
	atomic_int stop;
	atomic_long rounds;
};

static void *contend_loop(void *arg)
{
	struct contender *c = arg;
	double t0;

	pin_cpu(1);
	while (!atomic_load(&c->stop)) {
		/* Map the page in this process again first: an invalidation of a range with nothing mapped never
		 * reaches KVM's mmu notifier. */
		*(volatile uint8_t *)c->page = 1;
		if (madvise(c->page, PAGE, MADV_DONTNEED))
			die("madvise(DONTNEED) of the contender's page");
		atomic_fetch_add(&c->rounds, 1);
		/* Come back about once a millisecond: often enough to find the zap holding mmu_lock many times, rarely
		 * enough that the zap (which hands the lock over at each such wait) still makes progress under an
		 * emulator that runs one vCPU at a time. Spin rather than sleep: a sleeping vCPU may not be run again
		 * by the emulator until the busy one's zap is over. */
		for (t0 = now(); now() - t0 < 0.001 && !atomic_load(&c->stop);)
			;
	}
	return NULL;
}

/* The contended zap: CONTEND_MIB from the first data page, zapped while the contender runs. */
static unsigned long contend(uint8_t *mem, unsigned long size, unsigned long contend_mib, long *rounds)
{
	struct contender c = { .page = mem + size - PAGE };
	cpu_set_t old;
	pthread_t th;
	long before;

	if (sched_getaffinity(0, sizeof(old), &old))
		die("sched_getaffinity");
	pin_cpu0();
	if (pthread_create(&th, NULL, contend_loop, &c))
		die("pthread_create");
	while (atomic_load(&c.rounds) < 3)
		usleep(100);
	before = atomic_load(&c.rounds);
	if (madvise(mem + HUGE, contend_mib << 20, MADV_DONTNEED))
		die("madvise(DONTNEED) of the contended range");
	*rounds = atomic_load(&c.rounds) - before;
	atomic_store(&c.stop, 1);
	pthread_join(th, NULL);
	if (sched_setaffinity(0, sizeof(old), &old))
		die("sched_setaffinity");
	return (contend_mib << 20) / PAGE;
}

/*
 * Guest code, 64-bit: for (p = rdi; p < rsi; p += 4096) *(u64 *)p = p; hlt
 *   48 89 3f        mov  %rdi,(%rdi)
 *   48 81 c7 00 10 00 00  add  $0x1000,%rdi
 *   48 39 f7        cmp  %rsi,%rdi
 *   72 f1           jb   -15 (back to mov)
 *   f4              hlt
 */
static const uint8_t guest_code[] = {
	0x48, 0x89, 0x3f,
	0x48, 0x81, 0xc7, 0x00, 0x10, 0x00, 0x00,
	0x48, 0x39, 0xf7,
	0x72, 0xf1,
	0xf4,
};

struct vm {
	int kvm, vm, vcpu;
	struct kvm_run *run;
	uint8_t *mem;
	unsigned long size, base; /* bytes; base = guest-physical address of mem */
};

/* Give the vCPU the host-supported CPUID: newer KVM refuses EFER.LME unless the guest CPUID has long mode. */
static void set_cpuid(struct vm *v)
{
	int n = 256;
	struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + n * sizeof(struct kvm_cpuid_entry2));

	if (!cpuid)
		die("calloc");
	cpuid->nent = n;
	if (ioctl(v->kvm, KVM_GET_SUPPORTED_CPUID, cpuid))
		die("KVM_GET_SUPPORTED_CPUID");
	if (ioctl(v->vcpu, KVM_SET_CPUID2, cpuid))
		die("KVM_SET_CPUID2");
	free(cpuid);
}

static void setup_long_mode(struct vm *v)
{
	struct kvm_sregs sregs;
	struct kvm_segment seg = {
		.base = 0, .limit = 0xffffffff, .present = 1, .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1,
	};
	uint64_t *pml4 = (uint64_t *)(v->mem + 0x1000);
	uint64_t *pdpt = (uint64_t *)(v->mem + 0x2000);
	unsigned long gib, i, first = v->base / GIB, last = (v->base + v->size - 1) / GIB;

	pml4[0] = (v->base + 0x2000) | PTE_P | PTE_W;
	for (gib = first; gib <= last; gib++) {
		unsigned long pd_off = 0x3000 + (gib - first) * PAGE;
		uint64_t *pd = (uint64_t *)(v->mem + pd_off);

		pdpt[gib] = (v->base + pd_off) | PTE_P | PTE_W;
		for (i = 0; i < 512; i++)
			pd[i] = (gib * GIB + i * HUGE) | PTE_P | PTE_W | PTE_PS;
	}
	memcpy(v->mem, guest_code, sizeof(guest_code));

	set_cpuid(v);
	if (ioctl(v->vcpu, KVM_GET_SREGS, &sregs))
		die("KVM_GET_SREGS");
	sregs.cr3 = v->base + 0x1000;
	sregs.cr4 = CR4_PAE;
	sregs.cr0 = CR0_PE | CR0_PG;
	sregs.efer = EFER_LME | EFER_LMA;
	seg.type = 11; /* code: execute/read, accessed */
	seg.selector = 8;
	sregs.cs = seg;
	seg.type = 3; /* data: read/write, accessed */
	seg.selector = 16;
	seg.l = 0;
	seg.db = 1;
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg;
	if (ioctl(v->vcpu, KVM_SET_SREGS, &sregs))
		die("KVM_SET_SREGS");
}

/* Runs the guest loop over guest-physical [start, end); returns the number of pages written. */
static unsigned long touch(struct vm *v, unsigned long start, unsigned long end)
{
	struct kvm_regs regs;

	memset(&regs, 0, sizeof(regs));
	regs.rip = v->base;
	regs.rflags = 2;
	regs.rdi = start;
	regs.rsi = end;
	if (ioctl(v->vcpu, KVM_SET_REGS, &regs))
		die("KVM_SET_REGS");
	for (;;) {
		if (ioctl(v->vcpu, KVM_RUN, 0) && errno != EINTR)
			die("KVM_RUN");
		if (v->run->exit_reason == KVM_EXIT_HLT)
			break;
		if (v->run->exit_reason == KVM_EXIT_INTR)
			continue;
		fprintf(stderr, "[kvmtouch] error: unexpected exit reason %u\n", v->run->exit_reason);
		exit(1);
	}
	if (ioctl(v->vcpu, KVM_GET_REGS, &regs))
		die("KVM_GET_REGS");
	if (regs.rdi < end) {
		fprintf(stderr, "[kvmtouch] error: guest stopped at 0x%llx before 0x%lx\n", regs.rdi, end);
		exit(1);
	}
	return (end - start) / PAGE;
}

static void set_slot(struct vm *v, unsigned long size)
{
	struct kvm_userspace_memory_region r = {
		.slot = 0, .flags = 0, .guest_phys_addr = v->base, .memory_size = size,
		.userspace_addr = (uintptr_t)v->mem,
	};

	if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r))
		die(size ? "KVM_SET_USER_MEMORY_REGION" : "KVM_SET_USER_MEMORY_REGION (delete)");
}

static void iteration(int iter, unsigned long mib, int thp, unsigned long base_mib, unsigned long contend_mib)
{
	struct vm v = { .size = mib << 20, .base = base_mib << 20 };
	unsigned long half = v.size / 2, n1, n3, n_contend = 0, raw_size = v.size + HUGE;
	long rounds = 0;
	unsigned long gibs = (v.base + v.size - 1) / GIB - v.base / GIB + 1;
	unsigned long overhead = 3 + gibs; /* code, PML4, PDPT, one PD per GiB spanned */
	double t0, t, total0 = now();
	uint8_t *raw;
	int mmap_size;

	raw = mmap(NULL, raw_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (raw == MAP_FAILED)
		die("mmap guest memory");
	/* 2 MiB aligned so that THP (and hence 2 MiB SPTEs) is possible at all. */
	v.mem = (uint8_t *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
	if (madvise(v.mem, v.size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE))
		die("madvise(HUGEPAGE/NOHUGEPAGE)");

	v.kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (v.kvm < 0)
		die("open /dev/kvm");
	v.vm = ioctl(v.kvm, KVM_CREATE_VM, 0);
	if (v.vm < 0)
		die("KVM_CREATE_VM");
	set_slot(&v, v.size);
	v.vcpu = ioctl(v.vm, KVM_CREATE_VCPU, 0);
	if (v.vcpu < 0)
		die("KVM_CREATE_VCPU");
	mmap_size = ioctl(v.kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size <= 0)
		die("KVM_GET_VCPU_MMAP_SIZE");
	v.run = mmap(NULL, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, v.vcpu, 0);
	if (v.run == MAP_FAILED)
		die("mmap kvm_run");
	setup_long_mode(&v);
	printf("[kvmtouch] iter %d: VM %lu MiB, %lu data pages, thp=%d\n", iter, mib, (v.size - HUGE) / PAGE, thp);
	fflush(stdout);

	t0 = now();
	n1 = touch(&v, v.base + HUGE, v.base + v.size);
	printf("[kvmtouch] phase1-touch-all: touched %lu pages in %.3f s\n", n1, now() - t0);
	fflush(stdout);

	t0 = now();
	if (madvise(v.mem + half, v.size - half, MADV_DONTNEED))
		die("madvise(DONTNEED)");
	printf("[kvmtouch] phase2-madvise-dontneed upper half: %.3f s\n", now() - t0);
	fflush(stdout);

	t0 = now();
	n3 = touch(&v, v.base + half, v.base + v.size);
	printf("[kvmtouch] phase3-retouch-upper-half: touched %lu pages in %.3f s\n", n3, now() - t0);
	fflush(stdout);

	if (contend_mib) {
		t0 = now();
		n_contend = contend(v.mem, v.size, contend_mib, &rounds);
		printf("[kvmtouch] phase3b-contend: zapped %lu pages in %.3f s while the contender zapped %ld times\n",
		       n_contend, now() - t0, rounds);
		fflush(stdout);
	}

	t0 = now();
	set_slot(&v, 0);
	printf("[kvmtouch] phase4-delete-memslot: %.3f s\n", now() - t0);
	fflush(stdout);

	t0 = now();
	munmap(v.run, mmap_size);
	close(v.vcpu);
	close(v.vm);
	close(v.kvm);
	t = now();
	printf("[kvmtouch] phase5-close-vm: %.3f s\n", t - t0);
	printf("[kvmtouch] total %.3f s\n", t - total0);
	printf("KVMTOUCH iter=%d mib=%lu thp=%d pages_phase1=%lu pages_phase3=%lu overhead_pages=%lu "
	       "madvised_regions=%lu base_mib=%lu gibs=%lu contend_pages=%lu contend_rounds=%ld\n", iter, mib, thp, n1, n3,
	       overhead, (v.size - half) / HUGE, base_mib, gibs, n_contend, rounds);
	fflush(stdout);
	munmap(raw, raw_size);
}

int main(int argc, char **argv)
{
	unsigned long mib, base_mib = 0, contend_mib = 0;
	int thp, iters = 1, hog = 0, i;
	pid_t child = -1;

	if (argc < 3) {
		fprintf(stderr, "usage: kvmtouch MIB THP [ITERS [HOG [BASE_MIB [CONTEND_MIB]]]]\n");
		return 2;
	}
	mib = strtoul(argv[1], NULL, 0);
	thp = atoi(argv[2]);
	if (argc > 3)
		iters = atoi(argv[3]);
	if (argc > 4)
		hog = atoi(argv[4]);
	if (argc > 5)
		base_mib = strtoul(argv[5], NULL, 0);
	if (argc > 6)
		contend_mib = strtoul(argv[6], NULL, 0);
	if (mib < 8 || mib > 4096 || mib % 4) {
		fprintf(stderr, "[kvmtouch] error: MIB must be a multiple of 4 in [8, 4096], got %lu\n", mib);
		return 2;
	}
	if (base_mib % 2 || base_mib + mib > 512 * 1024) {
		fprintf(stderr, "[kvmtouch] error: BASE_MIB must be even and the memory below 512 GiB\n");
		return 2;
	}
	if (contend_mib && contend_mib + 2 > mib / 2) {
		fprintf(stderr, "[kvmtouch] error: CONTEND_MIB must be at most MIB/2 - 2\n");
		return 2;
	}
	if (hog) {
		child = fork();
		if (child < 0)
			die("fork");
		if (child == 0) {
			pin_cpu0();
			for (;;)
				__asm__ volatile("" ::: "memory");
		}
		pin_cpu0();
		printf("[kvmtouch] hog pid %d and kvmtouch pinned to cpu 0\n", (int)child);
	}
	for (i = 0; i < iters; i++)
		iteration(i, mib, thp, base_mib, contend_mib);
	if (child > 0) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
	return 0;
}
