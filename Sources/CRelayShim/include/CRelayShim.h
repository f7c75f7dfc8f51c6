#ifndef CRELAYSHIM_H
#define CRELAYSHIM_H
// The few things Swift cannot express directly: CMSG macros (fd passing), SO_PEERCRED's struct,
// TUN ioctls, capability syscalls. Everything is prefixed CRelayShim_ and returns -errno on failure.
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <spawn.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>
#include <linux/if_addr.h>

/// Sends `len` bytes; when `fd >= 0` attaches it as SCM_RIGHTS. Returns bytes sent or -errno.
long CRelayShim_send_with_fd(int sock, const void *buf, size_t len, int fd);

/// Receives up to `cap` bytes; a passed descriptor (at most one is kept, close-on-exec) lands in
/// `*fd_out` (else -1). Extra descriptors are closed. Returns bytes read, 0 on EOF, or -errno.
/// `*truncated` is set when control data was truncated (MSG_CTRUNC).
long CRelayShim_recv_with_fd(int sock, void *buf, size_t cap, int *fd_out, int *truncated);

/// SO_PEERCRED of a connected AF_UNIX socket. Returns 0 or -errno.
int CRelayShim_peer_credentials(int sock, int32_t *pid, uint32_t *uid, uint32_t *gid);
/// SO_PEERGROUPS: the peer's supplementary groups as the kernel recorded them at connect (up to
/// `cap`). Returns how many, or -errno (-ERANGE when `cap` is too small).
int CRelayShim_peer_groups(int sock, uint32_t *groups, int cap);

/// Opens /dev/net/tun and attaches (or creates) the TUN device `name` (IFF_TUN|IFF_NO_PI, optionally
/// IFF_VNET_HDR), makes it persistent when `persist` is set. Writes the kernel's name into `name_out`
/// (16 bytes). Returns the fd or -errno.
int CRelayShim_tun_open(const char *name, int persist, int vnet_hdr, char *name_out);


/// Capability numbers and checks (linux/capability.h names).
int CRelayShim_CAP_NET_ADMIN(void);
/// 1 if `cap` is in the effective set, 0 if not, -errno on failure.
int CRelayShim_cap_effective(int cap);
/// Reduces permitted/effective to exactly {cap}, empties the inheritable and ambient sets (a program
/// it executes never inherits a capability), and drops the rest of the bounding set when
/// CAP_SETPCAP allows. Returns 0 or -errno.
int CRelayShim_keep_only_cap(int cap);
/// Sets the calling thread's nice value (setpriority on its thread id). Returns 0 or -errno.
int CRelayShim_thread_nice(int nice);
/// prctl(PR_SET_NO_NEW_PRIVS). Returns 0 or -errno.
int CRelayShim_set_no_new_privs(void);

/// posix_spawn_file_actions_addclosefrom_np (glibc >= 2.34, needs _GNU_SOURCE). Returns 0 or errno.
int CRelayShim_spawn_closefrom(posix_spawn_file_actions_t *actions, int from);

/// recvmmsg of up to `count` datagrams into `count` slots of `slot` bytes at `bufs`; lengths in
/// `lens`, sources in `addrs` (sockaddr_in6 each). Non-blocking. Returns the number received, 0 when
/// none is queued, or -errno. A datagram longer than `slot` is reported with length -1 (truncated).
int CRelayShim_recv_batch(int fd, uint8_t *bufs, size_t slot, int count, int *lens, void *addrs);
/* The same with recvmmsg flags: MSG_WAITFORONE blocks (up to SO_RCVTIMEO) for the first datagram. */
int CRelayShim_recv_batch_flags(int fd, uint8_t *bufs, size_t slot, int count, int *lens, void *addrs, int flags);

/// sendmmsg of `count` datagrams (slot-strided buffers, lengths, sockaddr_in6 destinations).
/// Returns the number sent or -errno.
int CRelayShim_send_batch(int fd, const uint8_t *bufs, size_t slot, int count, const int *lens, const void *addrs);

/// TUN offloads (TUNSETOFFLOAD with TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, or none) on a TUN fd:
/// with them (and IFF_VNET_HDR) the kernel hands over TCP segments of up to 64 KB behind a
/// virtio_net_hdr; without them (a persistent device keeps its features) one packet per read.
/// Returns 0 or -errno.
int CRelayShim_tun_set_tso(int fd, int on);

/// Enables UDP GRO (setsockopt UDP_GRO) on a UDP socket: trains of equal-size datagrams arrive as
/// one buffer with their segment size. Returns 0 or -errno.
int CRelayShim_udp_enable_gro(int fd);

/// recvmmsg with UDP_GRO control messages: like CRelayShim_recv_batch_flags, and `segs[i]` is the
/// segment size of a coalesced train (0 when the datagram arrived alone); `segs` may be NULL (no
/// control messages asked for).
int CRelayShim_recv_batch_gro(int fd, uint8_t *bufs, size_t slot, int count, int *lens, int *segs, void *addrs, int flags);

/// sendmmsg of up to 64 messages at `bufs + offsets[i]`, `lens[i]` bytes each; a message with
/// `segs[i] > 0` is a train of datagrams of that size (the last may be shorter) sent with UDP GSO
/// (UDP_SEGMENT). Returns how many messages went, or -errno when the first failed; `*err` is the
/// errno of the message that stopped the batch (0 when all went).
int CRelayShim_send_batch_gso(int fd, const uint8_t *bufs, const size_t *offsets, int count, const int *lens, const int *segs, const void *addrs, int *err);
#endif
