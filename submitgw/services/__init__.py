"""I/O behind small interfaces: stores, DNS, password hashing pools, logging."""
