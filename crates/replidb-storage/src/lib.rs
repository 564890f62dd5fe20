//! replidb-storage
