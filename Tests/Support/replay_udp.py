#!/usr/bin/python3
"""Replays captured UDP payloads from this host (used by the hole-punching kernel test).

  replay_udp.py PCAP HOST PORT     send the payload of every UDP datagram in PCAP to HOST:PORT from
                                   one socket of this host (a third party replaying what it saw);
                                   print how many were sent
"""
import socket
import sys

from scapy.all import UDP, rdpcap  # /usr/bin/python3 (Debian python3-scapy)


def main():
    pcap, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n = 0
    for p in rdpcap(pcap):
        if UDP in p:
            s.sendto(bytes(p[UDP].payload), (host, port))
            n += 1
    print(n)


if __name__ == "__main__":
    main()
