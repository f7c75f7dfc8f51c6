#define _GNU_SOURCE
#include <netinet/in.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <netinet/udp.h>
#include <linux/capability.h>
#include <spawn.h>
#include "CRelayShim.h"

int CRelayShim_spawn_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

long CRelayShim_send_with_fd(int sock, const void *buf, size_t len, int fd) {
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
        memset(&u, 0, sizeof u);
        msg.msg_control = u.buf;
        msg.msg_controllen = sizeof u.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t n;
    do { n = sendmsg(sock, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : (long)n;
}

long CRelayShim_recv_with_fd(int sock, void *buf, size_t cap, int *fd_out, int *truncated) {
    struct iovec iov = { .iov_base = buf, .iov_len = cap };
    union { char buf[CMSG_SPACE(sizeof(int) * 4)]; struct cmsghdr align; } u;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof u.buf;
    *fd_out = -1;
    *truncated = 0;
    ssize_t n;
    do { n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    if (msg.msg_flags & MSG_CTRUNC) *truncated = 1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (*fd_out < 0) *fd_out = fd; else close(fd);
        }
    }
    return (long)n;
}

int CRelayShim_peer_credentials(int sock, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -errno;
    *pid = cred.pid; *uid = cred.uid; *gid = cred.gid;
    return 0;
}

int CRelayShim_peer_groups(int sock, uint32_t *groups, int cap) {
    socklen_t len = (socklen_t)(sizeof(uint32_t) * (size_t)cap);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, groups, &len) != 0) return -errno;
    return (int)(len / sizeof(uint32_t));
}

int CRelayShim_tun_open(const char *name, int persist, int vnet_hdr, char *name_out) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) { int e = errno; close(fd); return -e; }
    if (persist && ioctl(fd, TUNSETPERSIST, 1) != 0) { int e = errno; close(fd); return -e; }
    if (name_out) { memcpy(name_out, ifr.ifr_name, IFNAMSIZ); name_out[IFNAMSIZ - 1] = 0; }
    return fd;
}


int CRelayShim_CAP_NET_ADMIN(void) { return CAP_NET_ADMIN; }

static int capget3(struct __user_cap_data_struct data[2]) {
    struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    return syscall(SYS_capget, &hdr, data) == 0 ? 0 : -errno;
}

int CRelayShim_cap_effective(int cap) {
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    int rc = capget3(data);
    if (rc) return rc;
    return (data[CAP_TO_INDEX(cap)].effective & CAP_TO_MASK(cap)) ? 1 : 0;
}

int CRelayShim_keep_only_cap(int cap) {
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    int rc = capget3(data);
    if (rc) return rc;
    int has_setpcap = (data[CAP_TO_INDEX(CAP_SETPCAP)].effective & CAP_TO_MASK(CAP_SETPCAP)) != 0;
    if (has_setpcap) {
        for (int c = 0; c <= 63; c++) {
            if (c == cap) continue;
            if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1) prctl(PR_CAPBSET_DROP, c, 0, 0, 0);
        }
    }
    int had = (data[CAP_TO_INDEX(cap)].permitted & CAP_TO_MASK(cap)) != 0;
    /* Ambient first (it must stay a subset of inheritable): nothing this process executes may
     * inherit a capability. */
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return -errno;
    memset(data, 0, sizeof data);
    if (had) {
        data[CAP_TO_INDEX(cap)].permitted = CAP_TO_MASK(cap);
        data[CAP_TO_INDEX(cap)].effective = CAP_TO_MASK(cap);
        /* inheritable stays empty */
    }
    struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    if (syscall(SYS_capset, &hdr, data) != 0) return -errno;
    return 0;
}

int CRelayShim_set_no_new_privs(void) {
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 ? 0 : -errno;
}

int CRelayShim_recv_batch(int fd, uint8_t *bufs, size_t slot, int count, int *lens, void *addrs) {
    return CRelayShim_recv_batch_flags(fd, bufs, slot, count, lens, addrs, MSG_DONTWAIT);
}

int CRelayShim_recv_batch_flags(int fd, uint8_t *bufs, size_t slot, int count, int *lens, void *addrs, int flags) {
    return CRelayShim_recv_batch_gro(fd, bufs, slot, count, lens, NULL, addrs, flags);
}

int CRelayShim_send_batch(int fd, const uint8_t *bufs, size_t slot, int count, const int *lens, const void *addrs) {
    struct mmsghdr msgs[64];
    struct iovec iovs[64];
    if (count > 64) count = 64;
    memset(msgs, 0, sizeof(struct mmsghdr) * count);
    const struct sockaddr_in6 *a = addrs;
    for (int i = 0; i < count; i++) {
        iovs[i].iov_base = (void *)(bufs + (size_t)i * slot);
        iovs[i].iov_len = (size_t)lens[i];
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = (void *)&a[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in6);
    }
    int sent = 0;
    while (sent < count) {
        int n = sendmmsg(fd, msgs + sent, count - sent, 0);
        if (n < 0) { if (errno == EINTR) continue; return sent > 0 ? sent : -errno; }
        sent += n;
    }
    return sent;
}

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

int CRelayShim_tun_set_tso(int fd, int on) {
    unsigned int off = on ? (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) : 0;
    return ioctl(fd, TUNSETOFFLOAD, off) == 0 ? 0 : -errno;
}

int CRelayShim_udp_enable_gro(int fd) {
    int one = 1;
    return setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) == 0 ? 0 : -errno;
}

int CRelayShim_recv_batch_gro(int fd, uint8_t *bufs, size_t slot, int count, int *lens, int *segs, void *addrs, int flags) {
    struct mmsghdr msgs[64];
    struct iovec iovs[64];
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl[64];
    if (count > 64) count = 64;
    memset(msgs, 0, sizeof(struct mmsghdr) * count);
    struct sockaddr_in6 *a = addrs;
    for (int i = 0; i < count; i++) {
        iovs[i].iov_base = bufs + (size_t)i * slot;
        iovs[i].iov_len = slot;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &a[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in6);
        if (segs) {
            msgs[i].msg_hdr.msg_control = ctl[i].buf;
            msgs[i].msg_hdr.msg_controllen = sizeof ctl[i].buf;
        }
    }
    int n;
    do { n = recvmmsg(fd, msgs, count, flags, NULL); } while (n < 0 && errno == EINTR);
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        lens[i] = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) ? -1 : (int)msgs[i].msg_len;
        if (!segs) continue;
        segs[i] = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
                int g; memcpy(&g, CMSG_DATA(c), sizeof g); segs[i] = g;
            }
        }
    }
    return n;
}

int CRelayShim_send_batch_gso(int fd, const uint8_t *bufs, const size_t *offsets, int count, const int *lens, const int *segs, const void *addrs, int *err) {
    struct mmsghdr msgs[64];
    struct iovec iovs[64];
    union { char buf[CMSG_SPACE(sizeof(uint16_t))]; struct cmsghdr align; } ctl[64];
    if (count > 64) count = 64;
    memset(msgs, 0, sizeof(struct mmsghdr) * count);
    const struct sockaddr_in6 *a = addrs;
    for (int i = 0; i < count; i++) {
        iovs[i].iov_base = (void *)(bufs + offsets[i]);
        iovs[i].iov_len = (size_t)lens[i];
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = (void *)&a[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in6);
        if (segs[i] > 0 && segs[i] < lens[i]) {
            memset(&ctl[i], 0, sizeof ctl[i]);
            msgs[i].msg_hdr.msg_control = ctl[i].buf;
            msgs[i].msg_hdr.msg_controllen = sizeof ctl[i].buf;
            struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t g = (uint16_t)segs[i];
            memcpy(CMSG_DATA(c), &g, sizeof g);
        }
    }
    int sent = 0;
    *err = 0;
    while (sent < count) {
        int n = sendmmsg(fd, msgs + sent, count - sent, 0);
        if (n < 0) { if (errno == EINTR) continue; *err = errno; return sent > 0 ? sent : -errno; }
        sent += n;
    }
    return sent;
}

#include <sys/resource.h>
int CRelayShim_thread_nice(int nice) {
    return setpriority(PRIO_PROCESS, (id_t)gettid(), nice) == 0 ? 0 : -errno;
}
