/* syscall_producer.c - fires getppid() at a set rate (1 ms bursts) for bench/transport_bench.py.
 * Usage: syscall_producer RATE SECONDS; waits for one byte on stdin, then runs and prints the count. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	long rate = atol(argv[1]);
	double seconds = atof(argv[2]);
	long per_ms = rate / 1000 > 0 ? rate / 1000 : 1;
	char go;
	if (read(0, &go, 1) != 1)
		return 1;
	long n = 0;
	double t0 = now(), tick = t0, end = t0 + seconds;
	for (;;) {
		double t = now();
		if (t >= end)
			break;
		if (t < tick)
			continue;
		for (long i = 0; i < per_ms; i++)
			syscall(SYS_getppid);
		n += per_ms;
		tick += 0.001;
		if (t - tick > 0.1) /* fell behind: the offered rate is above what this CPU can do */
			tick = t;
	}
	printf("%ld\n", n);
	return 0;
}
