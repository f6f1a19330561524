/* The least any program can do to attach a tap to a bridge, the yardstick
 * of `make bench`: two RTM_GETLINK by name in one send (the tap and the
 * bridge), then one RTM_NEWLINK that sets the tap's master, MTU (the
 * bridge's) and IFF_UP, with an ack. No checks beyond the kernel's, and no
 * C library: its start-up (glibc's probes the CPU, which costs a VM dearly)
 * is not the job's. Seven system calls, execve and exit included. With
 * -d, the least a VM stop does: one RTM_GETLINK, then one RTM_NEWLINK
 * taking the tap off its bridge and setting it down, with an ack.
 *   attach-floor TAP BRIDGE
 *   attach-floor -d TAP
 * Built by benches/run.sh: gcc -O2 -static -nostdlib -fno-builtin. */
#include <linux/if.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <asm/unistd.h>
#include <stddef.h>

#ifdef WITH_LIBC
/* The same program on the C library (make bench's second yardstick). */
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#define raw_socket socket
#define raw_send send
#define raw_recv recv
static void fail(const char *message) {
    size_t length = 0;
    while (message[length])
        length++;
    (void)!write(2, message, length);
}
static size_t length_of(const char *text) {
    size_t length = 0;
    while (text[length])
        length++;
    return length;
}
#else

static long syscall6(long number, long a, long b, long c, long d, long e, long f) {
    long result;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(result)
                     : "a"(number), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return result;
}

static int raw_socket(int domain, int type, int protocol) {
    return (int)syscall6(__NR_socket, domain, type, protocol, 0, 0, 0);
}
static ssize_t raw_send(int fd, const void *buffer, size_t length, int flags) {
    return syscall6(__NR_sendto, fd, (long)buffer, (long)length, flags, 0, 0);
}
static ssize_t raw_recv(int fd, void *buffer, size_t length, int flags) {
    return syscall6(__NR_recvfrom, fd, (long)buffer, (long)length, flags, 0, 0);
}
static void fail(const char *message) {
    size_t length = 0;
    while (message[length])
        length++;
    syscall6(__NR_write, 2, (long)message, (long)length, 0, 0, 0);
}
void *memset(void *to, int value, size_t length) {
    unsigned char *p = to;
    while (length--)
        *p++ = (unsigned char)value;
    return to;
}
void *memcpy(void *to, const void *from, size_t length) {
    unsigned char *p = to;
    const unsigned char *q = from;
    while (length--)
        *p++ = *q++;
    return to;
}
static size_t length_of(const char *text) {
    size_t length = 0;
    while (text[length])
        length++;
    return length;
}
#endif

struct getlink {
    struct nlmsghdr header;
    struct ifinfomsg info;
    char attributes[RTA_SPACE(IFNAMSIZ)];
};

static size_t getlink(struct getlink *request, unsigned seq, const char *name) {
    size_t length = length_of(name) + 1;
    struct rtattr *attribute = (struct rtattr *)request->attributes;
    memset(request, 0, sizeof *request);
    attribute->rta_type = IFLA_IFNAME;
    attribute->rta_len = RTA_LENGTH(length);
    memcpy(RTA_DATA(attribute), name, length);
    request->header.nlmsg_len = NLMSG_LENGTH(sizeof request->info) + RTA_SPACE(length);
    request->header.nlmsg_type = RTM_GETLINK;
    request->header.nlmsg_flags = NLM_F_REQUEST;
    request->header.nlmsg_seq = seq;
    request->info.ifi_family = AF_UNSPEC;
    return NLMSG_ALIGN(request->header.nlmsg_len);
}

/* The index and MTU in one RTM_NEWLINK answer. */
static int link_of(struct nlmsghdr *message, int *index, unsigned *mtu) {
    if (message->nlmsg_type != RTM_NEWLINK)
        return -1;
    struct ifinfomsg *info = NLMSG_DATA(message);
    int left = IFLA_PAYLOAD(message);
    *index = info->ifi_index;
    for (struct rtattr *a = IFLA_RTA(info); RTA_OK(a, left); a = RTA_NEXT(a, left))
        if (a->rta_type == IFLA_MTU)
            memcpy(mtu, RTA_DATA(a), sizeof *mtu);
    return 0;
}

static int attach(int argc, char **argv) {
    static char buffer[32768];
    struct getlink requests[2];
    int detach = argc == 3 && argv[1][0] == '-' && argv[1][1] == 'd' && argv[1][2] == 0;
    if (argc != 3) {
        fail("usage: attach-floor TAP BRIDGE | attach-floor -d TAP\n");
        return 2;
    }
    if (detach)
        argv[1] = argv[2];
    int fd = raw_socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return 1;
    size_t first = getlink(&requests[0], 1, argv[1]);
    size_t second = detach ? 0 : getlink(&requests[1], 2, argv[2]);
    char both[sizeof requests];
    memcpy(both, &requests[0], first);
    memcpy(both + first, &requests[1], second);
    if (raw_send(fd, both, first + second, 0) < 0)
        return 1;
    int tap = 0, bridge = 0;
    unsigned tap_mtu = 0, bridge_mtu = 0;
    for (int answers = 0; answers < (detach ? 1 : 2);) {
        ssize_t got = raw_recv(fd, buffer, sizeof buffer, 0);
        if (got <= 0)
            return 1;
        for (struct nlmsghdr *m = (struct nlmsghdr *)buffer; NLMSG_OK(m, (size_t)got); m = NLMSG_NEXT(m, got)) {
            int *index = m->nlmsg_seq == 1 ? &tap : &bridge;
            unsigned *mtu = m->nlmsg_seq == 1 ? &tap_mtu : &bridge_mtu;
            if (link_of(m, index, mtu) < 0)
                return 1;
            answers++;
        }
    }
    struct {
        struct nlmsghdr header;
        struct ifinfomsg info;
        char attributes[2 * RTA_SPACE(sizeof(unsigned))];
    } setlink;
    memset(&setlink, 0, sizeof setlink);
    setlink.header.nlmsg_len = NLMSG_LENGTH(sizeof setlink.info) + 2 * RTA_SPACE(sizeof(unsigned));
    setlink.header.nlmsg_type = RTM_NEWLINK;
    setlink.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    setlink.header.nlmsg_seq = 3;
    setlink.info.ifi_index = tap;
    setlink.info.ifi_flags = detach ? 0 : IFF_UP;
    setlink.info.ifi_change = IFF_UP;
    struct rtattr *master = (struct rtattr *)setlink.attributes;
    master->rta_type = IFLA_MASTER;
    master->rta_len = RTA_LENGTH(sizeof(unsigned));
    unsigned value = detach ? 0 : (unsigned)bridge;
    memcpy(RTA_DATA(master), &value, sizeof value);
    struct rtattr *mtu = (struct rtattr *)(setlink.attributes + RTA_SPACE(sizeof(unsigned)));
    mtu->rta_type = IFLA_MTU;
    mtu->rta_len = RTA_LENGTH(sizeof(unsigned));
    memcpy(RTA_DATA(mtu), detach ? &tap_mtu : &bridge_mtu, sizeof bridge_mtu);
    if (raw_send(fd, &setlink, setlink.header.nlmsg_len, 0) < 0)
        return 1;
    ssize_t got = raw_recv(fd, buffer, sizeof buffer, 0);
    struct nlmsghdr *ack = (struct nlmsghdr *)buffer;
    if (got <= 0 || ack->nlmsg_type != NLMSG_ERROR || ((struct nlmsgerr *)NLMSG_DATA(ack))->error != 0)
        return 1;
    return 0;
}

#ifdef WITH_LIBC
int main(int argc, char **argv) {
    return attach(argc, argv);
}
#else
/* The kernel's entry: argc at the stack pointer, argv after it. */
__attribute__((used)) static void start(long *stack) {
    int code = attach((int)stack[0], (char **)(stack + 1));
    syscall6(__NR_exit_group, code, 0, 0, 0, 0, 0);
}
__asm__(".global _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall start\n");
#endif
