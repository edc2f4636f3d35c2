"""`edgekit train` (build side: needs torch)."""
