"""IR → method graph (networkx): who teaches whom, what flows where."""

from kdspec.graph.build import KdGraph, build_graph

__all__ = ["KdGraph", "build_graph"]
