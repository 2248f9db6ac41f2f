"""sovrfs: FairOS-DFS pods as a directory tree, with compute pods run on Golem."""

__version__ = "0.1.0"
