//! replidb-wal
