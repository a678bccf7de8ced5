"""OS releases: dm-verity hash trees, DSSE envelopes, org keys, signed release manifests."""
