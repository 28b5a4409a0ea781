"""Raw libp2p transfer speed between two processes on loopback (TCP + Noise + yamux).

    .venv/bin/python bench/transport.py                  # with the tuning of net/libp2p_patches.py
    .venv/bin/python bench/transport.py --without-tuning # the library's own paths (fixes stay)

A receiver process and a sender process, each with one ``open_host``; the sender writes
``--mib`` MiB over 1 and over 20 parallel streams of one connection, in 1 MiB writes, and the
receiver counts the bytes and answers with the count. Prints MB/s and the CPU seconds of both
sides (the receiver's measured from its first byte to its last).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

import trio

from walrus_p2p.net import libp2p_patches
from walrus_p2p.net.host import HostConfig, open_host
from walrus_p2p.net.stream import Stream
from walrus_p2p.testing.network import free_tcp_port

PROTOCOL = "/walrus-p2p/bench/transport/1.0.0"
MIB = 1 << 20


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def receiver(port: int) -> None:
    config = HostConfig(seed=b"r" * 32, listen_addrs=(f"/ip4/127.0.0.1/tcp/{port}",))
    async with open_host(config) as host:
        cpu_at_first_byte: list[float] = []

        async def sink(stream: Stream) -> None:
            received = 0
            while chunk := await stream.read(MIB):
                if not cpu_at_first_byte:
                    cpu_at_first_byte.append(cpu_seconds())
                received += len(chunk)
            await stream.write(received.to_bytes(8, "big"))

        async def report(stream: Stream) -> None:
            spent = cpu_seconds() - cpu_at_first_byte.pop() if cpu_at_first_byte else 0.0
            await stream.write(f"{spent:.3f}".encode())

        host.set_stream_handler(PROTOCOL, sink)
        host.set_stream_handler(PROTOCOL + "/cpu", report)
        print(host.peer_id, flush=True)
        await trio.sleep_forever()


async def sender(port: int, peer_id: str, mib: int) -> None:
    async with open_host(HostConfig(seed=b"s" * 32)) as host:
        host.add_addrs(peer_id, [f"/ip4/127.0.0.1/tcp/{port}"])
        await host.connect(peer_id, timeout=10)
        chunk = os.urandom(MIB)
        for streams in (1, 20, 1, 20):
            per_stream = mib // streams

            async def one(per_stream: int) -> None:
                stream = await host.open_stream(peer_id, PROTOCOL)
                try:
                    for _ in range(per_stream):
                        await stream.write(chunk)
                    await stream.close_write()
                    answer = await stream.read(8)
                    if int.from_bytes(answer, "big") != per_stream * MIB:
                        raise SystemExit("receiver counted a different number of bytes")
                finally:
                    await stream.close()

            cpu_before, started = cpu_seconds(), time.perf_counter()
            with trio.fail_after(300):
                async with trio.open_nursery() as nursery:
                    for _ in range(streams):
                        nursery.start_soon(one, per_stream)
            seconds = time.perf_counter() - started
            sent_cpu = cpu_seconds() - cpu_before
            stream = await host.open_stream(peer_id, PROTOCOL + "/cpu")
            received_cpu = float((await stream.read(64)).decode())
            await stream.close()
            total = per_stream * streams
            print(
                f"{streams:>2} stream(s): {total} MiB in {seconds:5.2f}s = "
                f"{total * MIB / seconds / 1e6:6.1f} MB/s; CPU sender {sent_cpu:.2f}s, "
                f"receiver {received_cpu:.2f}s ({received_cpu * 1000 / total:.2f} ms/MiB)",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument(
        "--without-tuning", action="store_true", help=f"set {libp2p_patches.TUNING_SWITCH}=off"
    )
    parser.add_argument("--role", choices=("receiver",), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.without_tuning:
        os.environ[libp2p_patches.TUNING_SWITCH] = "off"  # the receiver inherits it
    else:
        libp2p_patches.tune_allocator()  # as a storage peer's runner does
    if arguments.role == "receiver":
        trio.run(receiver, arguments.port)
        return
    port = free_tcp_port()
    command = [sys.executable, __file__, "--role", "receiver", "--port", str(port)]
    if arguments.without_tuning:
        command.append("--without-tuning")
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        peer_id = child.stdout.readline().strip()
        if not peer_id:
            raise SystemExit("the receiver did not start")
        print(
            f"{'without' if arguments.without_tuning else 'with'} the libp2p tuning "
            f"(net/libp2p_patches.py); "
            f"load {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores"
        )
        trio.run(sender, port, peer_id, arguments.mib)
    finally:
        child.kill()
        child.wait()


if __name__ == "__main__":
    main()
