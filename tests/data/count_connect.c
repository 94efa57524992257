/* Test cgroup/connect4 program: counts connect() calls of the cgroup's processes. */
#include <uapi/linux/bpf.h>

BPF_TABLE_PINNED("array", __u32, __u64, connects, 1, PYLIUM_PIN "/connects_v1");

int count_connect4(struct bpf_sock_addr *ctx) {
    __u32 zero = 0;
    __u64 *n = connects.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 1; /* allow */
}
