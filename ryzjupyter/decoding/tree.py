"""Draft trees: the shape a tree of draft tokens is verified in.

A tree of n nodes is listed in depth-first preorder (every node after its parent, a node's subtree
right after it); node 0 is the root (the last sampled token, not yet in the cache). Two equivalent
descriptions are used: ``parents`` (parent index of each node, -1 for the root) and ``depths``
(0 for the root; a node's parent is the last earlier node one level up). A chain of k tokens is
the tree with depths 0, 1, ..., k.
"""
from __future__ import annotations


def depths_of(parents) -> list[int]:
    """Depths of a tree given as parent indices in depth-first preorder; ValueError otherwise."""
    parents = [int(p) for p in parents]
    if not parents or parents[0] != -1:
        raise ValueError("a draft tree needs a root: parents[0] must be -1")
    depths = [0]
    stack = [0]                                     # the path from the root to the last node
    for i, p in enumerate(parents[1:], start=1):
        while stack and stack[-1] != p:
            stack.pop()
        if not stack:
            raise ValueError(f"node {i}: parent {p} is not on the path to node {i - 1}; the nodes must be "
                             "in depth-first preorder")
        stack.append(i)
        depths.append(len(stack) - 1)
    return depths


def parents_of(depths) -> list[int]:
    """Parent indices of a tree given by its depths in depth-first preorder; ValueError otherwise."""
    depths = [int(d) for d in depths]
    if not depths or depths[0] != 0:
        raise ValueError("a draft tree needs a root: depths[0] must be 0")
    last, parents = {0: 0}, [-1]
    for i, d in enumerate(depths[1:], start=1):
        if d < 1 or d > depths[i - 1] + 1:
            raise ValueError(f"node {i}: depth {d} after depth {depths[i - 1]} is not depth-first preorder")
        parents.append(last[d - 1])
        last[d] = i
    return parents


def path_to(parents, node) -> list[int]:
    """Node indices from the root to `node`."""
    path = []
    while node != -1:
        path.append(node)
        node = parents[node]
    return path[::-1]
