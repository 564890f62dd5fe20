//! replidb-server
