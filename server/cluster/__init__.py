"""A cluster of Curator shards on Ray, behind one front that speaks the same gRPC contract.

- placement.py: which shard a tenant belongs to (rendezvous hashing, an override table), and the
  versioned map of where each shard's copies live;
- host.py: one copy of a shard, the single-node server on its node's disk, as a Ray actor;
- shard.py: a shard's copies, written in one order and acknowledged once all applied;
- controller.py: copies placed on nodes, lost ones replaced, moved onto new nodes;
- front.py: the cluster as one Database for the front's servicers (routing, gathering, copies
  of vectors granted across shards)."""
