"""Generated gRPC code of the Curator contract (see proto/)."""
