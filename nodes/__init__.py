"""zq nodes: what runs on cluster machines (ventilator, worker, sink, local cluster, CLI)."""
