#!/usr/bin/env python3
"""Sends sd_notify datagrams to a notify socket, as a guest would (node has no AF_UNIX datagrams).

    send_datagrams.py --socket PATH [--capture FILE.jsonl] [--datagram TEXT]... [--delay-ms N]
                      [--barrier]

A capture line's "hex" is sent byte for byte, except its own BARRIER=1 datagrams (they need an
fd). With --barrier, a barrier like systemd-notify's ends it: BARRIER=1 with one end of a pipe,
then a wait until the receiver closes it, so when this exits the hub has every datagram before it.
It is off by default because BARRIER=1 is a message like any other: after a guest's shutdown it
starts a new boot.
"""
import argparse
import json
import os
import select
import socket
import sys
import time

BARRIER_TIMEOUT_S = 10


def datagrams(args):
    if args.capture:
        with open(args.capture, encoding="utf-8") as capture:
            for line in capture:
                if line.strip():
                    payload = bytes.fromhex(json.loads(line)["hex"])
                    if payload != b"BARRIER=1":
                        yield payload
    for text in args.datagram:
        yield text.encode()


def barrier(sock, path):
    read_end, write_end = os.pipe()
    try:
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, write_end.to_bytes(4, sys.byteorder))]
        sock.sendmsg([b"BARRIER=1"], fds, 0, path)
        os.close(write_end)
        write_end = -1
        ready, _, _ = select.select([read_end], [], [], BARRIER_TIMEOUT_S)
        if not ready:
            sys.exit(f"no barrier answer from {path} within {BARRIER_TIMEOUT_S} s")
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--capture")
    parser.add_argument("--datagram", action="append", default=[])
    parser.add_argument("--delay-ms", type=float, default=0)
    parser.add_argument("--barrier", action="store_true")
    args = parser.parse_args()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        for payload in datagrams(args):
            sock.sendto(payload, args.socket)
            if args.delay_ms:
                time.sleep(args.delay_ms / 1000)
        if args.barrier:
            barrier(sock, args.socket)


if __name__ == "__main__":
    main()
