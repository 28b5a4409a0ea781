"""walrus-p2p: a decentralized, verifiable blob store on libp2p."""

__version__ = "0.1.0"
