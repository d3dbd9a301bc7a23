"""etcd fixtures for the etcd client tests (defined in tests/support/etcd.py for reuse)."""

from tests.support.etcd import etcd1, etcd1_cluster, etcd3, etcd3_cluster

__all__ = ["etcd1", "etcd1_cluster", "etcd3", "etcd3_cluster"]
