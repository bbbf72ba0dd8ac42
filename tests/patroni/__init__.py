"""A real Patroni pair (PostgreSQL 15, one etcd) for failover tests: see cluster.py."""
