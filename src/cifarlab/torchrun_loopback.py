"""torchrun for one machine, with every port it opens bound to 127.0.0.1.

`cifarlab train --nproc N` starts this instead of `torchrun --standalone`. torchrun's agent
hosts two key-value stores (the rendezvous and the one the workers meet in); PyTorch's
TCPStore listens on every network interface and has no setting for the address, so anyone
who can reach this machine could talk to them while a job runs. TCPStore does accept a socket
someone else opened (`master_listen_fd`): here every store this agent hosts gets one bound to
127.0.0.1. The workers' own gloo/NCCL sockets are kept on loopback by the launcher
(GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME=lo, see distributed.launch).

Multi-machine jobs use torchrun itself (README, "Several machines"): there the stores must
listen on the network.
"""

from __future__ import annotations

import socket
import sys

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend
from torch.distributed.run import main

LOOPBACK = "127.0.0.1"


class LoopbackTCPStore(dist.TCPStore):
    """A TCPStore whose server, if this process hosts it, listens on 127.0.0.1 only."""

    def __init__(self, host_name, port, world_size=None, is_master=False, **options):
        if is_master and options.get("master_listen_fd") is None:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind((LOOPBACK, port))
                listener.listen(socket.SOMAXCONN)
            except OSError:
                listener.close()
                raise RuntimeError("Address already in use") from None  # what torch retries on
            port = listener.getsockname()[1]
            options["master_listen_fd"] = listener.detach()  # the store closes it
        super().__init__(host_name, port, world_size, is_master, **options)


def install() -> None:
    """Make the torchrun agent in this process create LoopbackTCPStores."""
    dist.TCPStore = LoopbackTCPStore
    c10d_rendezvous_backend.TCPStore = LoopbackTCPStore


if __name__ == "__main__":
    install()
    sys.exit(main())
