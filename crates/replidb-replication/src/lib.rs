//! replidb-replication
